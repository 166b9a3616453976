"""What may be inside a message (TH13-6.1, TH13-6.2, TH13-7): file kinds, allowed formats, Unicode text, subjects."""

from __future__ import annotations

import pytest

from congvu.config import config_from_mapping
from congvu.rules.content import (
    extension,
    legacy_encoding,
    member_problem,
    sniff,
    subject_problem,
    type_problem,
    unicode_problem,
)
from congvu.rules.errors import ConfigError

TH13 = frozenset({"txt", "doc", "odt", "ods", "odp", "rtf", "pdf"})
ODT = b"PK\x03\x04" + bytes(26) + b"mimetypeapplication/vnd.oasis.opendocument.text"

# "Kính gửi các đồng chí, Việt Nam, Nguyễn, thông báo" in the two legacy encodings.
VNI = "Kính göûi caùc ñoàng chí, Vieät Nam, Nguyeãn, thoâng baùo"
TCVN3 = "KÝnh göi c¸c ®ång chÝ, ViÖt Nam, NguyÔn, th«ng b¸o"
UNICODE = "Kính gửi các đồng chí, Việt Nam, Nguyễn, thông báo"


@pytest.mark.parametrize(("head", "members", "kind"), [
    (b"%PDF-1.7\n", None, "pdf"),
    (b"MZ\x90\x00", None, "exe"),
    (b"\x7fELF\x02", None, "elf"),
    (b"#!/bin/sh\n", None, "script"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\x00", None, "ole2"),
    (b"{\\rtf1\\ansi", None, "rtf"),
    (ODT, None, "odt"),
    (b"PK\x03\x04rest", ("[Content_Types].xml", "word/document.xml"), "docx"),
    (b"PK\x03\x04rest", ("a.txt",), "zip"),
    (UNICODE.encode(), None, "text"),
    (bytes(range(256)), None, ""),
])
def test_content_is_known_by_its_first_bytes(head: bytes, members: tuple[str, ...] | None, kind: str) -> None:
    """Magic numbers name the kind; ODF by its mimetype member, OOXML by its part names, text by decoding."""
    assert sniff(head, members) == kind


def test_extension_is_the_lower_case_suffix() -> None:
    """"Báo cáo.PDF" is pdf; a dot-file or a name without a dot has none."""
    assert (extension("Báo cáo.PDF"), extension("C:\\tmp\\a.tar.GZ"), extension(".bashrc"), extension("README")) == \
        ("pdf", "gz", "", "")


@pytest.mark.parametrize(("name", "kind", "problem"), [
    ("congvan.pdf", "pdf", ""),
    ("vanban.odt", "odt", ""),
    ("setup.exe", "exe", "setup.exe is a program (exe) named .exe"),
    ("congvan.pdf", "exe", "congvan.pdf is a program (exe) named .pdf"),
    ("bang.xlsx", "xlsx", ".xlsx is not an allowed format"),
    ("congvan.pdf", "ole2", "congvan.pdf is named .pdf but its content is ole2"),
    ("ghichu.txt", "", "ghichu.txt is named .txt but its content is not recognised"),
    ("README", "text", "README has no extension"),
])
def test_type_problem_judges_name_and_content(name: str, kind: str, problem: str) -> None:
    """A file is allowed only if its extension is allowed and its content is what the extension says (TH13-6.1)."""
    assert type_problem(name, kind, TH13) == problem


def test_archive_members_are_judged_by_name_and_nested_archives_refused() -> None:
    """One level into a zip: members need allowed extensions; an archive inside cannot be checked."""
    allowed = TH13 | {"zip"}
    assert member_problem("thu muc/", allowed) == "" and member_problem("a.pdf", allowed) == ""
    assert member_problem("virus.exe", allowed) == "virus.exe: .exe is not an allowed format"
    assert member_problem("inner.zip", allowed) == "inner.zip: an archive inside an archive cannot be checked"


@pytest.mark.parametrize(("text", "kind"), [(VNI, "vni"), (TCVN3, "tcvn3"), (UNICODE, ""),
                                            ("Réunion à l'aéroport de Zürich, señor", ""), ("Hello", "")])
def test_legacy_vietnamese_encodings_are_told_by_their_telltales(text: str, kind: str) -> None:
    """VNI and TCVN3 text shown as Latin-1 is recognised; real Unicode Vietnamese and other languages are not."""
    assert legacy_encoding(text)[0] == kind


@pytest.mark.parametrize(("charset", "sample", "problem"), [
    ("utf-8", UNICODE.encode(), ""),
    ("us-ascii", b"Kinh gui", ""),
    ("windows-1258", b"Kinh gui", ""),  # ASCII is Unicode whatever the label
    ("windows-1258", "Kính".encode("cp1258"), "declared charset windows-1258 is not Unicode"),
    ("utf-8", b"K\xedunh", "not valid UTF-8 (byte 1)"),
    ("utf-8", UNICODE.encode()[:-1], ""),  # a character cut by the end of the sample is not an error
    ("utf-8", VNI.encode(), "UTF-8 text that is really VNI (7 telltale sequences)"),
])
def test_unicode_problem(charset: str, sample: bytes, problem: str) -> None:
    """Text must be UTF-8 (or ASCII), and UTF-8 that is really TCVN3/VNI is named (TH13-6.2)."""
    assert unicode_problem(charset, sample) == problem


@pytest.mark.parametrize(("subject", "ok"), [
    (None, False), ("", False), ("   ", False), ("Re: ", False), ("Fwd: RE:", False), ("!!!", False),
    ("Báo cáo tháng 11", True), ("Re: Giấy mời họp", True), ("V/v 123", True),
])
def test_a_subject_must_state_something(subject: str | None, ok: bool) -> None:
    """Missing, empty, only reply/forward prefixes or no words at all: no matter stated (TH13-7)."""
    assert (subject_problem(subject) == "") is ok


def test_content_section_per_profile() -> None:
    """thanhhoa-2013 brings the TH13-6.1 list, Unicode and subject rules; cantho-2025 none; extra_types extend."""
    th = config_from_mapping({"content": {"extra_types": [".DOCX", "zip"]}}, profile="thanhhoa-2013")
    assert th.content.allowed == TH13 | {"docx", "zip"} and th.content.require_unicode and th.content.require_subject
    assert th.origins["content.allowed_types"].rule_id == "TH13-6.1"
    ct = config_from_mapping({}, profile="cantho-2025")
    assert ct.content.allowed == frozenset() and not ct.content.require_subject
    with pytest.raises(ConfigError, match=r"content\.extra_types.*item 1"):
        config_from_mapping({"content": {"extra_types": ["not an extension"]}})
