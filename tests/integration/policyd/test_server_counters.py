"""policyd's native Redis counter client against a real redis-server, driven by its own Twisted reactor.

The batch script must answer, and leave the counters, exactly as redis-py's store does with
one ``hit_if_below`` per window (directory/counters_redis.py): both clients share the keys.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis

from congvu.config import Config, config_from_mapping
from congvu.directory.counters import open_counters
from congvu.directory.model import RateDecision, StateUnavailable
from congvu.policyd.checks.rates import Call
from congvu.policyd.redis_native import NativeCounters
from tests.integration.policyd.conftest import turn
from tests.integration.servers.redis import RedisServer

HOUR, DAY = timedelta(hours=1), timedelta(days=1)
Answer = list[RateDecision] | StateUnavailable


def _config(tmp_path: Path, server: RedisServer, prefix: str, timeout: str = "1s") -> Config:
    return config_from_mapping({"state_dir": str(tmp_path), "state": {
        "backend": "redis", "url": server.url, "prefix": prefix, "timeout": timeout}})


def _count_all(reactor: Any, native: NativeCounters, messages: list[list[Call]]) -> list[Answer]:
    """Hand every message to ``count`` in the same reactor tick; their answers, in message order."""
    answers: dict[int, Answer] = {}
    for i, calls in enumerate(messages):
        native.count(calls, lambda a, i=i: answers.__setitem__(i, a))  # type: ignore[misc]
    turn(reactor, lambda: len(answers) == len(messages))
    return [answers[i] for i in range(len(messages))]


def _message(user: str, recipients: int, now: float, per_hour: int = 2, per_day: int = 7) -> list[Call]:
    return [Call(f"policyd:msgs:{user}", 1, HOUR, per_hour, "messages per hour", now),
            Call(f"policyd:rcpts:{user}", recipients, DAY, per_day, "recipients per day", now)]


def test_a_batch_counts_like_redis_py_one_window_at_a_time(tmp_path: Path, redis_server: RedisServer,
                                                           reactor: Any) -> None:
    """One script call for five messages: same answers and same counters as sequential hit_if_below calls."""
    run = uuid.uuid4().hex[:8]
    native_cfg, ref_cfg = (_config(tmp_path, redis_server, f"{run}-{side}:") for side in ("native", "ref"))
    now = time.time()
    messages = [_message("u1", 3, now), _message("u1", 3, now),
                _message("u1", 3, now),  # third message of the hour: refused on messages, recipients untouched
                _message("u2", 10, now),  # 10 > 7 recipients a day: refused for ever, counted nowhere
                _message("u3", 1, now)]
    client = redis.Redis.from_url(redis_server.url)
    client.script_flush()  # the first call meets NOSCRIPT and must fall back to EVAL
    client.config_resetstat()
    native = NativeCounters(native_cfg, reactor)
    try:
        got = _count_all(reactor, native, messages)
    finally:
        native.close()
    stats = client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 1 and stats["cmdstat_eval"]["calls"] == 1  # one batch, one retry

    ref = open_counters(ref_cfg)
    want: list[Answer] = []
    for calls in messages:  # all or nothing: a message refused by one window is counted in none
        decisions = []
        for c in calls:
            total = ref.peek(c.key, [c.window], c.now)[0]
            if total + c.amount > c.limit:
                decisions.append(ref.hit_if_below(c.key, c.amount, [(c.window, c.limit)], c.now))
                break
            decisions.append(RateDecision(True, (total + c.amount,), None))
        else:
            decisions = [ref.hit_if_below(c.key, c.amount, [(c.window, c.limit)], c.now) for c in calls]
        want.append(decisions)
    assert got == want
    assert [len(a) for a in got if isinstance(a, list)] == [2, 2, 1, 2, 2]
    native_view = open_counters(native_cfg)
    for user in ("u1", "u2", "u3"):
        for kind, window in (("msgs", HOUR), ("rcpts", DAY)):
            key = f"policyd:{kind}:{user}"
            assert native_view.peek(key, [window], now) == ref.peek(key, [window], now), key
    # Issue 4 audit, defect 2: refused on recipients, u2's message is not counted on messages/hour either
    # (this assertion was (1,) when windows were committed one after the other).
    assert native_view.peek("policyd:msgs:u2", [HOUR], now) == (0,)
    native_view.close()
    ref.close()
    client.close()


def test_a_frozen_redis_times_out_then_counting_resumes(tmp_path: Path, reactor: Any) -> None:
    """No answer within [state] timeout: StateUnavailable; once Redis answers again, so does the client."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    native = NativeCounters(_config(tmp_path, server, "frozen:", timeout="1s"), reactor)
    try:
        now = time.time()
        [first] = _count_all(reactor, native, [_message("u", 1, now)])
        assert isinstance(first, list) and first[0].allowed
        server.pause()
        started = time.monotonic()
        [frozen] = _count_all(reactor, native, [_message("u", 1, now)])
        assert isinstance(frozen, StateUnavailable) and "no answer within 1s" in str(frozen)
        assert 0.9 < time.monotonic() - started < 3
        server.resume()
        deadline = time.monotonic() + 10
        while True:  # fails fast for a second after the timeout, then reconnects
            [again] = _count_all(reactor, native, [_message("u", 1, time.time(), per_hour=100)])
            if isinstance(again, list):
                break
            assert time.monotonic() < deadline, again
            reactor.iterate(0.1)
        # The timed-out call may still have been counted once Redis woke up, as with redis-py.
        assert again[0].allowed and again[0].totals[0] in (2, 3)
    finally:
        native.close()
        server.resume()
        server.stop()


def test_retries_of_a_message_refused_on_recipients_spend_no_hourly_budget(tmp_path: Path, redis_server: RedisServer,
                                                                            reactor: Any) -> None:
    """All windows or none, on real Redis: native script and redis-py (the rate check's thread path) alike."""
    from congvu.directory.cache import CachedAccountStore
    from congvu.policyd.checks.base import Context, CountedInstances
    from congvu.policyd.checks.rates import RatesCheck
    from congvu.policyd.protocol import PolicyRequest
    run = uuid.uuid4().hex[:8]
    now = time.time()
    # The native client: five retries of a 5-recipient message after 4 of 7 recipients were used.
    native_cfg = _config(tmp_path, redis_server, f"{run}-native:")
    native = NativeCounters(native_cfg, reactor)
    try:
        [first] = _count_all(reactor, native, [_message("u", 4, now, per_hour=3)])
        assert isinstance(first, list) and all(d.allowed for d in first)
        for _ in range(5):
            [retry] = _count_all(reactor, native, [_message("u", 5, now, per_hour=3)])
            assert isinstance(retry, list) and not retry[-1].allowed and len(retry) == 2
        [small] = _count_all(reactor, native, [_message("u", 1, now, per_hour=3)])
        assert isinstance(small, list) and all(d.allowed for d in small)
    finally:
        native.close()
    view = open_counters(native_cfg)
    assert view.peek("policyd:msgs:u", [HOUR], now) == (2,) and view.peek("policyd:rcpts:u", [DAY], now) == (5,)
    view.close()
    # The blocking path: RatesCheck.run on redis-py's store, same five retries.
    from datetime import UTC, datetime

    from congvu.directory.model import Account
    from congvu.directory.sqlite_store import SqliteAccountStore
    cfg = config_from_mapping({"state_dir": str(tmp_path), "state": {
        "backend": "redis", "url": redis_server.url, "prefix": f"{run}-blocking:"},
        "policyd": {"messages_per_hour_personal": 3, "recipients_per_day_personal": 7}})
    store = SqliteAccountStore(tmp_path / "directory.sqlite3")
    store.add(Account(local_part="u", domain="cantho.gov.vn", full_name="Nguyễn Văn Thử", mailbox_type="personal",
                      must_change=False, password_changed_at=datetime.now(UTC)))
    counters = open_counters(cfg)
    ctx = Context(cfg=cfg, accounts=CachedAccountStore(store, size=10, ttl=1),
                  counters=counters, clock=lambda: now, counted=CountedInstances())
    check = RatesCheck()

    def send(n: int, recipients: int) -> bool:
        req = PolicyRequest(request="smtpd_access_policy", protocol_state="DATA", sasl_username="u@cantho.gov.vn",
                            sender="u@cantho.gov.vn", client_address="192.0.2.50", instance=f"b{n}",
                            recipient_count=recipients)
        d = check.run(req, ctx).decision
        return d is None or not d.blocks

    try:
        assert send(0, 4)
        assert not any(send(n, 5) for n in range(1, 6))
        assert send(6, 1)
        assert counters.peek("policyd:msgs:u@cantho.gov.vn", [HOUR], now) == (2,)
        assert counters.peek("policyd:rcpts:u@cantho.gov.vn", [DAY], now) == (5,)
    finally:
        counters.close()
        store.close()


def test_an_amount_too_large_for_the_packed_plan_fails_its_batch_cleanly(tmp_path: Path, redis_server: RedisServer,
                                                                        reactor: Any) -> None:
    """Above 2^53 the plan's doubles would round: the batch gets StateUnavailable, nothing is counted."""
    cfg = _config(tmp_path, redis_server, f"{uuid.uuid4().hex[:8]}-huge:")
    now = time.time()
    native = NativeCounters(cfg, reactor)
    try:
        got = _count_all(reactor, native, [_message("big", 2**53 + 1, now, per_day=2**60), _message("ok", 1, now)])
        assert all(isinstance(a, StateUnavailable) and "too large" in str(a) for a in got)
        assert _count_all(reactor, native, [_message("ok", 1, now)])[0] == [  # the next batch counts normally
            RateDecision(True, (1,), None), RateDecision(True, (1,), None)]
    finally:
        native.close()
    view = open_counters(cfg)
    assert view.peek("policyd:msgs:big", [HOUR], now) == (0,) and view.peek("policyd:rcpts:big", [DAY], now) == (0,)
    view.close()
