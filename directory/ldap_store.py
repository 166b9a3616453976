"""Accounts in the city's LDAP directory (CT15-3.2), through ldap3.

The directory is the single sign-on source for the city's other applications, so an
account is an ordinary ``inetOrgPerson`` (``mail``, ``cn``, ``sn``, ``givenName``,
``displayName``, ``o`` = agency, ``ou`` = unit, ``title``, ``userPassword``) with the
auxiliary class ``congvuAccount`` (``conf/ldap/congvu.ldif``) for congvu's own
attributes.  A site with an existing tree renames any of them with ``[directory]
attributes`` (keys are congvu's names, e.g. ``mail = "mailPrimaryAddress"``).

Decisions read congvu's attributes only.  ppolicy's ``pwdReset`` is not one of them: a
forced reset still lets a simple bind succeed, so CT25-5.2 ("must change at first
login") is ``congvuMustChange``, read here and enforced by congvu's auth hook.

Password hashes: ``Account.password_hash`` is a passlib string; ``userPassword`` holds
it with the RFC 2307 scheme slapd knows, so other applications can bind with the same
password: argon2 (``$argon2id$…``) as ``{ARGON2}$argon2id$…`` (slapd's argon2 module),
other modular-crypt hashes (``$2b$``, ``$6$``…) as ``{CRYPT}…``; a value that already
carries a scheme (``{SSHA}…`` from an existing tree) is stored and returned unchanged.

Connections: a small pool (``pool_size``) of ldap3 SYNC connections, each bound as the
service account (its password read once from ``bind_password_file``, never logged or
shown in a repr).  Every call has one deadline (``timeout``): waiting for a free
connection, connecting, TLS, binding and every socket read share it, so an outage
raises :class:`DirectoryUnavailable` within ``timeout``.  A pooled connection that
fails (slapd restarted) is dropped and the call retried once on a fresh one within
the same deadline, so the process recovers without a restart.  ``url`` may name
several servers separated by spaces; they are tried in order.
"""

from __future__ import annotations

import builtins
import math
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn
from twisted.logger import Logger

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
from congvu.rules.config import MAILBOX_TYPES
from congvu.rules.lifecycle import AccountState
from congvu.rules.requirements import citation

log = Logger()

T = TypeVar("T")

RULE = "CT15-3.2"

#: congvu's attribute names (the keys ``[directory] attributes`` may remap) and the
#: object classes of a new entry.  ``congvuAccount`` names the auxiliary class itself.
DEFAULT_ATTRIBUTES: tuple[str, ...] = (
    "uid", "mail", "cn", "sn", "givenName", "displayName", "o", "ou", "title", "userPassword",
    "congvuAccount", "congvuMailboxType", "congvuAccountState", "congvuStateReason", "congvuStateBy",
    "congvuStateChangedAt", "congvuCreatedAt", "congvuPasswordChangedAt", "congvuLastLoginAt",
    "congvuMustChange", "congvuQuota", "congvuMailAlias", "congvuDelegate", "congvuPasswordHistory",
)

#: Account field → congvu attribute name (before the site's map).
FIELD_ATTRIBUTES: dict[str, str] = {
    "full_name": "cn", "display_name": "displayName", "agency": "o", "unit": "ou", "title": "title",
    "password_hash": "userPassword", "password_history": "congvuPasswordHistory",
    "mailbox_type": "congvuMailboxType", "state": "congvuAccountState", "state_reason": "congvuStateReason",
    "state_by": "congvuStateBy", "state_changed_at": "congvuStateChangedAt", "created_at": "congvuCreatedAt",
    "password_changed_at": "congvuPasswordChangedAt", "must_change": "congvuMustChange",
    "last_login_at": "congvuLastLoginAt", "quota_override": "congvuQuota", "aliases": "congvuMailAlias",
    "delegates": "congvuDelegate",
}

_NAME = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*|\d+(?:\.\d+)+)$")
_GTIME = re.compile(r"^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})?(\d{2})?(?:[.,](\d{1,6})\d*)?(Z|[+-]\d{2}(?:\d{2})?)$")
_SCHEME = re.compile(r"^\{([A-Za-z0-9.-]+)\}")


# --------------------------------------------------------------------------- value mapping


def hash_to_ldap(password_hash: str) -> str:
    """passlib hash → ``userPassword`` value slapd can verify (see the module docstring)."""
    if not password_hash or _SCHEME.match(password_hash):
        return password_hash
    if password_hash.startswith("$argon2"):
        return "{ARGON2}" + password_hash
    return "{CRYPT}" + password_hash


def hash_from_ldap(value: str) -> str:
    """``userPassword`` value → passlib hash: ``{ARGON2}``/``{CRYPT}`` dropped, other schemes kept."""
    m = _SCHEME.match(value)
    if m and m.group(1).upper() in ("ARGON2", "CRYPT"):
        return value[m.end():]
    return value


def gtime(v: datetime) -> str:
    """GeneralizedTime in UTC, microseconds kept (a naive datetime is taken as UTC)."""
    v = (v if v.tzinfo else v.replace(tzinfo=UTC)).astimezone(UTC)
    return v.strftime("%Y%m%d%H%M%S") + (f".{v.microsecond:06d}" if v.microsecond else "") + "Z"


def parse_gtime(text: str) -> datetime:
    """RFC 4517 GeneralizedTime → aware UTC datetime (minutes, seconds and fraction optional)."""
    m = _GTIME.match(text)
    if m is None:
        raise ValueError(f"not a GeneralizedTime: {text!r}")
    y, mo, d, h, mi, s, frac, zone = m.groups()
    v = datetime(int(y), int(mo), int(d), int(h), int(mi or 0), int(s or 0),
                 int((frac or "0").ljust(6, "0")), tzinfo=UTC)
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        offset = int(zone[1:3]) * 60 + int(zone[3:5] or 0)
        v -= sign * timedelta(minutes=offset)
    return v


@dataclass(frozen=True)
class AttributeMap:
    """congvu attribute name → the site's; built from ``[directory] attributes``."""

    names: Mapping[str, str]

    @classmethod
    def from_settings(cls, overrides: Mapping[str, str]) -> AttributeMap:
        known = {n.lower(): n for n in DEFAULT_ATTRIBUTES}
        names = {n: n for n in DEFAULT_ATTRIBUTES}
        for key, value in overrides.items():
            if key.lower() not in known:
                raise DirectoryError(f"directory.attributes: unknown attribute {key!r} "
                                     f"(known: {', '.join(DEFAULT_ATTRIBUTES)})")
            if not _NAME.match(value):
                raise DirectoryError(f"directory.attributes.{key}: {value!r} is not an LDAP attribute name")
            names[known[key.lower()]] = value
        return cls(names)

    def __getitem__(self, congvu_name: str) -> str:
        return self.names[congvu_name]


# --------------------------------------------------------------------------- the store


class _Lease:
    """One checked-out connection and whether it was opened for this call."""

    __slots__ = ("conn", "fresh")

    def __init__(self, conn: Any, fresh: bool) -> None:
        self.conn, self.fresh = conn, fresh


class LdapAccountStore:
    """:class:`directory.model.AccountStore` on an LDAP server (OpenLDAP tested)."""

    def __init__(self, settings: DirectorySettings, password: str | None = None) -> None:
        self.settings = settings
        self.base_dn = settings.base_dn
        self.bind_dn = settings.bind_dn
        self.timeout = max(settings.timeout.total_seconds(), 0.05)
        self.attrs = AttributeMap.from_settings(settings.attributes)
        if password is None and settings.bind_dn:
            if not settings.bind_password_file:
                raise DirectoryError("directory.bind_password_file is required with directory.bind_dn")
            try:
                password = Path(settings.bind_password_file).read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as e:
                raise DirectoryError(f"directory.bind_password_file {settings.bind_password_file}: "
                                     f"cannot read: {getattr(e, 'strerror', None) or type(e).__name__}") from None
        self.__password = password or ""
        self._urls = self._parse_urls(settings.url)
        self._tls = self._make_tls(settings) if (settings.start_tls or any(u[0] for u in self._urls)) else None
        self._slots = threading.BoundedSemaphore(settings.pool_size)
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False
        a = self.attrs
        # All user attributes: every congvu one is a user attribute, and "*" costs the pure-Python
        # BER encoder far less than twenty names on each lookup (the hot path).
        self._fetch = ["*"]
        self._class_filter = f"(objectClass={a['congvuAccount']})"
        for name in settings.object_classes:
            if not _NAME.match(name):
                raise DirectoryError(f"directory.object_classes: {name!r} is not an object class name")

    def __repr__(self) -> str:
        return (f"LdapAccountStore(url={self.settings.url!r}, base_dn={self.base_dn!r}, "
                f"bind_dn={self.bind_dn!r}, pool_size={self.settings.pool_size})")

    # ------------------------------------------------------------------ connections

    @staticmethod
    def _parse_urls(text: str) -> list[tuple[bool, str, int]]:
        out = []
        for url in text.split():
            parts = urlsplit(url)
            if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
                raise DirectoryError(f"directory.url: expected ldap://host[:port] or ldaps://host[:port], "
                                     f"got {url!r}")
            tls = parts.scheme == "ldaps"
            out.append((tls, parts.hostname, parts.port or (636 if tls else 389)))
        if not out:
            raise DirectoryError("directory.url: no server given")
        return out

    @staticmethod
    def _make_tls(settings: DirectorySettings) -> Any:
        try:
            return ldap3.Tls(validate=ssl.CERT_REQUIRED, version=ssl.PROTOCOL_TLS_CLIENT,
                             ca_certs_file=settings.ca_file or None)
        except LDAPException as e:
            raise DirectoryError(f"directory.ca_file {settings.ca_file!r}: {e}") from None

    def _open(self, deadline: float) -> Any:
        """A new connection, bound as the service account, or DirectoryUnavailable."""
        errors = []
        for use_ssl, host, port in self._urls:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            server = ldap3.Server(host, port=port, use_ssl=use_ssl, tls=self._tls, get_info=ldap3.NONE,
                                  connect_timeout=remaining)
            conn = ldap3.Connection(server, user=self.bind_dn or None, password=self.__password or None,
                                    authentication=ldap3.SIMPLE if self.bind_dn else ldap3.ANONYMOUS,
                                    client_strategy=ldap3.SYNC, raise_exceptions=False, check_names=False,
                                    receive_timeout=max(1, math.ceil(remaining)), auto_referrals=False)
            try:
                conn.open()
                self._arm(conn, deadline)
                if self.settings.start_tls and not use_ssl and not conn.start_tls():
                    raise DirectoryUnavailable(f"StartTLS refused: {conn.result.get('description')}")
                self._arm(conn, deadline)
                if not conn.bind():
                    result = conn.result or {}
                    self._quietly_close(conn)
                    if result.get("description") == "invalidCredentials":
                        raise DirectoryUnavailable(f"{host}:{port}: the service bind as {self.bind_dn} was refused "
                                                   "(invalidCredentials); check directory.bind_password_file")
                    errors.append(f"{host}:{port}: bind failed: {result.get('description') or conn.last_error}")
                    continue
                return conn
            except DirectoryUnavailable:
                self._quietly_close(conn)
                raise
            except (LDAPException, OSError, ssl.SSLError) as e:
                self._quietly_close(conn)
                errors.append(f"{host}:{port}: {e}")
        reason = "; ".join(errors) or f"no answer within {self.timeout:g}s"
        raise DirectoryUnavailable(f"LDAP directory unavailable: {reason}")

    @staticmethod
    def _arm(conn: Any, deadline: float) -> None:
        """Bound the next socket reads by what is left of this call's deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        sock = getattr(conn, "socket", None)
        if sock is not None:
            sock.settimeout(remaining)

    @staticmethod
    def _quietly_close(conn: Any) -> None:
        try:
            sock = getattr(conn, "socket", None)
            if sock is not None:
                sock.settimeout(0.2)
            conn.unbind()
        except Exception:  # the connection is being thrown away anyway
            pass

    def _checkout(self, deadline: float) -> _Lease:
        if self._closed:
            raise DirectoryError("the LDAP store is closed")
        if not self._slots.acquire(timeout=max(deadline - time.monotonic(), 0)):
            raise DirectoryUnavailable(f"all {self.settings.pool_size} LDAP connections busy for "
                                       f"{self.timeout:g}s")
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is not None and not conn.closed:
            return _Lease(conn, fresh=False)
        try:
            return _Lease(self._open(deadline), fresh=True)
        except BaseException:
            self._slots.release()
            raise

    def _checkin(self, conn: Any | None) -> None:
        if conn is not None:
            with self._lock:
                if self._closed:
                    self._quietly_close(conn)
                else:
                    self._idle.append(conn)
        self._slots.release()

    def _call(self, what: str, op: Callable[[Any, float], T]) -> T:
        """Run ``op(conn, deadline)`` on a pooled connection within one timeout, retrying once if stale."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                lease = self._checkout(deadline)
            except DirectoryUnavailable as e:
                log.warn("directory {what}: unavailable ({rule}: {citation}): {reason}", what=what, rule=RULE,
                         citation=citation(RULE), reason=str(e))
                raise
            try:
                self._arm(lease.conn, deadline)
                result = op(lease.conn, deadline)
            except (LDAPException, OSError, ssl.SSLError) as e:
                self._quietly_close(lease.conn)
                self._checkin(None)
                if not lease.fresh and time.monotonic() < deadline:
                    continue  # a pooled connection went stale (server restarted): one fresh try
                reason = f"{what}: {type(e).__name__}: {e}"
                log.warn("directory {what}: unavailable ({rule}: {citation}): {reason}", what=what, rule=RULE,
                         citation=citation(RULE), reason=reason)
                raise DirectoryUnavailable(f"LDAP directory unavailable: {reason}") from None
            except BaseException:
                self._quietly_close(lease.conn)
                self._checkin(None)
                raise
            self._checkin(lease.conn)
            return result

    # ------------------------------------------------------------------ LDAP operations

    @staticmethod
    def _check(conn: Any, what: str, ok: Sequence[int] = (0,)) -> int:
        result = conn.result or {}
        code = int(result.get("result", -1))
        if code in ok:
            return code
        if code in (51, 52, 80) or code < 0:  # busy, unavailable, other: the server, not the request
            raise DirectoryUnavailable(f"{what}: {result.get('description')} {result.get('message', '')}".strip())
        raise DirectoryError(f"{what}: LDAP error {code} {result.get('description')}: {result.get('message', '')}")

    def _search(self, conn: Any, search_filter: str, attributes: list[str], size_limit: int = 0,
                paged: bool = False, base: str | None = None,
                scope: Any = ldap3.SUBTREE) -> list[tuple[str, dict[str, list[bytes]]]]:
        """(dn, {lower-cased attribute: raw values}) of every entry; paged for whole-subtree reads."""
        out: list[tuple[str, dict[str, list[bytes]]]] = []
        cookie: Any = None
        while True:
            conn.search(base or self.base_dn, search_filter, scope, attributes=attributes, size_limit=size_limit,
                        paged_size=500 if paged else None, paged_cookie=cookie)
            self._check(conn, "search", ok=(0, 4) if size_limit else (0,))
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
                sock.settimeout(self.timeout)  # every page gets its own timeout

    def _address_filter(self, keys: Sequence[str], only_accounts: bool = True) -> str:
        a = self.attrs
        terms = "".join(f"({a[attr]}={escape_filter_chars(k)})" for k in keys
                        for attr in ("mail", "congvuMailAlias"))
        where = f"(|{terms})"
        return f"(&{self._class_filter}{where})" if only_accounts else where

    def _find(self, conn: Any, key: str) -> tuple[str, dict[str, list[bytes]]] | None:
        found = self._search(conn, self._address_filter([key]), self._fetch, size_limit=2)
        if len(found) > 1:
            # Two entries claim one address: prefer the one whose primary mail it is, and say so.
            mail = self.attrs["mail"].lower()
            log.warn("directory: {n} entries answer to {address}: {dns}", n=len(found), address=key,
                     dns=", ".join(dn for dn, _ in found))
            primary = [f for f in found if key in (v.decode("utf-8", "replace").lower() for v in f[1].get(mail, []))]
            return (primary or found)[0]
        return found[0] if found else None

    def _taken(self, conn: Any, addresses: Sequence[str], own_dn: str | None) -> str | None:
        """The first address used by another entry of the subtree (as mail or alias, any class)."""
        if not addresses:
            return None
        a = self.attrs
        found = self._search(conn, self._address_filter(addresses, only_accounts=False),
                             [a["mail"], a["congvuMailAlias"]], size_limit=len(addresses) * 2 + 1)
        used: set[str] = set()
        for dn, raw in found:
            if own_dn is not None and dn.lower() == own_dn.lower():
                continue
            for name in (a["mail"].lower(), a["congvuMailAlias"].lower()):
                used.update(v.decode("utf-8", "replace").lower() for v in raw.get(name, []))
        return next((x for x in addresses if x in used), None)

    # ------------------------------------------------------------------ entry ↔ Account

    def to_entry(self, account: Account) -> dict[str, list[bytes]]:
        """The attributes (site names) of an account; empty fields are left out."""
        a = self.attrs
        words = account.full_name.split()
        sn, given = account.full_name or account.local_part, ""
        if account.mailbox_type == "personal" and len(words) > 1:
            # Vietnamese order: family and middle names, then the given name (Nguyễn Văn | Minh).
            sn, given = " ".join(words[:-1]), words[-1]
        text: dict[str, str] = {
            "mail": account.address, "cn": account.full_name or account.local_part, "sn": sn, "givenName": given,
            "displayName": account.display_name, "o": account.agency, "ou": account.unit, "title": account.title,
            "userPassword": hash_to_ldap(account.password_hash),
            "congvuMailboxType": account.mailbox_type, "congvuAccountState": AccountState(account.state).value,
            "congvuStateReason": account.state_reason, "congvuStateBy": account.state_by,
            "congvuMustChange": "TRUE" if account.must_change else "FALSE",
            "congvuQuota": "" if account.quota_override is None else str(int(account.quota_override)),
        }
        for name, field_name in (("congvuStateChangedAt", "state_changed_at"), ("congvuCreatedAt", "created_at"),
                                 ("congvuPasswordChangedAt", "password_changed_at"),
                                 ("congvuLastLoginAt", "last_login_at")):
            value = getattr(account, field_name)
            text[name] = gtime(value) if value is not None else ""
        out = {a[k]: [v.encode("utf-8")] for k, v in text.items() if v}
        for name, values in (("congvuMailAlias", account.aliases), ("congvuDelegate", account.delegates),
                             ("congvuPasswordHistory", tuple(f"{i}:{h}" for i, h in
                                                             enumerate(account.password_history)))):
            if values:
                out[a[name]] = [v.encode("utf-8") for v in values]
        return out

    def from_entry(self, raw: Mapping[str, list[bytes]]) -> Account:
        """An Account from raw attributes (lower-cased site names); absent congvu values take safe defaults."""
        a = self.attrs

        def many(name: str) -> list[str]:
            return [v.decode("utf-8", "replace") for v in raw.get(a[name].lower(), [])]

        def one(name: str) -> str:
            values = many(name)
            return values[0] if values else ""

        def when(name: str) -> datetime | None:
            value = one(name)
            return parse_gtime(value) if value else None

        address = one("mail").lower()
        local_part, _, domain = address.rpartition("@")
        history: list[tuple[int, str]] = []
        for item in many("congvuPasswordHistory"):
            seq, sep, h = item.partition(":")
            history.append((int(seq), h) if sep and seq.isdigit() else (len(history) + 10_000, item))
        kind = one("congvuMailboxType").lower() or "personal"
        if kind not in MAILBOX_TYPES:
            raise DirectoryError(f"{address}: unknown mailbox type {kind!r} in {a['congvuMailboxType']}")
        state = one("congvuAccountState").lower() or AccountState.ACTIVE.value
        quota = one("congvuQuota")
        return Account(
            local_part=local_part, domain=domain, full_name=one("cn"), mailbox_type=kind,
            agency=one("o"), unit=one("ou"), display_name=one("displayName"), title=one("title"),
            password_hash=hash_from_ldap(one("userPassword")),
            password_history=tuple(h for _, h in sorted(history)),
            state=AccountState(state), state_reason=one("congvuStateReason"), state_by=one("congvuStateBy"),
            state_changed_at=when("congvuStateChangedAt"),
            created_at=when("congvuCreatedAt"), password_changed_at=when("congvuPasswordChangedAt"),
            # Absent means the entry predates congvu: its owner already has a password.
            must_change=one("congvuMustChange").upper() == "TRUE",
            last_login_at=when("congvuLastLoginAt"), quota_override=int(quota) if quota else None,
            aliases=tuple(sorted({x.lower() for x in many("congvuMailAlias")} - {address})),
            delegates=tuple(sorted({x.lower() for x in many("congvuDelegate")})),
        )

    # ------------------------------------------------------------------ AccountStore

    def get(self, address: str) -> Account | None:
        key = canonical(address)
        if key is None:
            return None
        found = self._call("get", lambda conn, _d: self._find(conn, key))
        return self.from_entry(found[1]) if found else None

    def add(self, account: Account) -> None:
        account = normalise(account)
        address = account.address
        if canonical(address) != address or any(canonical(x) != x for x in account.aliases):
            raise ValueError(f"not a storable address: {address!r}")
        a = self.attrs
        dn = f"{a['uid']}={escape_rdn(address)},{self.base_dn}"
        attributes = self.to_entry(account)
        attributes[a["uid"]] = [address.encode("utf-8")]
        classes = [a["congvuAccount"] if c == "congvuAccount" else c for c in self.settings.object_classes]

        def op(conn: Any, _deadline: float) -> None:
            clash = self._taken(conn, [address, *account.aliases], None)
            if clash is not None:
                raise AccountExists(clash)
            conn.add(dn, classes, attributes)
            if (conn.result or {}).get("result") == 68:  # entryAlreadyExists
                raise AccountExists(address)
            self._check(conn, f"add {address}")

        self._call("add", op)
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
            old = self.from_entry(raw)
            new = normalise(replace(old, **changes))
            if "aliases" in changes:
                if any(canonical(x) != x for x in new.aliases):
                    raise ValueError("not a storable alias")
                clash = self._taken(conn, list(new.aliases), dn)
                if clash is not None:
                    raise AccountExists(clash)
            before, after = self.to_entry(old), self.to_entry(new)
            mods = {name: [(ldap3.MODIFY_REPLACE, after.get(name, []))]
                    for name in before.keys() | after.keys()
                    if before.get(name) != after.get(name) and (name in after or name.lower() in raw)}
            if mods:
                conn.modify(dn, mods)
                if (conn.result or {}).get("result") == 32:  # noSuchObject: deleted meanwhile
                    raise AccountNotFound(address)
                self._check(conn, f"modify {new.address}")
            return new

        return self._call("update", op)

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
            self._check(conn, f"delete {address}")

        self._call("delete", op)

    def list(self, agency: str | None = None) -> Iterator[Account]:
        flt = self._class_filter
        if agency is not None:
            flt = f"(&{flt}({self.attrs['o']}={escape_filter_chars(agency)}))"
        found = self._call("list", lambda conn, _d: self._search(conn, flt, self._fetch, paged=True))
        accounts = [self.from_entry(raw) for _, raw in found]
        return iter(sorted(accounts, key=lambda x: x.address))

    def local_parts(self) -> frozenset[str]:
        a = self.attrs
        names = [a["mail"], a["congvuMailAlias"]]
        found = self._call("local_parts", lambda conn, _d: self._search(conn, self._class_filter, names, paged=True))
        out = set()
        for _, raw in found:
            for name in names:
                for v in raw.get(name.lower(), []):
                    local, at, _domain = v.decode("utf-8", "replace").lower().rpartition("@")
                    if at:
                        out.add(local)
        return frozenset(out)

    def check_schema(self) -> builtins.list[str]:
        """Problems that stop congvu using this directory (empty when usable): for ``congvu directory init``."""
        a = self.attrs

        def op(conn: Any, _deadline: float) -> builtins.list[str]:
            problems: builtins.list[str] = []
            conn.search("", "(objectClass=*)", ldap3.BASE, attributes=["subschemaSubentry"])
            self._check(conn, "read the root DSE")
            entries = [e for e in conn.response or () if e.get("type") == "searchResEntry"]
            raw_dse = {k.lower(): v for k, v in (entries[0]["raw_attributes"] if entries else {}).items()}
            subschema = (raw_dse.get("subschemasubentry") or [b"cn=Subschema"])[0].decode()
            conn.search(subschema, "(objectClass=subschema)", ldap3.BASE,
                        attributes=["objectClasses", "attributeTypes"])
            self._check(conn, f"read {subschema}")
            entries = [e for e in conn.response or () if e.get("type") == "searchResEntry"]
            raw = {k.lower(): v for k, v in (entries[0]["raw_attributes"] if entries else {}).items()}
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
            code = self._check(conn, f"read {self.base_dn}", ok=(0, 32, 50))
            if code == 32:
                problems.append(f"base DN {self.base_dn} does not exist")
            elif code == 50 or not conn.response:
                problems.append(f"base DN {self.base_dn}: the service account {self.bind_dn} may not read it")
            return problems

        return self._call("check_schema", op)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            self._quietly_close(conn)
