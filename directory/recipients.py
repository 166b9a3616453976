"""The Postfix recipient table of an SQLite site: which addresses receive mail, derived from the directory.

Postfix validates recipients at RCPT and expands aliases from lookup tables; congvu's
SQLite directory cannot be one (it holds password hashes, and Postfix's proxymap runs as
``postfix``).  So the store keeps a mirror in a file of its own, readable by group
``postfix`` and holding nothing but addresses: one row per address that receives mail,
``address → mailbox`` (a mailbox maps to itself, an alias to its mailbox).  The shipped
``conf/postfix/congvu-mailboxes.cf`` and ``congvu-aliases.cf`` (``proxy:sqlite:``) read it.

Derived, never edited: the store writes it in the same transaction as the change
(attached database), and both files carry a generation counter; a process that opens the
directory and finds them apart (a crash between the two commits, a restored backup)
rebuilds the mirror from the directory.  The mirror uses a rollback journal, not WAL,
because a reader without write access (Postfix) cannot open a WAL file whose -shm is gone.

Which states receive mail: every state but ``cancelled`` and ``reclaimed``.  A locked or
suspended mailbox still receives (CT25-6.4 locks the *use* of a mailbox, not delivery to
it; Zimbra's ``locked`` does the same); a cancelled (CT25-6.3) or reclaimed (CT25-6.5)
address is an unknown recipient, refused at RCPT with 550 5.1.1.
"""

from __future__ import annotations

import grp
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from twisted.logger import Logger

from congvu.directory.model import Account
from congvu.rules.lifecycle import AccountState

log = Logger()

#: Schema name of the mirror in the store's connection.
SCHEMA = "recipients"
#: States whose addresses are unknown to Postfix.
NOT_DELIVERED = frozenset({AccountState.CANCELLED, AccountState.RECLAIMED})
#: Mode of the mirror file: the service user writes, group postfix reads.
FILE_MODE = 0o640

_CREATE = (
    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.recipients (address TEXT PRIMARY KEY, mailbox TEXT NOT NULL) WITHOUT ROWID",
    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.mirror (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


def rows(account: Account) -> list[tuple[str, str]]:
    """The mirror's rows for ``account``: its address and aliases, if its state receives mail."""
    if AccountState(account.state) in NOT_DELIVERED:
        return []
    return [(account.address, account.address), *((alias, account.address) for alias in account.aliases)]


def prepare(path: Path, group: str) -> None:
    """Create the mirror file (and its directory) readable by ``group``, before SQLite creates it 0644."""
    gid = -1
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            log.warn("recipient map {path}: no group {group!r} on this host ([directory] recipient_map_group); "
                     "Postfix cannot read it until it exists", path=str(path), group=group)
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o2750)
        if gid >= 0:
            os.chown(path.parent, -1, gid)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        os.close(fd)
        if gid >= 0:
            os.chown(path, -1, gid)


def attach(db: sqlite3.Connection, path: Path) -> None:
    """Attach the mirror to the directory's connection, in rollback-journal mode; create its tables."""
    db.execute(f"ATTACH DATABASE ? AS {SCHEMA}", (str(path),))
    db.execute(f"PRAGMA {SCHEMA}.journal_mode = DELETE")
    # Derived data: a mirror torn by a power cut is rebuilt at the next open (generations differ).
    db.execute(f"PRAGMA {SCHEMA}.synchronous = OFF")
    for statement in _CREATE:
        db.execute(statement)


def generation(db: sqlite3.Connection, schema: str = "main") -> int:
    table = "meta" if schema == "main" else "mirror"
    row = db.execute(f"SELECT value FROM {schema}.{table} WHERE key = 'recipients'").fetchone()
    return int(row[0]) if row else -1


def bump(db: sqlite3.Connection) -> None:
    """Count one more change of the recipients in both files (inside the caller's transaction)."""
    db.execute("UPDATE main.meta SET value = value + 1 WHERE key = 'recipients'")
    db.execute(f"INSERT INTO {SCHEMA}.mirror (key, value) VALUES ('recipients', ?) "
               f"ON CONFLICT (key) DO UPDATE SET value = excluded.value", (generation(db),))


def replace_account(db: sqlite3.Connection, mailbox: str, new_rows: Iterable[tuple[str, str]]) -> None:
    """Make the mirror's rows of ``mailbox`` exactly ``new_rows`` (inside the caller's transaction)."""
    db.execute(f"DELETE FROM {SCHEMA}.recipients WHERE mailbox = ?", (mailbox,))
    db.executemany(f"INSERT OR REPLACE INTO {SCHEMA}.recipients (address, mailbox) VALUES (?, ?)", list(new_rows))
    bump(db)


def rebuild(db: sqlite3.Connection, accounts: Iterable[Account]) -> int:
    """Rewrite the whole mirror from ``accounts`` (inside the caller's transaction); returns the row count."""
    db.execute(f"DELETE FROM {SCHEMA}.recipients")
    all_rows = [r for a in accounts for r in rows(a)]
    db.executemany(f"INSERT OR REPLACE INTO {SCHEMA}.recipients (address, mailbox) VALUES (?, ?)", all_rows)
    bump(db)
    return len(all_rows)
