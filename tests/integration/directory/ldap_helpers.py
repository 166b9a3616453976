"""Shared pieces of the LDAP store tests: a clean subtree and a store pointed at the test slapd."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import ldap3
import pytest

from congvu.config import config_from_mapping
from congvu.directory.ldap_store import LdapAccountStore
from congvu.directory.model import Account
from congvu.rules.lifecycle import AccountState
from tests.integration.servers.slapd import SlapdServer

DOMAIN = "cantho.gov.vn"


def wipe(server: SlapdServer) -> None:
    """Delete every entry below the accounts subtree, as the rootdn."""
    admin = server.admin()
    admin.search(server.base_dn, "(objectClass=*)", ldap3.LEVEL, attributes=["1.1"])
    for dn in [e["dn"] for e in admin.response if e.get("type") == "searchResEntry"]:
        admin.delete(dn)
    admin.unbind()


def make_store(server: SlapdServer, **overrides: Any) -> LdapAccountStore:
    cfg = config_from_mapping({"directory": server.directory_overrides(**overrides)})
    return LdapAccountStore(cfg.directory)


@pytest.fixture
def ldap_accounts(slapd_server: SlapdServer) -> Iterator[LdapAccountStore]:
    """A store on the session slapd with an empty accounts subtree."""
    slapd_server.start()
    wipe(slapd_server)
    store = make_store(slapd_server)
    try:
        yield store
    finally:
        store.close()


def account(local_part: str, **fields: Any) -> Account:
    """A personal account with every field set, so a lost attribute shows up in comparisons."""
    base: dict[str, Any] = {
        "local_part": local_part, "domain": DOMAIN, "full_name": "Nguyễn Văn Minh", "mailbox_type": "personal",
        "agency": "sonv", "unit": "Phòng Tổ chức", "display_name": "Nguyễn Văn Minh - Sở Nội vụ",
        "title": "Chuyên viên", "password_hash": "$6$rounds=5000$salt$hash",
        "password_history": ("$2b$old1", "$6$old2"),
        "state": AccountState.LOCKED, "state_reason": "CT25-6.4a: cảnh báo an ninh", "state_by": "admin@cantho.gov.vn",
        "state_changed_at": datetime(2025, 3, 1, 8, 0, 0, 250000, tzinfo=UTC),
        "created_at": datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        "password_changed_at": datetime(2025, 2, 1, 0, 0, 0, tzinfo=UTC), "must_change": False,
        "last_login_at": datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC), "quota_override": 12 * 10**9,
        "aliases": (f"{local_part}.alias@{DOMAIN}",), "delegates": (f"thuky@{DOMAIN}",),
    }
    base.update(fields)
    return Account(**base)


def entry(server: SlapdServer, address: str, mail_attr: str = "mail") -> dict[str, list[str]]:
    """The raw entry of ``address`` as the rootdn sees it ({} if none)."""
    admin = server.admin()
    admin.search(server.base_dn, f"({mail_attr}={ldap3.utils.conv.escape_filter_chars(address)})",
                 attributes=["*", "+"])
    found = [e for e in admin.response if e.get("type") == "searchResEntry"]
    admin.unbind()
    if not found:
        return {}
    out = {k: [v.decode("utf-8", "replace") for v in vs] for k, vs in found[0]["raw_attributes"].items()}
    out["dn"] = [found[0]["dn"]]
    return out
