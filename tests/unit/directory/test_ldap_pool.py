"""The LDAP connection pool without a server: URL lists, the service password, one deadline per call,
and the retry-once rule, on stand-in connections (the real slapd cases are tests/integration/directory)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from congvu.config import config_from_mapping
from congvu.directory.ldap_pool import LdapPool, parse_urls
from congvu.directory.model import AccountNotFound, DirectoryError, DirectoryUnavailable
from congvu.directory.settings import DirectorySettings

SECRET = "Mật-khẩu-dịch-vụ-" + "x" * 8


def settings(**directory: Any) -> DirectorySettings:
    return config_from_mapping({"directory": {"url": "ldap://127.0.0.1:1", **directory}}).directory


class FakeConnection:
    """Stands in for a bound ldap3 connection: remembers whether it was unbound."""

    def __init__(self, n: int) -> None:
        self.n, self.closed, self.socket = n, False, None

    def unbind(self) -> None:
        self.closed = True


class FakePool(LdapPool):
    """A pool whose new connections are FakeConnections, numbered in the order they are opened."""

    def __init__(self, s: DirectorySettings) -> None:
        super().__init__(s, password=SECRET)
        self.opened: list[FakeConnection] = []

    def _open(self, deadline: float) -> Any:
        self.opened.append(FakeConnection(len(self.opened)))
        return self.opened[-1]


def test_url_lists() -> None:
    """Servers are tried in the order given; ldaps means TLS from the start and port 636 by default."""
    assert parse_urls("ldap://dir1.cantho.gov.vn ldaps://dir2:1636  ldap://[::1]:3389") == [
        (False, "dir1.cantho.gov.vn", 389), (True, "dir2", 1636), (False, "::1", 3389)]
    assert parse_urls("ldaps://dir") == [(True, "dir", 636)]
    for bad in ("http://dir", "ldap://", "dir:389"):
        with pytest.raises(DirectoryError, match=r"expected ldap://host\[:port\] or ldaps://host\[:port\]"):
            parse_urls(bad)
    with pytest.raises(DirectoryError, match="no server given"):
        parse_urls("  ")


def test_service_password_file(tmp_path: Path) -> None:
    """The password is read once from its file; a missing file or setting is a DirectoryError naming the key."""
    with pytest.raises(DirectoryError, match=r"bind_password_file is required with directory\.bind_dn"):
        LdapPool(settings(bind_dn="cn=congvu"))
    with pytest.raises(DirectoryError, match=r"nope\.secret: cannot read: No such file"):
        LdapPool(settings(bind_dn="cn=congvu", bind_password_file=str(tmp_path / "nope.secret")))
    pw = tmp_path / "ok.secret"
    pw.write_text(SECRET + "\n", encoding="utf-8")
    pool = LdapPool(settings(bind_dn="cn=congvu", bind_password_file=str(pw)))
    assert SECRET not in repr(pool)
    assert "cn=congvu" in repr(pool)
    assert LdapPool(settings()).bind_dn == ""  # anonymous: no file needed


def test_a_stale_pooled_connection_is_retried_once_on_a_fresh_one() -> None:
    """A pooled connection failing with a socket error is dropped and the call succeeds on a new one."""
    pool = FakePool(settings(pool_size=2))
    assert pool.call("warm", lambda conn, _d: conn.n) == 0
    seen: list[int] = []

    def op(conn: Any, _deadline: float) -> int:
        seen.append(conn.n)
        if conn.n == 0:
            raise ConnectionResetError("slapd restarted")
        return int(conn.n)

    assert pool.call("get", op) == 1
    assert seen == [0, 1] and pool.opened[0].closed and not pool.opened[1].closed
    assert pool._idle == [pool.opened[1]]


def test_a_fresh_connection_failing_is_an_outage_without_a_second_try() -> None:
    """A connection opened for this call that fails gives DirectoryUnavailable naming the call and the error."""
    pool = FakePool(settings())

    def op(conn: Any, _deadline: float) -> None:
        raise TimeoutError("timed out")

    with pytest.raises(DirectoryUnavailable, match=r"^LDAP directory unavailable: get: TimeoutError: timed out$"):
        pool.call("get", op)
    assert len(pool.opened) == 1 and pool.opened[0].closed and pool._idle == []


def test_an_operations_own_error_passes_through_and_frees_the_slot() -> None:
    """An error that is not the connection's (AccountNotFound) reaches the caller as it is; the slot is freed."""
    pool = FakePool(settings(pool_size=1))

    def op(conn: Any, _deadline: float) -> None:
        raise AccountNotFound("x@cantho.gov.vn")

    for _ in range(2):  # a slot kept by the first call would make the second one wait and fail
        with pytest.raises(AccountNotFound):
            pool.call("update", op)
    assert len(pool.opened) == 2


def test_a_busy_pool_gives_up_within_the_timeout() -> None:
    """With every connection lent out, a further call waits at most the timeout, then says so."""
    pool = FakePool(dataclasses.replace(settings(pool_size=1), timeout=timedelta(milliseconds=100)))

    def nested(conn: Any, _deadline: float) -> None:
        pool.call("get", lambda c, _d: None)

    with pytest.raises(DirectoryUnavailable, match=r"^all 1 LDAP connections busy for 0.1s$"):
        pool.call("list", nested)
    assert pool.call("get", lambda conn, _d: "free again") == "free again"


def test_a_closed_pool_unbinds_and_refuses_calls() -> None:
    """close() unbinds idle connections; later calls are a DirectoryError, not a reconnect."""
    pool = FakePool(settings())
    pool.call("get", lambda conn, _d: None)
    pool.close()
    assert pool.opened[0].closed and pool._idle == []
    with pytest.raises(DirectoryError, match="the LDAP store is closed"):
        pool.call("get", lambda conn, _d: None)
    assert len(pool.opened) == 1
