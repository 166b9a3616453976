"""LdapAccountStore against a real slapd: CRUD, hostile input, the attribute map, schema check, TLS, ACL."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime
from typing import cast

import ldap3
import pytest
from twisted.logger import ILogObserver, globalLogPublisher

from congvu.directory.ldap_mapping import FIELD_ATTRIBUTES, hash_from_ldap, hash_to_ldap
from congvu.directory.ldap_store import LdapAccountStore
from congvu.directory.model import (
    Account,
    AccountExists,
    AccountNotFound,
    DirectoryError,
    DirectoryUnavailable,
    normalise,
)
from congvu.rules.lifecycle import AccountState
from tests.integration.directory.ldap_helpers import DOMAIN, account, entry, ldap_accounts, make_store, wipe
from tests.integration.servers.slapd import SlapdServer

__all__ = ["ldap_accounts"]  # the fixture, imported so pytest finds it here

pytestmark = pytest.mark.integration


def test_every_account_field_has_an_attribute() -> None:
    """No Account field is silently dropped: each one but the address maps onto an LDAP attribute."""
    names = {f.name for f in dataclasses.fields(Account)} - {"local_part", "domain"}
    assert names == set(FIELD_ATTRIBUTES)


def test_add_get_roundtrip_keeps_every_field(ldap_accounts: LdapAccountStore, slapd_server: SlapdServer) -> None:
    """An account comes back field for field, by address and by alias, case-insensitively."""
    a = account("nvminh")
    ldap_accounts.add(a)
    assert ldap_accounts.get("nvminh@cantho.gov.vn") == normalise(a)
    assert ldap_accounts.get("NVMinh.Alias@Cantho.Gov.Vn") == normalise(a)
    assert ldap_accounts.get("nobody@cantho.gov.vn") is None
    raw = entry(slapd_server, "nvminh@cantho.gov.vn")
    assert raw["congvuAccountState"] == ["locked"]
    assert raw["congvuCreatedAt"] == ["20250102030405.123456Z"]
    assert raw["o"] == ["sonv"] and raw["ou"] == ["Phòng Tổ chức"]
    assert raw["sn"] == ["Nguyễn Văn"] and raw["givenName"] == ["Minh"]
    assert raw["userPassword"] == ["{CRYPT}$6$rounds=5000$salt$hash"]
    assert sorted(raw["objectClass"]) == ["congvuAccount", "inetOrgPerson"]


def test_update_changes_only_what_was_asked(ldap_accounts: LdapAccountStore, slapd_server: SlapdServer) -> None:
    """update() rewrites the changed attributes, removes emptied ones and returns the new account."""
    ldap_accounts.add(account("nvminh"))
    when = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    new = ldap_accounts.update("nvminh@cantho.gov.vn", title="", state=AccountState.ACTIVE, must_change=True,
                            last_login_at=when, quota_override=None, aliases=("minh@cantho.gov.vn",),
                            password_history=("$6$a", "$6$b", "$6$c"))
    assert new == ldap_accounts.get("minh@cantho.gov.vn")
    assert (new.title, new.state, new.must_change, new.last_login_at, new.quota_override) == (
        "", AccountState.ACTIVE, True, when, None)
    assert new.password_history == ("$6$a", "$6$b", "$6$c")
    assert new.full_name == "Nguyễn Văn Minh"
    assert ldap_accounts.get("nvminh.alias@cantho.gov.vn") is None
    raw = entry(slapd_server, "nvminh@cantho.gov.vn")
    assert "title" not in raw and "congvuQuota" not in raw
    assert raw["congvuMustChange"] == ["TRUE"]


def test_update_and_delete_refusals(ldap_accounts: LdapAccountStore) -> None:
    """Unknown accounts, unknown fields, the address itself and taken aliases are refused."""
    ldap_accounts.add(account("a"))
    ldap_accounts.add(account("b"))
    with pytest.raises(AccountNotFound):
        ldap_accounts.update("zz@cantho.gov.vn", title="x")
    with pytest.raises(ValueError, match="cannot change"):
        ldap_accounts.update("a@cantho.gov.vn", local_part="c")
    with pytest.raises(AccountExists):
        ldap_accounts.update("a@cantho.gov.vn", aliases=("b@cantho.gov.vn",))
    with pytest.raises(AccountExists):
        ldap_accounts.update("a@cantho.gov.vn", aliases=("b.alias@cantho.gov.vn",))
    ldap_accounts.delete("b@cantho.gov.vn")
    assert ldap_accounts.get("b@cantho.gov.vn") is None
    with pytest.raises(AccountNotFound):
        ldap_accounts.delete("b@cantho.gov.vn")
    assert ldap_accounts.get("a@cantho.gov.vn") is not None


def test_add_refuses_a_taken_address_or_alias(ldap_accounts: LdapAccountStore) -> None:
    """Addresses and aliases share one namespace, whatever case they are written in."""
    ldap_accounts.add(account("nvminh"))
    for clash in (account("NVMinh"), account("other", aliases=("nvminh@cantho.gov.vn",)),
                  account("other", aliases=("NVMINH.alias@cantho.gov.vn",)), account("nvminh.alias")):
        with pytest.raises(AccountExists):
            ldap_accounts.add(clash)
    assert [x.address for x in ldap_accounts.list()] == ["nvminh@cantho.gov.vn"]


def test_list_by_agency_and_local_parts(ldap_accounts: LdapAccountStore) -> None:
    """list() is sorted by address and filters by agency; local_parts() covers aliases."""
    ldap_accounts.add(account("c", agency="sonv", aliases=()))
    ldap_accounts.add(account("a", agency="sotc", aliases=("x.y@cantho.gov.vn",)))
    ldap_accounts.add(account("b", agency="sonv", aliases=()))
    assert [x.address for x in ldap_accounts.list()] == [f"{n}@{DOMAIN}" for n in "abc"]
    assert [x.address for x in ldap_accounts.list("sonv")] == [f"{n}@{DOMAIN}" for n in "bc"]
    assert list(ldap_accounts.list("*")) == []
    assert ldap_accounts.local_parts() == frozenset({"a", "b", "c", "x.y"})


def test_list_pages_through_more_than_one_page(ldap_accounts: LdapAccountStore, slapd_server: SlapdServer) -> None:
    """More entries than one page (500) all come back."""
    admin = slapd_server.admin()
    for i in range(620):
        admin.add(f"uid=u{i}@{DOMAIN},{slapd_server.base_dn}", ["inetOrgPerson", "congvuAccount"],
                  {"mail": f"u{i}@{DOMAIN}", "cn": f"U {i}", "sn": "U", "congvuMailboxType": "personal",
                   "congvuAccountState": "active"})
    admin.unbind()
    assert len(list(ldap_accounts.list())) == 620
    assert len(ldap_accounts.local_parts()) == 620


HOSTILE = [
    "*", "*@cantho.gov.vn", "n*@cantho.gov.vn", ")(", "*)(mail=*", "nvminh@cantho.gov.vn)(|(mail=*",
    "(", ")", "\\", "\\2a@cantho.gov.vn", "\x00", "nvminh@cantho.gov.vn\x00", "nvminh\x00@cantho.gov.vn",
    b"nv\xffminh@cantho.gov.vn".decode("utf-8", "surrogateescape"),  # non-UTF-8 bytes as Python sees them
    b"nv\xffminh@cantho.gov.vn".decode("latin-1"), "nguyễnvănminh@cantho.gov.vn", "\ud800",
]


@pytest.mark.parametrize("hostile", HOSTILE, ids=[repr(h) for h in HOSTILE])
def test_hostile_usernames_match_nothing(ldap_accounts: LdapAccountStore, hostile: str) -> None:
    """Filter metacharacters, NUL and non-UTF-8 match no account and change nothing (RFC 4515 escaping)."""
    ldap_accounts.add(account("nvminh"))
    ldap_accounts.add(account("nvm", aliases=()))
    assert ldap_accounts.get(hostile) is None
    with pytest.raises(AccountNotFound):
        ldap_accounts.update(hostile, title="owned")
    with pytest.raises(AccountNotFound):
        ldap_accounts.delete(hostile)
    assert [(x.address, x.title) for x in ldap_accounts.list()] == [
        ("nvm@cantho.gov.vn", "Chuyên viên"), ("nvminh@cantho.gov.vn", "Chuyên viên")]


def test_metacharacters_inside_stored_addresses_round_trip(ldap_accounts: LdapAccountStore,
                                                          slapd_server: SlapdServer) -> None:
    """Addresses holding * ( ) \\ , + = are found exactly, and their DN stays below the subtree."""
    odd = ["a*b", "a(b)", "back\\slash", "x,ou=evil+cn=y", "o'brien"]
    for local in odd:
        ldap_accounts.add(account(local, aliases=()))
    ldap_accounts.add(account("axxb", aliases=()))
    for local in odd:
        got = ldap_accounts.get(f"{local}@{DOMAIN}")
        assert got is not None and got.local_part == local
    assert ldap_accounts.get(f"a*@{DOMAIN}") is None
    dn = entry(slapd_server, f"x,ou=evil+cn=y@{DOMAIN}")["dn"][0]
    assert dn.endswith(f",{slapd_server.base_dn}") and ldap3.utils.dn.parse_dn(dn)[0][0] == "uid"
    ldap_accounts.delete(f"a*b@{DOMAIN}")
    assert ldap_accounts.get(f"axxb@{DOMAIN}") is not None


def test_add_refuses_unstorable_addresses(ldap_accounts: LdapAccountStore) -> None:
    """An address with NUL or non-UTF-8 text is refused before it reaches the server."""
    for bad in ("nv\x00minh", b"nv\xff".decode("utf-8", "surrogateescape")):
        with pytest.raises(ValueError):
            ldap_accounts.add(account(bad))
    assert list(ldap_accounts.list()) == []


def test_attribute_map_reads_and_writes_a_sites_own_names(slapd_server: SlapdServer) -> None:
    """With mail → mailPrimaryAddress etc., congvu finds, changes and creates entries by the site's names."""
    slapd_server.start()
    wipe(slapd_server)
    admin = slapd_server.admin()
    dn = f"cn=Trần Thị Lan,{slapd_server.base_dn}"
    assert admin.add(dn, ["inetOrgPerson", "siteMailUser", "congvuAccount"], {
        "cn": "Trần Thị Lan", "sn": "Trần", "uid": "ttlan", "mailPrimaryAddress": "ttlan@cantho.gov.vn",
        "mailAlternativeAddress": ["lan.tt@cantho.gov.vn"], "departmentNumber": "sotc",
        "congvuMailboxType": "personal", "congvuAccountState": "active"})
    admin.unbind()
    mapped = make_store(slapd_server, attributes={"mail": "mailPrimaryAddress",
                                                  "congvuMailAlias": "mailAlternativeAddress",
                                                  "o": "departmentNumber"},
                        object_classes=["inetOrgPerson", "siteMailUser", "congvuAccount"])
    plain = make_store(slapd_server)
    try:
        assert mapped.check_schema() == []
        got = mapped.get("LAN.TT@cantho.gov.vn")
        assert got is not None and (got.address, got.agency, got.aliases) == (
            "ttlan@cantho.gov.vn", "sotc", ("lan.tt@cantho.gov.vn",))
        assert got.must_change is False  # an entry from before congvu: its owner has a password
        assert plain.get("ttlan@cantho.gov.vn") is None
        mapped.update("ttlan@cantho.gov.vn", agency="sonv", must_change=True)
        raw = entry(slapd_server, "ttlan@cantho.gov.vn", mail_attr="mailPrimaryAddress")
        assert raw["departmentNumber"] == ["sonv"] and "o" not in raw and "mail" not in raw
        assert raw["uid"] == ["ttlan"] and raw["dn"] == [dn]  # the site's own SSO login is untouched
        mapped.add(account("nvminh", aliases=("minh@cantho.gov.vn",)))
        raw = entry(slapd_server, "nvminh@cantho.gov.vn", mail_attr="mailPrimaryAddress")
        assert raw["mailAlternativeAddress"] == ["minh@cantho.gov.vn"] and "congvuMailAlias" not in raw
        with pytest.raises(AccountExists):
            mapped.add(account("lan.tt"))
        assert [a.address for a in mapped.list("sonv")] == ["nvminh@cantho.gov.vn", "ttlan@cantho.gov.vn"]
    finally:
        mapped.close()
        plain.close()


def test_attribute_map_refuses_unknown_keys_and_bad_names(slapd_server: SlapdServer) -> None:
    """A typo in [directory] attributes stops start-up with a sentence, not at the first lookup."""
    with pytest.raises(DirectoryError, match="unknown attribute 'mial'"):
        make_store(slapd_server, attributes={"mial": "mail"})
    with pytest.raises(DirectoryError, match="not an LDAP attribute name"):
        make_store(slapd_server, attributes={"mail": "mail)(uid=*"})


def test_check_schema_reports_what_is_missing(ldap_accounts: LdapAccountStore, slapd_server: SlapdServer) -> None:
    """check_schema() is empty on the shipped schema and names a missing attribute or base DN."""
    assert ldap_accounts.check_schema() == []
    broken = make_store(slapd_server, attributes={"congvuQuota": "siteQuota"},
                        base_dn=f"ou=nowhere,{slapd_server.suffix}")
    try:
        problems = broken.check_schema()
    finally:
        broken.close()
    assert any("siteQuota" in p for p in problems)
    assert any("ou=nowhere" in p for p in problems)
    assert len(problems) == 2


def test_service_account_may_write_only_the_accounts_subtree(slapd_server: SlapdServer) -> None:
    """The shipped ACL: the service account writes below ou=people and nowhere else, not even its own entry."""
    slapd_server.start()
    wipe(slapd_server)
    svc = ldap3.Connection(ldap3.Server(slapd_server.url, connect_timeout=5), slapd_server.bind_dn,
                           slapd_server.password_file.read_text().strip(), auto_bind=True, receive_timeout=10)
    person = ["inetOrgPerson", "congvuAccount"]
    attrs = {"cn": "X", "sn": "X", "congvuMailboxType": "personal", "congvuAccountState": "active"}
    try:
        assert svc.add(f"uid=ok,{slapd_server.base_dn}", person, attrs), svc.result
        for parent in (f"ou=services,{slapd_server.suffix}", slapd_server.suffix):
            assert not svc.add(f"uid=intruder,{parent}", person, attrs)
            assert svc.result["description"] == "insufficientAccessRights"
        assert not svc.modify(slapd_server.bind_dn, {"description": [(ldap3.MODIFY_REPLACE, ["owned"])]})
        assert svc.result["description"] == "insufficientAccessRights"
        svc.search(slapd_server.suffix, "(objectClass=*)", attributes=["1.1"])
        assert svc.result["description"] == "noSuchObject"  # nothing outside ou=people is even visible
    finally:
        svc.unbind()


def test_tls_ldaps_and_starttls(slapd_server: SlapdServer) -> None:
    """ldaps:// and StartTLS work with the site CA, and a certificate nobody vouches for is refused."""
    slapd_server.start()
    wipe(slapd_server)
    for overrides in ({"url": slapd_server.ldaps_url, "ca_file": str(slapd_server.ca_file)},
                      {"start_tls": True, "ca_file": str(slapd_server.ca_file)}):
        store = make_store(slapd_server, **overrides)
        try:
            store.add(account("tls", aliases=()))
            assert store.get("tls@cantho.gov.vn") is not None
            assert type(store._pool._idle[0].socket).__name__ == "SSLSocket"
            store.delete("tls@cantho.gov.vn")
        finally:
            store.close()
    untrusted_settings: list[dict[str, object]] = [{"url": slapd_server.ldaps_url}, {"start_tls": True}]
    for overrides in untrusted_settings:
        untrusted = make_store(slapd_server, **overrides)
        try:
            with pytest.raises(DirectoryUnavailable, match=r"(?i)certificate"):
                untrusted.get("tls@cantho.gov.vn")
        finally:
            untrusted.close()


def test_failover_to_the_next_url(ldap_accounts: LdapAccountStore, slapd_server: SlapdServer) -> None:
    """With several URLs, a dead first server is skipped."""
    from tests.integration.support import free_port

    store = make_store(slapd_server, url=f"ldap://127.0.0.1:{free_port()} {slapd_server.url}")
    try:
        ldap_accounts.add(account("nvminh"))
        assert store.get("nvminh@cantho.gov.vn") is not None
    finally:
        store.close()


def test_service_password_never_reaches_repr_errors_or_logs(slapd_server: SlapdServer, tmp_path: object) -> None:
    """A wrong service password fails with DirectoryUnavailable naming the bind DN, never the password."""
    from pathlib import Path

    slapd_server.start()
    secret = "Wr0ng-but-secret-" + "x" * 8
    pw_file = Path(str(tmp_path)) / "bad.secret"
    pw_file.write_text(secret + "\n")
    events: list[dict[str, object]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    store = make_store(slapd_server, bind_password_file=str(pw_file))
    try:
        with pytest.raises(DirectoryUnavailable) as err:
            store.get("nvminh@cantho.gov.vn")
    finally:
        globalLogPublisher.removeObserver(observer)
        store.close()
    assert "invalidCredentials" in str(err.value) and slapd_server.bind_dn in str(err.value)
    good = slapd_server.password_file.read_text().strip()
    texts = [repr(store), str(err.value), repr(err.value), *map(repr, events)]
    assert events, "the outage was logged"
    assert not [t for t in texts if secret in t or good in t]


def test_pool_serves_more_threads_than_connections(ldap_accounts: LdapAccountStore) -> None:
    """Eight threads share a pool of two connections without errors or lost answers."""
    for i in range(8):
        ldap_accounts.add(account(f"t{i}", aliases=()))
    errors: list[BaseException] = []
    found: list[str] = []

    def worker(i: int) -> None:
        try:
            for _ in range(25):
                got = ldap_accounts.get(f"t{i}@cantho.gov.vn")
                assert got is not None
                found.append(got.local_part)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and len(found) == 200
    assert sorted(set(found)) == [f"t{i}" for i in range(8)]
    assert len(ldap_accounts._pool._idle) <= 2


@pytest.mark.parametrize(("stored", "passlib"), [
    ("{ARGON2}$argon2id$v=19$m=1024,t=1,p=1$c2FsdA$aGFzaA", "$argon2id$v=19$m=1024,t=1,p=1$c2FsdA$aGFzaA"),
    ("{CRYPT}$2b$12$abc", "$2b$12$abc"), ("{crypt}$6$x$y", "$6$x$y"), ("{SSHA}abcd", "{SSHA}abcd"), ("", ""),
])
def test_userpassword_mapping(stored: str, passlib: str) -> None:
    """userPassword ↔ passlib: {ARGON2}/{CRYPT} prefixes only, other schemes kept as they are."""
    assert hash_from_ldap(stored) == passlib
    assert hash_from_ldap(hash_to_ldap(passlib)) == passlib
    if stored and not stored.lower().startswith("{crypt}"):
        assert hash_to_ldap(passlib) == stored
