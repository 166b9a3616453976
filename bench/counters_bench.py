"""Counter-store benchmark: updates per second on Redis and SQLite, round trips per rate-limit decision.

    .venv/bin/python -m bench.counters_bench [--n 5000] [--url redis://127.0.0.1:6379/0]

Without --url it starts a throwaway redis-server (loopback, no persistence).  Figures are
printed next to a reference: a bare PING loop over the same redis-py connection, the most
any one-round-trip operation can reach from one Python thread.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis

from congvu.config import config_from_mapping
from congvu.directory.counters import open_counters
from congvu.directory.counters_redis import RedisCounters
from congvu.directory.model import CounterStore

T0 = 1_800_000_000.0
MIN, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)


def rate(n: int, fn: Callable[[int], object]) -> float:
    """Calls per second of ``fn(i)`` over ``n`` calls."""
    started = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - started)


def store_for(state: dict[str, Any]) -> CounterStore:
    return open_counters(config_from_mapping({"state": state}))


def operations(store: CounterStore, n: int) -> list[tuple[str, float]]:
    """The operations the policy server and auth service make, each timed over n calls."""
    limits = [(MIN, 10**9), (HOUR, 10**9), (DAY, 10**9)]
    return [
        ("hit, 1 window", rate(n, lambda i: store.hit("b:1", 1, [HOUR], T0 + i / 100))),
        ("hit, 3 windows", rate(n, lambda i: store.hit("b:3", 1, [MIN, HOUR, DAY], T0 + i / 100))),
        ("hit_if_below, 3 windows", rate(n, lambda i: store.hit_if_below("b:rl", 1, limits, T0 + i / 100))),
        ("hit_if_below, 1000 keys", rate(n, lambda i: store.hit_if_below(f"u{i % 1000}", 1, limits, T0 + i / 100))),
        ("record_failure", rate(n, lambda i: store.record_failure("b:f", f"fp{i % 7}", MIN * 15, T0 + i))),
        ("seen (instance de-dup)", rate(n, lambda i: store.seen(f"inst{i}", HOUR, T0))),
        ("stamp_login", rate(n, lambda i: store.stamp_login(f"u{i % 500}@x", T0 + i, "imap", "10.0.0.1"))),
    ]


def _worker(state: dict[str, Any], n: int, barrier: Any) -> None:
    store = store_for(state)
    barrier.wait()
    for i in range(n):
        store.hit_if_below("shared", 1, [(MIN, 10**9), (HOUR, 10**9)], T0 + i / 1000)
    store.close()


def parallel(state: dict[str, Any], procs: int, n: int) -> float:
    """Aggregate decisions per second of ``procs`` processes on one key."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(procs + 1)
    ps = [ctx.Process(target=_worker, args=(state, n, barrier)) for _ in range(procs)]
    for p in ps:
        p.start()
    barrier.wait()
    started = time.perf_counter()
    for p in ps:
        p.join()
    return procs * n / (time.perf_counter() - started)


def round_trips(url: str, n: int) -> tuple[float, float, dict[str, int]]:
    """Client commands and server EVALSHA calls per decision, and the commands run inside the script."""
    store = store_for({"backend": "redis", "url": url, "prefix": f"bench-{uuid.uuid4().hex}:"})
    assert isinstance(store, RedisCounters)
    direct = redis.Redis.from_url(url)
    sent = 0
    real: Callable[..., Any] = store._r.execute_command

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal sent
        sent += 1
        return real(*args, **kwargs)

    store._r.execute_command = counting  # type: ignore[method-assign]
    limits = [(MIN, 30), (HOUR, 200), (DAY, 1000)]
    store.hit_if_below("warm", 1, limits, T0)
    direct.config_resetstat()
    sent = 0
    for i in range(n):
        store.hit_if_below(f"u{i % 50}", 1, limits, T0 + i)
    stats = direct.info("commandstats")
    inner = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()
             if k not in ("cmdstat_info", "cmdstat_config|resetstat")}
    direct.close()
    store.close()
    return sent / n, inner.get("evalsha", 0) / n, inner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=5000, help="calls per measurement")
    ap.add_argument("--procs", type=int, default=8, help="processes in the parallel measurement")
    ap.add_argument("--url", help="an existing Redis (default: start a throwaway redis-server)")
    args = ap.parse_args()

    server = None
    tmp = Path(tempfile.mkdtemp(prefix="counters-bench-"))
    url = args.url
    if url is None:
        from tests.integration.servers.redis import RedisServer
        server = RedisServer(tmp / "redis")
        server.start()
        url = server.url
    try:
        ping = redis.Redis.from_url(url)
        ref = rate(args.n, lambda i: ping.ping())
        ping.close()
        print(f"reference: redis-py PING loop, one connection   {ref:10,.0f} /s")
        rstate = {"backend": "redis", "url": url, "prefix": f"bench-{uuid.uuid4().hex}:"}
        sstate = {"backend": "sqlite", "path": str(tmp / "state.sqlite3")}
        rstore, sstore = store_for(rstate), store_for(sstate)
        print(f"\n{'operation (one thread)':32} {'redis /s':>10} {'% of PING':>9} {'sqlite /s':>10}")
        for (name, r), (_, s) in zip(operations(rstore, args.n), operations(sstore, args.n), strict=True):
            print(f"{name:32} {r:10,.0f} {100 * r / ref:8.0f}% {s:10,.0f}")
        rstore.close()
        sstore.close()
        per = max(1, args.n // args.procs)
        rpar = parallel({**rstate, "timeout": "30s"}, args.procs, per)
        spar = parallel({**sstate, "timeout": "30s"}, args.procs, per)
        print(f"{'hit_if_below, ' + str(args.procs) + ' processes, 1 key':32} {rpar:10,.0f} {'':9} {spar:10,.0f}")
        client, server_calls, inner = round_trips(url, min(args.n, 2000))
        print(f"\nround trips per rate-limit decision (3 windows): client commands {client:.2f}, "
              f"server EVALSHA {server_calls:.2f}")
        print("commands inside the script (INFO commandstats): "
              + ", ".join(f"{k} {v}" for k, v in sorted(inner.items())))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
