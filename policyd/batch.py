"""A batch of rate-limit calls as the batch script's arguments, and its answer as RateDecisions; no I/O.

The batch script (``policyd/lua/multi.lua``) counts every message of a batch, all its
windows, in one call.  Its plan goes as ONE binary argument, little-endian doubles (one
``struct.unpack`` in Lua, far cheaper than parsing text):

* the buckets per window, where the window specs start (1-based), the number of messages;
* per message its ``now`` (ms) and its number of keys;
* per key its spec (1-based) and amount, or ``-spec, amount, now`` when the key's ``now``
  is not its message's;
* then each spec's window (ms) and limit, each (window, limit) once per batch.

KEYS: every key, in order.  The reply is one string: per message (``;`` between them) the
totals of the keys answered, ``,``-separated (every key if counted; up to the refused one
otherwise, then ``/`` and its retry in ms, -1 for never).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from datetime import timedelta

from congvu.directory.model import RateDecision
from congvu.directory.windows import BUCKETS, WindowSpec, check_amount, limit_specs, ms
from congvu.policyd.checks.rates import Call

#: Messages per script call at most, so one call never holds Redis for long.
MAX_BATCH = 64

#: The largest amount the plan carries exactly (it is packed as doubles).
EXACT = 2**53


class Planner:
    """Packs batches for one key prefix; remembers the validated window specs (the same few come every time)."""

    __slots__ = ("_specs", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix + "c:"
        self._specs: dict[tuple[timedelta, int], WindowSpec] = {}

    def plan(self, messages: Sequence[Sequence[Call]]) -> tuple[list[str], bytes]:
        """The script's KEYS and its plan: each (window, limit) once, ``now`` once per message.

        Raises ValueError for a call the store would refuse too (a negative or fractional
        amount, a bad window) or an amount above :data:`EXACT`: the whole batch fails, nothing counted.
        """
        prefix = self.prefix
        keys: list[str] = []
        plan: list[int] = [BUCKETS, 0, len(messages)]
        index: dict[tuple[timedelta, int], int] = {}
        table: list[int] = []
        for calls in messages:
            now = calls[0].now
            plan += (ms(now), len(calls))
            for key, amount, window, limit, _label, when in calls:
                s = index.get((window, limit))
                if s is None:
                    spec = self._spec(window, limit)
                    s = index[(window, limit)] = len(index) + 1
                    table += (spec.w_ms, limit)
                if type(amount) is not int or amount < 0 or amount > EXACT:
                    amount = int(check_amount(amount))  # ValueError unless a whole number ≥ 0
                    if amount > EXACT:  # the plan travels as doubles: no silent rounding
                        raise ValueError(f"amount {amount} is too large to count")
                keys.append(prefix + key)
                if when == now:
                    plan += (s, amount)
                else:
                    plan += (-s, amount, ms(when))
        plan[1] = len(plan) + 1  # Lua counts from 1
        plan += table
        return keys, struct.pack(f"<{len(plan)}d", *plan)

    def _spec(self, window: timedelta, limit: int) -> WindowSpec:
        """limit_specs' validated window, remembered: the same two windows come with every message."""
        spec = self._specs.get((window, limit))
        if spec is None:
            [spec] = limit_specs([(window, limit)])
            if len(self._specs) < 1024:
                self._specs[(window, limit)] = spec
        return spec


#: The RateDecision of an allowed window, by its total as the script spells it: most totals
#: recur (small numbers, many senders), and a cached answer saves building one per window.
_ALLOWED: dict[bytes, RateDecision] = {}


def _allowed(total: bytes) -> RateDecision:
    d = _ALLOWED.get(total)
    if d is None:
        d = RateDecision(True, (int(total),), None)
        if len(_ALLOWED) < 4096:
            _ALLOWED[total] = d
    return d


def answers(reply: object, sizes: Sequence[int]) -> list[list[RateDecision]]:
    """The script's reply: per message (``sizes``: its number of keys), the RateDecision of each key answered.

    Raises ValueError when the reply does not fit the batch: answers are never handed to the wrong message.
    """
    if not isinstance(reply, bytes):
        raise ValueError(f"expected one string, got {type(reply).__name__}")
    segments = reply.split(b";")
    if len(segments) != len(sizes):
        raise ValueError(f"{len(segments)} answers for {len(sizes)} messages")
    out: list[list[RateDecision]] = []
    for seg, n in zip(segments, sizes, strict=True):
        head, refused, retry = seg.partition(b"/")
        totals = head.split(b",")
        if not refused:
            if len(totals) != n:
                raise ValueError("not every key answered")
            out.append([_allowed(t) for t in totals])
            continue
        if len(totals) > n:
            raise ValueError("more answers than keys")
        last = int(totals.pop())
        wait = int(retry)
        if wait < -1:
            raise ValueError(f"bad retry {wait}")
        answer = [_allowed(t) for t in totals]
        answer.append(RateDecision(False, (last,), math.inf if wait == -1 else wait / 1000))
        out.append(answer)
    return out
