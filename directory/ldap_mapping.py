"""Accounts as LDAP entries (CT15-3.2): attribute names, values and filters, with no I/O.

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

Entries of a tree congvu did not write may lack congvu's attributes (they take safe
defaults: a personal, active mailbox whose owner already has a password) or hold values
congvu cannot read; those raise :class:`DirectoryError` naming the entry and attribute,
so one odd entry is reported, never a crash in a caller.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn

from congvu.directory.hashing import strip_scheme_prefix
from congvu.directory.model import DATE_FIELDS, Account, DirectoryError, normalise
from congvu.directory.settings import DirectorySettings
from congvu.rules.addresses import canonical
from congvu.rules.config import MAILBOX_TYPES
from congvu.rules.lifecycle import AccountState

#: congvu's attribute names (the keys ``[directory] attributes`` may remap) and the
#: object classes of a new entry.  ``congvuAccount`` names the auxiliary class itself.
DEFAULT_ATTRIBUTES: tuple[str, ...] = (
    "uid", "mail", "cn", "sn", "givenName", "displayName", "o", "ou", "title", "userPassword",
    "congvuAccount", "congvuMailboxType", "congvuAccountState", "congvuStateReason", "congvuStateBy",
    "congvuStateChangedAt", "congvuCreatedAt", "congvuPasswordChangedAt", "congvuLastLoginAt",
    "congvuMustChange", "congvuQuota", "congvuMailAlias", "congvuDelegate", "congvuPasswordHistory",
)

#: Account field → congvu attribute name (before the site's map).  The LDIF transfer format
#: writes the same names, in this order.
FIELD_ATTRIBUTES: dict[str, str] = {
    "full_name": "cn", "display_name": "displayName", "unit": "ou", "title": "title",
    "password_hash": "userPassword", "agency": "o", "mailbox_type": "congvuMailboxType",
    "state": "congvuAccountState", "state_reason": "congvuStateReason", "state_by": "congvuStateBy",
    "state_changed_at": "congvuStateChangedAt", "created_at": "congvuCreatedAt",
    "password_changed_at": "congvuPasswordChangedAt", "must_change": "congvuMustChange",
    "last_login_at": "congvuLastLoginAt", "quota_override": "congvuQuota", "aliases": "congvuMailAlias",
    "delegates": "congvuDelegate", "password_history": "congvuPasswordHistory",
}

#: Raw attributes of one entry as ldap3 returns them, names lower-cased.
RawEntry = Mapping[str, Sequence[bytes]]

_NAME = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*|\d+(?:\.\d+)+)$")
_GTIME = re.compile(r"^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})?(\d{2})?(?:[.,](\d{1,6})\d*)?(Z|[+-]\d{2}(?:\d{2})?)$")
_SCHEME = re.compile(r"^\{([A-Za-z0-9.-]+)\}")


# --------------------------------------------------------------------------- values


def hash_to_ldap(password_hash: str) -> str:
    """passlib hash → ``userPassword`` value slapd can verify (see the module docstring)."""
    if not password_hash or _SCHEME.match(password_hash):
        return password_hash
    if password_hash.startswith("$argon2"):
        return "{ARGON2}" + password_hash
    return "{CRYPT}" + password_hash


def hash_from_ldap(value: str) -> str:
    """``userPassword`` value → passlib hash: ``{ARGON2}``/``{CRYPT}`` dropped, other schemes kept."""
    return strip_scheme_prefix(value)  # the same rule the hasher applies before verifying


def gtime(v: datetime) -> str:
    """GeneralizedTime in UTC, microseconds kept (a naive datetime is taken as UTC)."""
    v = (v if v.tzinfo else v.replace(tzinfo=UTC)).astimezone(UTC)
    # The year by hand: strftime's %Y does not pad years before 1000 to the four digits RFC 4517 wants.
    return f"{v.year:04d}" + v.strftime("%m%d%H%M%S") + (f".{v.microsecond:06d}" if v.microsecond else "") + "Z"


def parse_gtime(text: str) -> datetime:
    """RFC 4517 GeneralizedTime → aware UTC datetime (minutes, seconds and fraction optional).

    Raises ValueError for anything else, out-of-range fields included.
    """
    m = _GTIME.match(text)
    if m is None:
        raise ValueError(f"not a GeneralizedTime: {text!r}")
    y, mo, d, h, mi, s, frac, zone = m.groups()
    try:
        v = datetime(int(y), int(mo), int(d), int(h), int(mi or 0), int(s or 0),
                     int((frac or "0").ljust(6, "0")), tzinfo=UTC)
        if zone != "Z":
            sign = 1 if zone[0] == "+" else -1
            offset = int(zone[1:3]) * 60 + int(zone[3:5] or 0)
            v -= sign * timedelta(minutes=offset)
    except (ValueError, OverflowError):  # month 13, or an offset that leaves the calendar
        raise ValueError(f"not a GeneralizedTime: {text!r}") from None
    return v


# --------------------------------------------------------------------------- names


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


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class EntryMapping:
    """Account ↔ entry, filters and new-entry DNs, in one site's attribute and class names."""

    attrs: AttributeMap
    #: Object classes of a new entry (site names: ``congvuAccount`` mapped).
    object_classes: tuple[str, ...]

    @classmethod
    def from_settings(cls, settings: DirectorySettings) -> EntryMapping:
        """The mapping ``[directory] attributes`` and ``object_classes`` describe; DirectoryError if malformed."""
        attrs = AttributeMap.from_settings(settings.attributes)
        for name in settings.object_classes:
            if not _NAME.match(name):
                raise DirectoryError(f"directory.object_classes: {name!r} is not an object class name")
        return cls(attrs, tuple(attrs["congvuAccount"] if c == "congvuAccount" else c
                                for c in settings.object_classes))

    # ------------------------------------------------------------------ filters (RFC 4515)

    @property
    def class_filter(self) -> str:
        """Every congvu account, and nothing else of a shared tree."""
        return f"(objectClass={self.attrs['congvuAccount']})"

    @property
    def address_attributes(self) -> list[str]:
        """The attributes an address may be found in: the primary mail, then aliases."""
        return [self.attrs["mail"], self.attrs["congvuMailAlias"]]

    def address_filter(self, keys: Iterable[str], only_accounts: bool = True) -> str:
        """Entries holding any of ``keys`` as mail or alias; any class when ``only_accounts`` is False."""
        terms = "".join(f"({attr}={escape_filter_chars(k)})" for k in keys for attr in self.address_attributes)
        where = f"(|{terms})"
        return f"(&{self.class_filter}{where})" if only_accounts else where

    def agency_filter(self, agency: str) -> str:
        """The accounts of one agency."""
        return f"(&{self.class_filter}({self.attrs['o']}={escape_filter_chars(agency)}))"

    def addresses(self, raw: RawEntry, aliases: bool = True) -> list[str]:
        """The lower-cased mail values of an entry, and its aliases unless ``aliases`` is False."""
        names = self.address_attributes if aliases else self.address_attributes[:1]
        return [v.decode("utf-8", "replace").lower() for name in names for v in raw.get(name.lower(), ())]

    # ------------------------------------------------------------------ Account ↔ entry

    def new_entry(self, account: Account, base_dn: str) -> tuple[str, dict[str, list[bytes]]]:
        """(DN, attributes) of a new entry: ``uid=<address>`` right below ``base_dn``, whatever the address holds."""
        dn = f"{self.attrs['uid']}={escape_rdn(account.address)},{base_dn}"
        attributes = self.to_entry(account)
        attributes[self.attrs["uid"]] = [account.address.encode("utf-8")]
        return dn, attributes

    def to_entry(self, account: Account) -> dict[str, list[bytes]]:
        """The attributes (site names) of an account; empty fields are left out."""
        words = account.full_name.split()
        sn, given = account.full_name or account.local_part, ""
        if account.mailbox_type == "personal" and len(words) > 1:
            # Vietnamese order: family and middle names, then the given name (Nguyễn Văn | Minh).
            sn, given = " ".join(words[:-1]), words[-1]
        by_field: dict[str, Sequence[str]] = {
            # cn is mandatory in inetOrgPerson: the local part stands in for a missing name.
            "full_name": [account.full_name or account.local_part],
            "display_name": [account.display_name], "agency": [account.agency], "unit": [account.unit],
            "title": [account.title], "mailbox_type": [account.mailbox_type],
            "password_hash": [hash_to_ldap(account.password_hash)],
            "password_history": [f"{i}:{h}" for i, h in enumerate(account.password_history)],
            "state": [AccountState(account.state).value], "state_reason": [account.state_reason],
            "state_by": [account.state_by], "must_change": ["TRUE" if account.must_change else "FALSE"],
            "quota_override": [] if account.quota_override is None else [str(int(account.quota_override))],
            "aliases": account.aliases, "delegates": account.delegates,
        }
        for name in DATE_FIELDS:
            value: datetime | None = getattr(account, name)
            by_field[name] = [] if value is None else [gtime(value)]
        values = {"mail": [account.address], "sn": [sn], "givenName": [given],
                  **{FIELD_ATTRIBUTES[f]: v for f, v in by_field.items()}}
        out = {self.attrs[name]: [v.encode("utf-8") for v in vs if v] for name, vs in values.items()}
        return {name: vs for name, vs in out.items() if vs}

    def from_entry(self, raw: RawEntry, dn: str = "") -> Account:
        """An Account from raw attributes (lower-cased site names); absent congvu values take safe defaults.

        Raises DirectoryError, naming the entry and the attribute, for what cannot be read.
        """
        a = self.attrs

        def many(name: str) -> list[str]:
            return [v.decode("utf-8", "replace") for v in raw.get(a[name].lower(), ())]

        def one(name: str) -> str:
            values = many(name)
            return values[0] if values else ""

        mail = one("mail")
        address = canonical(mail)
        if address is None or "@" not in address:
            what = f"{a['mail']} {mail!r} is not an address" if mail else f"no {a['mail']} attribute"
            raise DirectoryError(f"{dn or 'LDAP entry'}: {what}")
        local_part, _, domain = address.rpartition("@")

        def when(name: str) -> datetime | None:
            value = one(name)
            try:
                return parse_gtime(value) if value else None
            except ValueError:
                raise DirectoryError(f"{address}: {a[name]} {value!r} is not a GeneralizedTime") from None

        history: list[tuple[int, str]] = []
        for item in many("congvuPasswordHistory"):
            seq, sep, h = item.partition(":")
            # Values without a sequence number (written by another tool) keep their order, after congvu's.
            numbered = bool(sep) and seq.isascii() and seq.isdigit()
            history.append((int(seq), h) if numbered else (len(history) + 10_000, item))
        kind = one("congvuMailboxType").lower() or "personal"
        if kind not in MAILBOX_TYPES:
            raise DirectoryError(f"{address}: unknown mailbox type {kind!r} in {a['congvuMailboxType']}")
        state = one("congvuAccountState").lower() or AccountState.ACTIVE.value
        try:
            known_state = AccountState(state)
        except ValueError:
            raise DirectoryError(f"{address}: unknown account state {state!r} in {a['congvuAccountState']}") from None
        quota = one("congvuQuota")
        try:
            quota_override = int(quota) if quota else None
        except ValueError:
            raise DirectoryError(f"{address}: {a['congvuQuota']} {quota!r} is not a number of bytes") from None
        return normalise(Account(
            local_part=local_part, domain=domain, full_name=one("cn"), mailbox_type=kind,
            agency=one("o"), unit=one("ou"), display_name=one("displayName"), title=one("title"),
            password_hash=hash_from_ldap(one("userPassword")),
            password_history=tuple(h for _, h in sorted(history)),
            state=known_state, state_reason=one("congvuStateReason"), state_by=one("congvuStateBy"),
            state_changed_at=when("congvuStateChangedAt"),
            created_at=when("congvuCreatedAt"), password_changed_at=when("congvuPasswordChangedAt"),
            # Absent means the entry predates congvu: its owner already has a password.
            must_change=one("congvuMustChange").upper() == "TRUE",
            last_login_at=when("congvuLastLoginAt"), quota_override=quota_override,
            aliases=tuple(many("congvuMailAlias")), delegates=tuple(many("congvuDelegate")),
        ))
