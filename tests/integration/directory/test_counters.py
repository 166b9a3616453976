"""Backend-neutral suite for the counter store: every test runs on SQLite and on a real redis-server."""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from congvu.config import config_from_mapping
from congvu.directory.counters import LoginStampFlusher, open_counters
from congvu.directory.model import Account, CounterStore, LockInfo
from congvu.directory.windows import bucket_ms
from tests.integration.servers.redis import RedisServer

T0 = 1_800_000_000.0  # an injected clock; 2027-01-15
MIN, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)


def make_store(backend: str, tmp_path: Path, redis_server: RedisServer | None) -> CounterStore:
    """A store built by the real factory from a [state] section."""
    if backend == "sqlite":
        state = {"backend": "sqlite", "path": str(tmp_path / "state.sqlite3")}
    else:
        assert redis_server is not None
        state = {"backend": "redis", "url": redis_server.url, "prefix": f"t-{uuid.uuid4().hex}:"}
    return open_counters(config_from_mapping({"state": state, "state_dir": str(tmp_path)}))


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CounterStore]:
    redis_server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    s = make_store(request.param, tmp_path, redis_server)
    yield s
    s.close()


# ------------------------------------------------------------------ sliding windows


def test_hit_returns_total_per_window(store: CounterStore) -> None:
    """Each hit returns the running total in every window asked for."""
    assert store.hit("msg:a@x", 1, [MIN, HOUR], T0) == (1, 1)
    assert store.hit("msg:a@x", 3, [MIN, HOUR], T0 + 1) == (4, 4)
    assert store.hit("msg:a@x", 2, [MIN, HOUR], T0 + 120) == (2, 6)
    assert store.peek("msg:a@x", [MIN, HOUR, DAY], T0 + 120) == (2, 6, 0)


def test_keys_and_units_are_independent(store: CounterStore) -> None:
    """Different keys (and so units: messages, recipients, bytes) never mix."""
    store.hit("msg:a@x", 1, [HOUR], T0)
    store.hit("rcpt:a@x", 40, [HOUR], T0)
    store.hit("bytes:a@x", 5_000_000, [HOUR], T0)
    assert store.peek("msg:a@x", [HOUR], T0) == (1,)
    assert store.peek("rcpt:a@x", [HOUR], T0) == (40,)
    assert store.peek("bytes:a@x", [HOUR], T0) == (5_000_000,)
    assert store.peek("msg:b@x", [HOUR], T0) == (0,)


def test_peek_adds_nothing(store: CounterStore) -> None:
    """peek reports totals and leaves them unchanged."""
    store.hit("k", 5, [MIN], T0)
    assert store.peek("k", [MIN], T0 + 1) == (5,)
    assert store.peek("k", [MIN], T0 + 2) == (5,)
    assert store.hit("k", 0, [MIN], T0 + 3) == (5,)


def test_window_slides_within_one_bucket(store: CounterStore) -> None:
    """An event counts for the whole window and leaves it at most one bucket later."""
    w = timedelta(minutes=1)
    b = bucket_ms(60_000) / 1000
    store.hit("slide", 1, [w], T0)
    store.hit("slide", 10, [w], T0 + 30)
    assert store.peek("slide", [w], T0 + 59.999) == (11,)
    assert store.peek("slide", [w], T0 + 60 + b) == (10,)
    assert store.peek("slide", [w], T0 + 90 + b) == (0,)
    # nothing was lost while sliding: new hits start again from what is left in the window
    assert store.hit("slide", 2, [w], T0 + 60 + b) == (12,)


def test_windows_of_one_key_slide_separately(store: CounterStore) -> None:
    """A short window empties while the long window of the same key still counts."""
    for i in range(10):
        store.hit("multi", 1, [MIN, HOUR, DAY], T0 + i * 600)
    # at +5460 the minute still holds the hit at +5400, the hour lost the one at +1800
    # (3600 s plus its one-minute bucket ago)
    assert store.peek("multi", [MIN, HOUR, DAY], T0 + 5430) == (1, 7, 10)
    assert store.peek("multi", [MIN, HOUR, DAY], T0 + 5460) == (1, 6, 10)
    assert store.peek("multi", [MIN, HOUR, DAY], T0 + DAY.total_seconds() - 1) == (0, 0, 10)
    assert store.peek("multi", [MIN, HOUR, DAY], T0 + 2 * DAY.total_seconds()) == (0, 0, 0)


def test_bad_arguments_are_refused(store: CounterStore) -> None:
    """Negative amounts, no windows or duplicate windows are programming errors."""
    with pytest.raises(ValueError):
        store.hit("k", -1, [MIN], T0)
    with pytest.raises(ValueError):
        store.hit("k", 1, [], T0)
    with pytest.raises(ValueError):
        store.hit("k", 1, [MIN, MIN], T0)
    with pytest.raises(ValueError):
        store.hit_if_below("k", 1, [(MIN, -5)], T0)


# ------------------------------------------------------------------ check-and-add


def test_hit_if_below_counts_only_what_fits(store: CounterStore) -> None:
    """Within the limit the amount is added; beyond it nothing is, and the totals say why."""
    limits = [(MIN, 10), (HOUR, 100)]
    assert store.hit_if_below("rl", 6, limits, T0) == (True, (6, 6), None)
    assert store.hit_if_below("rl", 4, limits, T0 + 1) == (True, (10, 10), None)
    allowed, totals, retry = store.hit_if_below("rl", 1, limits, T0 + 2)
    assert not allowed
    assert totals == (10, 10)
    assert retry is not None and 0 < retry <= 61
    assert store.peek("rl", [MIN, HOUR], T0 + 2) == (10, 10)


def test_retry_after_is_when_it_fits(store: CounterStore) -> None:
    """Asking again after retry_after succeeds; a millisecond earlier still fails."""
    limits = [(MIN, 5), (HOUR, 8)]
    store.hit_if_below("ra", 3, limits, T0)
    store.hit_if_below("ra", 2, limits, T0 + 20)
    store.hit_if_below("ra", 3, limits, T0 + 80)
    d = store.hit_if_below("ra", 2, limits, T0 + 90)  # hour window is full: 8 of 8
    assert not d.allowed and d.retry_after is not None
    assert not store.hit_if_below("ra", 2, limits, T0 + 90 + d.retry_after - 0.002).allowed
    assert store.hit_if_below("ra", 2, limits, T0 + 90 + d.retry_after).allowed


def test_amount_above_limit_never_fits(store: CounterStore) -> None:
    """A single amount larger than a limit is refused with an infinite retry_after."""
    d = store.hit_if_below("big", 501, [(DAY, 500)], T0)
    assert d == (False, (0,), math.inf)


def test_tightest_window_decides(store: CounterStore) -> None:
    """The day limit refuses even though the minute window is empty."""
    limits = [(MIN, 100), (DAY, 3)]
    for i in range(3):
        assert store.hit_if_below("day", 1, limits, T0 + i * 3600).allowed
    d = store.hit_if_below("day", 1, limits, T0 + 4 * 3600)
    assert d.totals == (0, 3) and not d.allowed
    assert d.retry_after is not None and 20 * 3600 <= d.retry_after <= 20 * 3600 + bucket_ms(86_400_000) / 1000


# ------------------------------------------------------------------ failed logins, lockout


def test_same_wrong_password_counts_once(store: CounterStore) -> None:
    """Repeats of one fingerprint count once; distinct ones each count."""
    w = timedelta(minutes=15)
    assert store.record_failure("auth:a@x", "fp1", w, T0) == 1
    assert store.record_failure("auth:a@x", "fp1", w, T0 + 10) == 1
    assert store.record_failure("auth:a@x", "fp1", w, T0 + 20) == 1
    assert store.record_failure("auth:a@x", "fp2", w, T0 + 30) == 2
    assert store.failures("auth:a@x", w, T0 + 31) == 2
    assert store.failures("auth:b@x", w, T0 + 31) == 0


def test_failures_leave_the_window(store: CounterStore) -> None:
    """A failure older than the window no longer counts; a repeat refreshes its time."""
    w = timedelta(minutes=15)
    store.record_failure("auth:c@x", "fp1", w, T0)
    store.record_failure("auth:c@x", "fp2", w, T0 + 600)
    store.record_failure("auth:c@x", "fp1", w, T0 + 800)  # the same wrong password again
    assert store.failures("auth:c@x", w, T0 + 900) == 2
    assert store.failures("auth:c@x", w, T0 + 600 + 900) == 1  # fp2 expired, fp1 seen at +800
    assert store.failures("auth:c@x", w, T0 + 800 + 900) == 0
    assert store.record_failure("auth:c@x", "fp3", w, T0 + 800 + 900) == 1


def test_clear_failures(store: CounterStore) -> None:
    """clear_failures forgets every failure of that key only."""
    w = timedelta(minutes=15)
    store.record_failure("auth:d@x", "fp1", w, T0)
    store.record_failure("auth:e@x", "fp1", w, T0)
    store.clear_failures("auth:d@x")
    assert store.failures("auth:d@x", w, T0) == 0
    assert store.failures("auth:e@x", w, T0) == 1


def test_lock_expires_by_the_injected_clock(store: CounterStore) -> None:
    """A lock holds until its end time, then is gone; unlock lifts it early."""
    assert store.lock_info("auth:f@x", T0) is None
    store.lock("auth:f@x", T0 + 1800, T0)
    assert store.lock_info("auth:f@x", T0 + 1) == LockInfo(T0, T0 + 1800, "")
    assert store.lock_info("auth:f@x", T0 + 1799.9) is not None
    assert store.lock_info("auth:f@x", T0 + 1800) is None
    store.lock("auth:g@x", T0 + 60, T0)
    store.unlock("auth:g@x")
    assert store.lock_info("auth:g@x", T0) is None
    store.lock("auth:h@x", T0 - 5, T0)  # an end in the past locks nothing
    assert store.lock_info("auth:h@x", T0) is None


def test_a_lock_remembers_since_when_and_why(store: CounterStore) -> None:
    """since, until and a one-line reason come back as written; a newline in the reason cannot split it."""
    store.lock("auth:i@x", T0 + 900, T0 + 10, "10 distinct wrong passwords within 15m, the last from 192.0.2.7\n(imap)")
    info = store.lock_info("auth:i@x", T0 + 11)
    assert info is not None and (info.since, info.until) == (T0 + 10, T0 + 900)
    assert info.reason == "10 distinct wrong passwords within 15m, the last from 192.0.2.7 (imap)"


# ------------------------------------------------------------------ de-dup markers


def test_seen_marks_once_per_ttl(store: CounterStore) -> None:
    """The first sighting is new, repeats within the ttl are seen, then it is new again."""
    ttl = timedelta(hours=1)
    assert store.seen("inst:4A2B3C", ttl, T0) is False
    assert store.seen("inst:4A2B3C", ttl, T0 + 10) is True
    assert store.seen("inst:other", ttl, T0 + 10) is False
    assert store.seen("inst:4A2B3C", ttl, T0 + 3600) is False
    assert store.seen("inst:4A2B3C", ttl, T0 + 3601) is True


# ------------------------------------------------------------------ last-login stamps


def test_stamps_keep_the_latest_and_are_taken_once(store: CounterStore) -> None:
    """The newest stamp per address wins; taking removes them."""
    store.stamp_login("A@x.gov.vn", T0 + 5, "imap", "10.0.0.1")
    store.stamp_login("a@x.gov.vn", T0 + 2, "pop3", "10.0.0.2")  # older: ignored
    store.stamp_login("b@x.gov.vn", T0 + 3, "smtp", "2001:db8::1")
    taken = store.take_login_stamps(T0 + 10, timedelta(minutes=10))
    assert [(s.address, s.when, s.service, s.ip) for s in taken] == [
        ("a@x.gov.vn", T0 + 5, "imap", "10.0.0.1"), ("b@x.gov.vn", T0 + 3, "smtp", "2001:db8::1")]
    assert store.take_login_stamps(T0 + 11, timedelta(minutes=10)) == []


def test_stamps_taken_at_most_once_per_interval(store: CounterStore) -> None:
    """An address taken recently waits for the interval; others are taken at once."""
    gap = timedelta(minutes=10)
    store.stamp_login("a@x.gov.vn", T0, "imap", "10.0.0.1")
    assert len(store.take_login_stamps(T0, gap)) == 1
    store.stamp_login("a@x.gov.vn", T0 + 60, "imap", "10.0.0.1")
    store.stamp_login("c@x.gov.vn", T0 + 60, "imap", "10.0.0.3")
    assert [s.address for s in store.take_login_stamps(T0 + 120, gap)] == ["c@x.gov.vn"]
    assert store.take_login_stamps(T0 + 599, gap) == []
    assert [(s.address, s.when) for s in store.take_login_stamps(T0 + 600, gap)] == [("a@x.gov.vn", T0 + 60)]


def test_flusher_writes_last_login_to_the_directory(store: CounterStore, tmp_path: Path) -> None:
    """Stamps reach the real SQLite account store as last_login_at; unknown addresses are dropped."""
    from congvu.directory.sqlite_store import SqliteAccountStore

    accounts = SqliteAccountStore(tmp_path / "directory.sqlite3")
    try:
        accounts.add(Account("nvminh", "cantho.gov.vn", "Nguyễn Văn Minh", "personal", agency="sonv"))
        store.stamp_login("nvminh@cantho.gov.vn", T0 + 1.5, "imap", "10.1.1.1")
        store.stamp_login("ghost@cantho.gov.vn", T0 + 2, "imap", "10.1.1.2")
        flusher = LoginStampFlusher(store, accounts, timedelta(minutes=10))
        result = flusher.flush(T0 + 5)
        assert (result.written, result.unknown, result.deferred) == (1, 1, 0)
        got = accounts.get("nvminh@cantho.gov.vn")
        assert got is not None and got.last_login_at == datetime.fromtimestamp(T0 + 1.5, UTC)
    finally:
        accounts.close()


# ------------------------------------------------------------------ the two backends agree


def test_sqlite_and_redis_give_the_same_answers(tmp_path: Path, redis_server: RedisServer) -> None:
    """A random sequence of hits, peeks and checks gets identical answers from both backends."""
    rng = random.Random(20260902)
    a = make_store("sqlite", tmp_path, None)
    b = make_store("redis", tmp_path, redis_server)
    windows = [timedelta(seconds=7), MIN, timedelta(minutes=13), HOUR]
    now = T0
    try:
        for _ in range(300):
            now += rng.choice([0, 0.001, 0.25, 1, 3, 17, 45, 400])
            key = rng.choice(["k1", "k2"])
            ws = rng.sample(windows, rng.randint(1, len(windows)))
            op = rng.choice(["hit", "peek", "check"])
            if op == "hit":
                n = rng.randint(0, 9)
                assert a.hit(key, n, ws, now) == b.hit(key, n, ws, now)
            elif op == "peek":
                assert a.peek(key, ws, now) == b.peek(key, ws, now)
            else:
                n = rng.randint(0, 12)
                lim = [(w, rng.randint(5, 40)) for w in ws]
                assert a.hit_if_below(key, n, lim, now) == b.hit_if_below(key, n, lim, now)
    finally:
        a.close()
        b.close()
