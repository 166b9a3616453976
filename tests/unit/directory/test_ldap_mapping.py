"""Accounts ↔ LDAP entries without a server: every field round-trips, names follow the site's map,
hashes carry their RFC 2307 scheme, and an entry congvu cannot read is a DirectoryError."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from congvu.config import config_from_mapping
from congvu.directory.ldap_mapping import (
    DEFAULT_ATTRIBUTES,
    FIELD_ATTRIBUTES,
    AttributeMap,
    EntryMapping,
    gtime,
    hash_from_ldap,
    hash_to_ldap,
    parse_gtime,
)
from congvu.directory.model import Account, DirectoryError, normalise
from congvu.rules.config import MAILBOX_TYPES
from congvu.rules.lifecycle import AccountState

DOMAIN = "cantho.gov.vn"
CLASSES = ["inetOrgPerson", "congvuAccount"]
#: A site's own names for some attributes and for congvu's class.
RENAMED = {"mail": "mailPrimaryAddress", "congvuMailAlias": "mailAlternativeAddress", "o": "departmentNumber",
           "congvuAccount": "siteMailAccount", "congvuQuota": "siteQuota", "cn": "commonName"}


def mapping(attributes: Mapping[str, str] | None = None, object_classes: Sequence[str] = CLASSES) -> EntryMapping:
    cfg = config_from_mapping({"directory": {"attributes": dict(attributes or {}),
                                             "object_classes": list(object_classes)}})
    return EntryMapping.from_settings(cfg.directory)


DEFAULT = mapping()
SITE = mapping(RENAMED, ["inetOrgPerson", "siteMailUser", "congvuAccount"])


def read_back(entry: Mapping[str, list[bytes]]) -> dict[str, list[bytes]]:
    """The entry as the store hands it to from_entry: attribute names lower-cased, as ldap3 may spell them."""
    return {name.lower(): values for name, values in entry.items()}


def person(**fields: Any) -> Account:
    base: dict[str, Any] = {"local_part": "nvminh", "domain": DOMAIN, "full_name": "Nguyễn Văn Minh",
                            "mailbox_type": "personal"}
    return Account(**{**base, **fields})


# --------------------------------------------------------------------------- strategies

VIETNAMESE = ("aăâbcdđeêghiklmnoôơpqrstuưvxyàảãáạằẳẵắặầẩẫấậèẻẽéẹềểễếệìỉĩíịòỏõóọồổỗốộờởỡớợ"
              "ùủũúụừửữứựỳỷỹýỵ")
words = st.text(alphabet=VIETNAMESE + VIETNAMESE.upper(), min_size=1, max_size=7)
names = st.lists(words, min_size=1, max_size=4).map(" ".join)
#: Any text a person may type, control characters and newlines included (not lone surrogates: not Unicode).
free_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)
local_parts = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,15}", fullmatch=True)
domains = st.sampled_from([DOMAIN, "sonv.cantho.gov.vn", "CanTho.Gov.VN"])
addresses = st.builds(lambda local, domain: f"{local}@{domain}", local_parts, domains)
salt = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789./", min_size=4, max_size=30)
hashes = st.one_of(
    st.builds(lambda s: f"$argon2id$v=19$m=65536,t=3,p=4${s}", salt),
    st.builds(lambda s: f"$2b$12${s}", salt),
    st.builds(lambda s: f"$6$rounds=5000${s}", salt),
    st.builds(lambda s: f"{{SSHA}}{s}", salt),
)
dates = st.none() | st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from([None, UTC, timezone(timedelta(hours=7)), timezone(timedelta(hours=-3, minutes=-30))]))
accounts = st.builds(
    Account, local_part=local_parts, domain=domains, full_name=names, mailbox_type=st.sampled_from(MAILBOX_TYPES),
    agency=free_text, unit=free_text, display_name=free_text, title=free_text,
    password_hash=st.just("") | hashes, password_history=st.lists(hashes, max_size=4).map(tuple),
    state=st.sampled_from(AccountState), state_reason=free_text, state_by=free_text | addresses,
    state_changed_at=dates, created_at=dates, password_changed_at=dates, must_change=st.booleans(),
    last_login_at=dates, quota_override=st.none() | st.integers(0, 2**53),
    aliases=st.lists(addresses, max_size=3).map(tuple), delegates=st.lists(addresses, max_size=3).map(tuple))


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("m", [DEFAULT, SITE], ids=["congvu names", "site names"])
@settings(max_examples=150, deadline=None)
@given(account=accounts)
def test_every_field_round_trips(m: EntryMapping, account: Account) -> None:
    """Account → entry → Account gives the stored (normalised) account back, field for field, under any map."""
    assert m.from_entry(read_back(m.to_entry(account))) == normalise(account)


def test_every_account_field_is_written() -> None:
    """A fully set account writes an attribute for every Account field but the address parts."""
    full = person(display_name="Minh - Sở Nội vụ", agency="sonv", unit="Phòng Tổ chức", title="Chuyên viên",
                  password_hash="$6$x$y", password_history=("$6$a$b",), state_reason="r", state_by="cron",
                  state_changed_at=datetime(2025, 1, 1, tzinfo=UTC), created_at=datetime(2025, 1, 1, tzinfo=UTC),
                  password_changed_at=datetime(2025, 1, 1, tzinfo=UTC),
                  last_login_at=datetime(2025, 1, 1, tzinfo=UTC), quota_override=1, aliases=(f"m@{DOMAIN}",),
                  delegates=(f"d@{DOMAIN}",))
    assert set(FIELD_ATTRIBUTES.values()) | {"mail", "sn", "givenName"} == set(DEFAULT.to_entry(full))


def test_empty_fields_are_left_out_and_safe_defaults_read_back() -> None:
    """Empty text, None dates and quota and empty lists write no attribute; must_change is always written."""
    entry = DEFAULT.to_entry(person(must_change=False))
    assert entry == {"mail": [b"nvminh@cantho.gov.vn"], "cn": ["Nguyễn Văn Minh".encode()],
                     "sn": ["Nguyễn Văn".encode()], "givenName": [b"Minh"], "congvuMailboxType": [b"personal"],
                     "congvuAccountState": [b"active"], "congvuMustChange": [b"FALSE"]}


@pytest.mark.parametrize(("kind", "full_name", "sn", "given"), [
    ("personal", "Nguyễn Văn Minh", "Nguyễn Văn", "Minh"),
    ("personal", "Trần Thị Ngọc Lan", "Trần Thị Ngọc", "Lan"),
    ("personal", "Minh", "Minh", None),
    ("unit", "Văn phòng Sở Nội vụ", "Văn phòng Sở Nội vụ", None),
    ("agency", "", "nvminh", None),
])
def test_sn_and_given_name_in_vietnamese_order(kind: str, full_name: str, sn: str, given: str | None) -> None:
    """A person's family and middle names go to sn, the last word to givenName; a unit keeps its whole name."""
    entry = DEFAULT.to_entry(person(mailbox_type=kind, full_name=full_name))
    assert entry["sn"] == [sn.encode()]
    assert entry.get("givenName") == (None if given is None else [given.encode()])
    assert entry["cn"] == [(full_name or "nvminh").encode()]  # cn is mandatory: the local part stands in


def test_password_history_keeps_its_order_past_ten_entries() -> None:
    """History values carry their position, so the server's value order (unspecified in LDAP) cannot shuffle them."""
    history = tuple(f"$6$h{i}$x" for i in range(12))
    entry = read_back(DEFAULT.to_entry(person(password_history=history)))
    entry["congvupasswordhistory"] = [*reversed(entry["congvupasswordhistory"]), b"{SSHA}foreign"]
    assert DEFAULT.from_entry(entry).password_history == (*history, "{SSHA}foreign")


# --------------------------------------------------------------------------- the site's names


def test_renamed_attributes_are_written_and_read_by_the_sites_names() -> None:
    """With mail → mailPrimaryAddress etc., the entry holds only the site's names and is read back by them."""
    account = person(agency="sotc", aliases=(f"lan.tt@{DOMAIN}",), quota_override=5)
    entry = SITE.to_entry(account)
    assert entry["mailPrimaryAddress"] == [b"nvminh@cantho.gov.vn"]
    assert entry["mailAlternativeAddress"] == [b"lan.tt@cantho.gov.vn"]
    assert entry["departmentNumber"] == [b"sotc"] and entry["siteQuota"] == [b"5"]
    assert not {"mail", "congvuMailAlias", "o", "congvuQuota", "cn"} & set(entry)
    assert SITE.from_entry(read_back({**entry, "o": [b"x"]})).agency == "sotc"  # congvu's o is not the site's


def test_renamed_class_and_filters() -> None:
    """New entries get the site's class names; filters name the site's class and attributes."""
    assert SITE.object_classes == ("inetOrgPerson", "siteMailUser", "siteMailAccount")
    assert DEFAULT.object_classes == ("inetOrgPerson", "congvuAccount")
    assert SITE.class_filter == "(objectClass=siteMailAccount)"
    assert SITE.address_filter(["a@x"]) == (
        "(&(objectClass=siteMailAccount)(|(mailPrimaryAddress=a@x)(mailAlternativeAddress=a@x)))")
    assert SITE.agency_filter("sonv") == "(&(objectClass=siteMailAccount)(departmentNumber=sonv))"


def test_filters_escape_every_metacharacter() -> None:
    """RFC 4515: * ( ) \\ and NUL in an address or agency are escaped, so they match only themselves."""
    assert DEFAULT.address_filter(["a*b(c)\\d\x00@x", "e@x"], only_accounts=False) == (
        r"(|(mail=a\2ab\28c\29\5cd\00@x)(congvuMailAlias=a\2ab\28c\29\5cd\00@x)(mail=e@x)(congvuMailAlias=e@x))")
    assert DEFAULT.agency_filter("*)(uid=*") == r"(&(objectClass=congvuAccount)(o=\2a\29\28uid=\2a))"


def test_new_entry_dn_stays_below_the_base() -> None:
    """The DN is uid=<address> with RDN metacharacters escaped; the entry also holds uid and the address."""
    dn, attrs = SITE.new_entry(person(local_part="x,ou=evil+cn=y"), "ou=people,dc=cantho,dc=gov,dc=vn")
    assert dn == r"uid=x\,ou\=evil\+cn\=y@cantho.gov.vn,ou=people,dc=cantho,dc=gov,dc=vn"
    assert attrs["uid"] == attrs["mailPrimaryAddress"] == [b"x,ou=evil+cn=y@cantho.gov.vn"]


def test_addresses_of_an_entry() -> None:
    """addresses() lists the mail then the aliases, lower-cased, under the site's names."""
    raw = {"mailprimaryaddress": [b"NVMinh@CanTho.gov.vn"], "mailalternativeaddress": [b"Minh@cantho.gov.vn"]}
    assert SITE.addresses(raw) == ["nvminh@cantho.gov.vn", "minh@cantho.gov.vn"]
    assert SITE.addresses(raw, aliases=False) == ["nvminh@cantho.gov.vn"]
    assert DEFAULT.addresses(raw) == []


def test_attribute_map_refuses_unknown_keys_and_bad_names() -> None:
    """A typo in [directory] attributes or object_classes is a DirectoryError naming it; keys ignore case."""
    assert AttributeMap.from_settings({"MAIL": "mailPrimaryAddress"})["mail"] == "mailPrimaryAddress"
    assert AttributeMap.from_settings({"title": "2.5.4.12"})["title"] == "2.5.4.12"  # an OID is a name too
    assert {AttributeMap.from_settings({})[n] for n in DEFAULT_ATTRIBUTES} == set(DEFAULT_ATTRIBUTES)
    with pytest.raises(DirectoryError, match="unknown attribute 'mial'"):
        AttributeMap.from_settings({"mial": "mail"})
    with pytest.raises(DirectoryError, match="not an LDAP attribute name"):
        AttributeMap.from_settings({"mail": "mail)(uid=*"})
    with pytest.raises(DirectoryError, match="not an object class name"):
        mapping(object_classes=["inetOrgPerson", "congvuAccount)(x"])


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(("passlib", "stored"), [
    ("$argon2id$v=19$m=1024,t=1,p=1$c2FsdA$aGFzaA", "{ARGON2}$argon2id$v=19$m=1024,t=1,p=1$c2FsdA$aGFzaA"),
    ("$argon2i$v=19$m=1024,t=1,p=1$c2FsdA$aGFzaA", "{ARGON2}$argon2i$v=19$m=1024,t=1,p=1$c2FsdA$aGFzaA"),
    ("$2b$12$abcdefghijklmnopqrstuv", "{CRYPT}$2b$12$abcdefghijklmnopqrstuv"),
    ("$6$rounds=5000$salt$hash", "{CRYPT}$6$rounds=5000$salt$hash"),
    ("{SSHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "{SSHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g="),
    ("", ""),
])
def test_hash_schemes(passlib: str, stored: str) -> None:
    """argon2 gets {ARGON2}, other crypt hashes {CRYPT}; a value with a scheme already is kept as it is."""
    assert hash_to_ldap(passlib) == stored
    assert hash_from_ldap(stored) == passlib


def test_hash_scheme_prefixes_ignore_case() -> None:
    """{crypt} and {argon2} written by another tool in lower case are dropped too."""
    assert hash_from_ldap("{crypt}$6$x$y") == "$6$x$y"
    assert hash_from_ldap("{argon2}$argon2id$x") == "$argon2id$x"
    entry = read_back({**DEFAULT.to_entry(person()), "userPassword": [b"{crypt}$2b$04$abc"]})
    assert DEFAULT.from_entry(entry).password_hash == "$2b$04$abc"


@pytest.mark.parametrize(("value", "text"), [
    (datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC), "20250102030405Z"),
    (datetime(2025, 1, 2, 3, 4, 5, 120, tzinfo=UTC), "20250102030405.000120Z"),
    (datetime(2025, 1, 2, 3, 4, 5), "20250102030405Z"),  # naive: UTC
    (datetime(2025, 1, 2, 7, 4, 5, tzinfo=timezone(timedelta(hours=7))), "20250102000405Z"),
    (datetime(999, 12, 31, tzinfo=UTC), "09991231000000Z"),  # four digits, as RFC 4517 wants
])
def test_gtime_writes_utc_generalized_time(value: datetime, text: str) -> None:
    """gtime() writes UTC, seconds always, microseconds only when there are some; parse_gtime reads it back."""
    assert gtime(value) == text
    assert parse_gtime(text) == (value if value.tzinfo else value.replace(tzinfo=UTC))


@pytest.mark.parametrize(("text", "value"), [
    ("2025010203Z", datetime(2025, 1, 2, 3, tzinfo=UTC)),
    ("202501020304Z", datetime(2025, 1, 2, 3, 4, tzinfo=UTC)),
    ("20250102030405.5Z", datetime(2025, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)),
    ("20250102030405,1234567Z", datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)),
    ("20250102070405+0700", datetime(2025, 1, 2, 0, 4, 5, tzinfo=UTC)),
    ("20250101233000-05", datetime(2025, 1, 2, 4, 30, tzinfo=UTC)),
])
def test_parse_gtime_reads_other_servers_forms(text: str, value: datetime) -> None:
    """Optional minutes, seconds and fraction, and numeric offsets, as other servers write them."""
    got = parse_gtime(text)
    assert got == value and got.tzinfo == UTC


@pytest.mark.parametrize("text", ["", "2025-01-02T03:04:05Z", "20250102030405", "20251302000000Z",
                                  "20250230000000Z", "20250102250000Z", "00010101000000+0100", "20250102030405Zx"])
def test_parse_gtime_refuses_anything_else(text: str) -> None:
    """ISO 8601, a missing zone, impossible dates and dates off the calendar are a ValueError."""
    with pytest.raises(ValueError, match="not a GeneralizedTime"):
        parse_gtime(text)


# --------------------------------------------------------------------------- foreign entries


def test_a_foreign_entry_without_congvu_attributes_gets_safe_defaults() -> None:
    """An inetOrgPerson from before congvu: a personal, active mailbox whose owner has a password."""
    got = SITE.from_entry({"mailprimaryaddress": [b"TTLan@CanTho.gov.vn"], "commonname": ["Trần Thị Lan".encode()],
                           "mailalternativeaddress": [b"Lan.TT@cantho.gov.vn", b"ttlan@cantho.gov.vn"],
                           "userpassword": [b"{SSHA}abc"], "objectclass": [b"inetOrgPerson"]})
    assert got == Account(local_part="ttlan", domain=DOMAIN, full_name="Trần Thị Lan", mailbox_type="personal",
                          password_hash="{SSHA}abc", must_change=False, aliases=(f"lan.tt@{DOMAIN}",))


GOOD = read_back(DEFAULT.to_entry(person()))


@pytest.mark.parametrize(("changes", "message"), [
    ({"mail": []}, r"^uid=x,ou=people: no mail attribute$"),
    ({"mail": [b"nvminh"]}, r"^uid=x,ou=people: mail 'nvminh' is not an address$"),
    ({"mail": [b"@cantho.gov.vn"]}, r"mail '@cantho.gov.vn' is not an address"),
    ({"mail": [b"nv\x00minh@cantho.gov.vn"]}, r"is not an address"),
    ({"congvucreatedat": [b"2025-01-02"]}, r"^nvminh@cantho.gov.vn: congvuCreatedAt '2025-01-02' is not a Gener"),
    ({"congvulastloginat": [b"20251345000000Z"]}, r"congvuLastLoginAt '20251345000000Z' is not a GeneralizedTime"),
    ({"congvuaccountstate": [b"frozen"]}, r"unknown account state 'frozen' in congvuAccountState"),
    ({"congvumailboxtype": [b"shared"]}, r"unknown mailbox type 'shared' in congvuMailboxType"),
    ({"congvuquota": [b"12GB"]}, r"congvuQuota '12GB' is not a number of bytes"),
])
def test_unreadable_entries_are_a_directory_error(changes: dict[str, list[bytes]], message: str) -> None:
    """A missing or malformed mail, a bad date, an unknown state, type or quota: DirectoryError naming it."""
    with pytest.raises(DirectoryError, match=message):
        DEFAULT.from_entry({**GOOD, **changes}, dn="uid=x,ou=people")


def test_unreadable_entry_names_the_sites_attribute() -> None:
    """Under a map, the message names the attribute the site knows."""
    entry = read_back({**SITE.to_entry(person()), "siteQuota": [b"lots"]})
    with pytest.raises(DirectoryError, match="siteQuota 'lots'"):
        SITE.from_entry(entry)
    with pytest.raises(DirectoryError, match=r"^LDAP entry: no mailPrimaryAddress attribute$"):
        SITE.from_entry({})


plausible = st.sampled_from([b"", b"TRUE", b"active", b"locked", b"personal", b"unit", b"12", b"-3", b"\xff\xfe",
                             b"20250102030405Z", b"99999999999999Z", b"0:$6$x", b"x:y", b"\xc2\xb2:h", b"a@b",
                             "nguyễn@cantho.gov.vn".encode()])
raw_values = st.lists(plausible | st.binary(max_size=12), max_size=3)
raw_entries = st.fixed_dictionaries(
    {"mail": st.lists(plausible | st.binary(max_size=12) | addresses.map(str.encode), min_size=1, max_size=2)},
    optional={name.lower(): raw_values for name in DEFAULT_ATTRIBUTES if name != "mail"})


@settings(max_examples=300, deadline=None)
@given(raw=raw_entries)
def test_any_entry_gives_an_account_or_a_directory_error(raw: dict[str, list[bytes]]) -> None:
    """Whatever a foreign tree holds, from_entry returns a stored-form Account or raises DirectoryError."""
    try:
        got = DEFAULT.from_entry(raw)
    except DirectoryError:
        return
    assert got == normalise(got)
