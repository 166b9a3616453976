"""The embedded SQLite files (directory, counters, audit log): opened and migrated one way.

Every file is created 0600 (with its -wal and -shm), so no other local user reads a
password hash or a login stamp; WAL mode lets the daemons read while the CLI writes,
with ``journal_size_limit`` bounding what a checkpoint leaves behind.  Schemas are
numbered migrations, applied in one ``BEGIN IMMEDIATE`` transaction by whichever process
opens the file first.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from twisted.logger import Logger

from congvu.directory.model import DirectoryError, DirectoryUnavailable

log = Logger()

#: Mode of every file congvu creates: the service user only.
FILE_MODE = 0o600
#: What a WAL checkpoint truncates the -wal file back to (bytes).
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024


def _precreate(path: Path) -> None:
    """Create the file (and its -wal, -shm) with FILE_MODE before SQLite does with the umask's mode."""
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)


def connect(path: Path, timeout: float, *, what: str) -> sqlite3.Connection:
    """An autocommit connection in WAL mode; raises DirectoryUnavailable naming ``what`` and the path."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            _precreate(path)
    except OSError as e:
        raise DirectoryUnavailable(f"{what} {path}: cannot create it: {e.strerror or e}") from None
    try:
        db = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as e:
        raise DirectoryUnavailable(f"{what} {path}: {e}") from None
    try:
        db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        db.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as e:
        db.close()
        raise DirectoryUnavailable(f"{what} {path}: {e}") from None
    return db


def statements(script: str) -> Iterator[str]:
    """The complete SQL statements of ``script`` (a trigger's body keeps its inner semicolons)."""
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                yield buf.strip()
            buf = ""
    if buf.strip():
        raise ValueError(f"incomplete SQL statement: {buf.strip()[:60]!r}")


def version(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone()
    if row is None:
        return 0
    return int(db.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0)


def migrate(db: sqlite3.Connection, path: Path, migrations: Sequence[str], *, what: str) -> None:
    """Bring the file to ``len(migrations)``; the common case (up to date) takes no write lock."""
    target = len(migrations)
    try:
        current = version(db)
        if current > target:
            raise DirectoryError(f"{what} {path}: schema version {current} is newer than this congvu knows "
                                 f"({target}); upgrade congvu")
        if current == target:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = int(db.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0)
            if current > target:
                raise DirectoryError(f"{what} {path}: schema version {current} is newer than this congvu "
                                     f"knows ({target}); upgrade congvu")
            for v in range(current + 1, target + 1):
                for statement in statements(migrations[v - 1]):
                    db.execute(statement)
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (v,))
                log.info("{what} {path}: schema migrated to version {version}", what=what, path=str(path), version=v)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    except sqlite3.Error as e:
        raise DirectoryUnavailable(f"{what} {path}: {e}") from None
