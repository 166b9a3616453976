"""CSV and LDIF codecs: every field travels, awkward values survive, bad input names its line."""

from __future__ import annotations

import io
from dataclasses import fields
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from congvu.directory.model import Account
from congvu.directory.transfer import LDIF_ATTRS, TransferError, detect_format, read, write
from congvu.rules.lifecycle import AccountState

FULL = Account(
    local_part="nvminh", domain="cantho.gov.vn", full_name="Nguyễn Văn Minh", mailbox_type="unit",
    agency="sonv", unit=" Văn phòng: tầng 2 ", display_name=":<lạ", title="Chuyên viên, \"chính\"",
    password_hash="$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$" + "h" * 43,
    password_history=("$6$rounds=5000$s$" + "x" * 86, "$2b$04$" + "y" * 53),
    state=AccountState.SUSPENDED, state_reason="dòng 1\r\ndòng 2", state_by="cron",
    state_changed_at=datetime(2025, 5, 1, 0, 0, 0, 123456, tzinfo=UTC),
    created_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), password_changed_at=None, must_change=False,
    last_login_at=datetime(2025, 4, 1, 7, 0, tzinfo=UTC), quota_override=20 * 1024**3,
    aliases=("vp.sonv@cantho.gov.vn",), delegates=("a@cantho.gov.vn", "b@cantho.gov.vn"))


def roundtrip(fmt: str, accounts: list[Account]) -> tuple[str, list[Account]]:
    buf = io.StringIO()
    write(accounts, fmt, buf, base_dn="ou=people,dc=cantho,dc=gov,dc=vn")
    return buf.getvalue(), read(buf.getvalue(), fmt)


def test_ldif_names_every_account_field() -> None:
    """Every Account field but the address parts has an LDIF attribute (a new field must get one)."""
    assert set(LDIF_ATTRS) == {f.name for f in fields(Account)} - {"local_part", "domain"}


@pytest.mark.parametrize("fmt", ["csv", "ldif"])
def test_awkward_values_round_trip(fmt: str) -> None:
    """Leading spaces, colons, '<', commas, quotes, CR LF and microseconds survive both formats."""
    text, back = roundtrip(fmt, [FULL])
    assert back == [FULL]
    assert detect_format("x", text) == fmt


def test_ldif_folds_long_lines_and_encodes_non_ascii() -> None:
    """No LDIF line is longer than 76 characters; Vietnamese text goes base64."""
    text, _ = roundtrip("ldif", [FULL])
    assert all(len(line) <= 76 for line in text.splitlines())
    assert "cn:: " in text and "Nguyễn" not in text
    assert "dn: uid=nvminh@cantho.gov.vn,ou=people,dc=cantho,dc=gov,dc=vn" in text


@settings(max_examples=60, deadline=None)
@given(name=st.text(min_size=1).filter(lambda s: s.strip() != ""), reason=st.text(),
       fmt=st.sampled_from(["csv", "ldif"]))
def test_any_unicode_text_round_trips(name: str, reason: str, fmt: str) -> None:
    """Arbitrary text in free-form fields comes back unchanged (surrogates excepted: they are not UTF-8)."""
    try:
        (name + reason).encode("utf-8")
    except UnicodeEncodeError:
        return
    a = Account(local_part="x", domain="cantho.gov.vn", full_name=name, mailbox_type="personal",
                state_reason=reason)
    assert roundtrip(fmt, [a])[1] == [a]


def test_minimal_spreadsheet_gets_defaults() -> None:
    """A CSV with only address, name and type gives an active account that must change its password."""
    [a] = read("address,full_name,mailbox_type\nltlan@cantho.gov.vn,Lê Thị Lan,personal\n", "csv")
    assert (a.local_part, a.domain, a.state, a.must_change, a.aliases) == (
        "ltlan", "cantho.gov.vn", AccountState.ACTIVE, True, ())


@pytest.mark.parametrize(("cell", "quota"), [("12GB", 12 * 1024**3), ("12884901888", 12 * 1024**3), ("", None)])
def test_spreadsheet_quota_in_units_or_bytes(cell: str, quota: int | None) -> None:
    """quota_override reads "12GB" as an operator writes it, and plain bytes as export writes them."""
    [a] = read(f"address,full_name,mailbox_type,quota_override\nx@cantho.gov.vn,X,unit,{cell}\n", "csv")
    assert a.quota_override == quota


@pytest.mark.parametrize(("text", "fmt", "words"), [
    ("address,full_name,mailbox_type,quota_override\nx@cantho.gov.vn,X,unit,lots\n", "csv", "quota_override"),
    ("address,full_name\nx@cantho.gov.vn,X\n", "csv", "mailbox_type is missing"),
    ("address,full_name,mailbox_type,colour\nx@cantho.gov.vn,X,personal,red\n", "csv", "colour"),
    ("address,full_name,mailbox_type\nx@cantho.gov.vn,X,personal,extra\n", "csv", "more cells"),
    ("address,full_name,mailbox_type,must_change\nx@cantho.gov.vn,X,personal,perhaps\n", "csv", "must_change"),
    ("dn: mail=x\nmail: x@cantho.gov.vn\ncn: X\ncongvuMailboxType: personal\nchangetype: add\n", "ldif", "change"),
    ("mail: x@cantho.gov.vn\n", "ldif", "dn"),
    ("dn: mail=x\nmail: x@cantho.gov.vn\ncn:: !!!\n", "ldif", "base64"),
    ("dn: mail=x\nmail: x@cantho.gov.vn\ncn: X\ncongvuMailboxType: personal\ncongvuCreatedAt: yesterday\n",
     "ldif", "GeneralizedTime"),
    ("dn: mail=x\nmail:< file:///etc/shadow\n", "ldif", "URL"),
])
def test_bad_input_is_refused_with_a_reason(text: str, fmt: str, words: str) -> None:
    """Each malformed file raises TransferError saying what is wrong."""
    with pytest.raises(TransferError, match=words):
        read(text, fmt)


@pytest.mark.parametrize(("stored", "prefix"), [
    ("$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g", "{ARGON2}"),
    ("$6$salt$hash", "{CRYPT}"),
    ("$2b$12$abcdefghijklmnopqrstuv", "{CRYPT}"),
])
def test_ldif_password_carries_the_slapd_scheme(stored: str, prefix: str) -> None:
    """userPassword is written with {ARGON2}/{CRYPT} so slapd never takes a hash for a cleartext password."""
    acct = Account("nvminh", "cantho.gov.vn", "Nguyễn Văn Minh", "personal", password_hash=stored)
    buf = io.StringIO()
    write([acct], "ldif", buf)
    text = buf.getvalue()
    assert f"userPassword: {prefix}{stored}" in text.replace("\n ", "")
    assert "dn: uid=nvminh@cantho.gov.vn," in text
    assert read(text, "ldif")[0].password_hash == stored
