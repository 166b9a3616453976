"""The audit log: records come back as written, secrets never enter it, and nothing can edit or delete one."""

from __future__ import annotations

import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from congvu.directory.audit import AuditLog, AuditRecord
from congvu.rules.lifecycle import AccountState

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def test_records_round_trip_in_order_and_filter_by_subject_and_time(tmp_path: Path) -> None:
    """Appended records read back in order, with enums, dates and tuples made plain; filters select."""
    log = AuditLog(tmp_path / "audit.sqlite3")
    try:
        first = log.append(AuditRecord(T0, "root", "account.lock", "a@cantho.gov.vn",
                                       {"state": AccountState.ACTIVE}, {"state": AccountState.LOCKED},
                                       reason="vi phạm", ref="CV 12/SNV", rule_id="CT25-6.4a"))
        log.append(AuditRecord(T0 + timedelta(hours=1), "root", "account.set", "b@cantho.gov.vn",
                               {"aliases": ()}, {"aliases": ("x@cantho.gov.vn",), "created_at": T0}))
        assert first.id == 1
        got = list(log.records())
        assert [r.subject for r in got] == ["a@cantho.gov.vn", "b@cantho.gov.vn"]
        assert got[0].after == {"state": "locked"} and got[0].reason == "vi phạm" and got[0].rule_id == "CT25-6.4a"
        assert got[1].after == {"aliases": ["x@cantho.gov.vn"], "created_at": T0.isoformat()}
        assert [r.id for r in log.records(subject="b@cantho.gov.vn")] == [2]
        assert [r.id for r in log.records(since=T0 + timedelta(minutes=30))] == [2]
        assert [r.id for r in log.records(until=T0 + timedelta(minutes=30))] == [1]
    finally:
        log.close()


def test_passwords_and_hashes_never_enter_the_log(tmp_path: Path) -> None:
    """password, password_hash, password_history and temporary_password are dropped from before/after."""
    log = AuditLog(tmp_path / "audit.sqlite3")
    try:
        log.append(AuditRecord(T0, "root", "account.passwd", "a@cantho.gov.vn",
                               {"password_hash": "$argon2id$old"},
                               {"password_hash": "$argon2id$new", "temporary_password": "Tm#p4ss", "state": "x"}))
    finally:
        log.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("audit.sqlite3*"))  # closed: the WAL is checkpointed
    assert b"argon2id" not in raw and b"Tm#p4ss" not in raw


def test_records_cannot_be_changed_or_deleted(tmp_path: Path) -> None:
    """The file itself refuses UPDATE and DELETE on the log (triggers), even from another connection."""
    log = AuditLog(tmp_path / "audit.sqlite3")
    log.append(AuditRecord(T0, "root", "account.add", "a@cantho.gov.vn"))
    log.close()
    db = sqlite3.connect(tmp_path / "audit.sqlite3")
    try:
        for sql in ("UPDATE audit SET actor = 'x'", "DELETE FROM audit"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                db.execute(sql)
    finally:
        db.close()


def test_the_file_is_private_to_the_service_user(tmp_path: Path) -> None:
    """The log and its WAL files are created 0600."""
    AuditLog(tmp_path / "audit.sqlite3").close()
    for name in ("audit.sqlite3", "audit.sqlite3-wal", "audit.sqlite3-shm"):
        path = tmp_path / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
