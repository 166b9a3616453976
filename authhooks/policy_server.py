"""Dovecot's auth policy server protocol (``auth_policy_server_url``), served by ``congvu authd``.

Dovecot 2.4 removed checkpassword, and a site authenticating against LDAP with a
cached passdb never forks anything; both still get congvu's rules through this:

* ``POST …?command=allow`` before authentication: the lockout (CT25-3.2); ``-1`` refuses.
* ``POST …?command=allow`` after a successful passdb lookup, recognised by the request
  attribute ``authed=yes`` (``conf/dovecot/congvu-policy.conf`` sets it with
  ``%{passdb:congvu_authed}``): the lifecycle (CT25-5.2, CT25-6.4b, CT25-6.4a …).
  ``-1`` with ``msg`` ``[EXPIRED] <change URL> …`` becomes the client's ``NO [EXPIRED]``.
* ``POST …?command=report``: a failure counts towards the lockout, keyed by Dovecot's
  ``pwhash`` (a nonce-keyed hash of the password, never the password); a success clears
  the account's failures and stamps the login.

The core (:func:`handle`) is bytes → bytes with no I/O; :class:`PolicyResource` is the thin
twisted.web wrapper that runs it in the auth service's thread pool.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from congvu.authhooks.service import AuthService
from congvu.rules.errors import ProtocolError

log = Logger()

MAX_BODY = 16384
_TRUE = ("yes", "y", "1", "true")


class PolicyRequestError(ProtocolError):
    """A request Dovecot would never send: bad command, not JSON, missing login."""


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    command: str  # allow | report
    login: str
    remote: str = ""
    protocol: str = ""
    pwhash: str = ""
    authed: bool = False
    success: bool = False
    policy_reject: bool = False


def parse_request(command: str, body: bytes) -> PolicyRequest:
    """The query's ``command`` and the JSON body → a PolicyRequest."""
    if command not in ("allow", "report"):
        raise PolicyRequestError(f"unknown command {command[:20]!r}")
    if len(body) > MAX_BODY:
        raise PolicyRequestError("request too large")
    try:
        data: Any = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise PolicyRequestError("body is not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise PolicyRequestError("body is not a JSON object")
    login = data.get("login")
    if not isinstance(login, str) or not login:
        raise PolicyRequestError("no login attribute")

    def text(key: str) -> str:
        v = data.get(key, "")
        return v if isinstance(v, str) else ""

    def flag(key: str) -> bool:
        v = data.get(key, False)
        return v is True or (isinstance(v, str) and v.lower() in _TRUE)

    return PolicyRequest(command, login, text("remote"), text("protocol"), text("pwhash"),
                         flag("authed"), flag("success"), flag("policy_reject"))


def handle(service: AuthService, command: str, body: bytes) -> tuple[int, bytes]:
    """(HTTP status, JSON body) for one policy request.  Never raises."""
    try:
        req = parse_request(command, body)
    except PolicyRequestError as e:
        return 400, _json({"status": 0, "msg": str(e)})
    try:
        if req.command == "report":
            service.policy_report(req.login, req.remote, req.protocol, req.pwhash, req.success, req.policy_reject)
            return 200, _json({"status": 0})
        ans = service.policy_allow(req.login, req.remote, req.protocol, req.authed)
    except Exception as e:  # a bug must not become a refusal of every login
        log.failure("policy request failed", Failure(e))  # type: ignore[no-untyped-call]
        return 500, _json({"status": 0, "msg": "internal error"})
    out: dict[str, Any] = {"status": ans.status}
    if ans.msg:
        out["msg"] = ans.msg
    return 200, _json(out)


def _json(v: dict[str, Any]) -> bytes:
    return json.dumps(v, ensure_ascii=False).encode("utf-8")


class PolicyResource(Resource):
    """``POST /?command=allow|report`` → :func:`handle` in the thread pool."""

    isLeaf = True

    def __init__(self, service: AuthService, reactor: IReactorThreads, pool: ThreadPool) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.service, self.reactor, self.pool = service, reactor, pool

    def render_GET(self, request: Any) -> bytes:  # twisted.web's Request is untyped
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"congvu auth policy server: POST ?command=allow|report\n"

    def render_POST(self, request: Any) -> int | bytes:
        args = request.args or {}
        command = (args.get(b"command") or [b""])[0].decode("ascii", "replace")
        assert request.content is not None
        body = request.content.read(MAX_BODY + 1)
        d = deferToThreadPool(self.reactor, self.pool, handle, self.service, command, body)

        def done(res: tuple[int, bytes]) -> None:
            if request.finished or request._disconnected:
                return
            request.setResponseCode(res[0])
            request.setHeader(b"content-type", b"application/json")
            request.write(res[1])
            request.finish()

        def failed(f: Failure) -> None:
            log.failure("policy request failed", f)
            done((500, _json({"status": 0, "msg": "internal error"})))

        d.addCallbacks(done, failed)
        return NOT_DONE_YET
