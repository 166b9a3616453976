"""Accounts in the city's LDAP directory (CT15-3.2), through ldap3.

:class:`LdapAccountStore` is the :class:`~congvu.directory.model.AccountStore` of a
site whose accounts live in LDAP.  It owns what needs the server: looking an address
up, refusing an address or alias another entry holds (as mail or alias, whatever its
class), writing only the attributes an update changed, paging through whole-subtree
reads, and checking the server's schema for ``congvu directory init``.  How an account
becomes an entry, in the site's own attribute names, is :mod:`.ldap_mapping`; how
connections are bound, shared and given up on within one timeout is :mod:`.ldap_pool`.

LDAP result codes that mean the server rather than the request (busy, unavailable)
raise :class:`DirectoryUnavailable`, like an outage; other refusals raise
:class:`DirectoryError` with the server's words.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import ldap3
from twisted.logger import Logger

from congvu.directory.ldap_mapping import DEFAULT_ATTRIBUTES, EntryMapping, RawEntry
from congvu.directory.ldap_pool import RULE, LdapPool
from congvu.directory.model import (
    UPDATABLE,
    Account,
    AccountExists,
    AccountNotFound,
    DirectoryError,
    DirectoryUnavailable,
    normalise,
)
from congvu.directory.settings import DirectorySettings
from congvu.rules.addresses import canonical
from congvu.rules.requirements import citation

log = Logger()

#: What a lookup fetches: every user attribute.  Every congvu one is a user attribute, and
#: "*" costs the pure-Python BER encoder far less than twenty names on each lookup (the hot path).
_FETCH = ["*"]


def _check(conn: Any, what: str, ok: Sequence[int] = (0,)) -> int:
    """The result code of the last operation if it is in ``ok``; otherwise the error it means."""
    result = conn.result or {}
    code = int(result.get("result", -1))
    if code in ok:
        return code
    if code in (51, 52, 80) or code < 0:  # busy, unavailable, other: the server, not the request
        raise DirectoryUnavailable(f"{what}: {result.get('description')} {result.get('message', '')}".strip())
    raise DirectoryError(f"{what}: LDAP error {code} {result.get('description')}: {result.get('message', '')}")


class LdapAccountStore:
    """:class:`directory.model.AccountStore` on an LDAP server (OpenLDAP tested)."""

    def __init__(self, settings: DirectorySettings, password: str | None = None) -> None:
        self.settings = settings
        self.base_dn = settings.base_dn
        self.bind_dn = settings.bind_dn
        self.mapping = EntryMapping.from_settings(settings)
        self._pool = LdapPool(settings, password)

    def __repr__(self) -> str:
        return (f"LdapAccountStore(url={self.settings.url!r}, base_dn={self.base_dn!r}, "
                f"bind_dn={self.bind_dn!r}, pool_size={self.settings.pool_size})")

    # ------------------------------------------------------------------ LDAP operations

    def _search(self, conn: Any, search_filter: str, attributes: Sequence[str], *, size_limit: int = 0,
                paged: bool = False, base: str | None = None, scope: Any = ldap3.SUBTREE,
                what: str = "search") -> list[tuple[str, dict[str, list[bytes]]]]:
        """(dn, {lower-cased attribute: raw values}) of every entry; paged for whole-subtree reads."""
        out: list[tuple[str, dict[str, list[bytes]]]] = []
        cookie: Any = None
        while True:
            conn.search(self.base_dn if base is None else base, search_filter, scope, attributes=list(attributes),
                        size_limit=size_limit, paged_size=500 if paged else None, paged_cookie=cookie)
            _check(conn, what, ok=(0, 4) if size_limit else (0,))
            for entry in conn.response or ():
                if entry.get("type") == "searchResEntry":
                    raw = {k.lower(): list(v) for k, v in entry["raw_attributes"].items()}
                    out.append((entry["dn"], raw))
            if not paged:
                return out
            controls = (conn.result or {}).get("controls", {})
            cookie = controls.get("1.2.840.113556.1.4.319", {}).get("value", {}).get("cookie")
            if not cookie:
                return out
            sock = getattr(conn, "socket", None)
            if sock is not None:
                sock.settimeout(self._pool.timeout)  # every page gets its own timeout

    def _find(self, conn: Any, key: str) -> tuple[str, RawEntry] | None:
        found = self._search(conn, self.mapping.address_filter([key]), _FETCH, size_limit=2)
        if len(found) > 1:
            # Two entries claim one address: prefer the one whose primary mail it is, and say so.
            log.warn("directory: {n} entries answer to {address}: {dns}", n=len(found), address=key,
                     dns=", ".join(dn for dn, _ in found))
            primary = [f for f in found if key in self.mapping.addresses(f[1], aliases=False)]
            return (primary or found)[0]
        return found[0] if found else None

    def _taken(self, conn: Any, addresses: Sequence[str], own_dn: str | None) -> str | None:
        """The first address used by another entry of the subtree (as mail or alias, any class)."""
        if not addresses:
            return None
        m = self.mapping
        found = self._search(conn, m.address_filter(addresses, only_accounts=False), m.address_attributes,
                             size_limit=len(addresses) * 2 + 1)
        used = {x for dn, raw in found if own_dn is None or dn.lower() != own_dn.lower() for x in m.addresses(raw)}
        return next((x for x in addresses if x in used), None)

    def _one(self, conn: Any, base: str, search_filter: str, attributes: Sequence[str], what: str) -> RawEntry:
        """The raw attributes of the entry at ``base`` ({} if the server shows none)."""
        found = self._search(conn, search_filter, attributes, base=base, scope=ldap3.BASE, what=what)
        return found[0][1] if found else {}

    # ------------------------------------------------------------------ AccountStore

    def get(self, address: str) -> Account | None:
        key = canonical(address)
        if key is None:
            return None
        found = self._pool.call("get", lambda conn, _d: self._find(conn, key))
        return self.mapping.from_entry(found[1], found[0]) if found else None

    def add(self, account: Account) -> None:
        account = normalise(account)
        address = account.address
        if canonical(address) != address or any(canonical(x) != x for x in account.aliases):
            raise ValueError(f"not a storable address: {address!r}")
        dn, attributes = self.mapping.new_entry(account, self.base_dn)

        def op(conn: Any, _deadline: float) -> None:
            clash = self._taken(conn, [address, *account.aliases], None)
            if clash is not None:
                raise AccountExists(clash)
            conn.add(dn, list(self.mapping.object_classes), attributes)
            if (conn.result or {}).get("result") == 68:  # entryAlreadyExists
                raise AccountExists(address)
            _check(conn, f"add {address}")

        self._pool.call("add", op)
        log.info("directory: added {address} ({rule}: {citation})", address=address, rule=RULE,
                 citation=citation(RULE))

    def update(self, address: str, **changes: Any) -> Account:
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise ValueError(f"cannot change {', '.join(sorted(unknown))}")
        key = canonical(address)
        if key is None:
            raise AccountNotFound(address)

        def op(conn: Any, _deadline: float) -> Account:
            found = self._find(conn, key)
            if found is None:
                raise AccountNotFound(address)
            dn, raw = found
            old = self.mapping.from_entry(raw, dn)
            new = normalise(replace(old, **changes))
            if "aliases" in changes:
                if any(canonical(x) != x for x in new.aliases):
                    raise ValueError("not a storable alias")
                clash = self._taken(conn, list(new.aliases), dn)
                if clash is not None:
                    raise AccountExists(clash)
            before, after = self.mapping.to_entry(old), self.mapping.to_entry(new)
            # Only what changed; an attribute the entry lacks is not deleted (slapd would refuse).
            mods = {name: [(ldap3.MODIFY_REPLACE, after.get(name, []))]
                    for name in before.keys() | after.keys()
                    if before.get(name) != after.get(name) and (name in after or name.lower() in raw)}
            if mods:
                conn.modify(dn, mods)
                if (conn.result or {}).get("result") == 32:  # noSuchObject: deleted meanwhile
                    raise AccountNotFound(address)
                _check(conn, f"modify {new.address}")
            return new

        return self._pool.call("update", op)

    def delete(self, address: str) -> None:
        key = canonical(address)
        if key is None:
            raise AccountNotFound(address)

        def op(conn: Any, _deadline: float) -> None:
            found = self._find(conn, key)
            if found is None:
                raise AccountNotFound(address)
            conn.delete(found[0])
            if (conn.result or {}).get("result") == 32:
                raise AccountNotFound(address)
            _check(conn, f"delete {address}")

        self._pool.call("delete", op)

    def list(self, agency: str | None = None) -> Iterator[Account]:
        m = self.mapping
        flt = m.class_filter if agency is None else m.agency_filter(agency)
        found = self._pool.call("list", lambda conn, _d: self._search(conn, flt, _FETCH, paged=True))
        accounts = [m.from_entry(raw, dn) for dn, raw in found]
        return iter(sorted(accounts, key=lambda x: x.address))

    def local_parts(self) -> frozenset[str]:
        m = self.mapping
        found = self._pool.call("local_parts", lambda conn, _d: self._search(conn, m.class_filter,
                                                                             m.address_attributes, paged=True))
        return frozenset(local for _, raw in found for local, at, _domain in
                         (x.rpartition("@") for x in m.addresses(raw)) if at)

    def check_schema(self) -> builtins.list[str]:
        """Problems that stop congvu using this directory (empty when usable): for ``congvu directory init``."""
        a = self.mapping.attrs

        def op(conn: Any, _deadline: float) -> builtins.list[str]:
            problems: builtins.list[str] = []
            dse = self._one(conn, "", "(objectClass=*)", ["subschemaSubentry"], "read the root DSE")
            subschema = (dse.get("subschemasubentry") or [b"cn=Subschema"])[0].decode()
            raw = self._one(conn, subschema, "(objectClass=subschema)", ["objectClasses", "attributeTypes"],
                            f"read {subschema}")
            defined: set[str] = set()
            for key in ("objectclasses", "attributetypes"):
                for v in raw.get(key, []):
                    text = v.decode("utf-8", "replace")
                    m = re.search(r"NAME\s+(\(([^)]*)\)|'([^']*)')", text)
                    if m:
                        defined.update(n.lower() for n in re.findall(r"'([^']*)'", m.group(1)))
            if not defined:
                problems.append(f"cannot read the schema at {subschema} (check the ACL of the service account)")
            else:
                for name in DEFAULT_ATTRIBUTES:
                    if a[name].lower() not in defined:
                        what = "object class" if name == "congvuAccount" else "attribute type"
                        problems.append(f"{what} {a[name]} is not in the server schema "
                                        f"(load conf/ldap/congvu.ldif, or fix [directory] attributes)")
            conn.search(self.base_dn, "(objectClass=*)", ldap3.BASE, attributes=["1.1"])
            code = _check(conn, f"read {self.base_dn}", ok=(0, 32, 50))
            if code == 32:
                problems.append(f"base DN {self.base_dn} does not exist")
            elif code == 50 or not conn.response:
                problems.append(f"base DN {self.base_dn}: the service account {self.bind_dn} may not read it")
            return problems

        return self._pool.call("check_schema", op)

    def close(self) -> None:
        self._pool.close()
