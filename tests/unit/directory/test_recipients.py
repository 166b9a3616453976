"""The Postfix recipient mirror of an SQLite directory: derived on every write, rebuilt when it drifts."""

from __future__ import annotations

import sqlite3
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from congvu.directory.model import Account
from congvu.directory.sqlite_store import SqliteAccountStore
from congvu.rules.lifecycle import AccountState

T0 = datetime(2026, 1, 5, tzinfo=UTC)


def person(local: str, **kw: object) -> Account:
    return Account(local_part=local, domain="cantho.gov.vn", full_name="Lê Văn Thử", mailbox_type="personal",
                   created_at=T0, **kw)  # type: ignore[arg-type]


def postfix_view(path: Path) -> dict[str, str]:
    """What Postfix's two queries see: mailboxes map to themselves, aliases to their mailbox."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT address, mailbox FROM recipients").fetchall())
    finally:
        db.close()


@pytest.fixture
def store(tmp_path: Path) -> SqliteAccountStore:
    s = SqliteAccountStore(tmp_path / "d.sqlite3", recipients=tmp_path / "maps" / "r.sqlite3")
    yield s
    s.close()


def test_the_mirror_follows_adds_aliases_states_and_deletes(store: SqliteAccountStore, tmp_path: Path) -> None:
    """Every address that receives mail has a row; aliases point at their mailbox; cancelled/reclaimed vanish."""
    m = tmp_path / "maps" / "r.sqlite3"
    store.add(person("nvminh", aliases=("hotro@cantho.gov.vn",)))
    store.add(person("ttlan"))
    assert postfix_view(m) == {"nvminh@cantho.gov.vn": "nvminh@cantho.gov.vn",
                               "hotro@cantho.gov.vn": "nvminh@cantho.gov.vn",
                               "ttlan@cantho.gov.vn": "ttlan@cantho.gov.vn"}
    store.update("nvminh@cantho.gov.vn", aliases=("banbientap@cantho.gov.vn",))
    assert postfix_view(m)["banbientap@cantho.gov.vn"] == "nvminh@cantho.gov.vn" and "hotro@cantho.gov.vn" not in \
        postfix_view(m)
    for state in (AccountState.LOCKED, AccountState.SUSPENDED, AccountState.MUST_CHANGE_PASSWORD):
        store.update("ttlan@cantho.gov.vn", state=state)
        assert "ttlan@cantho.gov.vn" in postfix_view(m), state  # still receives mail
    for state in (AccountState.RECLAIMED, AccountState.CANCELLED):
        store.update("nvminh@cantho.gov.vn", state=state)
        assert not {"nvminh@cantho.gov.vn", "banbientap@cantho.gov.vn"} & postfix_view(m).keys(), state
    store.delete("ttlan@cantho.gov.vn")
    assert postfix_view(m) == {}


def test_a_drifted_mirror_is_rebuilt_when_the_directory_is_opened(tmp_path: Path) -> None:
    """A mirror lost or edited behind congvu's back (its generation differs) is rewritten from the directory."""
    m = tmp_path / "maps" / "r.sqlite3"
    s = SqliteAccountStore(tmp_path / "d.sqlite3", recipients=m)
    s.add(person("nvminh"))
    s.close()
    db = sqlite3.connect(m)
    db.execute("DELETE FROM recipients")
    db.execute("UPDATE mirror SET value = value - 1")
    db.commit()
    db.close()
    SqliteAccountStore(tmp_path / "d.sqlite3", recipients=m).close()
    assert postfix_view(m) == {"nvminh@cantho.gov.vn": "nvminh@cantho.gov.vn"}
    m.unlink()
    SqliteAccountStore(tmp_path / "d.sqlite3", recipients=m).close()
    assert postfix_view(m) == {"nvminh@cantho.gov.vn": "nvminh@cantho.gov.vn"}


def test_postfix_can_read_the_mirror_with_read_permission_only(store: SqliteAccountStore, tmp_path: Path) -> None:
    """Rollback journal (no -wal/-shm to create) and mode 0640; the directory's own files stay 0600."""
    store.add(person("nvminh"))
    m = tmp_path / "maps" / "r.sqlite3"
    assert stat.S_IMODE(m.stat().st_mode) == 0o640 and not m.with_name("r.sqlite3-wal").exists()
    assert stat.S_IMODE((tmp_path / "d.sqlite3").stat().st_mode) == 0o600
    db = sqlite3.connect(f"file:{m}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        db.close()
