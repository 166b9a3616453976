"""Sizes, durations and times of day as operators write them."""

from __future__ import annotations

from datetime import time, timedelta

import pytest

from congvu.rules.units import (
    GB,
    MB,
    UnitError,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
    parse_time_of_day,
)


@pytest.mark.parametrize(("text", "n"), [("20MB", 20 * MB), ("5GB", 5 * GB), ("5 gb", 5 * GB), ("512", 512),
                                         (1024, 1024), ("1.5GB", int(1.5 * GB)), ("100M", 100 * MB)])
def test_sizes(text: str | int, n: int) -> None:
    """Binary multiples, any case, optional space."""
    assert parse_size(text) == n


@pytest.mark.parametrize("bad", ["", "MB", "20 parsecs", "-5MB", -1, "5GB extra"])
def test_bad_sizes(bad: str | int) -> None:
    """Anything else is a UnitError."""
    with pytest.raises(UnitError):
        parse_size(bad)


@pytest.mark.parametrize(("text", "d"), [("90d", timedelta(days=90)), ("3 months", timedelta(days=90)),
                                         ("2 months", timedelta(days=60)), ("1h 30m", timedelta(minutes=90)),
                                         ("15m", timedelta(minutes=15)), (30, timedelta(seconds=30)),
                                         ("1 week", timedelta(days=7))])
def test_durations(text: str | int, d: timedelta) -> None:
    """Days, months of 30 days, compound durations, plain seconds."""
    assert parse_duration(text) == d


@pytest.mark.parametrize("bad", ["", "soon", "3", "3 fortnights", "d3", "3d junk"])
def test_bad_durations(bad: str) -> None:
    """Unknown units and stray words are errors."""
    with pytest.raises(UnitError):
        parse_duration(bad)


def test_round_trips() -> None:
    """Formatting gives back a spelling that parses to the same value."""
    for n in (5 * GB, 20 * MB, 1000):
        assert parse_size(format_size(n)) == n
    for d in (timedelta(days=90), timedelta(minutes=30), timedelta(seconds=7)):
        assert parse_duration(format_duration(d)) == d


def test_time_of_day() -> None:
    """"08:00" parses; "25:00" does not."""
    assert parse_time_of_day("08:00") == time(8, 0)
    with pytest.raises(UnitError):
        parse_time_of_day("25:00")
