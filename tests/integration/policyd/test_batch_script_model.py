"""The batch script (MULTI_LUA) and the one-key script (COUNTER_LUA) on a real redis-server, against a model.

The model is :func:`congvu.directory.windows.decide` over a dict of buckets, with the batch's rule
spelled out in Python: a message's windows are checked in order (each seeing the ones before
it as counted); at the first refusal the message is counted NOWHERE and its answers stop
there; otherwise every window is counted, then each key drops the buckets stale at its
``now``.  Hypothesis draws random batches (several messages on the same keys, clocks going
back and forth, per-window clocks, refusals for ever) interleaved with redis-py's single
calls on the same keys, and every answer AND every stored bucket must match the model.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from congvu.config import config_from_mapping
from congvu.directory.counters import open_counters
from congvu.directory.counters_redis import RedisCounters
from congvu.directory.model import RateDecision, StateUnavailable
from congvu.directory.windows import BUCKETS, Mode, WindowSpec, bucket_expiry, bucket_ms, decide, ms
from congvu.policyd.checks.rates import Call
from congvu.policyd.redis_native import NativeCounters
from tests.integration.policyd.conftest import turn
from tests.integration.servers.redis import RedisServer

T0_MS = 1_800_000_000_000
WINDOWS_MS = (7_000, 60_000, 780_000, 3_600_000)
KEYS = ("a", "b", "c")
Buckets = dict[tuple[int, int], int]


@dataclass
class Model:
    """The counters as ``decide`` sees them: key → {(window, index): amount}."""

    buckets: dict[str, Buckets] = field(default_factory=dict)

    def rows(self, key: str) -> list[tuple[int, int, int]]:
        return [(w, i, n) for (w, i), n in self.buckets.get(key, {}).items()]

    def _sweep(self, key: str, now_ms: int) -> None:
        b = self.buckets.get(key, {})
        for w, i in [wi for wi in b if bucket_expiry(*wi) <= now_ms]:
            del b[(w, i)]
        if not b:
            self.buckets.pop(key, None)

    def single(self, key: str, specs: list[WindowSpec], amount: int, now_ms: int, mode: Mode) -> RateDecision:
        """One RedisCounters call: decide, then its writes."""
        out = decide(self.rows(key), specs, amount, now_ms, mode)
        if out.adds:
            b = self.buckets.setdefault(key, {})
            for w, i, n, _ in out.adds:
                b[(w, i)] = b.get((w, i), 0) + n
            self._sweep(key, now_ms)
        return out.decision()

    def message(self, calls: list[tuple[str, int, int, int, int]]) -> list[RateDecision]:
        """One message of a batch, all or nothing: (key, amount, window ms, limit, now ms) per call."""
        before = {k: dict(v) for k, v in self.buckets.items()}
        answers = []
        for key, amount, w, limit, now_ms in calls:
            out = decide(self.rows(key), [WindowSpec(w, limit)], amount, now_ms, "check")
            answers.append(out.decision())
            if not out.allowed:
                self.buckets = before  # counted nowhere
                return answers
            b = self.buckets.setdefault(key, {})
            for aw, i, n, _ in out.adds:
                b[(aw, i)] = b.get((aw, i), 0) + n
        for key, _, _, _, now_ms in calls:
            self._sweep(key, now_ms)
        return answers


# One call of a message: key, amount, window, limit, and its clock's offset from the message's (mostly 0).
calls_st = st.tuples(st.sampled_from(KEYS), st.integers(0, 6), st.sampled_from(WINDOWS_MS), st.integers(0, 15),
                     st.sampled_from([0, 0, 0, 0, 0, 1, -2_000, 90_000]))
# How far the clock moves before a message: mostly forward, sometimes back (several hosts' clocks),
# or ("edge", w): to the very millisecond the current bucket of window w stops counting.
Step = int | tuple[str, int]
steps_st: st.SearchStrategy[Step] = st.one_of(
    st.sampled_from([0, 0, 1, 250, 1_000, 3_000, 17_000, 45_000, 400_000, -30_000]),
    st.sampled_from(WINDOWS_MS).map(lambda w: ("edge", w)))


def advance(now_ms: int, step: Step) -> int:
    if isinstance(step, int):
        return now_ms + step
    b = bucket_ms(step[1])
    return bucket_expiry(step[1], now_ms // b)
message_st = st.tuples(steps_st, st.lists(calls_st, min_size=1, max_size=3))
single_st = st.tuples(steps_st, st.sampled_from(["peek", "hit", "check"]), st.sampled_from(KEYS),
                      st.lists(st.sampled_from(WINDOWS_MS), min_size=1, max_size=4, unique=True),
                      st.integers(0, 9), st.integers(3, 25))
ops_st = st.lists(st.one_of(st.lists(message_st, min_size=1, max_size=6).map(lambda m: ("batch", m)),
                            single_st.map(lambda s: ("single", s))), min_size=1, max_size=8)


def _count_batch(reactor: Any, native: NativeCounters,
                 messages: list[list[Call]]) -> list[list[RateDecision] | StateUnavailable]:
    """Every message handed to ``count`` in the same reactor tick (one script call); answers in order."""
    answers: dict[int, list[RateDecision] | StateUnavailable] = {}
    for i, m in enumerate(messages):
        native.count(m, lambda a, i=i: answers.__setitem__(i, a))  # type: ignore[misc]
    turn(reactor, lambda: len(answers) == len(messages))
    return [answers[i] for i in range(len(messages))]


def _stored(client: redis.Redis, name: str) -> Buckets:
    """A counter hash as the model keeps it (redis-py without decode_responses: bytes)."""
    out: Buckets = {}
    raw: dict[bytes, bytes] = client.hgetall(name)  # type: ignore[assignment]
    for f, v in raw.items():
        w, i = f.split(b":")
        out[(int(w), int(i))] = int(v)
    return out


def test_batches_and_single_calls_answer_and_store_like_decide(tmp_path: Path, redis_server: RedisServer,
                                                               reactor: Any) -> None:
    """Random batches and redis-py calls on shared keys: every answer and every stored bucket is the model's."""
    prefix = f"model-{time.monotonic_ns()}:"
    cfg = config_from_mapping({"state_dir": str(tmp_path), "state": {
        "backend": "redis", "url": redis_server.url, "prefix": prefix, "timeout": "5s"}})
    native = NativeCounters(cfg, reactor)
    single = open_counters(cfg)
    assert isinstance(single, RedisCounters)
    client = redis.Redis.from_url(redis_server.url)
    runs = itertools.count()

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(ops=ops_st)
    # A refused message takes back its increment of a bucket an earlier message of the batch made.
    @example(ops=[("batch", [(0, [("a", 1, 3_600_000, 10, 0)]),
                             (0, [("a", 1, 3_600_000, 10, 0), ("b", 5, 86_400_000, 3, 0)]),
                             (0, [("a", 1, 3_600_000, 10, 0)])])])
    # A bucket swept by a later clock and written again by an earlier one (hosts' clocks) counts afresh.
    @example(ops=[("batch", [(0, [("a", 1, 7_000, 100, 0)]), (30_000, [("a", 1, 7_000, 100, 0)]),
                             (-30_000, [("a", 1, 7_000, 100, 0)]), (0, [("a", 1, 7_000, 100, 0)])])])
    # A window whose clock is not its message's is counted at its own clock.
    @example(ops=[("batch", [(0, [("a", 2, 60_000, 10, 0)])]),
                  ("batch", [(60_000, [("b", 1, 60_000, 10, 0), ("a", 1, 60_000, 1, 90_000)])])])
    # The retry is when the oldest buckets free exactly enough (the ``>=`` edge).
    @example(ops=[("batch", [(0, [("a", 2, 60_000, 10, 0)]), (1_000, [("a", 2, 60_000, 10, 0)]),
                             (1_000, [("a", 3, 60_000, 5, 0)])])])
    # A bucket stops counting at its expiry exactly, and is swept then (the ``<=`` edges).
    @example(ops=[("batch", [(0, [("a", 2, 60_000, 10, 0)])]),
                  ("batch", [(("edge", 60_000), [("a", 1, 60_000, 1, 0)]), (-1, [("a", 1, 60_000, 2, 0)])])])
    def check(ops: list[tuple[str, Any]]) -> None:
        run = f"r{next(runs)}:"
        model = Model()
        now_ms = T0_MS
        for kind, op in ops:
            if kind == "single":
                step, mode, key, windows, amount, limit = op
                now_ms = advance(now_ms, step)
                specs = [WindowSpec(w, limit if mode == "check" else None) for w in windows]
                want = model.single(run + key, specs, 0 if mode == "peek" else amount, now_ms, mode)
                tds = [timedelta(milliseconds=w) for w in windows]
                now = now_ms / 1000
                assert ms(now) == now_ms
                if mode == "peek":
                    assert single.peek(run + key, tds, now) == want.totals
                elif mode == "hit":
                    assert single.hit(run + key, amount, tds, now) == want.totals
                else:
                    assert single.hit_if_below(run + key, amount, [(t, limit) for t in tds], now) == want
                continue
            messages: list[list[Call]] = []
            wants: list[list[RateDecision]] = []
            for step, calls in op:
                now_ms = advance(now_ms, step)
                messages.append([Call(run + key, amount, timedelta(milliseconds=w), limit, "w",
                                      (now_ms + offset) / 1000) for key, amount, w, limit, offset in calls])
                wants.append(model.message([(run + key, amount, w, limit, now_ms + offset)
                                            for key, amount, w, limit, offset in calls]))
            assert _count_batch(reactor, native, messages) == wants
            for key in KEYS:
                name = prefix + "c:" + run + key
                assert _stored(client, name) == model.buckets.get(run + key, {}), key
                if model.buckets.get(run + key):
                    assert 0 < client.pttl(name) <= (86_400_000 + 86_400_000 // BUCKETS) * 2

    try:
        check()
    finally:
        native.close()
        single.close()
        client.close()


def test_a_refused_message_writes_nothing_at_all(tmp_path: Path, redis_server: RedisServer, reactor: Any) -> None:
    """Refused on its last window, a message leaves every key of it byte for byte as it was, TTL included."""
    prefix = f"aon-{time.monotonic_ns()}:"
    cfg = config_from_mapping({"state_dir": str(tmp_path), "state": {
        "backend": "redis", "url": redis_server.url, "prefix": prefix}})
    native = NativeCounters(cfg, reactor)
    client = redis.Redis.from_url(redis_server.url)
    hour, day = timedelta(hours=1), timedelta(days=1)
    now = T0_MS / 1000

    def count(calls: list[Call]) -> list[RateDecision] | StateUnavailable:
        got: list[list[RateDecision] | StateUnavailable] = []
        native.count(calls, got.append)
        turn(reactor, lambda: bool(got))
        return got[0]

    try:
        first = count([Call("m", 1, hour, 5, "m", now), Call("r", 4, day, 7, "r", now)])
        assert first == [RateDecision(True, (1,), None), RateDecision(True, (4,), None)]
        names = [prefix + "c:m", prefix + "c:r"]
        before = [(client.hgetall(n), client.pttl(n)) for n in names]
        # An hour later (a new bucket for both windows): the recipients window refuses 4 more.
        refused = count([Call("m", 1, hour, 5, "m", now + 3600), Call("r", 4, day, 7, "r", now + 3600)])
        assert refused == [RateDecision(True, (2,), None), RateDecision(False, (4,), 84240.0)]
        after = [(client.hgetall(n), client.pttl(n)) for n in names]
        assert [h for h, _ in after] == [h for h, _ in before]
        assert all(a <= b for (_, a), (_, b) in zip(after, before, strict=True))  # no PEXPIRE either
    finally:
        native.close()
        client.close()
