"""The embedded account store: one SQLite file shared by every congvu process on the host.

The policy daemon, the auth daemon, the Dovecot hook (a separate process per login)
and the CLI all open the same file, so: WAL journal (readers never block the writer),
a busy timeout instead of "database is locked" errors, every write in one
``BEGIN IMMEDIATE`` transaction (writers queue, and a clash check plus its insert
happen atomically), and migrations recorded in ``schema_version`` and applied under
the same write lock so two processes opening a new file cannot both migrate it.

Addresses and aliases are stored lower-cased and looked up that way.  Aliases share
one namespace with addresses (an alias may not be another account's address), so the
clash checks of CT25-4.1 and CT25-4.3b can rely on :meth:`local_parts`.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from congvu.directory import recipients as mirror
from congvu.directory.model import (
    DATE_FIELDS,
    UPDATABLE,
    Account,
    AccountExists,
    AccountNotFound,
    DirectoryError,
    DirectoryUnavailable,
    normalise,
)
from congvu.directory.sqlite_files import connect, migrate, version
from congvu.rules.addresses import canonical
from congvu.rules.lifecycle import AccountState

log = Logger()

#: Each entry upgrades the schema by one version; append, never edit a released entry.
MIGRATIONS: tuple[str, ...] = (
    # 1: accounts, with aliases, delegates and password history in their own tables.
    """
    CREATE TABLE accounts (
        id INTEGER PRIMARY KEY,
        address TEXT NOT NULL UNIQUE,
        local_part TEXT NOT NULL,
        domain TEXT NOT NULL,
        full_name TEXT NOT NULL,
        display_name TEXT NOT NULL DEFAULT '',
        agency TEXT NOT NULL DEFAULT '',
        unit TEXT NOT NULL DEFAULT '',
        title TEXT NOT NULL DEFAULT '',
        mailbox_type TEXT NOT NULL CHECK (mailbox_type IN ('personal', 'unit', 'agency')),
        password_hash TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL,
        state_reason TEXT NOT NULL DEFAULT '',
        state_by TEXT NOT NULL DEFAULT '',
        created_at TEXT,
        password_changed_at TEXT,
        must_change INTEGER NOT NULL DEFAULT 1,
        last_login_at TEXT,
        quota_override INTEGER
    );
    CREATE INDEX accounts_agency ON accounts (agency);
    CREATE INDEX accounts_local_part ON accounts (local_part);
    CREATE TABLE aliases (
        address TEXT PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE
    );
    CREATE INDEX aliases_account ON aliases (account_id);
    CREATE TABLE delegates (
        account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        delegate TEXT NOT NULL,
        PRIMARY KEY (account_id, delegate)
    );
    CREATE TABLE password_history (
        account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        hash TEXT NOT NULL,
        PRIMARY KEY (account_id, seq)
    );
    """,
    # 2: when the lifecycle state last changed (CT15-5.4 counts 15 working days from a suspension).
    """
    ALTER TABLE accounts ADD COLUMN state_changed_at TEXT;
    """,
    # 3: the generation of the recipients Postfix may deliver to (directory/recipients.py mirrors them).
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO meta (key, value) VALUES ('recipients', 0);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)

#: Columns of ``accounts`` that map one-to-one onto Account fields.
_COLUMNS = ("local_part", "domain", "full_name", "display_name", "agency", "unit", "title",
            "mailbox_type", "password_hash", "state", "state_reason", "state_by", "state_changed_at",
            "created_at", "password_changed_at", "must_change", "last_login_at", "quota_override")
_LISTS = ("aliases", "delegates", "password_history")
if set(_COLUMNS + _LISTS) - {"local_part", "domain"} != UPDATABLE:  # a field added to Account needs a migration
    raise RuntimeError(f"Account fields without a column: {sorted(UPDATABLE - set(_COLUMNS + _LISTS))}")

_SELECT = (
    "SELECT a.id, " + ", ".join(f"a.{c}" for c in _COLUMNS) + ","
    " (SELECT json_group_array(address) FROM (SELECT address FROM aliases"
    "   WHERE account_id = a.id ORDER BY address)),"
    " (SELECT json_group_array(delegate) FROM (SELECT delegate FROM delegates"
    "   WHERE account_id = a.id ORDER BY delegate)),"
    " (SELECT json_group_array(hash) FROM (SELECT hash FROM password_history"
    "   WHERE account_id = a.id ORDER BY seq))"
    " FROM accounts a"
)


def _dt_out(v: datetime | None) -> str | None:
    if v is None:
        return None
    if v.tzinfo is None:
        v = v.replace(tzinfo=UTC)
    return v.astimezone(UTC).isoformat()


def _dt_in(v: str | None) -> datetime | None:
    return datetime.fromisoformat(v) if v else None


class SqliteAccountStore:
    """Accounts in one SQLite file; one connection per store, guarded by a lock for thread pools.

    ``recipients``: the file of the Postfix recipient mirror (directory/recipients.py), kept
    in step with every write; None keeps none (tests, tools working on a copy).
    """

    def __init__(self, path: str | Path, *, timeout: float = 5.0, recipients: str | Path | None = None,
                 recipients_group: str = "") -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.recipients = Path(recipients) if recipients is not None else None
        self._lock = threading.Lock()
        self._db = connect(self.path, timeout, what="directory")
        try:
            migrate(self._db, self.path, MIGRATIONS, what="directory")
            if self.recipients is not None:
                try:
                    mirror.prepare(self.recipients, recipients_group)
                except OSError as e:
                    raise DirectoryUnavailable(f"recipient map {self.recipients}: {e.strerror or e}") from None
                mirror.attach(self._db, self.recipients)
                self._check_mirror()
        except BaseException as e:
            self._db.close()
            if isinstance(e, sqlite3.Error):
                raise DirectoryUnavailable(f"{self.path}: {e}") from None
            raise

    def __repr__(self) -> str:
        return f"SqliteAccountStore({str(self.path)!r})"

    # ------------------------------------------------------------------ schema

    def schema_version(self) -> int:
        with self._lock:
            return version(self._db)

    def check_schema(self) -> list[str]:
        """Problems with the file (empty when usable); opening it already migrated it."""
        problems = []
        current = self.schema_version()
        if current != SCHEMA_VERSION:
            problems.append(f"schema version {current}, expected {SCHEMA_VERSION}")
        with self._lock:
            mode = self._db.execute("PRAGMA journal_mode").fetchone()[0]
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
        if str(mode).lower() != "wal":
            problems.append(f"journal mode {mode}, expected wal")
        if check != "ok":
            problems.append(f"integrity: {check}")
        return problems

    def _check_mirror(self) -> None:
        """Rebuild the recipient mirror when its generation is not the directory's (or it is new)."""
        db = self._db
        if mirror.generation(db, mirror.SCHEMA) == mirror.generation(db):
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            if mirror.generation(db, mirror.SCHEMA) != mirror.generation(db):
                n = mirror.rebuild(db, [self._row_to_account(r) for r in db.execute(_SELECT).fetchall()])
                log.info("recipient map {path}: rebuilt from the directory ({n} addresses)",
                         path=str(self.recipients), n=n)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def rebuild_recipients(self) -> int:
        """Rewrite the recipient mirror from the directory (``congvu directory maps``); the row count."""
        if self.recipients is None:
            raise DirectoryError(f"{self.path}: no recipient map configured")
        return int(self._write(lambda db: mirror.rebuild(
            db, [self._row_to_account(r) for r in db.execute(_SELECT).fetchall()])))

    def _mirror(self, db: sqlite3.Connection, address: str, account: Account | None) -> None:
        if self.recipients is not None:
            mirror.replace_account(db, address, mirror.rows(account) if account is not None else [])

    # ------------------------------------------------------------------ reads

    def _row_to_account(self, row: tuple[Any, ...]) -> Account:
        values: dict[str, Any] = dict(zip(_COLUMNS, row[1:1 + len(_COLUMNS)], strict=True))
        lists: dict[str, Any] = {name: tuple(json.loads(v))
                                 for name, v in zip(_LISTS, row[1 + len(_COLUMNS):], strict=True)}
        for name in DATE_FIELDS:
            values[name] = _dt_in(values[name])
        values["state"] = AccountState(values["state"])
        values["must_change"] = bool(values["must_change"])
        return Account(**values, **lists)

    def _find(self, key: str) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._db.execute(
            _SELECT + " WHERE a.address = ? OR a.id = (SELECT account_id FROM aliases WHERE address = ?)",
            (key, key)).fetchone()
        return row

    def get(self, address: str) -> Account | None:
        key = canonical(address)
        if key is None:
            return None
        try:
            with self._lock:
                row = self._find(key)
        except sqlite3.Error as e:
            raise DirectoryUnavailable(f"{self.path}: {e}") from None
        return self._row_to_account(row) if row else None

    def list(self, agency: str | None = None) -> Iterator[Account]:
        try:
            with self._lock:
                if agency is None:
                    rows = self._db.execute(_SELECT + " ORDER BY a.address").fetchall()
                else:
                    rows = self._db.execute(_SELECT + " WHERE a.agency = ? ORDER BY a.address",
                                            (agency,)).fetchall()
        except sqlite3.Error as e:
            raise DirectoryUnavailable(f"{self.path}: {e}") from None
        return iter([self._row_to_account(r) for r in rows])

    def local_parts(self) -> frozenset[str]:
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT local_part FROM accounts UNION "
                    "SELECT substr(address, 1, instr(address, '@') - 1) FROM aliases").fetchall()
        except sqlite3.Error as e:
            raise DirectoryUnavailable(f"{self.path}: {e}") from None
        return frozenset(r[0] for r in rows)

    # ------------------------------------------------------------------ writes

    def _write(self, work: Any) -> Any:
        """Run ``work(db)`` inside BEGIN IMMEDIATE … COMMIT, holding the thread lock."""
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise DirectoryUnavailable(f"{self.path}: {e}") from None
            try:
                result = work(db)
                db.execute("COMMIT")
                return result
            except sqlite3.IntegrityError as e:
                db.execute("ROLLBACK")
                raise DirectoryError(f"{self.path}: refused by the schema: {e}") from None
            except sqlite3.Error as e:
                db.execute("ROLLBACK")
                raise DirectoryUnavailable(f"{self.path}: {e}") from None
            except BaseException:
                db.execute("ROLLBACK")
                raise

    @staticmethod
    def _taken(db: sqlite3.Connection, addresses: Sequence[str], account_id: int | None) -> str | None:
        """The first of ``addresses`` used by another account, as address or alias."""
        for a in addresses:
            row = db.execute("SELECT id FROM accounts WHERE address = ? UNION "
                             "SELECT account_id FROM aliases WHERE address = ?", (a, a)).fetchone()
            if row is not None and row[0] != account_id:
                return a
        return None

    @staticmethod
    def _write_lists(db: sqlite3.Connection, account_id: int, account: Account,
                     which: tuple[str, ...] = _LISTS) -> None:
        if "aliases" in which:
            db.execute("DELETE FROM aliases WHERE account_id = ?", (account_id,))
            db.executemany("INSERT INTO aliases (address, account_id) VALUES (?, ?)",
                           [(a, account_id) for a in account.aliases])
        if "delegates" in which:
            db.execute("DELETE FROM delegates WHERE account_id = ?", (account_id,))
            db.executemany("INSERT INTO delegates (account_id, delegate) VALUES (?, ?)",
                           [(account_id, d) for d in account.delegates])
        if "password_history" in which:
            db.execute("DELETE FROM password_history WHERE account_id = ?", (account_id,))
            db.executemany("INSERT INTO password_history (account_id, seq, hash) VALUES (?, ?, ?)",
                           [(account_id, i, h) for i, h in enumerate(account.password_history)])

    @staticmethod
    def _column_values(account: Account, names: Sequence[str]) -> builtins.list[Any]:
        out: builtins.list[Any] = []
        for name in names:
            v = getattr(account, name)
            if name in DATE_FIELDS:
                v = _dt_out(v)
            elif name == "state":
                v = AccountState(v).value
            elif name == "must_change":
                v = int(bool(v))
            out.append(v)
        return out

    def add(self, account: Account) -> None:
        account = normalise(account)
        address = account.address
        if canonical(address) != address or any(canonical(a) != a for a in account.aliases):
            raise ValueError(f"not a storable address: {address!r}")

        def work(db: sqlite3.Connection) -> None:
            clash = self._taken(db, [address, *account.aliases], None)
            if clash is not None:
                raise AccountExists(clash)
            cur = db.execute(
                f"INSERT INTO accounts (address, {', '.join(_COLUMNS)}) "
                f"VALUES (?, {', '.join('?' * len(_COLUMNS))})",
                [address, *self._column_values(account, _COLUMNS)])
            assert cur.lastrowid is not None
            self._write_lists(db, cur.lastrowid, account)
            self._mirror(db, address, account)

        self._write(work)

    def update(self, address: str, **changes: Any) -> Account:
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise ValueError(f"cannot change {', '.join(sorted(unknown))}")
        key = canonical(address)
        if key is None:
            raise AccountNotFound(address)

        def work(db: sqlite3.Connection) -> Account:
            row = self._find(key)
            if row is None:
                raise AccountNotFound(address)
            account_id = int(row[0])
            new = normalise(replace(self._row_to_account(row), **changes))
            if "aliases" in changes:
                if any(canonical(a) != a for a in new.aliases):
                    raise ValueError("not a storable alias")
                clash = self._taken(db, list(new.aliases), account_id)
                if clash is not None:
                    raise AccountExists(clash)
            cols = [c for c in _COLUMNS if c in changes]
            if cols:
                db.execute(f"UPDATE accounts SET {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?",
                           [*self._column_values(new, cols), account_id])
            self._write_lists(db, account_id, new, tuple(n for n in _LISTS if n in changes))
            if {"state", "aliases"} & changes.keys():
                self._mirror(db, new.address, new)
            return new

        result: Account = self._write(work)
        return result

    def delete(self, address: str) -> None:
        key = canonical(address)
        if key is None:
            raise AccountNotFound(address)

        def work(db: sqlite3.Connection) -> None:
            row = self._find(key)
            if row is None:
                raise AccountNotFound(address)
            db.execute("DELETE FROM accounts WHERE id = ?", (row[0],))
            self._mirror(db, self._row_to_account(row).address, None)

        self._write(work)

    def close(self) -> None:
        with self._lock:
            self._db.close()
