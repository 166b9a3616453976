"""The batch planner without Redis: calls → the script's KEYS and packed plan, its reply → RateDecisions."""

from __future__ import annotations

import struct
from datetime import timedelta

import pytest

from congvu.directory.model import RateDecision
from congvu.directory.windows import BUCKETS
from congvu.policyd.batch import EXACT, Planner, answers
from congvu.policyd.checks.rates import Call

HOUR, DAY = timedelta(hours=1), timedelta(days=1)
T0 = 1_800_000_000.0


def unpack(plan: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(plan) // 8}d", plan))


def test_plan_layout_holds_each_window_once_and_now_once_per_message() -> None:
    """Header, per message now and key count, per key spec and amount (or -spec, amount, own now), then the specs."""
    m1 = [Call("msgs:a", 1, HOUR, 30, "m", T0), Call("rcpts:a", 4, DAY, 200, "r", T0)]
    m2 = [Call("msgs:b", 1, HOUR, 30, "m", T0 + 1), Call("rcpts:b", 2, DAY, 200, "r", T0 + 0.5)]
    keys, plan = Planner("site:").plan([m1, m2])
    assert keys == ["site:c:msgs:a", "site:c:rcpts:a", "site:c:msgs:b", "site:c:rcpts:b"]
    p = unpack(plan)
    table_at = 3 + (2 + 2 + 2) + (2 + 2 + 3)  # header, message 1 (now, n, 2 keys), message 2 (2nd key: own now)
    assert p[:table_at] == [BUCKETS, table_at + 1, 2,
                            T0 * 1000, 2, 1, 1, 2, 4,
                            (T0 + 1) * 1000, 2, 1, 1, -2, 2, (T0 + 0.5) * 1000]
    assert p[table_at:] == [3_600_000, 30, 86_400_000, 200]  # each (window, limit) once, in first-seen order


def test_a_different_limit_on_the_same_window_is_its_own_spec() -> None:
    """(window, limit) pairs, not windows, are the specs: an override's limit is not mixed with the default's."""
    _, plan = Planner("p:").plan([[Call("a", 1, HOUR, 30, "m", T0)], [Call("b", 1, HOUR, 1, "m", T0)]])
    p = unpack(plan)
    assert p[int(p[1]) - 1:] == [3_600_000, 30, 3_600_000, 1]


@pytest.mark.parametrize("amount", [-1, 1.5, True, EXACT + 1])
def test_an_amount_the_store_would_refuse_fails_the_whole_plan(amount: object) -> None:
    """Negative, fractional, boolean or above 2^53 (the doubles would round): ValueError, nothing packed."""
    with pytest.raises(ValueError):
        Planner("p:").plan([[Call("ok", 1, HOUR, 5, "m", T0)], [Call("k", amount, HOUR, 5, "m", T0)]])  # type: ignore[arg-type]


def test_exactly_2_to_the_53_is_carried_exactly() -> None:
    """The largest exact double is the largest amount; it travels unchanged."""
    _, plan = Planner("p:").plan([[Call("k", EXACT, DAY, 2**60, "r", T0)]])
    assert int(unpack(plan)[6]) == EXACT


def test_a_bad_window_is_refused() -> None:
    """A window under a millisecond is a ValueError, as the store itself would say."""
    with pytest.raises(ValueError):
        Planner("p:").plan([[Call("k", 1, timedelta(0), 5, "m", T0)]])


def test_batch_reply_gives_each_message_its_decisions() -> None:
    """Per message (``;``): the totals of the keys answered, then ``/retry`` (ms, -1: never) if refused."""
    got = answers(b"5,40;100/120000;1/-1;3,8/0", [2, 2, 1, 2])
    assert got == [[RateDecision(True, (5,), None), RateDecision(True, (40,), None)],
                   [RateDecision(False, (100,), 120.0)],
                   [RateDecision(False, (1,), float("inf"))],
                   [RateDecision(True, (3,), None), RateDecision(False, (8,), 0.0)]]


@pytest.mark.parametrize(("reply", "sizes"), [
    (b"5,40", [2, 1]),  # fewer answers than messages
    (b"5;40;1", [1, 1]),  # more answers than messages
    (b"5", [2]),  # a counted message must answer every key
    (b"5,6,7/100", [2]),  # a refused message answers at most every key
    (b"", [1]), (b"1,x", [2]), (b"1/-2", [1]), (b"1/", [1]),  # empty, garbage, bad retry
    (7, [1]), ((b"1",), [1]), (None, [1]),  # not one string at all
])
def test_batch_reply_that_does_not_fit_the_batch_is_refused(reply: object, sizes: list[int]) -> None:
    """A reply that does not match the messages sent is an error, never answers given to the wrong message."""
    with pytest.raises(ValueError):
        answers(reply, sizes)
