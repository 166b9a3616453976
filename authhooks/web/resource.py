"""The twisted.web side of the page: HTTP request → :class:`WebRequest`, response → HTTP, the Service.

Everything here is I/O glue; decisions are :class:`~congvu.authhooks.web.core.PasswordWeb`'s.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from congvu.authhooks.service import AuthService, load_secret
from congvu.authhooks.settings import AuthConfig
from congvu.authhooks.web.core import PasswordWeb
from congvu.authhooks.web.proxies import client_ip, in_networks
from congvu.authhooks.web.values import MAX_BODY, WebRequest, WebResponse, plain

log = Logger()

SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


Runner = Callable[..., "defer.Deferred[WebResponse]"]


def parse_form(content_type: str, body: bytes) -> dict[str, str]:
    """A urlencoded or JSON body → fields (first value wins); anything else → no fields."""
    ctype = content_type.split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return {}
    if ctype == "application/json":
        try:
            data = json.loads(text)
        except ValueError:
            return {}
        return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}
    if ctype in ("application/x-www-form-urlencoded", ""):
        out: dict[str, str] = {}
        for k, v in parse_qsl(text, keep_blank_values=True):
            out.setdefault(k, v)
        return out
    return {}


def parse_cookies(header: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name:
            out.setdefault(name, value.strip().strip('"'))
    return out


class WebResource(Resource):
    """Every path → :meth:`PasswordWeb.handle`; POSTs run in the thread pool (hashing, directory)."""

    isLeaf = True

    def __init__(self, app: PasswordWeb, run: Runner) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.app, self.run = app, run

    def to_request(self, request: Any) -> WebRequest:  # twisted.web's Request is untyped
        headers = {k.decode("latin-1").lower(): b", ".join(v).decode("latin-1")
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        query: dict[str, str] = {}
        for k, v in parse_qsl(urlsplit(request.uri.decode("latin-1")).query, keep_blank_values=True):
            query.setdefault(k, v)
        body = b""
        if request.content is not None:
            request.content.seek(0)
            body = request.content.read(MAX_BODY + 1)
        peer = request.getClientAddress()
        peer_ip = str(getattr(peer, "host", "") or "")
        trusted = self.app.cfg.authhooks.web_trusted_proxies
        ip = client_ip(peer_ip, headers, trusted)
        from_proxy = in_networks(peer_ip, trusted)
        secure = bool(request.isSecure()) or (from_proxy and headers.get("x-forwarded-proto", "") == "https")
        return WebRequest(
            method=request.method.decode("ascii", "replace"), path=request.path.decode("utf-8", "replace"),
            query=query, headers=headers, cookies=parse_cookies(headers.get("cookie", "")),
            form=parse_form(headers.get("content-type", ""), body[:MAX_BODY]), client_ip=ip, secure=secure,
            body_too_large=len(body) > MAX_BODY)

    def render(self, request: Any) -> int | bytes:
        try:
            req = self.to_request(request)
        except Exception as e:
            log.failure("password page: unreadable request", Failure(e))  # type: ignore[no-untyped-call]
            return self._write(request, plain(400, "bad request"))
        if req.method.upper() != "POST":
            return self._write(request, self.app.handle(req))
        d = self.run(self.app.handle, req)

        def done(resp: WebResponse) -> None:
            if not (request.finished or request._disconnected):
                self._write(request, resp)
                request.finish()

        def failed(f: Failure) -> None:
            log.failure("password page: request failed", f)
            done(plain(424, "temporary failure, try again"))

        d.addCallbacks(done, failed)
        return NOT_DONE_YET

    @staticmethod
    def _write(request: Any, resp: WebResponse) -> bytes:
        request.setResponseCode(resp.status)
        request.setHeader(b"content-type", resp.content_type.encode())
        for name, value in SECURITY_HEADERS:
            if name == "Cache-Control" and any(h[0] == name for h in resp.headers):
                continue
            request.setHeader(name.encode(), value.encode())
        for name, value in resp.headers:
            if name == "Set-Cookie":
                request.responseHeaders.addRawHeader(b"set-cookie", value.encode())
            else:
                request.setHeader(name.encode(), value.encode())
        if request.method == b"HEAD":
            return b""
        if request.method == b"POST":
            request.write(resp.body)
            return b""
        return resp.body


class PasswordWebService(Service):
    """The password page and API as a Twisted ``Service`` of ``congvu serve``: its ports and, if its own, its pool.

    ``congvu serve`` passes authd's ``service`` and ``pool``, so a change made here decides
    the very next checkpassword login; alone (``congvu serve --only web``, a page on another
    host) it gets an AuthService of its own (``owns_service``) and makes its own pool.
    :attr:`ready` fires once it listens.
    """

    name = "web"

    def __init__(self, cfg: AuthConfig, service: AuthService, reactor: Any, pool: ThreadPool | None = None,
                 *, listen: Callable[..., defer.Deferred[Any]], owns_service: bool = False) -> None:
        self.cfg, self.service, self.reactor = cfg, service, reactor
        self.listen = listen
        self.ready: defer.Deferred[PasswordWebService] | None = None
        self.owns_service = owns_service
        self.owns_pool = pool is None
        self.pool = pool or ThreadPool(minthreads=1, maxthreads=cfg.authhooks.threads, name="congvu-web")
        secret = load_secret(cfg.state_file(cfg.authhooks.secret_file, "authd.key"))
        self.app = PasswordWeb(cfg, service, secret)
        self.ports: list[Any] = []
        self.listening: list[str] = []

    def _run(self, fn: Callable[..., WebResponse], *args: Any) -> defer.Deferred[WebResponse]:
        return deferToThreadPool(self.reactor, self.pool, fn, *args)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.ready = self.start()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        d: defer.Deferred[None] = self.stop()
        return d

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Listen on ``[authhooks] web_listen``; fires with self, or fails having closed what it opened."""
        if self.owns_pool:
            self.pool.start()
        try:
            for endpoint in self.cfg.authhooks.web_listen:
                site = Site(WebResource(self.app, self._run))  # type: ignore[no-untyped-call]
                site.noisy = False
                site.displayTracebacks = False
                self.ports.append((yield self.listen(endpoint, site, what="password page",
                                                     setting="authhooks.web_listen")))
                self.listening.append(f"{endpoint} (password page, POST /api/password)")
        except Exception:
            yield self.stop()
            raise
        for line in self.listening:
            log.info("password page: listening on {where}", where=line)
        return self

    def reload(self, cfg: AuthConfig) -> None:
        """New limits and rules apply to the next request; endpoint changes need a restart."""
        self.cfg = cfg
        self.app.reconfigure(cfg)
        if self.owns_service:
            self.service.reconfigure(cfg)

    @defer.inlineCallbacks
    def stop(self) -> Any:
        ports, self.ports = self.ports, []
        yield defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports], consumeErrors=True)
        if self.owns_pool and self.pool.started:
            self.pool.stop()
        if self.owns_service:
            self.service.close()
