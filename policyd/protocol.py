"""Postfix's SMTPD access policy protocol, without I/O: bytes → PolicyRequest, action → bytes.

Follows SMTPD_POLICY_README: ``name=value`` lines ending with an empty line; one
``action=…`` line and an empty line back.  Anything the README calls trouble (a line
without ``=``, NUL, a request with no ``request`` attribute) and anything past our bounds
raises :class:`PolicyProtocolError`; the server then closes the connection without a
reply, as the README prescribes, and Postfix retries.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from operator import itemgetter
from typing import Any, NamedTuple

from congvu.rules.errors import ProtocolError


class PolicyProtocolError(ProtocolError):
    """The bytes are not a policy request we accept; the parser is dead afterwards."""


#: Attributes that are numbers; empty means "unavailable" and becomes 0.
_INT_FIELDS = ("recipient_count", "size", "encryption_keysize", "client_port", "server_port")


class PolicyRequest(NamedTuple):
    """One ``smtpd_access_policy`` request: every attribute up to Postfix 3.12, immutable.

    A NamedTuple rather than a frozen dataclass: it is built for every request on the hot
    path, and tuple construction is several times cheaper.
    """

    request: str = ""
    protocol_state: str = ""  # upper-cased by the parser
    protocol_name: str = ""
    helo_name: str = ""
    queue_id: str = ""
    sender: str = ""
    recipient: str = ""
    recipient_count: int = 0
    client_address: str = ""
    client_name: str = ""
    reverse_client_name: str = ""
    instance: str = ""
    sasl_method: str = ""
    sasl_username: str = ""
    sasl_sender: str = ""
    size: int = 0
    ccert_subject: str = ""
    ccert_issuer: str = ""
    ccert_fingerprint: str = ""
    ccert_pubkey_fingerprint: str = ""
    encryption_protocol: str = ""
    encryption_cipher: str = ""
    encryption_keysize: int = 0
    etrn_domain: str = ""
    stress: str = ""
    client_port: int = 0
    policy_context: str = ""
    server_address: str = ""
    server_port: int = 0
    compatibility_level: str = ""
    mail_version: str = ""
    tls_sni: str = ""

    @property
    def state(self) -> str:
        return self.protocol_state

    @property
    def authenticated(self) -> bool:
        return bool(self.sasl_username)

    @classmethod
    def from_attributes(cls, attrs: dict[str, str]) -> PolicyRequest:
        """Build from decoded attributes; unknown names are ignored (README)."""
        return cls._complete({**_DEFAULTS, **attrs})

    @classmethod
    def _complete(cls, attrs: dict[str, str]) -> PolicyRequest:
        """From attributes that include every field (missing ones already ""): the parser's path."""
        if attrs["request"] != "smtpd_access_policy":
            raise PolicyProtocolError(f"request={attrs['request'][:40]!r}: only smtpd_access_policy is served")
        # One itemgetter instead of a .get() per field: 5x cheaper.
        values: list[Any] = list(_GET_FIELDS(attrs))
        for name, i in _INT_INDEX:
            value = values[i]
            if value:
                # int() alone would take " 1", "1_0" and non-ASCII digits, and 5000-digit strings
                if not (len(value) <= 20 and value.isascii() and value.isdigit()):
                    raise PolicyProtocolError(f"attribute {name}: not a number: {value[:40]!r}")
                values[i] = int(value)
            else:
                values[i] = 0
        values[1] = values[1].upper()
        return tuple.__new__(cls, values)

    def to_bytes(self) -> bytes:
        """The request on the wire, as Postfix would send it (tests, ``explain``, the bench)."""
        return ("".join(f"{n}={v}\n" for n, v in zip(_FIELDS, self, strict=True)) + "\n").encode()


_FIELDS: tuple[str, ...] = PolicyRequest._fields
_INDEX = {name: i for i, name in enumerate(_FIELDS)}
_INT_INDEX = tuple((name, _INDEX[name]) for name in _INT_FIELDS)
_DEFAULTS: dict[str, str] = dict.fromkeys(_FIELDS, "")
_GET_FIELDS = itemgetter(*_FIELDS)


_EQ, _ONE = repeat("="), repeat(1)
#: Every byte but "=" and "\n", for bytes.translate(None, ...): what is left is the line structure.
_NOT_SEPARATOR = bytes(b for b in range(256) if b not in b"=\n")


class PolicyParser:
    """Incremental parser for one connection, with bounds on line, attribute count and request size.

    A complete request (up to the blank line) is checked and decoded as one block with
    C-level operations; only the unfinished tail is kept between calls.
    """

    __slots__ = ("_buf", "_failed", "max_attributes", "max_line", "max_request")

    def __init__(self, max_request: int = 65536, max_line: int = 8192, max_attributes: int = 256) -> None:
        self.max_request, self.max_line, self.max_attributes = max_request, max_line, max_attributes
        self._buf = b""
        self._failed = ""

    @property
    def pending(self) -> bool:
        """True while part of a request has arrived (the server times that out)."""
        return bool(self._buf)

    def feed(self, data: bytes) -> list[PolicyRequest]:
        """Every request completed by ``data``; raises PolicyProtocolError on bad or oversized input."""
        if self._failed:
            raise PolicyProtocolError(self._failed)
        try:
            return self._feed(data)
        except PolicyProtocolError as e:
            self._failed = str(e) or "protocol error"
            self._buf = b""
            raise

    def _feed(self, data: bytes) -> list[PolicyRequest]:
        buf = self._buf + data if self._buf else bytes(data)
        if b"\r" in buf:  # tolerated: operators test with telnet
            buf = buf.replace(b"\r\n", b"\n")
        out: list[PolicyRequest] = []
        start = 0
        while True:
            if buf.startswith(b"\n", start):
                raise PolicyProtocolError("empty request (a blank line with no attributes)")
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            out.append(self._request(buf[start:end]))
            start = end + 2
        rest = buf[start:] if start else buf
        if rest:
            if len(rest) > self.max_request:
                raise PolicyProtocolError(f"request larger than {self.max_request} bytes")
            if len(rest) - rest.rfind(b"\n") - 1 > self.max_line:
                raise PolicyProtocolError(f"line longer than {self.max_line} bytes")
            if rest.count(b"\n") > self.max_attributes:
                raise PolicyProtocolError(f"more than {self.max_attributes} attributes")
        self._buf = rest
        return out

    def _request(self, block: bytes) -> PolicyRequest:
        """One request without its final blank line."""
        if len(block) + 2 > self.max_request:
            raise PolicyProtocolError(f"request larger than {self.max_request} bytes")
        if b"\0" in block:
            raise PolicyProtocolError("NUL byte in request")
        newlines = block.count(b"\n")
        if newlines >= self.max_attributes:
            raise PolicyProtocolError(f"more than {self.max_attributes} attributes")
        # No line can be longer than the block: split only when the block itself is long.
        if len(block) > self.max_line and max(map(len, block.split(b"\n"))) > self.max_line:
            raise PolicyProtocolError(f"line longer than {self.max_line} bytes")
        try:
            text = block.decode()
        except UnicodeDecodeError as e:
            raise PolicyProtocolError(f"not UTF-8 at byte {e.start}") from None
        attrs = _DEFAULTS.copy()  # every field present: no merge later
        if block.translate(None, _NOT_SEPARATOR) == b"=\n" * newlines + b"=":
            # The usual case, exactly one "=" on every line (its "=" and "\n" alternate; UTF-8
            # never hides either byte in a multi-byte character): one replace and one split, in C.
            parts = iter(text.replace("\n", "=").split("="))
            attrs.update(zip(parts, parts, strict=True))
        else:  # a value holding "=", or a line without one
            try:
                attrs.update(dict(map(str.split, text.split("\n"), _EQ, _ONE)))
            except ValueError:
                bad = next(line for line in text.split("\n") if "=" not in line)
                raise PolicyProtocolError(f"not a name=value line: {bad[:40]!r}") from None
        if "" in attrs:
            raise PolicyProtocolError("attribute with an empty name")
        return PolicyRequest._complete(attrs)


# --------------------------------------------------------------------------- replies

_UNSAFE = {c: " " for c in (*range(0, 32), 127, 0x85, 0x2028, 0x2029)}


def clean_text(text: str) -> str:
    """Text safe inside one reply line: no CR/LF/NUL/control or Unicode line breaks, no surrogates."""
    text = text.translate(_UNSAFE)
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return " ".join(text.split())


#: The longest action we send, in bytes.  RFC 5321 4.5.3.1.5 allows 512 octets per reply
#: line, and Postfix puts ``<recipient>: Recipient address rejected: `` before our text.
MAX_ACTION = 400
#: The longest free-text reason (an account's ``state_reason``, say) inside a reply, in characters.
MAX_REASON = 120
_ELLIPSIS = "..."


def clip(text: str, limit: int = MAX_REASON) -> str:
    """``text`` cut to ``limit`` characters (ending in ``...`` when cut), on one line."""
    text = clean_text(text)
    if len(text) <= limit:
        return text
    return text[:max(limit - len(_ELLIPSIS), 0)].rstrip() + _ELLIPSIS


def clip_bytes(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` UTF-8 bytes at a character boundary (ending in ``...`` when cut)."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    room = max(limit - len(_ELLIPSIS), 0)
    return raw[:room].decode("utf-8", "ignore").rstrip() + _ELLIPSIS


def bounded_action(head: str, texts: Sequence[str], tail: str) -> str:
    """``head text / text tail`` within :data:`MAX_ACTION` bytes: the free texts are cut, never
    ``head`` (the action and SMTP codes) or ``tail`` (the rule id and its citation)."""
    head, tail = clean_text(head), clean_text(tail)
    parts = [c for c in map(clean_text, texts) if c]
    sep = " / "
    room = MAX_ACTION - len(head.encode()) - len(tail.encode()) - 2 - len(sep) * max(len(parts) - 1, 0)
    if parts and sum(len(p.encode()) for p in parts) > room:
        # Shortest first: a short text is kept whole and leaves its unused share to the long ones.
        left = max(room, 0)
        cut = list(parts)
        for n, i in enumerate(sorted(range(len(parts)), key=lambda i: len(parts[i].encode()))):
            cut[i] = clip_bytes(parts[i], left // (len(parts) - n))
            left -= len(cut[i].encode())
        parts = cut
    return " ".join(x for x in (head, sep.join(parts), tail) if x)


def format_reply(action: str) -> bytes:
    """``action=<action>\\n\\n``: whatever the text holds, one line, valid UTF-8, at most MAX_ACTION bytes.

    Actions built by the engine are already bounded with the citation kept
    (:func:`bounded_action`); this cut is the last guard for anything else.
    """
    text = clip_bytes(clean_text(action), MAX_ACTION) or "DUNNO"
    return b"action=" + text.encode("utf-8", "replace") + b"\n\n"


DUNNO_REPLY = b"action=DUNNO\n\n"
