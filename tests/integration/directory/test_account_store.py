"""The backend-neutral AccountStore contract, run on SQLite and on LDAP (slapd), plus SQLite's own guarantees."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from congvu.directory.model import Account, AccountExists, AccountNotFound, AccountStore, DirectoryError
from congvu.directory.sqlite_store import MIGRATIONS, SCHEMA_VERSION, SqliteAccountStore
from congvu.rules.lifecycle import AccountState

REPO = Path(__file__).resolve().parents[3]
T0 = datetime(2025, 10, 26, 8, 30, 15, tzinfo=UTC)


def person(local: str, **kw: object) -> Account:
    base = Account(local_part=local, domain="cantho.gov.vn", full_name="Nguyễn Văn Minh",
                   mailbox_type="personal", agency="sonv", unit="Văn phòng", title="Chuyên viên",
                   display_name="Nguyễn Văn Minh - Sở Nội vụ",
                   password_hash="$argon2id$v=19$m=1024,t=1,p=1$c2FsdA$aGFzaA",
                   created_at=T0, password_changed_at=T0, must_change=True)
    return replace(base, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the contract


def test_add_then_get_returns_every_field(account_store: AccountStore) -> None:
    """Every field written by add comes back from get, Vietnamese text and timestamps included."""
    a = person("nvminh", aliases=("minh.nv@cantho.gov.vn",), delegates=(), quota_override=3 * 1024**3,
               last_login_at=T0 + timedelta(days=3), password_history=("$6$old2", "$2b$old1"),
               state=AccountState.LOCKED, state_reason="Cảnh báo an ninh", state_by="admin",
               state_changed_at=T0 + timedelta(days=2))
    account_store.add(a)
    got = account_store.get("nvminh@cantho.gov.vn")
    assert got == a


def test_get_is_case_insensitive_and_finds_aliases(account_store: AccountStore) -> None:
    """Addresses and aliases are compared lower-cased; an alias returns its account."""
    account_store.add(person("nvminh", aliases=("Minh.NV@cantho.gov.vn",)))
    assert account_store.get("NVMinh@CanTho.gov.vn") is not None
    by_alias = account_store.get("minh.nv@cantho.gov.vn")
    assert by_alias is not None and by_alias.address == "nvminh@cantho.gov.vn"
    assert by_alias.aliases == ("minh.nv@cantho.gov.vn",)
    assert account_store.get("nobody@cantho.gov.vn") is None


def test_unit_mailbox_with_delegates_round_trips(account_store: AccountStore) -> None:
    """A unit mailbox keeps its delegates, sorted and lower-cased, and no quota override."""
    account_store.add(person("nvminh"))
    account_store.add(person("vanphong.sonv", full_name="Văn phòng Sở Nội vụ", mailbox_type="unit",
                             delegates=("NVMinh@cantho.gov.vn", "ltlan@cantho.gov.vn"), must_change=False))
    got = account_store.get("vanphong.sonv@cantho.gov.vn")
    assert got is not None
    assert got.mailbox_type == "unit" and got.must_change is False and got.quota_override is None
    assert got.delegates == ("ltlan@cantho.gov.vn", "nvminh@cantho.gov.vn")


def test_update_changes_fields_and_persists(account_store: AccountStore) -> None:
    """update returns the new record and the next get sees the same."""
    account_store.add(person("nvminh"))
    new = account_store.update("nvminh@cantho.gov.vn", mailbox_type="agency", must_change=False,
                               quota_override=12 * 1024**3, state=AccountState.SUSPENDED,
                               state_reason="Không đăng nhập 3 tháng", state_by="cron",
                               last_login_at=T0 + timedelta(hours=1), title="Phó Giám đốc",
                               password_history=("$6$a", "$6$b", "$6$c"))
    assert new.mailbox_type == "agency" and new.quota_override == 12 * 1024**3
    assert account_store.get("nvminh@cantho.gov.vn") == new
    assert new.password_history == ("$6$a", "$6$b", "$6$c")
    cleared = account_store.update("nvminh@cantho.gov.vn", quota_override=None, last_login_at=None, title="")
    assert (cleared.quota_override, cleared.last_login_at, cleared.title) == (None, None, "")
    assert account_store.get("nvminh@cantho.gov.vn") == cleared


def test_update_through_an_alias_and_alias_changes(account_store: AccountStore) -> None:
    """update finds the account by alias; dropped aliases stop resolving, new ones start."""
    account_store.add(person("nvminh", aliases=("old@cantho.gov.vn",)))
    account_store.update("old@cantho.gov.vn", aliases=("new@cantho.gov.vn",))
    assert account_store.get("old@cantho.gov.vn") is None
    got = account_store.get("new@cantho.gov.vn")
    assert got is not None and got.address == "nvminh@cantho.gov.vn"


def test_update_missing_raises_not_found(account_store: AccountStore) -> None:
    """Changing an account that does not exist raises AccountNotFound."""
    with pytest.raises(AccountNotFound):
        account_store.update("ghost@cantho.gov.vn", title="x")


def test_duplicate_address_or_alias_raises_exists(account_store: AccountStore) -> None:
    """An address or alias already used, as address or alias, cannot be taken again."""
    account_store.add(person("nvminh", aliases=("minh@cantho.gov.vn",)))
    with pytest.raises(AccountExists):
        account_store.add(person("NVMINH"))
    with pytest.raises(AccountExists):
        account_store.add(person("minh"))
    with pytest.raises(AccountExists):
        account_store.add(person("ltlan", aliases=("nvminh@cantho.gov.vn",)))
    account_store.add(person("ltlan"))
    with pytest.raises(AccountExists):
        account_store.update("ltlan@cantho.gov.vn", aliases=("minh@cantho.gov.vn",))
    assert account_store.get("ltlan@cantho.gov.vn") is not None
    assert account_store.get("minh@cantho.gov.vn").address == "nvminh@cantho.gov.vn"  # type: ignore[union-attr]


def test_removed_alias_is_free_again(account_store: AccountStore) -> None:
    """Once an alias is dropped another account may take it."""
    account_store.add(person("nvminh", aliases=("minh@cantho.gov.vn",)))
    account_store.update("nvminh@cantho.gov.vn", aliases=())
    account_store.add(person("ltlan", aliases=("minh@cantho.gov.vn",)))
    assert account_store.get("minh@cantho.gov.vn").address == "ltlan@cantho.gov.vn"  # type: ignore[union-attr]


def test_delete_removes_the_account_and_its_aliases(account_store: AccountStore) -> None:
    """delete removes the record; deleting it again raises AccountNotFound."""
    account_store.add(person("nvminh", aliases=("minh@cantho.gov.vn",)))
    account_store.delete("nvminh@cantho.gov.vn")
    assert account_store.get("nvminh@cantho.gov.vn") is None
    assert account_store.get("minh@cantho.gov.vn") is None
    with pytest.raises(AccountNotFound):
        account_store.delete("nvminh@cantho.gov.vn")


def test_list_all_and_by_agency(account_store: AccountStore) -> None:
    """list gives every account, or only one agency's."""
    account_store.add(person("nvminh"))
    account_store.add(person("ltlan", agency="sotc"))
    account_store.add(person("sonv", mailbox_type="agency"))
    assert sorted(a.address for a in account_store.list()) >= [
        "ltlan@cantho.gov.vn", "nvminh@cantho.gov.vn", "sonv@cantho.gov.vn"]
    assert sorted(a.address for a in account_store.list("sonv")) == ["nvminh@cantho.gov.vn", "sonv@cantho.gov.vn"]
    assert [a.address for a in account_store.list("sotc")] == ["ltlan@cantho.gov.vn"]
    assert list(account_store.list("no-such-agency")) == []


def test_local_parts_include_aliases(account_store: AccountStore) -> None:
    """local_parts covers addresses and aliases, for the clash rules of CT25-4.3b."""
    account_store.add(person("nvminh", aliases=("minh.nv@cantho.gov.vn",)))
    account_store.add(person("nvminh1"))
    parts = account_store.local_parts()
    assert {"nvminh", "nvminh1", "minh.nv"} <= parts
    assert "nvminh2" not in parts


@pytest.mark.parametrize("hostile", [
    "*", "*@cantho.gov.vn", ")(", "nvminh)(mail=*", "nvminh@cantho.gov.vn)(|(mail=*",
    "\x00", "nvminh\x00@cantho.gov.vn", "\\00", "\udcff\udcfe@cantho.gov.vn", "nvminh\udc80",
    "", " ", "%", "_@cantho.gov.vn", "nvmin_", "NVMINH%", "a" * 2000,
])
def test_hostile_usernames_return_none(account_store: AccountStore, hostile: str) -> None:
    """Filter metacharacters, NUL, LIKE wildcards and non-UTF-8 never match an account nor raise."""
    account_store.add(person("nvminh"))
    assert account_store.get(hostile) is None


def test_times_come_back_as_utc(account_store: AccountStore) -> None:
    """A time written with another offset comes back as the same instant in UTC."""
    ict = datetime(2025, 10, 26, 15, 30, 15, tzinfo=timezone(timedelta(hours=7)))
    account_store.add(person("nvminh", created_at=ict))
    got = account_store.get("nvminh@cantho.gov.vn")
    assert got is not None and got.created_at is not None
    assert got.created_at == ict and got.created_at.utcoffset() == timedelta(0)


# --------------------------------------------------------------------------- SQLite only


def test_sqlite_schema_version_and_wal(tmp_path: Path) -> None:
    """A new file is migrated to the current version, in WAL mode; reopening does not migrate again."""
    path = tmp_path / "d.sqlite3"
    SqliteAccountStore(path).close()
    store = SqliteAccountStore(path)
    assert store.schema_version() == SCHEMA_VERSION
    assert store.check_schema() == []
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT count(*) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


def test_sqlite_migrates_a_version_1_file(tmp_path: Path) -> None:
    """A file made by schema version 1 is upgraded in place and keeps its accounts."""
    path = tmp_path / "d.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (1)")
    db.execute("INSERT INTO accounts (address, local_part, domain, full_name, mailbox_type, state, created_at) "
               "VALUES ('nvminh@cantho.gov.vn', 'nvminh', 'cantho.gov.vn', 'Nguyễn Văn Minh', 'personal', "
               "'suspended', '2025-01-02T03:04:05+00:00')")
    db.execute("INSERT INTO aliases VALUES ('minh@cantho.gov.vn', 1)")
    db.commit()
    db.close()
    store = SqliteAccountStore(path)
    assert store.schema_version() == SCHEMA_VERSION >= 2
    got = store.get("minh@cantho.gov.vn")
    assert got is not None and got.state is AccountState.SUSPENDED and got.state_changed_at is None
    assert got.created_at == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    store.update("nvminh@cantho.gov.vn", state_changed_at=T0)
    assert store.get("nvminh@cantho.gov.vn").state_changed_at == T0  # type: ignore[union-attr]
    store.close()


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    """A file written by a newer congvu is refused, not silently used."""
    path = tmp_path / "d.sqlite3"
    SqliteAccountStore(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(DirectoryError, match="newer"):
        SqliteAccountStore(path)


def test_sqlite_sees_writes_of_another_connection(tmp_path: Path) -> None:
    """Two stores on one file (two daemons) see each other's writes at once."""
    a, b = SqliteAccountStore(tmp_path / "d.sqlite3"), SqliteAccountStore(tmp_path / "d.sqlite3")
    a.add(person("nvminh"))
    assert b.get("nvminh@cantho.gov.vn") is not None
    b.update("nvminh@cantho.gov.vn", must_change=False)
    assert a.get("nvminh@cantho.gov.vn").must_change is False  # type: ignore[union-attr]
    a.close()
    b.close()


_WORKER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from congvu.directory.model import Account, AccountExists
    from congvu.directory.sqlite_store import SqliteAccountStore
    path, me, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    store = SqliteAccountStore(path, timeout=30)
    while not go.exists():
        time.sleep(0.01)
    won = []
    for i in range(150):
        store.add(Account(local_part=f"{me}{i}", domain="cantho.gov.vn", full_name="Trần Thị B",
                          mailbox_type="personal"))
        try:
            store.add(Account(local_part=f"shared{i}", domain="cantho.gov.vn", full_name=me,
                              mailbox_type="personal"))
            won.append(i)
        except AccountExists:
            pass
        store.update("counter@cantho.gov.vn", state_reason=f"{me}{i}")
    print(json.dumps(won))
""")


def test_sqlite_two_processes_write_the_same_file(tmp_path: Path) -> None:
    """Two processes adding at once lose no write, and each contested address goes to exactly one of them."""
    path = tmp_path / "d.sqlite3"
    store = SqliteAccountStore(path)
    store.add(person("counter"))
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(path), name, str(go)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("p", "q")]
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(set(json.loads(out)))
    assert results[0] | results[1] == set(range(150))
    assert not results[0] & results[1]
    addresses = {a.address for a in store.list()}
    assert len(addresses) == 1 + 150 * 3
    for i in range(150):
        winner = store.get(f"shared{i}@cantho.gov.vn")
        assert winner is not None
        assert i in results[0 if winner.full_name == "p" else 1]
    assert store.get("counter@cantho.gov.vn").state_reason in {"p149", "q149"}  # type: ignore[union-attr]
    store.close()
