"""The shipped Postfix lookup tables (conf/postfix/maps/) read by Postfix's own code, on both directories.

``postmap -q`` runs the same dict_sqlite / dict_ldap code as proxymap does for smtpd, over
the shipped ``.cf`` files with only their site values substituted (the database path; the
slapd URL and the postfix account's password).  The states decide delivery as the README's
table says: locked and suspended mailboxes receive, cancelled and reclaimed ones are unknown.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from congvu.directory.model import Account, AccountStore
from congvu.directory.sqlite_store import SqliteAccountStore
from congvu.rules.lifecycle import AccountState
from tests.integration.directory.conftest import ldap_store

MAPS = Path(__file__).resolve().parents[3] / "conf" / "postfix" / "maps"
DOMAIN = "cantho.gov.vn"
STATES = {"dangdung": AccountState.ACTIVE, "bikhoa": AccountState.LOCKED, "tamdung": AccountState.SUSPENDED,
          "dahuy": AccountState.CANCELLED, "thuhoi": AccountState.RECLAIMED}
RECEIVES = {"dangdung", "bikhoa", "tamdung"}


def _postmap(kind: str, cf: Path, key: str) -> str:
    """What Postfix's ``kind:`` table ``cf`` answers for ``key`` ("" when not found)."""
    binary = shutil.which("postmap", path="/usr/sbin:/usr/bin")
    if binary is None:
        pytest.fail("postmap not found: apt-get install postfix")
    done = subprocess.run([binary, "-c", str(cf.parent), "-q", key, f"{kind}:{cf}"], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode in (0, 1), done.stderr  # 1: not found; anything else is a broken table
    assert "warning" not in done.stderr and "fatal" not in done.stderr, done.stderr
    return done.stdout.strip()


def _fill(store: AccountStore) -> None:
    for local, state in STATES.items():
        store.add(Account(local_part=local, domain=DOMAIN, full_name=f"Nguyễn Văn {local}",
                          mailbox_type="personal", agency="sonv", state=state,
                          aliases=(f"hopthu.{local}@{DOMAIN}",)))


@pytest.fixture(params=["sqlite", "ldap"])
def maps(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """(kind, mailboxes .cf, aliases .cf): the shipped files, site values substituted, over a filled directory."""
    kind = request.param
    store: AccountStore
    subs: dict[str, str]
    if kind == "sqlite":
        recipients = tmp_path / "maps" / "recipients.sqlite3"
        store = SqliteAccountStore(tmp_path / "directory.sqlite3", recipients=recipients)
        subs = {"/var/lib/congvu/maps/recipients.sqlite3": str(recipients)}
    else:
        slapd: Any = request.getfixturevalue("slapd_server")
        store = ldap_store(slapd)
        subs = {"ldap://127.0.0.1:389": slapd.url,
                "REPLACE-WITH-THE-POSTFIX-ACCOUNT-PASSWORD": slapd.password_file.read_text().strip()}
    (tmp_path / "main.cf").write_text("compatibility_level = 3.6\n", encoding="utf-8")  # postmap -c needs one
    try:
        _fill(store)
        out = []
        for name in ("mailboxes", "aliases"):
            text = (MAPS / f"{kind}-{name}.cf").read_text(encoding="utf-8")
            for old, new in subs.items():
                assert old in text, f"{kind}-{name}.cf no longer has {old!r} to substitute"
                text = text.replace(old, new)
            cf = tmp_path / f"{kind}-{name}.cf"
            cf.write_text(text, encoding="utf-8")
            out.append(cf)
        yield kind, out[0], out[1]
    finally:
        for local in STATES:
            store.delete(f"{local}@{DOMAIN}")
        store.close()


def test_mailboxes_map_knows_every_state_that_receives_and_no_other(maps: tuple[str, Path, Path]) -> None:
    """virtual_mailbox_maps: active, locked, suspended found; cancelled, reclaimed and strangers not."""
    kind, mailboxes, _ = maps
    for local in STATES:
        address = f"{local}@{DOMAIN}"
        assert _postmap(kind, mailboxes, address) == (address if local in RECEIVES else ""), (kind, local)
    assert _postmap(kind, mailboxes, f"khongco@{DOMAIN}") == ""
    assert _postmap(kind, mailboxes, f"hopthu.dangdung@{DOMAIN}") == ""  # an alias is not a mailbox


def test_aliases_map_expands_aliases_of_receiving_mailboxes_only(maps: tuple[str, Path, Path]) -> None:
    """virtual_alias_maps: an alias of a receiving mailbox expands to it; a cancelled one's alias is unknown."""
    kind, _, aliases = maps
    for local in STATES:
        got = _postmap(kind, aliases, f"hopthu.{local}@{DOMAIN}")
        assert got == (f"{local}@{DOMAIN}" if local in RECEIVES else ""), (kind, local, got)
    assert _postmap(kind, aliases, f"dangdung@{DOMAIN}") == ""  # a mailbox is not rewritten


def test_sql_metacharacters_in_a_looked_up_address_find_nothing(maps: tuple[str, Path, Path]) -> None:
    """An address with a quote or an LDAP filter character is quoted by Postfix: no match, no error."""
    kind, mailboxes, aliases = maps
    for hostile in (f"x' OR '1'='1@{DOMAIN}", f"*)(mail=*@{DOMAIN}", f"dangdung@{DOMAIN}' --"):
        assert _postmap(kind, mailboxes, hostile) == ""
        assert _postmap(kind, aliases, hostile) == ""
