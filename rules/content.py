"""What the regulations say about a message's content, as pure functions (TH13-6.1, TH13-6.2, TH13-7).

* file types (TH13-6.1): a file is known by its extension *and* by its first bytes, so an
  ``.exe`` renamed ``.pdf`` is caught; an allow-list is in force only where the profile
  (or the administrator) gives one;
* Vietnamese text in Unicode (TH13-6.2, TCVN 6909:2001): text that is not UTF-8, or UTF-8
  that is really the legacy TCVN3 (ABC) or VNI encodings shown through a Latin-1 font
  ("ViÖt Nam", "Vieät Nam" for "Việt Nam"), detected by their telltale byte patterns;
* a subject that states the matter (TH13-7): never empty, and a bare "Re:"/"Fwd:" is empty.

No I/O: the milter (``congvu.policyd.milter``) feeds these with what it read of a message.
"""

from __future__ import annotations

import re

# --------------------------------------------------------------------------- file types

#: Content kinds that run code: refused under any allow-list, whatever the file is called.
EXECUTABLE = frozenset({"exe", "elf", "macho", "script"})
#: Archives: a zip is looked into one level; the others cannot be, so only their name is judged.
ARCHIVE_EXTENSIONS = frozenset({"zip", "rar", "7z", "gz", "tgz", "bz2", "xz", "tar", "cab", "arj", "lzh", "ace",
                                "iso"})

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"MZ", "exe"),
    (b"\x7fELF", "elf"),
    (b"\xcf\xfa\xed\xfe", "macho"), (b"\xce\xfa\xed\xfe", "macho"), (b"\xca\xfe\xba\xbe", "macho"),
    (b"#!", "script"),
    (b"%PDF-", "pdf"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "ole2"),  # .doc .xls .ppt (and .msi: ole2 is not proof of a document)
    (b"{\\rtf", "rtf"),
    (b"PK\x03\x04", "zip"), (b"PK\x05\x06", "zip"),
    (b"Rar!\x1a\x07", "rar"), (b"7z\xbc\xaf\x27\x1c", "7z"), (b"\x1f\x8b", "gzip"),
    (b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"GIF8", "gif"),
)

#: ODF documents are zips whose first member, "mimetype", names the document type.
_ODF = re.compile(rb"^PK\x03\x04.{26}mimetypeapplication/vnd\.oasis\.opendocument\.(text|spreadsheet|presentation)",
                  re.S)
_ODF_KIND = {b"text": "odt", b"spreadsheet": "ods", b"presentation": "odp"}
#: Office Open XML documents are zips holding these parts.
_OOXML = (("word/", "docx"), ("xl/", "xlsx"), ("ppt/", "pptx"))

#: What content each extension may have.  An extension not listed here (one the administrator
#: added, say ``dwg``) may have any content that does not run code.
CONTENT_OF: dict[str, frozenset[str]] = {
    "pdf": frozenset({"pdf"}),
    "doc": frozenset({"ole2", "rtf"}),  # Word saves RTF under .doc too
    "xls": frozenset({"ole2"}), "ppt": frozenset({"ole2"}),
    "rtf": frozenset({"rtf"}),
    "odt": frozenset({"odt"}), "ods": frozenset({"ods"}), "odp": frozenset({"odp"}),
    "docx": frozenset({"docx"}), "xlsx": frozenset({"xlsx"}), "pptx": frozenset({"pptx"}),
    "txt": frozenset({"text"}), "csv": frozenset({"text"}), "xml": frozenset({"text"}),
    "html": frozenset({"text"}), "htm": frozenset({"text"}),
    "zip": frozenset({"zip"}),
    "png": frozenset({"png"}), "jpg": frozenset({"jpeg"}), "jpeg": frozenset({"jpeg"}), "gif": frozenset({"gif"}),
}


def sniff(head: bytes, members: tuple[str, ...] | None = None) -> str:
    """The kind of content whose first bytes are ``head`` (and, for a zip, whose member names are ``members``).

    ``"text"`` for bytes that read as text, ``""`` for what is not recognised.
    """
    if m := _ODF.match(head):
        return _ODF_KIND[m.group(1)]
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            if kind == "zip" and members:
                for prefix, office in _OOXML:
                    if "[Content_Types].xml" in members and any(n.startswith(prefix) for n in members):
                        return office
            return kind
    if head and _looks_like_text(head):
        return "text"
    return ""


def _looks_like_text(head: bytes) -> bool:
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
        return True
    except UnicodeDecodeError as e:
        if e.start >= len(head) - 3:  # a character cut by the end of the head
            return True
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13))
    return controls * 100 <= len(head)


def extension(name: str) -> str:
    """``"Báo cáo.PDF"`` → ``"pdf"``; ``""`` without one (a leading dot alone is not an extension)."""
    base = name.rsplit("/", 1)[-1].rsplit("\\", 1)[-1].strip().rstrip(".")
    stem, dot, ext = base.rpartition(".")
    return ext.lower() if dot and stem.strip() else ""


def type_problem(name: str, kind: str, allowed: frozenset[str]) -> str:
    """Why a file called ``name`` with content ``kind`` is refused under ``allowed`` extensions ("" if it is not).

    English, for the log and ``explain``; the rule's own text tells the sender.
    """
    ext = extension(name)
    if kind in EXECUTABLE:
        return f"{name or 'an unnamed file'} is a program ({kind})" + (f" named .{ext}" if ext else "")
    if not ext:
        return f"{name or 'an unnamed file'} has no extension"
    if ext not in allowed:
        return f".{ext} is not an allowed format"
    expected = CONTENT_OF.get(ext)
    if expected is not None and kind not in expected:
        return f"{name} is named .{ext} but its content is {kind or 'not recognised'}"
    return ""


def member_problem(member: str, allowed: frozenset[str]) -> str:
    """Why an archive member is refused (by its name: members are not unpacked), "" if it is not."""
    if member.endswith("/"):
        return ""
    ext = extension(member)
    if ext in ARCHIVE_EXTENSIONS:
        return f"{member}: an archive inside an archive cannot be checked"
    if not ext:
        return f"{member} has no extension"
    if ext not in allowed:
        return f"{member}: .{ext} is not an allowed format"
    return ""


# --------------------------------------------------------------------------- Unicode text (TH13-6.2)

#: Charsets that are Unicode, or plain ASCII (a subset of UTF-8).
UNICODE_CHARSETS = frozenset({"", "utf-8", "utf8", "us-ascii", "ascii"})

# TCVN3 (ABC): Vietnamese letters live in Latin-1's symbol range, so a symbol stuck to a
# letter ("c¸c" = các, "®ång" = đồng), or a capital accented letter inside a lower-case
# word ("ViÖt" = Việt, "KÝnh" = Kính), gives it away.  Each pattern starts with one
# character class, so the scan is one C loop over the text; the context is looked at only
# where that class matches.
_TCVN3_SYMBOLS = "¸µ¶·¹¨¾»¼½©®ª«¬\xad×÷"
_TCVN3 = re.compile(f"[{_TCVN3_SYMBOLS}](?:(?<=[A-Za-z].)|(?=[A-Za-z]))|[À-Þ](?<=[a-z].)(?=[a-z])")
# VNI: the tone or hat of a vowel is the Latin-1 letter after it ("Vieät" = Việt, "göûi" =
# gửi, "caùc" = các), and "ñ" is đ ("ñoàng" = đồng).  Pairs that are also real Unicode
# Vietnamese are left out: "oà", "oá", "oã" (hoà, khoá, hoãn), "uâ"/"uê" (tuân, tuềnh),
# "yê" (yêu).
_VNI = re.compile("[ùøûõïâáàåãäêéèúüëñ](?:(?<=[aeoyôöAEOYÔÖ][ùøûõï])|(?<=[aeAE][âáàåãäêéèúüë])"
                  "|(?<=[oO][âåäêéèúüë])|(?<=ñ)(?=[a-zôö]))")
#: Telltales needed before a text is called legacy-encoded: one is a foreign name, three are a habit.
MIN_TELLTALES = 3


def legacy_encoding(text: str) -> tuple[str, int]:
    """``("tcvn3" | "vni", telltales)`` when ``text`` is Vietnamese in a legacy encoding, else ``("", 0)``."""
    vni = len(_VNI.findall(text))
    tcvn3 = len(_TCVN3.findall(text))
    kind, hits = ("vni", vni) if vni >= tcvn3 else ("tcvn3", tcvn3)
    return (kind, hits) if hits >= MIN_TELLTALES else ("", 0)


def unicode_problem(charset: str, sample: bytes) -> str:
    """Why a text part with this declared ``charset`` and first decoded bytes is not Unicode ("" if it is)."""
    cs = charset.strip().lower()
    if sample.isascii():
        return ""
    if cs not in UNICODE_CHARSETS:
        return f"declared charset {cs} is not Unicode"
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(sample) - 3:  # not merely a character cut by the end of the sample
            return f"not valid UTF-8 (byte {e.start})"
        text = sample[:e.start].decode("utf-8")
    kind, hits = legacy_encoding(text)
    if kind:
        return f"UTF-8 text that is really {kind.upper()} ({hits} telltale sequences)"
    return ""


# --------------------------------------------------------------------------- the subject (TH13-7)

_REPLY_PREFIX = re.compile(r"^\s*((re|fw|fwd|tr|aw|sv|vs|trả lời|chuyển tiếp)\s*(\[\d+\])?\s*:\s*)+", re.I)


def subject_problem(subject: str | None) -> str:
    """Why a subject does not state the matter ("" if it does): missing, empty, or only reply/forward prefixes."""
    if subject is None:
        return "no Subject header"
    rest = _REPLY_PREFIX.sub("", subject).strip()
    if not rest:
        return "empty Subject" if not subject.strip() else f"Subject {subject.strip()!r} states nothing"
    if not any(c.isalnum() for c in rest):
        return f"Subject {subject.strip()!r} has no words"
    return ""
