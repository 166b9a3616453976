"""The audit log: who changed what, when, from what to what, and why. Append-only.

Every operator change (a command of ``congvu account``, ``agency``, ``provision``, the
sweeps) appends one :class:`AuditRecord`; nothing in congvu updates or deletes one, and
the SQLite file refuses it too (triggers), so a record once written stays as written.
``congvu audit`` reads it.

The log is one SQLite file (``[directory] audit_path``, default STATE_DIR/audit.sqlite3)
whichever backend holds the accounts: on an LDAP site it lives on the host where the
operators run ``congvu``.  It is never on a hot path: the daemons do not write to it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from congvu.directory.model import DirectoryError, DirectoryUnavailable
from congvu.directory.settings import StoreConfig
from congvu.directory.sqlite_files import connect, migrate

#: Each entry upgrades the schema by one version; append, never edit a released entry.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        before TEXT NOT NULL DEFAULT '{}',
        after TEXT NOT NULL DEFAULT '{}',
        reason TEXT NOT NULL DEFAULT '',
        ref TEXT NOT NULL DEFAULT '',
        rule_id TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_subject ON audit (subject, at);
    CREATE INDEX audit_at ON audit (at);
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    """,
)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One change: ``before`` and ``after`` hold only the fields that changed (never a password or hash)."""

    at: datetime
    actor: str
    action: str
    subject: str
    before: Mapping[str, Any] = field(default_factory=dict)
    after: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""
    ref: str = ""
    rule_id: str = ""
    id: int | None = None


#: Field names that never enter the log, whatever a caller passes.
SECRET_FIELDS = frozenset({"password", "password_hash", "password_history", "temporary_password"})


def _clean(values: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in values.items():
        if k in SECRET_FIELDS:
            continue
        if isinstance(v, datetime):
            v = v.astimezone(UTC).isoformat()
        elif hasattr(v, "value") and not isinstance(v, (str, int, float, bool)):  # an Enum
            v = v.value
        elif isinstance(v, tuple | frozenset | set):
            v = sorted(v) if isinstance(v, frozenset | set) else list(v)
        out[k] = v
    return out


def open_audit(cfg: StoreConfig) -> AuditLog:
    """The site's audit log (``[directory] audit_path``)."""
    return AuditLog(cfg.state_file(cfg.directory.audit_path, "audit.sqlite3"),
                    timeout=cfg.directory.timeout.total_seconds())


class AuditLog:
    """The append-only log in one SQLite file; thread-safe."""

    def __init__(self, path: str | Path, *, timeout: float = 5.0) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = connect(self.path, timeout, what="audit log")
        try:
            migrate(self._db, self.path, MIGRATIONS, what="audit log")
        except BaseException:
            self._db.close()
            raise

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r})"

    def append(self, record: AuditRecord) -> AuditRecord:
        """Write ``record``; returns it with its id.  Raises DirectoryUnavailable when the file cannot be written."""
        before, after = _clean(record.before), _clean(record.after)
        row = (record.at.astimezone(UTC).isoformat(), record.actor, record.action, record.subject,
               json.dumps(before, ensure_ascii=False, sort_keys=True, default=str),
               json.dumps(after, ensure_ascii=False, sort_keys=True, default=str),
               record.reason, record.ref, record.rule_id)
        try:
            with self._lock:
                cur = self._db.execute(
                    "INSERT INTO audit (at, actor, action, subject, before, after, reason, ref, rule_id) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
                rid = cur.lastrowid
        except sqlite3.Error as e:
            raise DirectoryUnavailable(f"audit log {self.path}: {e}") from None
        return AuditRecord(record.at, record.actor, record.action, record.subject, before, after,
                           record.reason, record.ref, record.rule_id, rid)

    def records(self, subject: str | None = None, since: datetime | None = None,
                until: datetime | None = None) -> Iterator[AuditRecord]:
        """Records in the order they were written, optionally of one subject and a time range."""
        sql, args = "SELECT id, at, actor, action, subject, before, after, reason, ref, rule_id FROM audit", []
        where = []
        if subject is not None:
            where.append("subject = ?")
            args.append(subject)
        if since is not None:
            where.append("at >= ?")
            args.append(since.astimezone(UTC).isoformat())
        if until is not None:
            where.append("at < ?")
            args.append(until.astimezone(UTC).isoformat())
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        try:
            with self._lock:
                rows = self._db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise DirectoryUnavailable(f"audit log {self.path}: {e}") from None
        for rid, at, actor, action, subj, before, after, reason, ref, rule_id in rows:
            try:
                yield AuditRecord(datetime.fromisoformat(at), actor, action, subj, json.loads(before),
                                  json.loads(after), reason, ref, rule_id, rid)
            except ValueError as e:
                raise DirectoryError(f"audit log {self.path}: record {rid} is unreadable ({e})") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()
