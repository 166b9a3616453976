"""Accounts to and from CSV and LDIF, so a site can start embedded and move to LDAP (CT15-3.2).

Both formats carry every field, hashes, password history, aliases, delegates, state
and timestamps included, and both round-trip: export → import → export gives the same
file.  CSV is one row per account with a header of :class:`Account` field names (lists
space-separated, times ISO 8601, booleans true/false, empty = none), so an agency can
also prepare new accounts in a spreadsheet with only ``local_part``/``domain`` (or
``address``), ``full_name`` and ``mailbox_type``.  LDIF (RFC 2849) uses
``inetOrgPerson`` names for what that class has (mail, cn, sn, givenName, displayName,
o, ou, title, userPassword) and the ``congvu*`` names of the shipped schema
(``conf/ldap/congvu.ldif``) for the rest; it is a transfer format read
back by ``congvu directory import``, whatever attribute map the target LDAP store uses.
"""

from __future__ import annotations

import base64
import csv
import io
import re
from collections.abc import Iterable
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any, TextIO

from ldap3.utils.dn import escape_rdn

from congvu.directory.ldap_mapping import FIELD_ATTRIBUTES, gtime, hash_from_ldap, hash_to_ldap, parse_gtime
from congvu.directory.model import DATE_FIELDS, Account
from congvu.rules.config import MAILBOX_TYPES
from congvu.rules.errors import InvalidInput
from congvu.rules.lifecycle import AccountState
from congvu.rules.units import parse_size

FORMATS = ("csv", "ldif")
FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Account))
_LISTS = {"aliases", "delegates", "password_history"}


class TransferError(InvalidInput):
    """A record that cannot be read: ``where: reason``."""


def detect_format(name: str, text: str) -> str:
    """``ldif`` or ``csv``, from the file name or, failing that, the first line."""
    lower = name.lower()
    if lower.endswith(".ldif") or lower.endswith(".ldf"):
        return "ldif"
    if lower.endswith(".csv"):
        return "csv"
    first = next((ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")), "")
    return "ldif" if re.match(r"^(version|dn)::?\s", first, re.IGNORECASE) else "csv"


# --------------------------------------------------------------------------- field codecs


def _to_text(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name in _LISTS:
        for item in value:
            if not item or any(c.isspace() for c in item):
                raise TransferError(f"{name}: item {item!r} cannot be exported (empty or has spaces)")
        return " ".join(value)
    if name in DATE_FIELDS:
        v: datetime = value if value.tzinfo else value.replace(tzinfo=UTC)
        return v.astimezone(UTC).isoformat()
    if name == "state":
        return str(AccountState(value).value)
    if name == "must_change":
        return "true" if value else "false"
    return str(value)


def _from_text(name: str, text: str) -> Any:
    if name in _LISTS:
        return tuple(text.split())
    if name in DATE_FIELDS:
        if not text:
            return None
        v = datetime.fromisoformat(text)
        return (v if v.tzinfo else v.replace(tzinfo=UTC)).astimezone(UTC)
    if name == "state":
        return AccountState(text or AccountState.ACTIVE.value)
    if name == "must_change":
        if text.lower() not in ("true", "false", "yes", "no", "1", "0", ""):
            raise ValueError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "yes", "1", "") if text else True
    if name == "quota_override":
        return parse_size(text) if text else None  # bytes as exported, or "12GB" from a spreadsheet
    if name == "mailbox_type" and text not in MAILBOX_TYPES:
        raise ValueError(f"expected one of {', '.join(MAILBOX_TYPES)}, got {text!r}")
    return text


def _account(values: dict[str, str], where: str) -> Account:
    """An Account from field-name → text, defaults for what is missing."""
    values = dict(values)
    if "address" in values:
        address = values.pop("address")
        if "@" not in address:
            raise TransferError(f"{where}: address {address!r} has no domain")
        values.setdefault("local_part", address.rsplit("@", 1)[0])
        values.setdefault("domain", address.rsplit("@", 1)[1])
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise TransferError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    for required in ("local_part", "domain", "full_name", "mailbox_type"):
        if not values.get(required):
            raise TransferError(f"{where}: {required} is missing")
    kwargs: dict[str, Any] = {}
    for name, text in values.items():
        try:
            kwargs[name] = _from_text(name, text)
        except ValueError as e:
            raise TransferError(f"{where}: {name}: {e}") from None
    return Account(**kwargs)


# --------------------------------------------------------------------------- CSV


def write_csv(accounts: Iterable[Account], out: TextIO) -> int:
    # RFC 4180 line ends: the csv module then quotes any field holding CR or LF, so both survive.
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(FIELDS)
    n = 0
    for a in accounts:
        w.writerow([_to_text(f, getattr(a, f)) for f in FIELDS])
        n += 1
    return n


def read_csv(text: str) -> list[Account]:
    reader = csv.DictReader(io.StringIO(text))
    out = []
    for row in reader:
        where = f"line {reader.line_num}"
        if None in row:
            raise TransferError(f"{where}: more cells than the header has")
        out.append(_account({k.strip(): (v or "") for k, v in row.items() if k is not None}, where))
    return out


# --------------------------------------------------------------------------- LDIF

#: Account field → LDIF attribute: the names of the shipped schema (standard inetOrgPerson
#: names first), whatever attribute map the target LDAP store uses.
LDIF_ATTRS: dict[str, str] = FIELD_ATTRIBUTES
_FIELD_OF = {v.lower(): k for k, v in LDIF_ATTRS.items()}
_IGNORED = {"objectclass", "sn", "givenname", "uid"}
#: RFC 2849 SAFE-STRING, narrowed to printable ASCII; anything else goes base64.
_SAFE = re.compile(r"^[\x21-\x39\x3b\x3d-\x7e][\x20-\x7e]*$")


def _ldif_line(attr: str, value: str) -> str:
    line = f"{attr}: {value}" if _SAFE.match(value) and not value.endswith(" ") \
        else f"{attr}:: {base64.b64encode(value.encode('utf-8')).decode('ascii')}"
    # RFC 2849: fold at 76 columns, continuation lines start with one space.
    parts = [line[:76]] + [" " + line[i:i + 75] for i in range(76, len(line), 75)]
    return "\n".join(parts)


def base_dn_for(domain: str) -> str:
    return ",".join(f"dc={escape_rdn(p)}" for p in domain.split("."))


def write_ldif(accounts: Iterable[Account], out: TextIO, base_dn: str) -> int:
    out.write("version: 1\n")
    n = 0
    for a in accounts:
        names = a.full_name.split()
        lines = [_ldif_line("dn", f"uid={escape_rdn(a.address)},{base_dn or base_dn_for(a.domain)}"),
                 "objectClass: inetOrgPerson", "objectClass: congvuAccount",
                 _ldif_line("uid", a.address), _ldif_line("mail", a.address),
                 _ldif_line("sn", names[0] if names else a.local_part),
                 _ldif_line("givenName", names[-1] if names else a.local_part)]
        for field_name, attr in LDIF_ATTRS.items():
            value = getattr(a, field_name)
            if field_name in _LISTS:
                _to_text(field_name, value)  # refuses items with spaces, as CSV does
                lines += [_ldif_line(attr, item) for item in value]
            elif field_name in DATE_FIELDS:
                if value is not None:
                    lines.append(_ldif_line(attr, gtime(value)))
            elif field_name == "must_change":
                lines.append(_ldif_line(attr, "TRUE" if value else "FALSE"))
            else:
                text = _to_text(field_name, value)
                if field_name == "password_hash":
                    # slapd must see the scheme, or it would take the hash for a cleartext password.
                    text = hash_to_ldap(text)
                if text:
                    lines.append(_ldif_line(attr, text))
        out.write("\n" + "\n".join(lines) + "\n")
        n += 1
    return n


def _ldif_records(text: str) -> Iterable[tuple[int, list[tuple[str, str]]]]:
    """(first line number, [(attribute, value)]) per record, folded lines joined, base64 decoded."""
    record: list[tuple[str, str]] = []
    logical: list[tuple[int, str]] = []
    for n, raw in enumerate(text.split("\n"), 1):
        raw = raw.removesuffix("\r")
        if raw.startswith(" ") and logical:
            logical[-1] = (logical[-1][0], logical[-1][1] + raw[1:])
        else:
            logical.append((n, raw))
    start = 0
    for n, line in [*logical, (0, "")]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if record:
                yield start, record
                record = []
            continue
        m = re.match(r"^([A-Za-z][A-Za-z0-9;-]*)(::|:<|:)\s?(.*)$", line)
        if m is None:
            raise TransferError(f"line {n}: not an LDIF line")
        attr, sep, value = m.groups()
        if sep == ":<":
            raise TransferError(f"line {n}: URL values are not accepted")
        if sep == "::":
            try:
                value = base64.b64decode(value, validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                raise TransferError(f"line {n}: {attr}: bad base64 or not UTF-8") from None
        if not record:
            start = n
            if attr.lower() == "version":
                continue
            if attr.lower() != "dn":
                raise TransferError(f"line {n}: a record must start with dn:")
        record.append((attr, value))


def read_ldif(text: str) -> list[Account]:
    out = []
    for start, record in _ldif_records(text):
        where = f"record at line {start}"
        values: dict[str, str] = {}
        lists: dict[str, list[str]] = {}
        for attr, value in record[1:]:
            low = attr.lower()
            if low == "changetype":
                raise TransferError(f"{where}: change records are not accepted, only entries")
            if low in _IGNORED:
                continue
            if low == "mail":
                values["address"] = value
                continue
            name = _FIELD_OF.get(low)
            if name is None:
                raise TransferError(f"{where}: unknown attribute {attr}")
            if name in _LISTS:
                lists.setdefault(name, []).append(value)
            elif name in values:
                raise TransferError(f"{where}: {attr} given twice")
            elif name in DATE_FIELDS:
                try:
                    values[name] = parse_gtime(value).isoformat()
                except ValueError as e:
                    raise TransferError(f"{where}: {attr}: {e}") from None
            else:
                values[name] = hash_from_ldap(value) if name == "password_hash" else value
        if "address" not in values:
            raise TransferError(f"{where}: no mail attribute")
        values.update({k: " ".join(v) for k, v in lists.items()})
        values.setdefault("must_change", "TRUE")
        out.append(_account(values, where))
    return out


def write(accounts: Iterable[Account], fmt: str, out: TextIO, *, base_dn: str = "") -> int:
    """Write ``accounts`` in ``fmt`` (csv or ldif); returns how many."""
    if fmt == "csv":
        return write_csv(accounts, out)
    if fmt == "ldif":
        return write_ldif(accounts, out, base_dn)
    raise ValueError(f"format must be one of {', '.join(FORMATS)}")


def read(text: str, fmt: str) -> list[Account]:
    """Every account in ``text``; raises TransferError naming the line of the first bad record."""
    if fmt == "csv":
        return read_csv(text)
    if fmt == "ldif":
        return read_ldif(text)
    raise ValueError(f"format must be one of {', '.join(FORMATS)}")
