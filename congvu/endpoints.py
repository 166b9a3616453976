"""Listening on the configured endpoints, with a one-line error the operator can act on.

Every long-running service listens on Twisted endpoint strings from the config; the
composition root hands each one a :class:`Listener`, so how a socket is opened is decided
once, here:

* a taken or forbidden endpoint gives one line naming the setting (``[policyd] listen``)
  and what to do, instead of a Twisted traceback;
* a unix socket's directory is created, and a socket file left by a process that died
  (nobody accepts on it) is removed first; any other file at that path is refused,
  never deleted;
* unix sockets get no ``.lock`` symlink beside them (``lockfile=0`` unless the endpoint
  says otherwise): a lock file in Postfix's ``private/`` directory makes every ``postfix
  check`` warn that it is not owned by postfix.
"""

from __future__ import annotations

import errno
import grp
import os
import re
import socket
import stat
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError

from congvu.rules.errors import CongvuError


class ListenFailed(CongvuError):
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


def unix_path(endpoint: str) -> str | None:
    """The socket path of a ``unix:PATH[:opts]`` endpoint (``\\:`` escapes a colon), else None."""
    if not endpoint.startswith("unix:"):
        return None
    parts = re.split(r"(?<!\\):", endpoint[5:])
    path = parts[0].replace("\\:", ":")
    return path[5:] if path.startswith("path=") else path


def _without_lockfile(endpoint: str) -> str:
    """A unix endpoint gets ``lockfile=0`` unless it names a lockfile option itself."""
    options = re.split(r"(?<!\\):", endpoint[5:])[1:]
    if any(o.startswith("lockfile=") for o in options):
        return endpoint
    return endpoint + ":lockfile=0"


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


def prepare_unix(path: Path, what: str, endpoint: str, setting: str) -> None:
    """Make ``path`` ready to bind: its directory exists, a dead socket file is gone.

    Raises ListenFailed when a live service answers there or the path is not a socket.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenFailed(f"{what}: cannot listen on {endpoint} ({_key(setting)}): {path} exists and is not "
                           "a socket; remove it or choose another path (congvu deletes only dead sockets)")
    if unix_accepts(path):
        raise ListenFailed(f"{what}: cannot listen on {endpoint} ({_key(setting)}): another process already "
                           f"serves {path}: stop it, or set {_key(setting)} to another path")
    path.unlink()


class Listener:
    """``listen(endpoint, factory, what=…, setting=…)`` for the services of one reactor."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    @defer.inlineCallbacks
    def __call__(self, endpoint: str, factory: Any, *, what: str, setting: str, group: str = "",
                 group_setting: str = "") -> Any:
        """Fires with the listening port, or fails with :class:`ListenFailed` (one line).

        ``group``: a unix socket is given to this group (its mode, from the endpoint, should
        let the group in: ``mode=660``), named by ``group_setting`` in errors.
        """
        gid = -1
        path = unix_path(endpoint)
        if group and path is not None:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise ListenFailed(f"{what}: no group {group!r} on this host ({_key(group_setting or setting)})"
                                   ) from None
        if path is not None:
            prepare_unix(Path(path), what, endpoint, setting)
            endpoint = _without_lockfile(endpoint)
        try:
            ep = serverFromString(self.reactor, endpoint)  # type: ignore[no-untyped-call]
        except (ValueError, KeyError, TypeError) as e:
            raise ListenFailed(f"{what}: bad endpoint {endpoint!r} ({_key(setting)}): {e}") from None
        try:
            port = yield ep.listen(factory)
        except CannotListenError as e:
            raise ListenFailed(failure_message(what, endpoint, setting, e)) from None
        if path is not None and gid >= 0:
            try:
                os.chown(path, -1, gid)
            except OSError as e:
                port.stopListening()
                raise ListenFailed(f"{what}: cannot give {path} to group {group} "
                                   f"({_key(group_setting or setting)}): {e.strerror or e}") from None
        return port
