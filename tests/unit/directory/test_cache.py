"""The TTL read cache in front of a real SQLite store: hits, expiry, bounds and invalidation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from congvu.directory.cache import CachedAccountStore
from congvu.directory.model import Account, AccountNotFound
from congvu.directory.sqlite_store import SqliteAccountStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Counting(SqliteAccountStore):
    """The real SQLite store, counting the reads that reach it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reads = 0

    def get(self, address: str) -> Account | None:
        self.reads += 1
        return super().get(address)


def acct(local: str, **kw: Any) -> Account:
    return Account(local_part=local, domain="cantho.gov.vn", full_name="Lê Thị Lan", mailbox_type="personal", **kw)


@pytest.fixture
def inner(tmp_path: Path) -> Iterator[Counting]:
    store = Counting(tmp_path / "d.sqlite3")
    yield store
    store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def cached(inner: Counting, clock: Clock, size: int = 100, ttl: float = 30) -> CachedAccountStore:
    return CachedAccountStore(inner, size=size, ttl=ttl, clock=clock)


def test_reads_within_ttl_are_served_from_cache(inner: Counting, clock: Clock) -> None:
    """A second lookup inside the TTL does not reach the store, whatever the letter case."""
    inner.add(acct("ltlan"))
    c = cached(inner, clock)
    assert c.get("ltlan@cantho.gov.vn") is not None
    assert c.get("LTLan@cantho.gov.vn") is not None
    assert inner.reads == 1 and c.hits == 1


def test_entries_expire_after_ttl(inner: Counting, clock: Clock) -> None:
    """After the TTL the store is asked again, and sees a change made behind the cache."""
    inner.add(acct("ltlan"))
    c = cached(inner, clock, ttl=30)
    c.get("ltlan@cantho.gov.vn")
    inner.update("ltlan@cantho.gov.vn", title="Trưởng phòng")  # another process, not through the cache
    clock.now += 29
    assert c.get("ltlan@cantho.gov.vn").title == ""  # type: ignore[union-attr]
    clock.now += 2
    assert c.get("ltlan@cantho.gov.vn").title == "Trưởng phòng"  # type: ignore[union-attr]
    assert inner.reads == 2


def test_unknown_addresses_are_cached_and_add_invalidates(inner: Counting, clock: Clock) -> None:
    """"No such account" is cached too, until an add through the cache creates it."""
    c = cached(inner, clock)
    assert c.get("ltlan@cantho.gov.vn") is None
    assert c.get("ltlan@cantho.gov.vn") is None
    assert inner.reads == 1
    c.add(acct("ltlan", aliases=("lan@cantho.gov.vn",)))
    assert c.get("ltlan@cantho.gov.vn") is not None


def test_alias_cached_as_unknown_is_invalidated_by_update(inner: Counting, clock: Clock) -> None:
    """A new alias that was cached as unknown resolves right after the update adds it."""
    inner.add(acct("ltlan"))
    c = cached(inner, clock)
    assert c.get("lan@cantho.gov.vn") is None
    c.update("ltlan@cantho.gov.vn", aliases=("lan@cantho.gov.vn",))
    assert c.get("lan@cantho.gov.vn").address == "ltlan@cantho.gov.vn"  # type: ignore[union-attr]


def test_update_through_alias_refreshes_every_key(inner: Counting, clock: Clock) -> None:
    """Updating via one alias drops the cached address and the other aliases, and removed aliases."""
    inner.add(acct("ltlan", aliases=("lan@cantho.gov.vn", "ltl@cantho.gov.vn")))
    c = cached(inner, clock)
    for k in ("ltlan@cantho.gov.vn", "lan@cantho.gov.vn", "ltl@cantho.gov.vn"):
        assert c.get(k) is not None
    c.update("lan@cantho.gov.vn", must_change=False, aliases=("lan@cantho.gov.vn",))
    assert c.get("ltlan@cantho.gov.vn").must_change is False  # type: ignore[union-attr]
    assert c.get("ltl@cantho.gov.vn") is None
    assert c.get("lan@cantho.gov.vn").must_change is False  # type: ignore[union-attr]


def test_delete_by_alias_drops_the_address_too(inner: Counting, clock: Clock) -> None:
    """Deleting through an alias removes the cached address entry as well."""
    inner.add(acct("ltlan", aliases=("lan@cantho.gov.vn",)))
    c = cached(inner, clock)
    c.get("ltlan@cantho.gov.vn")
    c.delete("lan@cantho.gov.vn")
    assert c.get("ltlan@cantho.gov.vn") is None
    with pytest.raises(AccountNotFound):
        c.update("ltlan@cantho.gov.vn", title="x")


def test_size_is_bounded_least_recently_used_first(inner: Counting, clock: Clock) -> None:
    """The cache never holds more than its size; the least recently used entry goes first."""
    for i in range(5):
        inner.add(acct(f"u{i}"))
    c = cached(inner, clock, size=3)
    for i in range(3):
        c.get(f"u{i}@cantho.gov.vn")
    c.get("u0@cantho.gov.vn")  # u0 is now the most recent
    c.get("u3@cantho.gov.vn")  # evicts u1
    assert len(c) == 3
    reads = inner.reads
    c.get("u0@cantho.gov.vn")
    assert inner.reads == reads
    c.get("u1@cantho.gov.vn")
    assert inner.reads == reads + 1


def test_size_zero_disables_caching(inner: Counting, clock: Clock) -> None:
    """cache_size = 0 sends every read to the store."""
    inner.add(acct("ltlan"))
    c = cached(inner, clock, size=0)
    c.get("ltlan@cantho.gov.vn")
    c.get("ltlan@cantho.gov.vn")
    assert inner.reads == 2 and len(c) == 0


def test_read_racing_a_write_is_not_cached(inner: Counting, clock: Clock) -> None:
    """A read that started before a write through the cache does not store its stale answer."""
    inner.add(acct("ltlan"))
    c = cached(inner, clock)
    original_get = inner.get

    def get_then_write(address: str) -> Account | None:
        result = original_get(address)
        inner.get = original_get  # type: ignore[method-assign]
        c.update("ltlan@cantho.gov.vn", title="Mới")
        return result

    inner.get = get_then_write  # type: ignore[method-assign]
    assert c.get("ltlan@cantho.gov.vn").title == ""  # type: ignore[union-attr]
    assert c.get("ltlan@cantho.gov.vn").title == "Mới"  # type: ignore[union-attr]
