"""Listening on the configured endpoints, with a one-line error the operator can act on.

``[authhooks] web_listen`` defaults to ``tcp:8080:interface=127.0.0.1``, a port many
other programs like (development servers, proxies, Jenkins).  When it, a policy
endpoint or the unix socket is taken, ``congvu authd`` / ``congvu serve`` must say which
setting names which endpoint, in one line, instead of a Twisted traceback.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError


class ListenFailed(Exception):
    """An endpoint could not be opened; ``str()`` is the whole one-line explanation."""


def reason(err: BaseException, setting: str) -> str:
    """Why a listen failed, in words, with what to do about the common cases."""
    sock_err: Any = getattr(err, "socketError", None) or err
    code = getattr(sock_err, "errno", None)
    if code == errno.EADDRINUSE:
        return (f"address already in use (another program listens there: stop it, or set [authhooks] {setting} "
                "to a free endpoint)")
    if code == errno.EACCES:
        return "permission denied (a port below 1024 needs root; a unix socket needs a writable directory)"
    if code == errno.EADDRNOTAVAIL:
        return "no such local address on this host"
    text = getattr(sock_err, "strerror", None) or str(sock_err)
    return str(text).strip().rstrip(".")


def failure_message(what: str, endpoint: str, setting: str, err: BaseException) -> str:
    return f"{what}: cannot listen on {endpoint} ([authhooks] {setting}): {reason(err, setting)}"


@defer.inlineCallbacks
def listen(reactor: Any, endpoint: str, factory: Any, *, what: str, setting: str) -> Any:
    """``serverFromString(endpoint).listen(factory)``; fires with the port, or fails with ListenFailed."""
    try:
        ep = serverFromString(reactor, endpoint)  # type: ignore[no-untyped-call]
    except (ValueError, KeyError, TypeError) as e:
        raise ListenFailed(f"{what}: bad endpoint {endpoint!r} ([authhooks] {setting}): {e}") from None
    try:
        port = yield ep.listen(factory)
    except CannotListenError as e:
        raise ListenFailed(failure_message(what, endpoint, setting, e)) from None
    return port
