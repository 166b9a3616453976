"""Directory benchmark: account lookups by address, uncached and cached, on SQLite and on LDAP.

    .venv/bin/python -m bench.directory_bench [--accounts 20000] [--n 3000] [--threads 4]

Both stores get the same ``--accounts`` accounts (SQLite through ``add``, LDAP offline
with ``slapadd`` into a throwaway slapd on a loopback port, built like the test fixture).
Each row times ``--n`` ``get`` calls from one thread unless stated; addresses are drawn
at random with a fixed seed so both backends see the same sequence.  "cached" wraps the
store in ``congvu.directory.cache.CachedAccountStore`` as the policy server does.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from congvu.config import config_from_mapping
from congvu.directory.accounts import open_store
from congvu.directory.cache import CachedAccountStore
from congvu.directory.hashing import Hasher
from congvu.directory.ldap_mapping import EntryMapping
from congvu.directory.model import Account, AccountStore
from tests.integration.servers.slapd import SlapdServer, ldif_entry

DOMAIN = "cantho.gov.vn"


def accounts(n: int) -> Iterator[Account]:
    """n distinct accounts with realistic field sizes; one shared hash (hashing is not measured here)."""
    pw = Hasher("test").hash("Benchmark#2025")
    created = datetime(2025, 1, 1, tzinfo=UTC)
    for i in range(n):
        yield Account(local_part=f"user{i}", domain=DOMAIN, full_name=f"Nguyễn Văn Người {i}",
                      mailbox_type="personal", agency=f"so{i % 40}", unit=f"Phòng {i % 7}",
                      display_name=f"Nguyễn Văn Người {i} - Sở {i % 40}", title="Chuyên viên",
                      password_hash=pw, created_at=created, password_changed_at=created, must_change=False,
                      aliases=(f"alias{i}@{DOMAIN}",))


def timed(n: int, fn: Callable[[int], object]) -> tuple[float, float, float]:
    """(calls/s, median µs, p99 µs) of fn(i) over n calls."""
    samples = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    samples.sort()
    return n / total, statistics.median(samples) * 1e6, samples[int(len(samples) * 0.99) - 1] * 1e6


def threaded(store: AccountStore, addresses: list[str], threads: int) -> float:
    """Aggregate lookups per second of ``threads`` threads sharing one store."""
    chunks = [addresses[i::threads] for i in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def work(chunk: list[str]) -> None:
        barrier.wait()
        for a in chunk:
            assert store.get(a) is not None

    ts = [threading.Thread(target=work, args=(c,)) for c in chunks]
    for t in ts:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in ts:
        t.join()
    return len(addresses) / (time.perf_counter() - start)


def measure(store: AccountStore, total: int, n: int, threads: int) -> dict[str, tuple[float, float, float] | float]:
    rng = random.Random(2025)
    hits = [f"user{rng.randrange(total)}@{DOMAIN}" for _ in range(n)]
    via_alias = [f"alias{rng.randrange(total)}@{DOMAIN}" for _ in range(n)]
    misses = [f"nobody{i}@{DOMAIN}" for i in range(n)]
    hot = [f"user{i}@{DOMAIN}" for i in rng.sample(range(total), 1000)]
    hot_seq = [hot[rng.randrange(len(hot))] for _ in range(n)]
    out: dict[str, tuple[float, float, float] | float] = {}
    out["uncached, existing address"] = timed(n, lambda i: store.get(hits[i]))
    out["uncached, by alias"] = timed(n, lambda i: store.get(via_alias[i]))
    out["uncached, unknown address"] = timed(n, lambda i: store.get(misses[i]))
    out[f"uncached, {threads} threads (aggregate /s)"] = threaded(store, hits, threads)
    cached = CachedAccountStore(store, size=10000, ttl=30.0)
    for a in hot:
        cached.get(a)
    out["cached, warm, 1,000 hot addresses"] = timed(n, lambda i: cached.get(hot_seq[i]))
    cached.clear()
    uniform = [f"user{rng.randrange(total)}@{DOMAIN}" for _ in range(n * 4)]
    for a in uniform[: n * 3]:
        cached.get(a)
    cached.hits = cached.misses = 0
    out["cached, uniform over all (cache_size 10,000)"] = timed(n, lambda i: cached.get(uniform[n * 3 + i]))
    out["  hit rate of the row above"] = cached.hits / max(cached.hits + cached.misses, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--accounts", type=int, default=20000)
    ap.add_argument("--n", type=int, default=3000, help="lookups per row")
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args()
    results: dict[str, dict[str, tuple[float, float, float] | float]] = {}
    with tempfile.TemporaryDirectory(prefix="congvu-dirbench-") as tmp:
        root = Path(tmp)
        # SQLite ------------------------------------------------------------------
        sqlite = open_store(config_from_mapping({"directory": {"path": str(root / "directory.sqlite3")}}))
        t = time.perf_counter()
        for a in accounts(args.accounts):
            sqlite.add(a)
        print(f"SQLite: {args.accounts} accounts added through add() in {time.perf_counter() - t:.1f}s")
        results["SQLite"] = measure(sqlite, args.accounts, args.n, args.threads)
        sqlite.close()
        # LDAP --------------------------------------------------------------------
        slapd = SlapdServer(root / "slapd", openssl=None)
        slapd.root.mkdir()
        settings = config_from_mapping({"directory": slapd.directory_overrides(
            timeout="5s", pool_size=args.threads)}).directory
        mapping = EntryMapping.from_settings(settings)
        t = time.perf_counter()

        def records() -> Iterator[str]:
            for a in accounts(args.accounts):
                dn, attrs = mapping.new_entry(a, slapd.base_dn)
                attrs["objectClass"] = [c.encode() for c in mapping.object_classes]
                yield ldif_entry(dn, attrs)

        slapd.build(records())
        slapd.start()
        print(f"LDAP: {args.accounts} accounts loaded with slapadd in {time.perf_counter() - t:.1f}s "
              f"(slapd {slapd.url}, mdb, indexes mail/congvuMailAlias eq)")
        try:
            ldap = open_store(config_from_mapping({"directory": slapd.directory_overrides(
                timeout="5s", pool_size=args.threads)}))
            assert ldap.get(f"user0@{DOMAIN}") is not None
            results["LDAP"] = measure(ldap, args.accounts, args.n, args.threads)
            ldap.close()
        finally:
            slapd.stop()

    print(f"\n{args.accounts} accounts, {args.n} lookups per row, one thread unless stated\n")
    print(f"| {'lookup':<46} | {'SQLite /s':>9} | {'p50 µs':>7} | {'p99 µs':>7} | {'LDAP /s':>8} | "
          f"{'p50 µs':>7} | {'p99 µs':>7} |")
    print(f"|{'-' * 48}|{'-' * 10}:|{'-' * 8}:|{'-' * 8}:|{'-' * 9}:|{'-' * 8}:|{'-' * 8}:|")
    for row, s in results["SQLite"].items():
        ldap_v = results["LDAP"][row]
        if isinstance(s, tuple) and isinstance(ldap_v, tuple):
            print(f"| {row:<46} | {s[0]:>9,.0f} | {s[1]:>7,.0f} | {s[2]:>7,.0f} | {ldap_v[0]:>8,.0f} | "
                  f"{ldap_v[1]:>7,.0f} | {ldap_v[2]:>7,.0f} |")
        elif isinstance(s, float) and isinstance(ldap_v, float):
            left, right = (f"{s:.0%}", f"{ldap_v:.0%}") if "rate" in row else (f"{s:,.0f}", f"{ldap_v:,.0f}")
            print(f"| {row:<46} | {left:>9} | {'':>7} | {'':>7} | {right:>8} | {'':>7} | {'':>7} |")


if __name__ == "__main__":
    main()
