"""Several processes hammering one counter: no lost count, no over-admission, on SQLite and Redis."""

from __future__ import annotations

import multiprocessing
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from congvu.config import config_from_mapping
from congvu.directory.counters import open_counters
from tests.integration.servers.redis import RedisServer

T0 = 1_800_000_000.0
HOUR = timedelta(hours=1)
PROCS = 8


def _hit_many(state: dict[str, Any], n: int, barrier: Any) -> None:
    """Child process: its own store, n hits on the shared key."""
    store = open_counters(config_from_mapping({"state": state}))
    barrier.wait()
    for i in range(n):
        store.hit("shared", 1, [HOUR, timedelta(minutes=1)], T0 + i / 1000)
    store.close()


def _try_many(state: dict[str, Any], n: int, barrier: Any, results: Any) -> None:
    """Child process: n check-and-add attempts against one limit; reports how many were allowed."""
    store = open_counters(config_from_mapping({"state": state}))
    barrier.wait()
    ok = sum(store.hit_if_below("limited", 1, [(HOUR, 500)], T0 + i / 1000).allowed for i in range(n))
    results.put(ok)
    store.close()


@pytest.fixture(params=["sqlite", "redis"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """A [state] section for the backend under test; a generous timeout so contention is not an outage."""
    if request.param == "sqlite":
        return {"backend": "sqlite", "path": str(tmp_path / "state.sqlite3"), "timeout": "30s"}
    server: RedisServer = request.getfixturevalue("redis_server")
    return {"backend": "redis", "url": server.url, "prefix": f"t-{uuid.uuid4().hex}:", "timeout": "30s"}


def _run(target: Any, *args: Any) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=target, args=args) for _ in range(PROCS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0


def test_eight_processes_lose_no_count(state: dict[str, Any]) -> None:
    """8 processes × 1,000 hits on one window: the total is exactly 8,000 in both windows."""
    open_counters(config_from_mapping({"state": state})).close()  # create the schema once
    barrier = multiprocessing.get_context("fork").Barrier(PROCS)
    _run(_hit_many, state, 1000, barrier)
    store = open_counters(config_from_mapping({"state": state}))
    try:
        assert store.peek("shared", [HOUR, timedelta(minutes=1)], T0 + 1) == (8000, 8000)
    finally:
        store.close()


def test_check_and_add_never_over_admits(state: dict[str, Any]) -> None:
    """8 processes racing for 500 slots: exactly 500 attempts are allowed in total."""
    open_counters(config_from_mapping({"state": state})).close()
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(PROCS), ctx.Queue()
    _run(_try_many, state, 100, barrier, results)
    assert sum(results.get(timeout=5) for _ in range(PROCS)) == 500
    store = open_counters(config_from_mapping({"state": state}))
    try:
        assert store.peek("limited", [HOUR], T0 + 1) == (500,)
    finally:
        store.close()
