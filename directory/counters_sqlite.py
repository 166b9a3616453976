"""The embedded counter store: one SQLite file in WAL mode, shared by every local process.

Each operation is one ``BEGIN IMMEDIATE`` transaction, so the read-decide-write of a rate
limit is atomic across processes (policy server, auth service, the Dovecot hook).  A busy
database waits at most the configured timeout, then raises :class:`StateUnavailable`.
Expired rows are removed for the key being touched, and from every table at most once a
minute (by the callers' clock).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from congvu.directory.model import (
    DirectoryError,
    DirectoryUnavailable,
    LockInfo,
    LoginStamp,
    RateDecision,
    StateUnavailable,
)
from congvu.directory.sqlite_files import connect, migrate, version
from congvu.directory.windows import (
    MAX_FINGERPRINTS,
    Mode,
    WindowSpec,
    check_amount,
    clean_field,
    decide,
    fingerprint_digest,
    limit_specs,
    ms,
    specs,
    window_ms,
)

SWEEP_EVERY_MS = 60_000

#: Each entry upgrades the schema by one version; append, never edit a released entry.
MIGRATIONS: tuple[str, ...] = (
    # 1: windows, failures, locks, de-dup markers, login stamps.
    """
    CREATE TABLE counter_buckets (
        key TEXT NOT NULL, window_ms INTEGER NOT NULL, bucket INTEGER NOT NULL,
        amount INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
        PRIMARY KEY (key, window_ms, bucket)) WITHOUT ROWID;
    CREATE INDEX counter_buckets_expiry ON counter_buckets (expires_ms);
    CREATE TABLE login_failures (
        key TEXT NOT NULL, fingerprint TEXT NOT NULL, at_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL, PRIMARY KEY (key, fingerprint)) WITHOUT ROWID;
    CREATE INDEX login_failures_expiry ON login_failures (expires_ms);
    CREATE TABLE locks (key TEXT PRIMARY KEY, until_ms INTEGER NOT NULL) WITHOUT ROWID;
    CREATE INDEX locks_expiry ON locks (until_ms);
    CREATE TABLE markers (marker TEXT PRIMARY KEY, expires_ms INTEGER NOT NULL) WITHOUT ROWID;
    CREATE INDEX markers_expiry ON markers (expires_ms);
    CREATE TABLE login_stamps (
        address TEXT PRIMARY KEY, at_ms INTEGER NOT NULL, service TEXT NOT NULL,
        ip TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE login_taken (address TEXT PRIMARY KEY, next_ms INTEGER NOT NULL) WITHOUT ROWID;
    """,
    # 2: a lock says since when and why (a lockout is shown by `congvu account show`).
    """
    ALTER TABLE locks ADD COLUMN since_ms INTEGER;
    ALTER TABLE locks ADD COLUMN reason TEXT NOT NULL DEFAULT '';
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

T = TypeVar("T")


class SqliteCounters:
    """:class:`directory.model.CounterStore` on a local SQLite file."""

    def __init__(self, path: str | Path, *, timeout: float = 1.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._lock = threading.Lock()  # one connection, shared by the caller's thread pool
        self._next_sweep = 0
        try:
            self._db = connect(self.path, timeout, what="state database")
        except DirectoryUnavailable as e:
            raise StateUnavailable(str(e)) from None
        try:
            self._adopt_user_version()
            migrate(self._db, self.path, MIGRATIONS, what="state database")
        except (DirectoryError, sqlite3.Error) as e:
            self._db.close()
            raise StateUnavailable(str(e)) from None

    def __repr__(self) -> str:
        return f"SqliteCounters({str(self.path)!r})"

    def _adopt_user_version(self) -> None:
        """A file made before numbered migrations carries its version in ``PRAGMA user_version`` (1)."""
        if version(self._db) == 0 and self._db.execute("PRAGMA user_version").fetchone()[0] == 1:
            self._db.executescript("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);"
                                   "INSERT INTO schema_version (version) VALUES (1);")

    @contextmanager
    def _tx(self, now_ms: int | None) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so concurrent read-modify-writes serialise."""
        if not self._lock.acquire(timeout=self.timeout):
            raise StateUnavailable(f"state database {self.path}: busy for {self.timeout}s")
        try:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if now_ms is not None and now_ms >= self._next_sweep:
                    self._sweep(db, now_ms)
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # also after a failed COMMIT, so the next call starts clean
                    with suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
        finally:
            self._lock.release()

    def _run(self, now_ms: int | None, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            with self._tx(now_ms) as db:
                return fn(db)
        except sqlite3.Error as e:
            raise StateUnavailable(f"state database {self.path}: {e}") from None

    def _sweep(self, db: sqlite3.Connection, now: int) -> None:
        """Drop every expired row, so keys nobody touches again do not accumulate."""
        db.execute("DELETE FROM counter_buckets WHERE expires_ms <= ?", (now,))
        db.execute("DELETE FROM login_failures WHERE expires_ms <= ?", (now,))
        db.execute("DELETE FROM locks WHERE until_ms <= ?", (now,))
        db.execute("DELETE FROM markers WHERE expires_ms <= ?", (now,))
        db.execute("DELETE FROM login_taken WHERE next_ms <= ?", (now,))
        self._next_sweep = now + SWEEP_EVERY_MS

    # ------------------------------------------------------------------ sliding windows

    def _counter(self, key: str, amount: int, windows: Sequence[WindowSpec], now: float,
                 mode: Mode) -> RateDecision:
        now_ms = ms(now)

        def op(db: sqlite3.Connection) -> RateDecision:
            rows = db.execute("SELECT window_ms, bucket, amount FROM counter_buckets WHERE key = ?",
                              (key,)).fetchall()
            out = decide(rows, windows, amount, now_ms, mode)
            if mode != "peek":
                db.executemany("DELETE FROM counter_buckets WHERE key = ? AND window_ms = ? AND bucket = ?",
                               [(key, w, idx) for w, idx in out.stale])
                db.executemany(
                    "INSERT INTO counter_buckets (key, window_ms, bucket, amount, expires_ms) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key, window_ms, bucket) "
                    "DO UPDATE SET amount = amount + excluded.amount",
                    [(key, w, idx, n, exp) for w, idx, n, exp in out.adds])
            return out.decision()

        return self._run(now_ms if mode != "peek" else None, op)

    def hit(self, key: str, amount: int, windows: Sequence[timedelta], now: float) -> tuple[int, ...]:
        return self._counter(key, check_amount(amount), specs(windows), now, "hit").totals

    def peek(self, key: str, windows: Sequence[timedelta], now: float) -> tuple[int, ...]:
        return self._counter(key, 0, specs(windows), now, "peek").totals

    def hit_if_below(self, key: str, amount: int, limits: Sequence[tuple[timedelta, int]],
                     now: float) -> RateDecision:
        return self._counter(key, check_amount(amount), limit_specs(limits), now, "check")

    # ------------------------------------------------------------------ failed logins and locks

    def record_failure(self, key: str, fingerprint: str, window: timedelta, now: float) -> int:
        now_ms, w = ms(now), window_ms(window)
        fp = fingerprint_digest(fingerprint)

        def op(db: sqlite3.Connection) -> int:
            db.execute("DELETE FROM login_failures WHERE key = ? AND at_ms <= ?", (key, now_ms - w))
            db.execute("INSERT INTO login_failures (key, fingerprint, at_ms, expires_ms) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (key, fingerprint) DO UPDATE SET at_ms = max(at_ms, excluded.at_ms), "
                       "expires_ms = max(expires_ms, excluded.expires_ms)", (key, fp, now_ms, now_ms + w))
            db.execute("DELETE FROM login_failures WHERE key = ? AND fingerprint IN ("
                       "SELECT fingerprint FROM login_failures WHERE key = ? ORDER BY at_ms DESC "
                       "LIMIT -1 OFFSET ?)", (key, key, MAX_FINGERPRINTS))
            return int(db.execute("SELECT count(*) FROM login_failures WHERE key = ? AND at_ms > ?",
                                  (key, now_ms - w)).fetchone()[0])

        return self._run(now_ms, op)

    def failures(self, key: str, window: timedelta, now: float) -> int:
        now_ms, w = ms(now), window_ms(window)
        return self._run(None, lambda db: int(db.execute(
            "SELECT count(*) FROM login_failures WHERE key = ? AND at_ms > ?", (key, now_ms - w)).fetchone()[0]))

    def clear_failures(self, key: str) -> None:
        self._run(None, lambda db: db.execute("DELETE FROM login_failures WHERE key = ?", (key,)))

    def lock(self, key: str, until: float, now: float, reason: str = "") -> None:
        until_ms = ms(until)
        if until_ms <= ms(now):
            self.unlock(key)
            return
        self._run(None, lambda db: db.execute(
            "INSERT INTO locks (key, until_ms, since_ms, reason) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE "
            "SET until_ms = excluded.until_ms, since_ms = excluded.since_ms, reason = excluded.reason",
            (key, until_ms, ms(now), clean_field(reason))))

    def unlock(self, key: str) -> None:
        self._run(None, lambda db: db.execute("DELETE FROM locks WHERE key = ?", (key,)))

    def lock_info(self, key: str, now: float) -> LockInfo | None:
        row = self._run(None, lambda db: db.execute("SELECT until_ms, since_ms, reason FROM locks WHERE key = ?",
                                                    (key,)).fetchone())
        if row is None or row[0] <= ms(now):
            return None
        return LockInfo(int(row[1] or 0) / 1000, int(row[0]) / 1000, str(row[2] or ""))

    # ------------------------------------------------------------------ last-login stamps

    def stamp_login(self, address: str, when: float, service: str, ip: str) -> None:
        self._run(None, lambda db: db.execute(
            "INSERT INTO login_stamps (address, at_ms, service, ip) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (address) DO UPDATE SET at_ms = excluded.at_ms, service = excluded.service, "
            "ip = excluded.ip WHERE excluded.at_ms > at_ms",
            (address.lower(), ms(when), clean_field(service), clean_field(ip))))

    def take_login_stamps(self, now: float, min_interval: timedelta) -> list[LoginStamp]:
        now_ms, gap = ms(now), min_interval // timedelta(milliseconds=1)

        def op(db: sqlite3.Connection) -> list[LoginStamp]:
            db.execute("DELETE FROM login_taken WHERE next_ms <= ?", (now_ms,))
            rows = db.execute("SELECT address, at_ms, service, ip FROM login_stamps WHERE address NOT IN "
                              "(SELECT address FROM login_taken) ORDER BY address").fetchall()
            db.executemany("DELETE FROM login_stamps WHERE address = ?", [(r[0],) for r in rows])
            db.executemany("INSERT INTO login_taken (address, next_ms) VALUES (?, ?)",
                           [(r[0], now_ms + gap) for r in rows])
            return [LoginStamp(a, t / 1000, s, ip) for a, t, s, ip in rows]

        return self._run(None, op)

    # ------------------------------------------------------------------ de-duplication

    def seen(self, marker: str, ttl: timedelta, now: float) -> bool:
        now_ms, t = ms(now), window_ms(ttl)

        def op(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT expires_ms FROM markers WHERE marker = ?", (marker,)).fetchone()
            if row is not None and row[0] > now_ms:
                return True
            db.execute("INSERT INTO markers (marker, expires_ms) VALUES (?, ?) ON CONFLICT (marker) "
                       "DO UPDATE SET expires_ms = excluded.expires_ms", (marker, now_ms + t))
            return False

        return self._run(now_ms, op)

    def close(self) -> None:
        with self._lock:
            self._db.close()
