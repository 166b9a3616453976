"""Listening on the configured endpoints, with a one-line error the operator can act on.

Every long-running service (policyd, authd, the password page) listens on endpoint
strings from the config; ``[authhooks] web_listen`` defaults to a port many other
programs like (8080).  When an endpoint is taken, ``congvu serve`` must say which setting
names which endpoint, in one line, instead of a Twisted traceback.  ``setting`` is the
dotted config key (``policyd.listen``), shown as ``[policyd] listen``.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path
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
        return (f"address already in use (another program listens there: stop it, or set {_key(setting)} "
                "to a free endpoint)")
    if code == errno.EACCES:
        return "permission denied (a port below 1024 needs root; a unix socket needs a writable directory)"
    if code == errno.EADDRNOTAVAIL:
        return "no such local address on this host"
    text = getattr(sock_err, "strerror", None) or str(sock_err)
    return str(text).strip().rstrip(".")


def _key(setting: str) -> str:
    section, _, key = setting.partition(".")
    return f"[{section}] {key}"


def failure_message(what: str, endpoint: str, setting: str, err: BaseException) -> str:
    return f"{what}: cannot listen on {endpoint} ({_key(setting)}): {reason(err, setting)}"


@defer.inlineCallbacks
def listen(reactor: Any, endpoint: str, factory: Any, *, what: str, setting: str) -> Any:
    """``serverFromString(endpoint).listen(factory)``; fires with the port, or fails with ListenFailed."""
    try:
        ep = serverFromString(reactor, endpoint)  # type: ignore[no-untyped-call]
    except (ValueError, KeyError, TypeError) as e:
        raise ListenFailed(f"{what}: bad endpoint {endpoint!r} ({_key(setting)}): {e}") from None
    try:
        port = yield ep.listen(factory)
    except CannotListenError as e:
        raise ListenFailed(failure_message(what, endpoint, setting, e)) from None
    return port


def unix_accepts(path: Path, timeout: float = 0.5) -> bool:
    """One attempt: does something accept on the unix stream socket ``path`` right now?

    Tells a live service's socket from one left by a process that died.
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()
