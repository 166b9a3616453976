"""Connections to the city's LDAP directory (CT15-3.2): a small pool of bound ldap3 connections.

A small pool (``pool_size``) of ldap3 SYNC connections, each bound as the service
account (its password read once from ``bind_password_file``, never logged or shown in
a repr).  Every call has one deadline (``timeout``): waiting for a free connection,
connecting, TLS, binding and every socket read share it, so an outage raises
:class:`DirectoryUnavailable` within ``timeout``.  A pooled connection that fails
(slapd restarted) is dropped and the call retried once on a fresh one within the same
deadline, so the process recovers without a restart.  ``url`` may name several
servers separated by spaces; they are tried in order.
"""

from __future__ import annotations

import math
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import LDAPException
from twisted.logger import Logger

from congvu.directory.model import DirectoryError, DirectoryUnavailable
from congvu.directory.settings import DirectorySettings
from congvu.rules.requirements import citation

log = Logger()

T = TypeVar("T")

RULE = "CT15-3.2"


def parse_urls(text: str) -> list[tuple[bool, str, int]]:
    """``directory.url`` → (TLS from the start, host, port) per server, in the order given."""
    out = []
    for url in text.split():
        parts = urlsplit(url)
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            raise DirectoryError(f"directory.url: expected ldap://host[:port] or ldaps://host[:port], "
                                 f"got {url!r}")
        tls = parts.scheme == "ldaps"
        out.append((tls, parts.hostname, parts.port or (636 if tls else 389)))
    if not out:
        raise DirectoryError("directory.url: no server given")
    return out


def _read_password(settings: DirectorySettings) -> str:
    """The service account's password from ``bind_password_file`` ("" for an anonymous bind)."""
    if not settings.bind_dn:
        return ""
    if not settings.bind_password_file:
        raise DirectoryError("directory.bind_password_file is required with directory.bind_dn")
    try:
        return Path(settings.bind_password_file).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise DirectoryError(f"directory.bind_password_file {settings.bind_password_file}: "
                             f"cannot read: {getattr(e, 'strerror', None) or type(e).__name__}") from None


def _make_tls(settings: DirectorySettings) -> Any:
    try:
        return ldap3.Tls(validate=ssl.CERT_REQUIRED, version=ssl.PROTOCOL_TLS_CLIENT,
                         ca_certs_file=settings.ca_file or None)
    except LDAPException as e:
        raise DirectoryError(f"directory.ca_file {settings.ca_file!r}: {e}") from None


def _arm(conn: Any, deadline: float) -> None:
    """Bound the next socket reads by what is left of this call's deadline."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("deadline passed")
    sock = getattr(conn, "socket", None)
    if sock is not None:
        sock.settimeout(remaining)


def _quietly_close(conn: Any) -> None:
    try:
        sock = getattr(conn, "socket", None)
        if sock is not None:
            sock.settimeout(0.2)
        conn.unbind()
    except Exception:  # the connection is being thrown away anyway
        pass


class _Lease:
    """One checked-out connection and whether it was opened for this call."""

    __slots__ = ("conn", "fresh")

    def __init__(self, conn: Any, fresh: bool) -> None:
        self.conn, self.fresh = conn, fresh


class LdapPool:
    """Bound connections lent to one call at a time (see the module docstring)."""

    def __init__(self, settings: DirectorySettings, password: str | None = None) -> None:
        self.settings = settings
        self.bind_dn = settings.bind_dn
        self.timeout = max(settings.timeout.total_seconds(), 0.05)
        self.__password = _read_password(settings) if password is None else password
        self._urls = parse_urls(settings.url)
        self._tls = _make_tls(settings) if (settings.start_tls or any(u[0] for u in self._urls)) else None
        self._slots = threading.BoundedSemaphore(settings.pool_size)
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"LdapPool(url={self.settings.url!r}, bind_dn={self.bind_dn!r}, size={self.settings.pool_size})"

    def call(self, what: str, op: Callable[[Any, float], T]) -> T:
        """Run ``op(conn, deadline)`` on a pooled connection within one timeout, retrying once if stale.

        ``op`` failing with an ldap3, socket or TLS error means the connection is gone: it is
        dropped, and the call fails with DirectoryUnavailable unless the connection came from
        the pool (then one fresh connection is tried).  Any other error of ``op`` is its own.
        """
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                lease = self._checkout(deadline)
            except DirectoryUnavailable as e:
                log.warn("directory {what}: unavailable ({rule}: {citation}): {reason}", what=what, rule=RULE,
                         citation=citation(RULE), reason=str(e))
                raise
            try:
                _arm(lease.conn, deadline)
                result = op(lease.conn, deadline)
            except (LDAPException, OSError, ssl.SSLError) as e:
                _quietly_close(lease.conn)
                self._checkin(None)
                if not lease.fresh and time.monotonic() < deadline:
                    continue  # a pooled connection went stale (server restarted): one fresh try
                reason = f"{what}: {type(e).__name__}: {e}"
                log.warn("directory {what}: unavailable ({rule}: {citation}): {reason}", what=what, rule=RULE,
                         citation=citation(RULE), reason=reason)
                raise DirectoryUnavailable(f"LDAP directory unavailable: {reason}") from None
            except BaseException:
                _quietly_close(lease.conn)
                self._checkin(None)
                raise
            self._checkin(lease.conn)
            return result

    def close(self) -> None:
        """Unbind the idle connections; those lent out are unbound when returned, and calls fail."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            _quietly_close(conn)

    def _open(self, deadline: float) -> Any:
        """A new connection, bound as the service account, or DirectoryUnavailable."""
        errors = []
        for use_ssl, host, port in self._urls:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            server = ldap3.Server(host, port=port, use_ssl=use_ssl, tls=self._tls, get_info=ldap3.NONE,
                                  connect_timeout=remaining)
            conn = ldap3.Connection(server, user=self.bind_dn or None, password=self.__password or None,
                                    authentication=ldap3.SIMPLE if self.bind_dn else ldap3.ANONYMOUS,
                                    client_strategy=ldap3.SYNC, raise_exceptions=False, check_names=False,
                                    receive_timeout=max(1, math.ceil(remaining)), auto_referrals=False)
            try:
                conn.open()
                _arm(conn, deadline)
                if self.settings.start_tls and not use_ssl and not conn.start_tls():
                    raise DirectoryUnavailable(f"StartTLS refused: {conn.result.get('description')}")
                _arm(conn, deadline)
                if not conn.bind():
                    result = conn.result or {}
                    _quietly_close(conn)
                    if result.get("description") == "invalidCredentials":
                        raise DirectoryUnavailable(f"{host}:{port}: the service bind as {self.bind_dn} was refused "
                                                   "(invalidCredentials); check directory.bind_password_file")
                    errors.append(f"{host}:{port}: bind failed: {result.get('description') or conn.last_error}")
                    continue
                return conn
            except DirectoryUnavailable:
                _quietly_close(conn)
                raise
            except (LDAPException, OSError, ssl.SSLError) as e:
                _quietly_close(conn)
                errors.append(f"{host}:{port}: {e}")
        reason = "; ".join(errors) or f"no answer within {self.timeout:g}s"
        raise DirectoryUnavailable(f"LDAP directory unavailable: {reason}")

    def _checkout(self, deadline: float) -> _Lease:
        if self._closed:
            raise DirectoryError("the LDAP store is closed")
        if not self._slots.acquire(timeout=max(deadline - time.monotonic(), 0)):
            raise DirectoryUnavailable(f"all {self.settings.pool_size} LDAP connections busy for "
                                       f"{self.timeout:g}s")
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is not None and not conn.closed:
            return _Lease(conn, fresh=False)
        try:
            return _Lease(self._open(deadline), fresh=True)
        except BaseException:
            self._slots.release()
            raise

    def _checkin(self, conn: Any | None) -> None:
        if conn is not None:
            with self._lock:
                if self._closed:
                    _quietly_close(conn)
                else:
                    self._idle.append(conn)
        self._slots.release()
