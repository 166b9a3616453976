"""Window arithmetic, the factory and the last-login flusher, without a server."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from congvu.config import config_from_mapping
from congvu.directory.counters import LoginStampFlusher, open_counters
from congvu.directory.counters_redis import RedisCounters
from congvu.directory.counters_sqlite import SqliteCounters
from congvu.directory.model import Account, AccountNotFound, DirectoryUnavailable
from congvu.directory.windows import (
    BUCKETS,
    WindowSpec,
    bucket_expiry,
    bucket_ms,
    decide,
    fingerprint_digest,
    limit_specs,
    specs,
)
from congvu.rules.errors import ConfigError

T0 = 1_800_000_000_000  # ms


def apply(store: dict[tuple[int, int], int], out: Any) -> None:
    """What a backend does with an Outcome: drop stale buckets, add to the current ones."""
    for k in out.stale:
        store.pop(k, None)
    for w, idx, n, _exp in out.adds:
        store[(w, idx)] = store.get((w, idx), 0) + n


def rows(store: dict[tuple[int, int], int]) -> list[tuple[int, int, int]]:
    return [(w, i, n) for (w, i), n in store.items()]


def test_bucket_widths() -> None:
    """An hour has one-minute buckets, a day 24-minute buckets, a 10 s window 167 ms ones."""
    assert BUCKETS == 60
    assert bucket_ms(3_600_000) == 60_000
    assert bucket_ms(86_400_000) == 24 * 60_000
    assert bucket_ms(10_000) == 167
    assert bucket_expiry(60_000, 5) == 6 * 1000 + 60_000


events = st.lists(st.tuples(st.integers(0, 7_200_000), st.integers(0, 50)), min_size=1, max_size=40)
windows = st.sets(st.sampled_from([1_000, 10_000, 60_000, 900_000, 3_600_000]), min_size=1, max_size=3)


@given(events, windows)
@settings(max_examples=200, deadline=None)
def test_totals_bracket_the_exact_sliding_window(evs: list[tuple[int, int]], ws: set[int]) -> None:
    """Each total lies between the exact sliding sum over W and over W plus one bucket."""
    spec = tuple(WindowSpec(w) for w in sorted(ws))
    store: dict[tuple[int, int], int] = {}
    t = T0
    history: list[tuple[int, int]] = []
    for dt, n in sorted(evs):
        t = T0 + dt
        apply(store, decide(rows(store), spec, n, t, "hit"))
        history.append((t, n))
        totals = decide(rows(store), spec, 0, t, "peek").totals
        for s, total in zip(spec, totals, strict=True):
            exact = sum(a for when, a in history if t - when < s.w_ms)
            loose = sum(a for when, a in history if t - when < s.w_ms + bucket_ms(s.w_ms))
            assert exact <= total <= loose


@given(events, st.integers(1, 60), st.integers(1, 10))
@settings(max_examples=200, deadline=None)
def test_check_never_exceeds_and_retry_is_exact(evs: list[tuple[int, int]], limit: int, amount: int) -> None:
    """Allowed totals stay within the limit; a refusal's retry_after is the first moment it fits."""
    spec = tuple(WindowSpec(w, limit) for w in (60_000, 3_600_000))
    store: dict[tuple[int, int], int] = {}
    for dt, n in sorted(evs):
        t = T0 + dt
        out = decide(rows(store), spec, n % (limit + 1), t, "check")
        apply(store, out)
        assert all(x <= limit for x in out.totals)
        probe = decide(rows(store), spec, amount, t, "check")
        if probe.allowed:
            assert probe.retry_ms is None
            continue
        if amount > limit:
            assert probe.retry_ms == -1  # never fits
            continue
        assert probe.retry_ms is not None and probe.retry_ms > 0
        assert decide(rows(store), spec, amount, t + probe.retry_ms, "check").allowed
        assert not decide(rows(store), spec, amount, t + probe.retry_ms - 1, "check").allowed


def test_refused_check_adds_nothing() -> None:
    """A refusal has no writes; an amount above the limit reports an infinite retry."""
    spec = limit_specs([(timedelta(minutes=1), 3)])
    out = decide([(60_000, T0 // 1000, 3)], spec, 1, T0, "check")
    assert not out.allowed and out.adds == ()
    assert decide([], spec, 4, T0, "check").decision() == (False, (0,), math.inf)


def test_stale_buckets_are_reported_for_any_window() -> None:
    """Buckets of windows the caller no longer asks for are still cleaned up once expired."""
    out = decide([(900_000, 0, 5), (60_000, T0 // 1000, 1)], specs([timedelta(minutes=1)]), 1, T0, "hit")
    assert out.stale == ((900_000, 0),)
    assert out.totals == (2,)


def test_fingerprint_digest_hides_the_input() -> None:
    """The stored fingerprint is a fixed-size digest, not the caller's string."""
    d = fingerprint_digest("hash-of-MatKhaus7894")
    assert len(d) == 24 and "MatKhaus" not in d
    assert d == fingerprint_digest("hash-of-MatKhaus7894") != fingerprint_digest("other")


# ------------------------------------------------------------------ factory


def test_sqlite_is_the_default_under_state_dir(tmp_path: Path) -> None:
    """With no [state] settings the store is state_dir/state.sqlite3."""
    store = open_counters(config_from_mapping({"state_dir": str(tmp_path / "var")}))
    try:
        assert isinstance(store, SqliteCounters)
        assert (tmp_path / "var" / "state.sqlite3").exists()
    finally:
        store.close()


def test_redis_settings_and_no_secret_in_repr(tmp_path: Path) -> None:
    """URL, prefix and password file are honoured; neither password reaches a repr."""
    pw = tmp_path / "pw"
    pw.write_text("file-secret\n")
    cfg = config_from_mapping({"state": {"backend": "redis", "url": "redis://:url-secret@127.0.0.1:1/3",
                                         "prefix": "site1:", "password_file": str(pw), "timeout": "2s"}})
    store = open_counters(cfg)
    assert isinstance(store, RedisCounters)
    kwargs = store._r.connection_pool.connection_kwargs
    assert kwargs["password"] == "file-secret" and kwargs["db"] == 3
    assert kwargs["socket_timeout"] == 2.0 and kwargs["socket_connect_timeout"] == 2.0
    assert kwargs["retry"].get_retries() == 0
    for text in (repr(store), repr(store._r), repr(store._r.connection_pool)):
        assert "secret" not in text
    assert store.prefix == "site1:"
    store.close()


@pytest.mark.parametrize(("state", "key"), [
    ({"url": "http://127.0.0.1/"}, "state.url"),
    ({"url": "redis://127.0.0.1/0?no_such_option=1"}, "state.url"),
    ({"sentinels": ["no-port"]}, "state.sentinels"),
    ({"password_file": "/nonexistent/pw"}, "state.password_file"),
])
def test_bad_redis_settings_name_the_key(state: dict[str, Any], key: str) -> None:
    """A broken [state] setting stops start-up with a ConfigError naming the key."""
    with pytest.raises(ConfigError) as err:
        open_counters(config_from_mapping({"state": {"backend": "redis", **state}}))
    assert err.value.key == key


# ------------------------------------------------------------------ flusher


class FakeAccounts:
    """Stands in for an AccountStore in this unit test: records updates, can fail."""

    def __init__(self, known: set[str], down: bool = False) -> None:
        self.known, self.down = known, down
        self.updates: list[tuple[str, datetime]] = []

    def update(self, address: str, **changes: Any) -> Account:
        if self.down:
            raise DirectoryUnavailable("ldap down")
        if address not in self.known:
            raise AccountNotFound(address)
        self.updates.append((address, changes["last_login_at"]))
        return Account(address.split("@")[0], address.split("@")[1], "x", "personal")


@pytest.fixture
def counters(tmp_path: Path) -> Iterator[SqliteCounters]:
    store = SqliteCounters(tmp_path / "state.sqlite3")
    yield store
    store.close()


def test_flusher_writes_each_address_once_per_interval(counters: SqliteCounters) -> None:
    """A second flush inside the interval writes nothing for that address; after it, the newest stamp."""
    accounts = FakeAccounts({"a@x.vn"})
    flusher = LoginStampFlusher(counters, accounts, timedelta(minutes=10))  # type: ignore[arg-type]
    counters.stamp_login("a@x.vn", 100.0, "imap", "10.0.0.1")
    assert flusher.flush(101.0).written == 1
    counters.stamp_login("a@x.vn", 200.0, "imap", "10.0.0.1")
    counters.stamp_login("a@x.vn", 300.0, "imap", "10.0.0.1")
    assert flusher.flush(400.0).written == 0
    assert flusher.flush(701.0).written == 1
    assert accounts.updates == [("a@x.vn", datetime.fromtimestamp(100, UTC)),
                                ("a@x.vn", datetime.fromtimestamp(300, UTC))]


def test_flusher_keeps_stamps_when_the_directory_is_down(counters: SqliteCounters) -> None:
    """A directory outage puts the stamps back; they are written after the interval once it is up."""
    accounts = FakeAccounts({"a@x.vn", "b@x.vn"}, down=True)
    flusher = LoginStampFlusher(counters, accounts, timedelta(minutes=10))  # type: ignore[arg-type]
    counters.stamp_login("a@x.vn", 100.0, "imap", "10.0.0.1")
    counters.stamp_login("b@x.vn", 100.0, "imap", "10.0.0.2")
    r = flusher.flush(101.0)
    assert (r.written, r.deferred) == (0, 2)
    accounts.down = False
    assert flusher.flush(102.0).written == 0  # both were taken moments ago
    assert flusher.flush(701.0).written == 2
    assert sorted(a for a, _ in accounts.updates) == ["a@x.vn", "b@x.vn"]
