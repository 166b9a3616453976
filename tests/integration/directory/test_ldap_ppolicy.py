"""Passwords in the directory: other applications bind with congvu's hashes (single sign-on, CT15-3.2),
and ppolicy's forced reset does not decide anything for congvu (CT25-5.2 is congvuMustChange)."""

from __future__ import annotations

import ldap3
import pytest
from passlib.hash import bcrypt, sha512_crypt

from congvu.directory.hashing import Hasher
from congvu.directory.ldap_store import LdapAccountStore
from tests.integration.directory.ldap_helpers import account, entry, ldap_accounts
from tests.integration.servers.slapd import SlapdServer

__all__ = ["ldap_accounts"]

pytestmark = pytest.mark.integration

PASSWORD = "Cần-Thơ#2025-mật-khẩu"
PPOLICY_CONTROL = "1.3.6.1.4.1.42.2.27.8.5.1"


def _user_conn(server: SlapdServer, dn: str, password: str) -> ldap3.Connection:
    return ldap3.Connection(ldap3.Server(server.url, connect_timeout=5), dn, password, receive_timeout=10,
                            raise_exceptions=False)


@pytest.mark.parametrize("scheme", ["argon2", "bcrypt", "sha512_crypt"])
def test_other_applications_bind_with_congvus_hash(ldap_accounts: LdapAccountStore, slapd_server: SlapdServer,
                                                   scheme: str) -> None:
    """Each hash congvu writes ({ARGON2}/{CRYPT}) is verified by slapd itself, wrong passwords are not."""
    if scheme == "argon2":
        made = Hasher("test").hash(PASSWORD)
    elif scheme == "bcrypt":
        made = str(bcrypt.using(rounds=4).hash(PASSWORD))
    else:
        made = str(sha512_crypt.using(rounds=1000).hash(PASSWORD))
    ldap_accounts.add(account("sso", password_hash=made, aliases=()))
    raw = entry(slapd_server, "sso@cantho.gov.vn")
    assert raw["userPassword"][0] == ("{ARGON2}" if scheme == "argon2" else "{CRYPT}") + made
    assert ldap_accounts.get("sso@cantho.gov.vn").password_hash == made  # type: ignore[union-attr]
    dn = raw["dn"][0]
    ok = _user_conn(slapd_server, dn, PASSWORD)
    assert ok.bind(), ok.result
    ok.unbind()
    bad = _user_conn(slapd_server, dn, PASSWORD + "x")
    assert not bad.bind() and bad.result["description"] == "invalidCredentials"


def test_ppolicy_reset_does_not_decide_must_change(ldap_accounts: LdapAccountStore,
                                                  slapd_server: SlapdServer) -> None:
    """pwdReset TRUE: the bind still succeeds (so it cannot be relied on); congvuMustChange alone decides."""
    ldap_accounts.add(account("reset", password_hash=Hasher("test").hash(PASSWORD), must_change=False, aliases=()))
    dn = entry(slapd_server, "reset@cantho.gov.vn")["dn"][0]
    admin = slapd_server.admin()
    assert admin.modify(dn, {"pwdReset": [(ldap3.MODIFY_REPLACE, ["TRUE"])]})

    user = _user_conn(slapd_server, dn, PASSWORD)
    assert user.bind(controls=[(PPOLICY_CONTROL, False, None)]), user.result  # ppolicy lets the bind succeed
    assert PPOLICY_CONTROL in user.result.get("controls", {})  # ...and only says so in a response control
    user.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["cn"])
    assert user.result["description"] == "insufficientAccessRights"  # ppolicy's restriction: after the bind
    user.unbind()
    got = ldap_accounts.get("reset@cantho.gov.vn")
    assert got is not None and got.must_change is False  # congvu ignores pwdReset

    # The other way round: congvu demands a change that ppolicy knows nothing about.
    assert admin.modify(dn, {"pwdReset": [(ldap3.MODIFY_DELETE, [])]})
    admin.unbind()
    ldap_accounts.update("reset@cantho.gov.vn", must_change=True)
    user = _user_conn(slapd_server, dn, PASSWORD)
    assert user.bind()
    user.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["cn"])
    assert user.result["description"] == "success"
    user.unbind()
    got = ldap_accounts.get("reset@cantho.gov.vn")
    assert got is not None and got.must_change is True
    assert "pwdReset" not in entry(slapd_server, "reset@cantho.gov.vn")
