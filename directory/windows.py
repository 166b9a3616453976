"""The sliding-window arithmetic both counter backends share, with no I/O.

Sliding windows are kept as buckets, :data:`BUCKETS` per window (a one-hour window has
one-minute buckets, a day has 24-minute buckets), so memory per key and window is bounded
whatever the traffic.  The price is precision: an event counts for at least the window and
at most the window plus one bucket (1/60 longer), which errs on the strict side for rate
limits (CT25-3.1, ND91-2020) and lockouts (CT25-3.2).  Redis runs the same arithmetic in
Lua (``directory/lua/counter_lib.lua``); SQLite calls :func:`decide` inside one transaction.  The factory
that opens a backend is :mod:`congvu.directory.counters`.

Times are milliseconds internally (integers, exact in Lua's doubles); callers pass seconds
from their own injected clock.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from congvu.directory.model import RateDecision

#: Buckets per window: the precision/memory trade-off described above.
BUCKETS = 60
#: Distinct failure fingerprints kept per key; more than any lockout threshold needs.
MAX_FINGERPRINTS = 1000

Mode = Literal["peek", "hit", "check"]

def ms(seconds: float) -> int:
    """Seconds (the callers' clocks) → whole milliseconds (the stores' unit)."""
    return math.floor(seconds * 1000)


def window_ms(window: timedelta) -> int:
    """A window in milliseconds; refuses windows shorter than 1 ms."""
    w = window // timedelta(milliseconds=1)
    if w < 1:
        raise ValueError(f"window must be at least 1 ms, got {window}")
    return w


def bucket_ms(w_ms: int) -> int:
    """Bucket width of a window: a sixtieth, rounded up (the Lua script uses the same rule)."""
    return -(-w_ms // BUCKETS)


def bucket_expiry(w_ms: int, index: int) -> int:
    """First time (ms) at which bucket ``index`` of window ``w_ms`` no longer counts."""
    return (index + 1) * bucket_ms(w_ms) + w_ms


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """One window of a call: its width and its limit (None for plain hits)."""

    w_ms: int
    limit: int | None = None


def specs(windows: Sequence[timedelta]) -> tuple[WindowSpec, ...]:
    """Validate plain windows (non-empty, no duplicates)."""
    return _check([WindowSpec(window_ms(w)) for w in windows])


def limit_specs(limits: Sequence[tuple[timedelta, int]]) -> tuple[WindowSpec, ...]:
    """Validate (window, limit) pairs."""
    out = []
    for w, lim in limits:
        if isinstance(lim, bool) or not isinstance(lim, int) or lim < 0:
            raise ValueError(f"limit must be a whole number ≥ 0, got {lim!r}")
        out.append(WindowSpec(window_ms(w), lim))
    return _check(out)


def _check(out: list[WindowSpec]) -> tuple[WindowSpec, ...]:
    if not out:
        raise ValueError("at least one window is needed")
    if len({s.w_ms for s in out}) != len(out):
        raise ValueError("the same window appears twice")
    return tuple(out)


def check_amount(amount: int) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise ValueError(f"amount must be a whole number ≥ 0, got {amount!r}")
    return amount


@dataclass(frozen=True, slots=True)
class Outcome:
    """What :func:`decide` wants done: the answer, plus the writes to make atomically."""

    allowed: bool
    totals: tuple[int, ...]
    retry_ms: int | None  # None: allowed; -1: the amount alone exceeds a limit
    #: (window, bucket index, amount to add, expiry ms) for each window, if counting.
    adds: tuple[tuple[int, int, int, int], ...]
    #: (window, bucket index) of buckets that no longer count in any window.
    stale: tuple[tuple[int, int], ...]

    def decision(self) -> RateDecision:
        retry = None if self.retry_ms is None else math.inf if self.retry_ms < 0 else self.retry_ms / 1000
        return RateDecision(self.allowed, self.totals, retry)


def decide(buckets: Iterable[tuple[int, int, int]], windows: Sequence[WindowSpec], amount: int,
           now_ms: int, mode: Mode) -> Outcome:
    """The counter logic with no I/O: stored ``(window, index, amount)`` rows → what to do.

    ``peek`` adds nothing, ``hit`` always adds, ``check`` adds only if every window stays
    within its limit and otherwise says when enough old buckets will have expired.
    """
    pos = {s.w_ms: i for i, s in enumerate(windows)}
    totals = [0] * len(windows)
    live: list[list[tuple[int, int]]] = [[] for _ in windows]
    stale = []
    for w, idx, n in buckets:
        exp = bucket_expiry(w, idx)
        if exp <= now_ms:
            stale.append((w, idx))
            continue
        i = pos.get(w)
        if i is not None:
            totals[i] += n
            live[i].append((exp, n))
    allowed = True
    retry: int | None = None
    if mode == "check":
        for i, spec in enumerate(windows):
            assert spec.limit is not None
            over = totals[i] + amount - spec.limit
            if over <= 0:
                continue
            allowed = False
            if amount > spec.limit:
                retry = -1
                break
            freed, when = 0, now_ms
            for exp, n in sorted(live[i]):
                freed += n
                when = exp
                if freed >= over:
                    break
            retry = max(retry or 0, when - now_ms)
    adds: tuple[tuple[int, int, int, int], ...] = ()
    if mode != "peek" and allowed:
        adds = tuple((s.w_ms, now_ms // bucket_ms(s.w_ms), amount,
                      bucket_expiry(s.w_ms, now_ms // bucket_ms(s.w_ms))) for s in windows)
        totals = [t + amount for t in totals]
    return Outcome(allowed, tuple(totals), retry, adds, tuple(stale))


def fingerprint_digest(fingerprint: str) -> str:
    """Store a short digest of the caller's fingerprint, never the caller's string itself."""
    return hashlib.blake2b(fingerprint.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def clean_field(s: str) -> str:
    """Service names and IPs are stored tab-separated; keep them one clean field."""
    return s.replace("\t", " ").replace("\n", " ")[:200]
