"""slapd outages: a stopped or frozen server gives DirectoryUnavailable within the timeout, and a
restarted one is used again by the same store, in the same process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from congvu.directory.ldap_store import LdapAccountStore
from congvu.directory.model import DirectoryUnavailable
from tests.integration.directory.ldap_helpers import account, make_store, wipe
from tests.integration.servers.slapd import SlapdServer
from tests.integration.support import wait_for

pytestmark = pytest.mark.integration

TIMEOUT = 2.0


@pytest.fixture
def outage_store(running_slapd: SlapdServer) -> Iterator[LdapAccountStore]:
    """A store with a short timeout and both pool connections open, on a slapd the test may stop."""
    wipe(running_slapd)
    store = make_store(running_slapd, timeout=f"{int(TIMEOUT)}s", pool_size=2)
    store.add(account("nvminh"))
    # Open both pooled connections, so a restart leaves two stale ones behind.
    barrier = threading.Barrier(2)

    def hold() -> None:
        store._pool.call("warm", lambda conn, _d: barrier.wait(5))

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(store._pool._idle) == 2
    try:
        yield store
    finally:
        store.close()


def _timed_failure(store: LdapAccountStore) -> float:
    start = time.monotonic()
    with pytest.raises(DirectoryUnavailable):
        store.get("nvminh@cantho.gov.vn")
    return time.monotonic() - start


def test_stopped_slapd_fails_fast_then_recovers(outage_store: LdapAccountStore, running_slapd: SlapdServer) -> None:
    """Stop slapd mid-test: every call fails within the timeout; start it: the same store works again."""
    assert outage_store.get("nvminh@cantho.gov.vn") is not None
    running_slapd.stop()
    for _ in range(3):
        assert _timed_failure(outage_store) < TIMEOUT + 0.5
    with pytest.raises(DirectoryUnavailable):
        outage_store.update("nvminh@cantho.gov.vn", title="x")
    with pytest.raises(DirectoryUnavailable):
        list(outage_store.list())
    running_slapd.start()
    got = outage_store.get("nvminh@cantho.gov.vn")
    assert got is not None and got.title == "Chuyên viên"
    outage_store.update("nvminh@cantho.gov.vn", title="Phó phòng")
    assert [a.title for a in outage_store.list()] == ["Phó phòng"]


def test_restart_between_calls_is_invisible(outage_store: LdapAccountStore, running_slapd: SlapdServer) -> None:
    """slapd restarted while the pool holds open connections: the next calls retry on fresh ones and succeed."""
    running_slapd.stop()
    running_slapd.start()
    for _ in range(4):
        assert outage_store.get("nvminh@cantho.gov.vn") is not None


def test_frozen_slapd_times_out_then_recovers(outage_store: LdapAccountStore, running_slapd: SlapdServer) -> None:
    """A slapd that accepts but never answers (SIGSTOP) costs one timeout per call, not a hang."""
    running_slapd.pause()
    try:
        elapsed = _timed_failure(outage_store)
        assert TIMEOUT - 0.2 < elapsed < TIMEOUT + 1.0
        fresh = make_store(running_slapd, timeout=f"{int(TIMEOUT)}s")
        try:
            assert TIMEOUT - 0.2 < _timed_failure(fresh) < TIMEOUT + 1.0  # stuck in connect/bind this time
        finally:
            fresh.close()
    finally:
        running_slapd.resume()
    assert outage_store.get("nvminh@cantho.gov.vn") is not None


def test_busy_pool_gives_up_within_the_timeout(outage_store: LdapAccountStore, running_slapd: SlapdServer) -> None:
    """When every pooled connection is stuck, a further call waits at most the timeout for one."""
    running_slapd.pause()
    try:
        outcomes: list[BaseException] = []

        def stuck() -> None:
            try:
                outage_store.get("x@cantho.gov.vn")
            except DirectoryUnavailable as e:
                outcomes.append(e)

        threads = [threading.Thread(target=stuck) for _ in range(2)]
        for t in threads:
            t.start()
        wait_for(lambda: not outage_store._pool._idle, "both threads holding a pooled connection")
        start = time.monotonic()
        with pytest.raises(DirectoryUnavailable):
            outage_store.get("nvminh@cantho.gov.vn")
        assert time.monotonic() - start < TIMEOUT + 0.5
        for t in threads:
            t.join(10)
        assert len(outcomes) == 2
    finally:
        running_slapd.resume()
    assert outage_store.get("nvminh@cantho.gov.vn") is not None
