"""A streaming MIME walker: a message's structure and the facts the content rules need, in bounded memory.

The stdlib ``email.parser.BytesFeedParser`` keeps every part (a 30 MB attachment costs
30 MB of RSS, more while it is decoded), so the milter walks the body itself as Postfix
sends it, chunk by chunk, and keeps per leaf part only what a rule reads:

* its headers' meaning (type, charset, filename, disposition, transfer encoding);
* its decoded size, counted while decoding (base64 and quoted-printable in C, block by block);
* the first :data:`HEAD` decoded bytes (magic numbers: an ``.exe`` renamed ``.pdf``);
* for a zip, the tail of the content, long enough for the central directory: the member
  names are read from it once the part ends (archives are looked into one level);
* for a text part of the message body, a sample of at most ``text_sample`` decoded bytes
  (the TH13-6.2 charset check).

Boundaries are found with ``bytes.find`` over whole chunks, so a large base64 attachment
costs a few C calls per chunk, not a Python loop per line.  Nothing raises on malformed
input: unterminated boundaries end with the message, undecodable base64 is counted by
its length, and what exceeds a bound (``max_parts``, ``max_depth``, a header line longer
than ``max_line``) is recorded in :attr:`MessageFacts.incomplete`, so a rule that needs
the whole structure knows it did not see it and applies its failure policy.
"""

from __future__ import annotations

import binascii
import re
import struct
from dataclasses import dataclass
from email.message import Message
from typing import NamedTuple

#: Decoded bytes kept from the start of every leaf part (magic numbers).
HEAD = 512
#: Member names kept per archive, and characters per name.
MAX_MEMBERS = 1000
MAX_NAME = 255
#: Headers kept per part (bytes); the rest is counted as a truncation.
MAX_PART_HEADERS = 64 * 1024

_B64_KEEP = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_DROP = bytes(b for b in range(256) if b not in _B64_KEEP)


class Limits(NamedTuple):
    """The walker's bounds ([milter] settings)."""

    max_parts: int = 1000
    max_depth: int = 10
    max_line: int = 64 * 1024
    text_sample: int = 64 * 1024
    zip_directory: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Part:
    """One leaf part as the rules see it."""

    path: str  # "1.2": second part of the first part
    content_type: str  # lower case, "text/plain" when absent
    charset: str  # lower case, "" when absent
    filename: str  # decoded (RFC 2231 / RFC 2047), "" when absent
    disposition: str  # "attachment", "inline" or ""
    encoding: str  # content-transfer-encoding, lower case ("7bit" when absent)
    size: int  # decoded bytes
    head: bytes  # the first HEAD decoded bytes
    #: Member names of a zip (read from its central directory), None if not a zip or unreadable.
    members: tuple[str, ...] | None
    #: Why a zip's directory could not be read ("" when it could, or for other types).
    archive_error: str
    #: Decoded text sample of a body text part (b"" for attachments and non-text parts).
    sample: bytes
    #: True if the transfer encoding could not be decoded cleanly (base64 garbage).
    damaged: bool

    @property
    def is_attachment(self) -> bool:
        """A file attached to the message, rather than its text: named, disposed as attachment, or not text."""
        if self.disposition == "attachment" or self.filename:
            return True
        return not self.content_type.startswith("text/")


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """What the walker learnt about one message."""

    subject: str | None  # decoded; None when there is no Subject header
    #: Charsets the Subject's RFC 2047 encoded words declare (lower case).
    subject_charsets: tuple[str, ...]
    from_header: str | None  # decoded, None when absent
    sender_header: str | None
    parts: tuple[Part, ...]
    #: Decoded bytes of all attachments together, and of the largest one (counted for every part,
    #: also past max_parts).
    attachments_total: int
    attachments_largest: int
    attachments_count: int
    #: Why the walker did not see the whole structure (empty when it did).
    incomplete: tuple[str, ...]

    @property
    def attachments(self) -> tuple[Part, ...]:
        return tuple(p for p in self.parts if p.is_attachment)


_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")


def decode_words(value: str) -> tuple[str, tuple[str, ...]]:
    """An RFC 2047 header value decoded, and the charsets its encoded words declare.

    A direct decoder rather than ``email.header`` (several times its cost, once per message
    on the hot path): whitespace between adjacent encoded words is dropped, an unknown
    charset is read as Latin-1, an undecodable word is kept as written.
    """
    if "=?" not in value:
        return value, ()
    out: list[str] = []
    charsets: set[str] = set()
    pos, after_word = 0, False
    for m in _WORD.finditer(value):
        between = value[pos:m.start()]
        if not (after_word and not between.strip()):
            out.append(between)
        charset, kind, text = m.groups()
        charset = charset.split("*", 1)[0].lower()  # RFC 2231 language suffix
        try:
            raw = (binascii.a2b_base64(text + "=" * (-len(text) % 4)) if kind in "bB"
                   else binascii.a2b_qp(text.replace("_", " ")))
        except (binascii.Error, ValueError):
            out.append(m.group(0))
            pos, after_word = m.end(), False
            continue
        try:
            out.append(raw.decode(charset, "replace"))
        except LookupError:
            out.append(raw.decode("latin-1"))
        charsets.add(charset)
        pos, after_word = m.end(), True
    out.append(value[pos:])
    return "".join(out), tuple(sorted(charsets))


_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


class Content(NamedTuple):
    """What a part's Content-* headers mean."""

    ctype: str  # "text/plain" when absent or malformed, as RFC 2045 says
    boundary: str
    charset: str
    filename: str
    disposition: str
    encoding: str  # content-transfer-encoding, "7bit" when absent


def _params(value: str) -> tuple[str, dict[str, str]] | None:
    """``type; a=1; b="2"`` → ("type", {a: 1, b: 2}), lower-case names; None when RFC 2231 needs the stdlib."""
    head, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for name, raw in _PARAM.findall(";" + rest) if rest else ():
        if "*" in name:
            return None
        raw = raw.strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) > 1:
            raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        params.setdefault(name.lower(), raw)
    return head.strip().lower(), params


def content(fields: dict[str, str]) -> Content:
    """The meaning of a part's Content-* headers (``fields``: lower-case name → unfolded value).

    A small parser for the usual spellings; RFC 2231 parameters (``filename*=utf-8''…``)
    go through the stdlib's ``email.message.Message``.
    """
    ct, disp = _params(fields.get("content-type", "")), _params(fields.get("content-disposition", ""))
    if ct is None or disp is None:
        msg = Message()
        for key, value in fields.items():
            msg[key] = value
        boundary = msg.get_param("boundary")
        return Content(msg.get_content_type(), boundary if isinstance(boundary, str) else "",
                       str(msg.get_param("charset", "") or "").lower(), _filename(msg),
                       msg.get_content_disposition() or "", _cte(fields))
    ctype, params = ct
    if ctype.count("/") != 1 or " " in ctype:
        ctype = "text/plain"
    disposition, dparams = disp
    name = dparams.get("filename") or params.get("name") or ""
    if "=?" in name:
        name = decode_words(name)[0]
    return Content(ctype, params.get("boundary", ""), params.get("charset", "").lower(), name[:MAX_NAME],
                   disposition if disposition in ("attachment", "inline") else "", _cte(fields))


def _cte(fields: dict[str, str]) -> str:
    return fields.get("content-transfer-encoding", "7bit").strip().lower() or "7bit"


def _unfold(raw: bytes) -> str:
    text = raw.decode("utf-8", "surrogateescape") if raw.isascii() else _lenient(raw)
    return " ".join(text.replace("\r", "").split("\n")).strip()


def _lenient(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class _Decoder:
    """A transfer-encoding decoder fed arbitrary slices; counts what it decodes, keeps head, tail, sample."""

    __slots__ = ("carry", "damaged", "encoding", "head", "held", "keep_tail", "sample", "sample_max", "size",
                 "tail", "tail_max")

    def __init__(self, encoding: str, sample_max: int, tail_max: int) -> None:
        self.encoding = encoding
        self.carry = b""
        self.size = 0
        self.head = bytearray()
        self.sample = bytearray()
        self.sample_max = sample_max
        self.tail = bytearray()
        self.tail_max = tail_max
        self.keep_tail = False
        self.damaged = False
        #: A line end not decoded yet: if a boundary follows, it belongs to the boundary (RFC 2046).
        self.held = b""

    def feed(self, data: bytes) -> None:
        if self.encoding == "base64":
            data = self.carry + data.translate(None, _B64_DROP)
            cut = len(data) - len(data) % 4
            self.carry = data[cut:]
            if self.counting:  # nothing more to keep: 4 characters are 3 bytes, no need to decode them
                self.size += cut // 4 * 3
                return
            out = binascii.a2b_base64(data[:cut]) if cut else b""
        else:
            data = self.held + data
            cut = len(data) - (2 if data.endswith(b"\r\n") else 1 if data[-1:] in (b"\n", b"\r") else 0)
            data, self.held = data[:cut], data[cut:]
            if self.encoding != "quoted-printable":
                out = data
            else:
                data = self.carry + data
                cut = data.rfind(b"\n") + 1
                self.carry = data[cut:]
                if len(self.carry) > 4096:  # a QP "line" that never ends: decode it anyway
                    cut, self.carry = len(data), b""
                out = binascii.a2b_qp(data[:cut]) if cut else b""
        self._take(out)

    @property
    def counting(self) -> bool:
        """True once head and sample are full and no tail is kept: the rest only needs counting."""
        return len(self.head) >= HEAD and len(self.sample) >= self.sample_max and not self.keep_tail

    def boundary(self) -> None:
        """A boundary line follows: the line end before it is not content."""
        self.held = b""

    def finish(self) -> None:
        rest, self.carry = self.carry, b""
        if self.encoding != "base64":
            rest, self.held = rest + self.held, b""
        if not rest:
            return
        if self.encoding == "base64":
            if len(rest) % 4 == 1:
                self.damaged = True
                rest = rest[:-1]
            rest += b"=" * (-len(rest) % 4)
            try:
                self._take(binascii.a2b_base64(rest))
            except binascii.Error:
                self.damaged = True
        else:
            self._take(binascii.a2b_qp(rest) if self.encoding == "quoted-printable" else rest)

    def _take(self, out: bytes) -> None:
        if not out:
            return
        self.size += len(out)
        if len(self.head) < HEAD:
            self.head += out[:HEAD - len(self.head)]
            if not self.keep_tail and self.head.startswith(b"PK\x03\x04"):
                self.keep_tail = True
        if len(self.sample) < self.sample_max:
            self.sample += out[:self.sample_max - len(self.sample)]
        if self.keep_tail:
            self.tail += out
            if len(self.tail) > 2 * self.tail_max:
                del self.tail[:len(self.tail) - self.tail_max]


_EOCD = b"PK\x05\x06"
_CDH = struct.Struct("<4s6H3I5H2I")  # central directory file header, 46 bytes


def zip_members(tail: bytes, total: int) -> tuple[tuple[str, ...] | None, str]:
    """Member names from the central directory at the end of a zip whose last bytes are ``tail``.

    ``total`` is the zip's whole size.  Returns (names, "") or (None, why not).
    """
    at = tail.rfind(_EOCD, max(0, len(tail) - 65_557))
    if at < 0 or len(tail) - at < 22:
        return None, "no end-of-central-directory record"
    entries, cd_size, cd_offset = struct.unpack_from("<HII", tail, at + 10)
    start = len(tail) - (total - cd_offset)
    if cd_offset + cd_size > total or start < 0 or start + cd_size > at:
        return None, "central directory larger than the part of the archive kept" if start < 0 \
            else "central directory outside the archive"
    names: list[str] = []
    pos = start
    for _ in range(min(entries, MAX_MEMBERS)):
        if pos + 46 > at or tail[pos:pos + 4] != b"PK\x01\x02":
            return None, "damaged central directory"
        fields = _CDH.unpack_from(tail, pos)
        flags, n_len, x_len, c_len = fields[2], fields[10], fields[11], fields[12]
        raw = bytes(tail[pos + 46:pos + 46 + n_len])
        name = raw.decode("utf-8", "replace") if flags & 0x800 else raw.decode("cp437")
        names.append(name[:MAX_NAME])
        pos += 46 + n_len + x_len + c_len
    if entries > MAX_MEMBERS:
        return None, f"more than {MAX_MEMBERS} members"
    return tuple(names), ""


class _Entity:
    """A message or body part being read: its header lines, then its body (a leaf's through a decoder)."""

    __slots__ = ("decoder", "header_bytes", "header_lines", "meta", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self.header_lines: list[bytes] = []
        self.header_bytes = 0
        self.decoder: _Decoder | None = None
        #: A leaf's (content type, charset, filename, disposition, transfer encoding).
        self.meta: tuple[str, str, str, str, str] = ("", "", "", "", "")


DEFAULT_LIMITS = Limits()


class MimeWalker:
    """Feed the top-level headers (as the milter receives them), then the body chunks; :meth:`finish` once."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._top: dict[str, str] = {}
        self._subject: str | None = None
        self._subject_charsets: tuple[str, ...] = ()
        self._from: str | None = None
        self._sender: str | None = None
        self._parts: list[Part] = []
        self._total = self._largest = self._count = 0
        self._incomplete: list[str] = []
        self._buf = bytearray()
        #: Entities open, outermost first; boundaries of the open multiparts, innermost last.
        self._stack: list[_Entity] = []
        self._boundaries: list[tuple[bytes, int]] = []  # (b"--" + boundary, index of its entity)
        self._children: list[int] = []  # per open entity: how many children it has had
        self._in_headers = False
        self._started = False
        #: Whether the buffer's first byte starts a line.
        self._line_start = True

    # ------------------------------------------------------------------ top-level headers

    def header(self, name: bytes, value: bytes) -> None:
        """One top-level header, as the milter's SMFIC_HEADER gives it."""
        key = name.strip().lower()
        if key in (b"subject", b"from", b"sender", b"content-type", b"content-transfer-encoding",
                   b"content-disposition"):
            text = _unfold(value[:self.limits.max_line])
            if len(value) > self.limits.max_line:
                self._note(f"{name.decode('latin-1')} header longer than {self.limits.max_line} bytes")
            if key == b"subject" and self._subject is None:
                self._subject, self._subject_charsets = decode_words(text)
            elif key == b"from" and self._from is None:
                self._from = decode_words(text)[0]
            elif key == b"sender" and self._sender is None:
                self._sender = decode_words(text)[0]
            elif key.startswith(b"content-"):
                self._top.setdefault(key.decode(), text)

    # ------------------------------------------------------------------ body

    def body(self, chunk: bytes) -> None:
        """A body chunk (any split)."""
        if not self._started:
            self._start()
        self._buf += chunk
        self._run(final=False)

    def finish(self) -> MessageFacts:
        """The facts, after the last chunk; unterminated parts end here."""
        if not self._started:
            self._start()
        self._run(final=True)
        while self._stack:
            self._close_top()
        return MessageFacts(self._subject, self._subject_charsets, self._from, self._sender, tuple(self._parts),
                            self._total, self._largest, self._count, tuple(self._incomplete))

    def _note(self, why: str) -> None:
        if why not in self._incomplete and len(self._incomplete) < 20:
            self._incomplete.append(why)

    def _start(self) -> None:
        self._started = True
        top = _Entity("1")
        self._stack.append(top)
        self._children.append(0)
        self._begin_body(top, self._top)

    # ------------------------------------------------------------------ the scanner

    def _run(self, final: bool) -> None:
        """Consume what can be read of the buffer; keep a tail that may be the start of a boundary line."""
        buf = self._buf
        pos, n = 0, len(buf)
        while pos < n:
            if self._in_headers:
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    if n - pos > self.limits.max_line:  # a header line that never ends: cut it
                        self._note(f"header line longer than {self.limits.max_line} bytes")
                        self._header_line(bytes(buf[pos:pos + self.limits.max_line]))
                        pos = n
                        break
                    if not final:
                        break
                    nl = n - 1
                line = bytes(buf[pos:nl + 1])
                pos = nl + 1
                if len(line) > self.limits.max_line:
                    self._note(f"header line longer than {self.limits.max_line} bytes")
                    line = line[:self.limits.max_line] + b"\r\n"
                if not (self._boundaries and line.startswith(b"--") and self._boundary(line)):
                    if line.strip(b"\r\n"):
                        self._header_line(line)
                    else:
                        self._end_headers()
                continue
            if not self._boundaries:  # no multipart open: the rest is this entity's content
                self._content(buf, pos, n)
                pos = n
                break
            # The next line that starts with "--" is a boundary candidate; before it, content.
            at_line_start = buf[pos - 1] == 10 if pos else self._line_start
            if at_line_start and buf.startswith(b"--", pos):
                start = pos
            else:
                found = buf.find(b"\n--", pos)
                if found < 0:
                    keep = 0 if final else min(2, n - pos)  # "\n-" may straddle two chunks
                    self._content(buf, pos, n - keep)
                    pos = n - keep
                    break
                start = found + 1
                self._content(buf, pos, start)
                pos = start
            nl = buf.find(b"\n", start)
            if nl < 0:
                longest = max(len(b) for b, _ in self._boundaries) + 82  # transport padding allowed
                if not final and n - start <= longest:
                    break  # wait for the end of the line
                nl = n - 1
            line = bytes(buf[start:nl + 1])
            if not self._boundary(line):
                self._content(buf, start, nl + 1)
            pos = nl + 1
        if pos:
            self._line_start = buf[pos - 1] == 10
            del buf[:pos]

    def _content(self, buf: bytearray, start: int, end: int) -> None:
        if end <= start:
            return
        entity = self._stack[-1] if self._stack else None
        if entity is not None and entity.decoder is not None:
            entity.decoder.feed(bytes(buf[start:end]))

    def _boundary(self, line: bytes) -> bool:
        """If ``line`` is a boundary of an open multipart: close what it ends, open what it starts."""
        text = line.rstrip(b"\r\n").rstrip(b" \t")
        for i in range(len(self._boundaries) - 1, -1, -1):
            mark, owner = self._boundaries[i]
            if not text.startswith(mark):
                continue
            rest = text[len(mark):]
            if rest not in (b"", b"--"):
                continue
            top = self._stack[-1]
            if top.decoder is not None:
                top.decoder.boundary()
            while len(self._stack) - 1 > owner:  # close every entity inside the multipart
                self._close_top()
            self._in_headers = False
            if rest == b"--":
                del self._boundaries[i:]  # the epilogue that may follow is nobody's content
            else:
                del self._boundaries[i + 1:]
                self._open_child(owner)
            return True
        return False

    def _open_child(self, owner: int) -> None:
        self._children[owner] += 1
        parent = self._stack[owner]
        child = _Entity(f"{parent.path}.{self._children[owner]}")
        self._stack.append(child)
        self._children.append(0)
        self._in_headers = True

    def _header_line(self, line: bytes) -> None:
        entity = self._stack[-1]
        if entity.header_bytes + len(line) > MAX_PART_HEADERS:
            self._note(f"part headers longer than {MAX_PART_HEADERS} bytes")
            return
        entity.header_bytes += len(line)
        if line[:1] in (b" ", b"\t") and entity.header_lines:
            entity.header_lines[-1] += line
        else:
            entity.header_lines.append(line)

    def _end_headers(self) -> None:
        self._in_headers = False
        entity = self._stack[-1]
        fields: dict[str, str] = {}
        for line in entity.header_lines:
            name, colon, value = line.partition(b":")
            if colon and name.strip():
                key = name.strip().decode("latin-1").lower()
                if key.startswith("content-") and key not in fields:
                    fields[key] = _unfold(value)
        entity.header_lines = []
        self._begin_body(entity, fields)

    def _begin_body(self, entity: _Entity, fields: dict[str, str]) -> None:
        """Decide from its headers what the entity's body is, and set up reading it."""
        c = content(fields)
        ctype, cte = c.ctype, c.encoding
        depth = len(self._stack) - 1
        if ctype.startswith("multipart/") and c.boundary and depth < self.limits.max_depth:
            self._boundaries.append((b"--" + c.boundary.encode("utf-8", "replace")[:200], len(self._stack) - 1))
            return
        if ctype == "message/rfc822" and cte in ("7bit", "8bit", "binary") and depth < self.limits.max_depth:
            self._open_child(len(self._stack) - 1)
            return
        if (ctype.startswith("multipart/") or ctype == "message/rfc822") and depth >= self.limits.max_depth:
            self._note(f"parts nested deeper than {self.limits.max_depth} levels")  # read as one leaf, unopened
        text_body = ctype.startswith("text/") and not c.filename and c.disposition != "attachment"
        entity.decoder = _Decoder(cte, self.limits.text_sample if text_body else 0, self.limits.zip_directory)
        entity.meta = (ctype, c.charset, c.filename, c.disposition, cte)

    def _close_top(self) -> None:
        entity = self._stack.pop()
        self._children.pop()
        self._boundaries = [(b, i) for b, i in self._boundaries if i < len(self._stack)]
        dec = entity.decoder
        if dec is None:
            return
        dec.finish()
        ctype, charset, filename, disposition, cte = entity.meta
        members: tuple[str, ...] | None = None
        error = ""
        if dec.keep_tail:
            members, error = zip_members(bytes(dec.tail), dec.size)
        part = Part(entity.path, ctype, charset, filename, disposition, cte, dec.size, bytes(dec.head),
                    members, error, bytes(dec.sample), dec.damaged)
        if part.is_attachment:
            self._count += 1
            self._total += part.size
            self._largest = max(self._largest, part.size)
        if len(self._parts) < self.limits.max_parts:
            self._parts.append(part)
        else:
            self._note(f"more than {self.limits.max_parts} parts")


def _filename(msg: Message) -> str:
    name = msg.get_filename() or ""
    if "=?" in name:
        name = decode_words(name)[0]
    return name[:MAX_NAME]
