"""Parse the human units operators write in congvu.toml: sizes, durations, times of day.

Sizes use binary multiples, as Dovecot's quota rules do (``5GB`` = 5 × 1024³ bytes),
so a quota written once means the same number in congvu, Postfix and Dovecot.
A month is 30 days: the regulations count "3 tháng" from the last change, and a fixed
length keeps expiry independent of which calendar month a password was set in.
"""

from __future__ import annotations

import re
from datetime import time, timedelta, timezone

from congvu.rules.errors import InvalidInput

#: Vietnam's civil time (Giờ Đông Dương, UTC+7, no daylight saving): how users read a time.
VIETNAM_TIME = timezone(timedelta(hours=7), "ICT")

KB = 1024
MB = 1024 * KB
GB = 1024 * MB
TB = 1024 * GB

_SIZE_UNITS = {"": 1, "B": 1, "K": KB, "KB": KB, "KIB": KB, "M": MB, "MB": MB, "MIB": MB,
               "G": GB, "GB": GB, "GIB": GB, "T": TB, "TB": TB, "TIB": TB}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")

_DURATION_UNITS: dict[str, timedelta] = {
    "s": timedelta(seconds=1), "sec": timedelta(seconds=1), "second": timedelta(seconds=1),
    "seconds": timedelta(seconds=1),
    "m": timedelta(minutes=1), "min": timedelta(minutes=1), "minute": timedelta(minutes=1),
    "minutes": timedelta(minutes=1),
    "h": timedelta(hours=1), "hour": timedelta(hours=1), "hours": timedelta(hours=1),
    "d": timedelta(days=1), "day": timedelta(days=1), "days": timedelta(days=1),
    "w": timedelta(weeks=1), "week": timedelta(weeks=1), "weeks": timedelta(weeks=1),
    "month": timedelta(days=30), "months": timedelta(days=30), "mo": timedelta(days=30),
    "y": timedelta(days=365), "year": timedelta(days=365), "years": timedelta(days=365),
}
_DURATION = re.compile(r"(\d+)\s*([A-Za-z]+)")
_TIME = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


class UnitError(InvalidInput):
    """A value that does not parse; the message says what was expected."""


def parse_size(value: str | int) -> int:
    """``"20MB"`` → 20971520.  Plain integers are bytes."""
    if isinstance(value, bool):
        raise UnitError("expected a size such as \"20MB\", got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise UnitError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise UnitError(f"expected a size such as \"20MB\", got {type(value).__name__}")
    m = _SIZE.match(value)
    if m is None or m.group(2).upper() not in _SIZE_UNITS:
        raise UnitError(f"expected a size such as \"20MB\" or \"5GB\", got {value!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])


def format_size(n: int) -> str:
    """The shortest exact spelling: 5368709120 → ``"5GB"``."""
    for unit, mult in (("TB", TB), ("GB", GB), ("MB", MB), ("KB", KB)):
        if n and n % mult == 0:
            return f"{n // mult}{unit}"
    return f"{n}B"


def parse_duration(value: str | int) -> timedelta:
    """``"90d"``, ``"3 months"``, ``"1h 30m"`` → timedelta.  Plain integers are seconds."""
    if isinstance(value, bool):
        raise UnitError("expected a duration such as \"90d\", got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise UnitError("a duration cannot be negative")
        return timedelta(seconds=value)
    if not isinstance(value, str):
        raise UnitError(f"expected a duration such as \"90d\", got {type(value).__name__}")
    text = value.strip().lower()
    pos, total = 0, timedelta()
    for m in _DURATION.finditer(text):
        if text[pos:m.start()].strip(" ,"):
            break
        unit = _DURATION_UNITS.get(m.group(2))
        if unit is None:
            raise UnitError(f"unknown unit {m.group(2)!r} in duration {value!r}")
        total += int(m.group(1)) * unit
        pos = m.end()
    else:
        if pos and not text[pos:].strip():
            return total
    raise UnitError(f"expected a duration such as \"90d\" or \"3 months\", got {value!r}")


def format_duration(d: timedelta) -> str:
    """The shortest exact spelling: 90 days → ``"3 months"``, 1800 s → ``"30m"``."""
    secs = int(d.total_seconds())
    if secs and secs % (30 * 86400) == 0:
        n = secs // (30 * 86400)
        return f"{n} month" if n == 1 else f"{n} months"
    for unit, mult in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs and secs % mult == 0:
            return f"{secs // mult}{unit}"
    return f"{secs}s"


def parse_time_of_day(value: str) -> time:
    """``"08:00"`` → time(8, 0)."""
    if not isinstance(value, str) or (m := _TIME.match(value.strip())) is None:
        raise UnitError(f"expected a time of day such as \"08:00\", got {value!r}")
    return time(int(m.group(1)), int(m.group(2)))
