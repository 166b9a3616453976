"""``congvu account …`` and ``congvu directory …`` on a real SQLite site (and LDAP for the migration)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import unicodedata
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from congvu.directory.hashing import Hasher
from congvu.directory.sqlite_store import SCHEMA_VERSION, SqliteAccountStore
from congvu.rules.lifecycle import AccountState
from tests.integration.directory.conftest import Site, ldap_store

REPO = Path(__file__).resolve().parents[4]
FAST = Hasher("test")
GB = 1024**3


def add_minh(site: Site, *extra: str) -> dict[str, Any]:
    r = site.run("account", "add", "nvminh@cantho.gov.vn", "--name", "Nguyễn  Văn Minh", "--agency", "sonv",
                 "--type", "personal", "--title", "Chuyên viên", "--agency-name", "Sở Nội vụ", "--json", *extra)
    assert r.code == 0, r.err
    data: dict[str, Any] = json.loads(r.out)
    return data


def stored(site: Site, address: str) -> Any:
    store = SqliteAccountStore(site.db)
    try:
        return store.get(address)
    finally:
        store.close()


# --------------------------------------------------------------------------- account add / show / list


def test_add_creates_account_with_display_name_and_temporary_password(site: Site) -> None:
    """add stores every field, builds "Full Name - Agency" (CT25-4.4) and prints a working temporary password once."""
    data = add_minh(site)
    assert data["address"] == "nvminh@cantho.gov.vn"
    assert data["display_name"] == "Nguyễn Văn Minh - Sở Nội vụ"
    assert data["title"] == "Chuyên viên" and data["mailbox_type"] == "personal"
    assert data["must_change"] is True and data["state"] == "must_change_password"  # CT25-5.2
    assert data["quota"] == 5 * GB and data["quota_override"] is None
    a = stored(site, "nvminh@cantho.gov.vn")
    assert FAST.verify(data["temporary_password"], a.password_hash) == (True, None)
    assert a.created_at is not None and a.created_at == a.password_changed_at


def test_output_never_contains_the_hash(site: Site) -> None:
    """Neither the table nor --json of add, show or list shows the password hash."""
    add_minh(site)
    a = stored(site, "nvminh@cantho.gov.vn")
    outputs = [site.run("account", "show", "nvminh@cantho.gov.vn"),
               site.run("account", "show", "nvminh", "--json"),
               site.run("account", "list"), site.run("account", "list", "--json")]
    for r in outputs:
        assert r.code == 0, r.err
        assert a.password_hash not in r.out and "$argon2" not in r.out
    shown = json.loads(outputs[1].out)
    assert "password_hash" not in shown and "password_history" not in shown
    assert shown["password_set"] is True and shown["rehash_due"] is False


def test_add_refusals_and_usage_errors(site: Site) -> None:
    """Wrong domain or mailbox shape is refused (1), a bad local part or type is a usage error (2), a clash is 1."""
    def add(address: str, kind: str = "personal", agency: str = "sonv") -> int:
        return site.run("account", "add", address, "--name", "Lê Thị Lan", "--agency", agency, "--type", kind).code

    r = site.run("account", "add", "ltlan@gmail.com", "--name", "Lê Thị Lan", "--agency", "sonv", "--type", "personal")
    assert r.code == 1 and "CT25-2" in r.err and "cantho.gov.vn" in r.err
    assert add("Lê.lan@cantho.gov.vn") == 2
    assert add("lt..lan@cantho.gov.vn") == 2
    assert add("ltlan@cantho.gov.vn", kind="boss") == 2
    r = site.run("account", "add", "sonoivu@cantho.gov.vn", "--name", "Sở Nội vụ", "--agency", "sonv",
                 "--type", "agency")
    assert r.code == 1 and "CT25-4.1" in r.err
    r = site.run("account", "add", "vanphong@cantho.gov.vn", "--name", "Văn phòng", "--agency", "sonv",
                 "--type", "unit")
    assert r.code == 1 and "CT25-4.2" in r.err
    assert add("sonv@cantho.gov.vn", kind="agency") == 0
    assert add("vanphong.sonv@cantho.gov.vn", kind="unit") == 0
    assert add("ltlan@cantho.gov.vn") == 0
    r = site.run("account", "add", "ltlan@cantho.gov.vn", "--name", "Lê Thị Lan", "--agency", "sonv",
                 "--type", "personal")
    assert r.code == 1 and "already" in r.err
    r = site.run("account", "add", "ltlan2@cantho.gov.vn", "--name", "Lê Thị Lan", "--agency", "sonv",
                 "--type", "personal", "--quota", "12GB")
    assert r.code == 1 and "CT25-5.1" in r.err
    assert site.run("account", "add", "x@cantho.gov.vn", "--agency", "sonv", "--type", "personal").code == 2


def test_show_and_set_missing_account_exit_4(site: Site) -> None:
    """show, set and passwd on an unknown address exit 4."""
    site.run("directory", "init")
    assert site.run("account", "show", "ghost@cantho.gov.vn").code == 4
    assert site.run("account", "set", "ghost@cantho.gov.vn", "--must-change", "no").code == 4
    assert site.run("account", "passwd", "ghost", "--reason", "quên mật khẩu").code == 4


def test_refusals_cite_the_site_profile(make_site: Callable[..., Site]) -> None:
    """Under cantho-2015 and thanhhoa-2013 a refused shape or a clash cites that regulation, never CT25."""
    ct15 = make_site(profile="cantho-2015")
    add = ("account", "add", "--name", "Nguyễn Văn Minh", "--agency", "sonv")
    r = ct15.run(*add[:2], "sonoivu", *add[2:], "--type", "agency")
    assert r.code == 1 and "CT15-4.2a" in r.err and "CT25" not in r.err
    assert ct15.run(*add[:2], "vpubndninhkieu", *add[2:], "--type", "unit").code == 0  # CT15-4.2b: name on request
    assert ct15.run(*add[:2], "nvminh", *add[2:], "--type", "personal").code == 0
    r = ct15.run(*add[:2], "nvminh", *add[2:], "--type", "personal")
    assert r.code == 1 and "already" in r.err and "CT15-4.2d" in r.err and "CT25" not in r.err
    th13 = make_site(profile="thanhhoa-2013")
    r = th13.run(*add[:2], "nvminh", *add[2:], "--type", "personal")
    assert r.code == 1 and "TH13-3.3" in r.err and ".sonv" in r.err


def test_names_are_stored_nfc_without_the_family_marker(site: Site) -> None:
    """An NFD name, or one with address suggest's "|" marker, is stored and displayed as plain NFC text."""
    nfd = unicodedata.normalize("NFD", "Tôn Nữ | Thị  Hà")
    r = site.run("account", "add", "tntha", "--name", nfd, "--agency", "sonv", "--type", "personal",
                 "--agency-name", "Sở Nội vụ", "--json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert data["full_name"] == "Tôn Nữ Thị Hà" and data["display_name"] == "Tôn Nữ Thị Hà - Sở Nội vụ"
    assert unicodedata.is_normalized("NFC", stored(site, "tntha@cantho.gov.vn").full_name)


def test_missing_account_is_named_in_full(site: Site) -> None:
    """The not-found line names the address that was looked up, with the site domain added."""
    r = site.run("account", "show", "ghost")
    assert r.code == 4 and r.err.strip() == "not found: ghost@cantho.gov.vn"


def test_unusable_store_path_is_one_line_not_a_traceback(make_site: Callable[..., Site], tmp_path: Path) -> None:
    """A state_dir that cannot be created, or a file that is not a database, exits 1 with one line."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n", encoding="utf-8")
    not_db = tmp_path / "not.sqlite3"
    not_db.write_text("not a database, but long enough to have a header of sorts\n" * 100, encoding="utf-8")
    for path in (blocker / "sub" / "directory.sqlite3", not_db):
        bad = make_site(directory={"path": str(path)})
        for argv in (("account", "list"), ("directory", "init"), ("directory", "export", "--format", "csv", "-")):
            r = bad.run(*argv)
            assert r.code == 1, (argv, r.err)
            assert r.err.count("\n") == 1 and "Traceback" not in r.err and str(path) in r.err
            assert r.err.count(str(path)) == 1 and r.err.startswith("congvu: directory unavailable: ")


def test_list_by_agency_and_state(site: Site) -> None:
    """list --agency and --state filter; the table has one row per account."""
    add_minh(site)
    assert site.run("account", "add", "ltlan@cantho.gov.vn", "--name", "Lê Thị Lan", "--agency", "sotc",
                    "--type", "personal").code == 0
    r = site.run("account", "list", "--agency", "sonv", "--json")
    assert [a["address"] for a in json.loads(r.out)] == ["nvminh@cantho.gov.vn"]
    table = site.run("account", "list").out.splitlines()
    assert len(table) == 4 and table[0].split()[:3] == ["address", "name", "type"]
    site.run("account", "set", "ltlan", "--state", "locked", "--reason", "Cảnh báo an ninh")
    r = site.run("account", "list", "--state", "locked", "--json")
    assert [a["address"] for a in json.loads(r.out)] == ["ltlan@cantho.gov.vn"]


# --------------------------------------------------------------------------- account set / passwd


def test_set_fields(site: Site) -> None:
    """set changes must_change, title, aliases and the state with its reason and author."""
    add_minh(site)
    r = site.run("account", "set", "nvminh@cantho.gov.vn", "--must-change", "no", "--title", "Phó Trưởng phòng",
                 "--alias", "minh.nv", "--alias", "minh@cantho.gov.vn", "--json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert data["must_change"] is False and data["title"] == "Phó Trưởng phòng"
    assert data["aliases"] == ["minh.nv@cantho.gov.vn", "minh@cantho.gov.vn"]
    assert stored(site, "minh@cantho.gov.vn").address == "nvminh@cantho.gov.vn"
    r = site.run("account", "set", "nvminh", "--remove-alias", "minh", "--state", "locked",
                 "--reason", "Vi phạm Điều 3", "--by", "hotro", "--json")
    data = json.loads(r.out)
    assert data["aliases"] == ["minh.nv@cantho.gov.vn"]
    assert (data["state"], data["state_reason"], data["state_by"]) == ("locked", "Vi phạm Điều 3", "hotro")
    locked = stored(site, "nvminh@cantho.gov.vn")
    assert locked.state is AccountState.LOCKED and locked.state_changed_at is not None


def test_state_changes_follow_the_lifecycle(site: Site) -> None:
    """set --state goes through rules/lifecycle.py: lock and restore cite their articles; a cancel is final."""
    add_minh(site)
    r = site.run("account", "set", "nvminh", "--state", "locked", "--reason", "Cảnh báo an ninh")
    assert r.code == 0 and "CT25-6.4a" in r.out
    r = site.run("account", "passwd", "nvminh", "--reason", "quên mật khẩu")
    assert r.code == 1 and "restore" in r.err
    r = site.run("account", "set", "nvminh", "--state", "active", "--reason", "Cơ quan đề nghị khôi phục")
    assert r.code == 0 and "CT25-6.6" in r.out
    assert site.run("account", "set", "nvminh", "--state", "cancelled", "--reason", "Nghỉ hưu").code == 0
    r = site.run("account", "set", "nvminh", "--state", "active", "--reason", "nhầm")
    assert r.code == 1 and "cancelled" in r.err
    assert stored(site, "nvminh@cantho.gov.vn").state is AccountState.CANCELLED


def test_set_usage_errors(site: Site) -> None:
    """--state without --reason, an unknown state, or nothing to change are usage errors (2)."""
    add_minh(site)
    assert site.run("account", "set", "nvminh", "--state", "locked").code == 2
    assert site.run("account", "set", "nvminh", "--state", "frozen", "--reason", "x").code == 2
    assert site.run("account", "set", "nvminh").code == 2
    assert site.run("account", "set", "nvminh", "--quota", "lots").code == 2
    assert site.run("account", "set", "nvminh", "--must-change", "maybe").code == 2


def test_set_quota_follows_the_type_limits(site: Site) -> None:
    """A 12GB override is refused for a personal mailbox (CT25-5.1 ceiling 5GB) and allowed for an agency one."""
    add_minh(site)
    r = site.run("account", "set", "nvminh", "--quota", "12GB")
    assert r.code == 1 and "CT25-5.1" in r.err and "5GB" in r.err
    assert stored(site, "nvminh@cantho.gov.vn").quota_override is None
    r = site.run("account", "set", "nvminh", "--type", "agency", "--quota", "12GB", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["quota"] == 12 * GB
    r = site.run("account", "set", "nvminh", "--type", "personal")
    assert r.code == 1 and "CT25-5.1" in r.err
    r = site.run("account", "set", "nvminh", "--quota", "default", "--json")
    assert json.loads(r.out)["quota_override"] is None and json.loads(r.out)["quota"] == 10 * GB


def test_delegates_only_on_shared_mailboxes(site: Site) -> None:
    """A unit mailbox takes existing accounts as delegates; a personal one refuses (CT25-3.2); unknown ones are 4."""
    add_minh(site)
    assert site.run("account", "add", "vanphong.sonv@cantho.gov.vn", "--name", "Văn phòng Sở Nội vụ",
                    "--agency", "sonv", "--type", "unit").code == 0
    r = site.run("account", "set", "vanphong.sonv", "--delegate", "nvminh", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["delegates"] == ["nvminh@cantho.gov.vn"]
    assert site.run("account", "set", "vanphong.sonv", "--delegate", "ghost").code == 4
    r = site.run("account", "set", "nvminh", "--delegate", "vanphong.sonv")
    assert r.code == 1 and "CT25-3.2" in r.err
    r = site.run("account", "set", "vanphong.sonv", "--type", "personal")
    assert r.code == 1
    r = site.run("account", "set", "vanphong.sonv", "--remove-delegate", "nvminh", "--json")
    assert json.loads(r.out)["delegates"] == []


def test_alias_taken_by_another_account_is_refused(site: Site) -> None:
    """An alias that is another account's address exits 1 and changes nothing."""
    add_minh(site)
    assert site.run("account", "add", "ltlan@cantho.gov.vn", "--name", "Lê Thị Lan", "--agency", "sonv",
                    "--type", "personal").code == 0
    r = site.run("account", "set", "ltlan", "--alias", "nvminh")
    assert r.code == 1 and "nvminh@cantho.gov.vn" in r.err
    assert stored(site, "ltlan@cantho.gov.vn").aliases == ()
    assert site.run("account", "set", "ltlan", "--alias", "minh@gmail.com").code == 1


def test_passwd_sets_a_new_temporary_password_and_keeps_history(site: Site) -> None:
    """passwd prints a new password once, sets must_change, and moves the old hash into the history."""
    first = add_minh(site)["temporary_password"]
    site.run("account", "set", "nvminh", "--must-change", "no")
    before = stored(site, "nvminh@cantho.gov.vn")
    r = site.run("account", "passwd", "nvminh@cantho.gov.vn", "--reason", "quên mật khẩu")
    assert r.code == 0, r.err
    line = [ln for ln in r.out.splitlines() if "temporary password" in ln]
    assert len(line) == 1
    temp = line[0].rsplit(": ", 1)[1]
    assert temp != first and len(temp) >= 16
    after = stored(site, "nvminh@cantho.gov.vn")
    assert after.must_change is True and after.state is AccountState.MUST_CHANGE_PASSWORD
    assert FAST.verify(temp, after.password_hash)[0] and not FAST.verify(first, after.password_hash)[0]
    assert after.password_history[0] == before.password_hash
    assert FAST.matches_any(first, after.password_history)
    assert after.password_changed_at >= before.password_changed_at


def test_history_is_trimmed_to_the_configured_length(make_site: Callable[..., Site], tmp_path: Path) -> None:
    """With [password] history = 2, only the last two replaced hashes are kept."""
    site = make_site()
    site.config.write_text(site.config.read_text() + "\n[password]\nhistory = 2\n", encoding="utf-8")
    add_minh(site)
    hashes = []
    for _ in range(4):
        hashes.append(stored(site, "nvminh@cantho.gov.vn").password_hash)
        assert site.run("account", "passwd", "nvminh", "--reason", "quên mật khẩu").code == 0
    assert stored(site, "nvminh@cantho.gov.vn").password_history == (hashes[3], hashes[2])


def test_cli_runs_as_a_real_process(site: Site) -> None:
    """The module runs as a separate process with the documented exit codes."""
    add_minh(site)
    env = {**os.environ, "CONGVU_CONFIG": str(site.config)}
    show = subprocess.run([sys.executable, "-m", "congvu.cli", "account", "show", "nvminh", "--json"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert show.returncode == 0, show.stderr
    assert json.loads(show.stdout)["full_name"] == "Nguyễn Văn Minh"
    missing = subprocess.run([sys.executable, "-m", "congvu.cli", "account", "show", "ghost"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 4 and "ghost" in missing.stderr


# --------------------------------------------------------------------------- directory init / export / import


def test_directory_init_creates_the_schema(site: Site) -> None:
    """init creates the SQLite file at the current schema version; running it again is harmless."""
    r = site.run("directory", "init")
    assert r.code == 0, r.err
    assert site.db.exists() and f"schema version {SCHEMA_VERSION}" in r.out
    assert site.run("directory", "init").code == 0
    store = SqliteAccountStore(site.db)
    assert store.schema_version() == SCHEMA_VERSION
    store.close()


def _populate(site: Site) -> None:
    add_minh(site)
    assert site.run("account", "add", "vanphong.sonv@cantho.gov.vn", "--name", "Văn phòng Sở Nội vụ",
                    "--agency", "sonv", "--type", "unit", "--unit", "Văn phòng").code == 0
    assert site.run("account", "set", "vanphong.sonv", "--delegate", "nvminh", "--alias", "vp.sonv",
                    "--quota", "20GB").code == 0
    assert site.run("account", "passwd", "nvminh", "--reason", "quên mật khẩu").code == 0
    assert site.run("account", "set", "nvminh", "--state", "suspended", "--reason", "Không đăng nhập: 3 tháng",
                    "--by", "cron").code == 0
    store = SqliteAccountStore(site.db)
    legacy = "$6$rounds=1000$salt$" + "x" * 86
    store.update("nvminh@cantho.gov.vn", last_login_at=stored(site, "nvminh@cantho.gov.vn").created_at,
                 password_history=(*store.get("nvminh@cantho.gov.vn").password_history, legacy))  # type: ignore[union-attr]
    store.close()


def _all(site: Site) -> list[Any]:
    store = SqliteAccountStore(site.db)
    try:
        return list(store.list())
    finally:
        store.close()


def test_export_import_round_trips_in_both_formats(site: Site, make_site: Callable[..., Site],
                                                  tmp_path: Path) -> None:
    """CSV and LDIF carry every field (hashes, history, aliases, delegates, state, times) and re-export identically."""
    _populate(site)
    original = _all(site)
    assert len(original) == 2
    for fmt in ("csv", "ldif"):
        dump = tmp_path / f"accounts.{fmt}"
        r = site.run("directory", "export", "--format", fmt, str(dump))
        assert r.code == 0, r.err
        assert stat.S_IMODE(dump.stat().st_mode) == 0o600
        target = make_site()
        r = target.run("directory", "import", str(dump))
        assert r.code == 0, r.err
        assert "2 added" in r.out
        assert _all(target) == original
        again = tmp_path / f"again.{fmt}"
        assert target.run("directory", "export", "--format", fmt, str(again)).code == 0
        assert again.read_text(encoding="utf-8") == dump.read_text(encoding="utf-8")


def test_import_refuses_existing_accounts_unless_replace(site: Site, tmp_path: Path) -> None:
    """Importing over existing accounts changes nothing without --replace, and overwrites with it."""
    _populate(site)
    dump = tmp_path / "a.csv"
    site.run("directory", "export", "--format", "csv", str(dump))
    site.run("account", "set", "nvminh", "--title", "Giám đốc")
    r = site.run("directory", "import", str(dump))
    assert r.code == 1 and "nvminh@cantho.gov.vn" in r.err
    assert stored(site, "nvminh@cantho.gov.vn").title == "Giám đốc"
    r = site.run("directory", "import", "--replace", str(dump))
    assert r.code == 0, r.err
    assert "2 replaced" in r.out
    assert stored(site, "nvminh@cantho.gov.vn").title == "Chuyên viên"


def test_import_is_all_or_nothing(site: Site, tmp_path: Path) -> None:
    """A record that fails half-way (alias clash) rolls back the records added before it."""
    add_minh(site)
    sheet = tmp_path / "new.csv"
    sheet.write_text("address,full_name,mailbox_type,agency,aliases\n"
                     "ltlan@cantho.gov.vn,Lê Thị Lan,personal,sotc,\n"
                     "tvb@cantho.gov.vn,Trần Văn B,personal,sotc,nvminh@cantho.gov.vn\n", encoding="utf-8")
    r = site.run("directory", "import", str(sheet))
    assert r.code == 1 and "rolled back" in r.err
    assert stored(site, "ltlan@cantho.gov.vn") is None
    assert len(_all(site)) == 1


def test_import_reports_the_bad_line(site: Site, tmp_path: Path) -> None:
    """A malformed record is refused with its line, before anything is written."""
    sheet = tmp_path / "bad.csv"
    sheet.write_text("address,full_name,mailbox_type\nltlan@cantho.gov.vn,Lê Thị Lan,personal\n"
                     "tvb@cantho.gov.vn,Trần Văn B,boss\n", encoding="utf-8")
    r = site.run("directory", "import", str(sheet))
    assert r.code == 1 and "line 3" in r.err and "mailbox_type" in r.err
    ldif = tmp_path / "bad.ldif"
    ldif.write_text("version: 1\n\ndn: mail=x@cantho.gov.vn,dc=x\nmail: x@cantho.gov.vn\ncn: X\n"
                    "congvuMailboxType: personal\nfoo: bar\n", encoding="utf-8")
    r = site.run("directory", "import", str(ldif))
    assert r.code == 1 and "foo" in r.err
    assert _all(site) == []


def test_export_sqlite_then_import_into_ldap(site: Site, make_site: Callable[..., Site], tmp_path: Path,
                                             slapd_server: Any) -> None:
    """A site moves from embedded SQLite to LDAP with every account and hash intact, and back again."""
    _populate(site)
    original = _all(site)
    dump = tmp_path / "move.ldif"
    assert site.run("directory", "export", "--format", "ldif", str(dump)).code == 0
    ldap_site = make_site(directory=slapd_server.directory_overrides())
    assert ldap_site.run("directory", "init").code == 0
    store = ldap_store(slapd_server)
    for leftover in list(store.list()):  # the session's slapd is shared: move into an empty directory
        store.delete(leftover.address)
    try:
        r = ldap_site.run("directory", "import", str(dump))
        assert r.code == 0, r.err
        for a in original:
            assert store.get(a.address) == a
        back = tmp_path / "back.csv"
        assert ldap_site.run("directory", "export", "--format", "csv", str(back)).code == 0
        home = make_site()
        assert home.run("directory", "import", str(back)).code == 0
        assert _all(home) == original
    finally:
        for a in original:
            if store.get(a.address) is not None:
                store.delete(a.address)
        store.close()


# --------------------------------------------------------------------------- lockouts and the audit log


def _lock_out(site: Site, address: str, until_in: float = 900.0) -> None:
    """What authd does after too many wrong passwords: a lock on the account's failure key."""
    from congvu.config import load_config
    from congvu.directory.counters import open_counters

    counters = open_counters(load_config(site.config))
    now = time.time()
    try:
        counters.record_failure(f"authfail:user:{address}", "fp", timedelta(minutes=15), now)
        counters.lock(f"authfail:user:{address}", now + until_in, now, "10 distinct wrong passwords within 15m, "
                      "the last from 192.0.2.7 (imap)")
    finally:
        counters.close()


def _audit(site: Site) -> list[Any]:
    from congvu.directory.audit import AuditLog

    log = AuditLog(site.root / "var" / "audit.sqlite3")
    try:
        return list(log.records())
    finally:
        log.close()


def test_show_says_locked_out_since_until_and_why(site: Site) -> None:
    """A lockout is part of the account: show names since/until (UTC+7) and the reason; JSON carries it too."""
    add_minh(site)
    r = site.run("account", "show", "nvminh")
    assert r.code == 0 and next(x for x in r.out.splitlines() if x.startswith("lockout")).split() == ["lockout", "no"]
    _lock_out(site, "nvminh@cantho.gov.vn")
    r = site.run("account", "show", "nvminh")
    line = next(x for x in r.out.splitlines() if x.startswith("lockout"))
    assert "locked out since" in line and "(UTC+7)" in line and "192.0.2.7 (imap)" in line and "unlock" in line
    data = json.loads(site.run("account", "show", "nvminh", "--json").out)
    assert data["lockout"]["reason"].startswith("10 distinct wrong passwords")


def test_unlock_lifts_the_lockout_and_is_audited(site: Site) -> None:
    """unlock needs --reason, lifts the lock and the failures, and appends who/what/why to the audit log."""
    add_minh(site)
    _lock_out(site, "nvminh@cantho.gov.vn")
    assert site.run("account", "unlock", "nvminh").code == 2  # --reason is required
    r = site.run("account", "unlock", "nvminh", "--reason", "người dùng gọi điện xác minh", "--ref", "YC-77")
    assert r.code == 0 and "lockout lifted" in r.out, r.err
    assert json.loads(site.run("account", "show", "nvminh", "--json").out)["lockout"] is None
    rec = [x for x in _audit(site) if x.action == "account.unlock"]
    assert len(rec) == 1 and rec[0].subject == "nvminh@cantho.gov.vn" and rec[0].ref == "YC-77"
    assert rec[0].reason == "người dùng gọi điện xác minh" and rec[0].after == {"lockout": None}
    assert rec[0].before["lockout"]["reason"].startswith("10 distinct") and rec[0].rule_id == "CT25-3.2"
    r = site.run("account", "unlock", "nvminh", "--reason", "again")
    assert r.code == 0 and "not locked out" in r.out
    assert len([x for x in _audit(site) if x.action == "account.unlock"]) == 1  # no change, no record


def test_passwd_lifts_the_lockout_and_every_change_is_audited(site: Site) -> None:
    """add, set and passwd each leave one record (no hash, no password); passwd also lifts a lockout."""
    data = add_minh(site, "--reason", "CV 12/SNV: cấp hộp thư mới", "--ref", "CV-12")
    assert site.run("account", "set", "nvminh", "--title", "Phó Giám đốc", "--reason", "bổ nhiệm").code == 0
    _lock_out(site, "nvminh@cantho.gov.vn")
    r = site.run("account", "passwd", "nvminh", "--reason", "quên mật khẩu", "--json")
    assert r.code == 0
    temp = json.loads(r.out)["temporary_password"]
    assert json.loads(r.out)["lockout"] is None
    records = _audit(site)
    assert [x.action for x in records] == ["account.add", "account.set", "account.passwd"]
    assert records[0].ref == "CV-12" and records[0].after["full_name"] == "Nguyễn Văn Minh"
    assert records[1].before == {"title": "Chuyên viên"} and records[1].after == {"title": "Phó Giám đốc"}
    assert records[2].before["lockout"]["reason"].startswith("10 distinct") and records[2].after["lockout"] is None
    assert all(x.actor for x in records)
    raw = b"".join(p.read_bytes() for p in (site.root / "var").glob("audit.sqlite3*"))
    assert temp.encode() not in raw and data["temporary_password"].encode() not in raw and b"argon2" not in raw
