"""SQLite-only behaviour of the counter store: busy timeout, WAL, clean-up of expired rows, schema version."""

from __future__ import annotations

import sqlite3
import time
from datetime import timedelta
from pathlib import Path

import pytest

from congvu.directory.counters_sqlite import MIGRATIONS, SCHEMA_VERSION, SqliteCounters
from congvu.directory.model import LockInfo, StateUnavailable
from congvu.directory.sqlite_files import statements

T0 = 1_800_000_000.0
HOUR = timedelta(hours=1)


def test_wal_mode(tmp_path: Path) -> None:
    """The file is in WAL mode, so readers in other processes do not block writers."""
    SqliteCounters(tmp_path / "s.sqlite3").close()
    with sqlite3.connect(tmp_path / "s.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION


def test_a_file_of_the_first_schema_is_upgraded_in_place(tmp_path: Path) -> None:
    """A state file made before numbered migrations (user_version 1, locks without since/reason) keeps its rows."""
    with sqlite3.connect(tmp_path / "s.sqlite3") as db:
        for statement in statements(MIGRATIONS[0]):
            db.execute(statement)
        db.execute("PRAGMA user_version = 1")
        db.execute("INSERT INTO locks (key, until_ms) VALUES ('auth:a@x', ?)", (int((T0 + 60) * 1000),))
    store = SqliteCounters(tmp_path / "s.sqlite3")
    try:
        assert store.lock_info("auth:a@x", T0) == LockInfo(0.0, T0 + 60, "")
    finally:
        store.close()


def test_locked_database_fails_within_timeout_then_recovers(tmp_path: Path) -> None:
    """Another process holding the write lock makes calls fail after the timeout; released, they work."""
    store = SqliteCounters(tmp_path / "s.sqlite3", timeout=0.5)
    other = sqlite3.connect(tmp_path / "s.sqlite3", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(StateUnavailable):
            store.hit("k", 1, [HOUR], T0)
        assert 0.4 <= time.monotonic() - started < 1.5
        other.execute("COMMIT")
        assert store.hit("k", 1, [HOUR], T0) == (1,)
    finally:
        other.close()
        store.close()


def test_unusable_path_is_state_unavailable(tmp_path: Path) -> None:
    """A path that cannot hold a database raises StateUnavailable, not a raw sqlite3 error."""
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StateUnavailable):
        SqliteCounters(tmp_path / "file" / "state.sqlite3")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A database written by a newer congvu is not silently reused."""
    with sqlite3.connect(tmp_path / "s.sqlite3") as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StateUnavailable, match="newer"):
        SqliteCounters(tmp_path / "s.sqlite3")


def test_expired_rows_are_cleaned_up(tmp_path: Path) -> None:
    """Rows of keys nobody touches again are deleted once expired, by any later write."""
    store = SqliteCounters(tmp_path / "s.sqlite3")
    try:
        for i in range(50):
            store.hit(f"k{i}", 1, [HOUR], T0)
            store.record_failure(f"k{i}", "fp", HOUR, T0)
            store.seen(f"m{i}", HOUR, T0)
            store.lock(f"k{i}", T0 + 60, T0)
        store.hit("later", 1, [HOUR], T0 + 2 * 3600)
        with sqlite3.connect(tmp_path / "s.sqlite3") as db:
            counts = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                      for t in ("counter_buckets", "login_failures", "markers", "locks")}
        assert counts == {"counter_buckets": 1, "login_failures": 0, "markers": 0, "locks": 0}
    finally:
        store.close()
