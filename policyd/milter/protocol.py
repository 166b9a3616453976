"""The Sendmail milter protocol (version 6, as Postfix speaks it), without I/O: bytes → commands, replies → bytes.

Our own core rather than ``kilter-protocol``: the part of the protocol an MTA-side
content filter needs is a dozen packet types (a 4-byte length, a command byte, NUL-
separated fields), the same size as :mod:`congvu.policyd.protocol`; writing it keeps the
hot path free of a dependency's allocations, lets every value be one of our frozen
NamedTuples, and puts the bounds (packet size) where the service configures them.  It is
fuzzed like the policy parser (tests/unit/policyd/milter/test_protocol.py).

Packets are ``uint32 length`` (network order, counting the command byte) + ``command`` +
data.  Anything malformed or past the bounds raises :class:`MilterProtocolError`; the
server then closes the connection and Postfix applies ``milter_default_action``
(tempfail in the shipped snippet): a broken peer costs a retry, never a lost message.

Negotiation (:func:`negotiate`) asks Postfix to skip the events the content rules do not
need (CONNECT, HELO, RCPT, DATA, unknown commands) and to expect no reply to MAIL,
headers, end of headers and body chunks, so a message costs one round trip: the answer
at end of body.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from congvu.rules.errors import ProtocolError

VERSION = 6

# Actions the filter may take (SMFIF_*): we only add a header (X-Congvu-Check, the "tag" policy).
SMFIF_ADDHDRS = 0x01

# Protocol flags (SMFIP_*): events the MTA need not send, events it need not wait for.
SMFIP_NOCONNECT = 0x01
SMFIP_NOHELO = 0x02
SMFIP_NORCPT = 0x08
SMFIP_NR_HDR = 0x80
SMFIP_NOUNKNOWN = 0x100
SMFIP_NODATA = 0x200
SMFIP_NR_MAIL = 0x4000
SMFIP_NR_EOH = 0x40000
SMFIP_NR_BODY = 0x80000

#: Skip what no rule reads; no reply to what needs no answer.  Masked by what the MTA offers.
WANTED = (SMFIP_NOCONNECT | SMFIP_NOHELO | SMFIP_NORCPT | SMFIP_NOUNKNOWN | SMFIP_NODATA
          | SMFIP_NR_MAIL | SMFIP_NR_HDR | SMFIP_NR_EOH | SMFIP_NR_BODY)
#: The events that still need a reply when the MTA grants every flag of WANTED.
NO_REPLY = {b"M": SMFIP_NR_MAIL, b"L": SMFIP_NR_HDR, b"N": SMFIP_NR_EOH, b"B": SMFIP_NR_BODY}

_LEN = struct.Struct("!I")
#: Every command byte as a one-byte string, made once (not per packet).
_CMD = [bytes([i]) for i in range(256)]
_STAGE = [chr(i) for i in range(256)]
_OPTNEG = struct.Struct("!III")


class MilterProtocolError(ProtocolError):
    """The bytes are not milter packets we accept; the parser is dead afterwards."""


# --------------------------------------------------------------------------- commands (MTA → filter)


class OptNeg(NamedTuple):
    """SMFIC_OPTNEG: the MTA's version, the actions it allows, the protocol flags it offers."""

    version: int
    actions: int
    protocol: int


class Macros(NamedTuple):
    """SMFIC_MACRO: macro values for the command ``stage`` that follows (``i`` = queue id, ``{auth_authen}``).

    Postfix sends a dozen of these per message (one before every header) and the filter reads
    two of them, so the packet is kept raw (``name\\0value\\0`` pairs) and split and decoded
    only when asked (:meth:`items`, :meth:`get`), which raise MilterProtocolError if it is malformed.
    """

    stage: str
    raw: bytes

    def fields(self) -> list[bytes]:
        if not self.raw:
            return []
        parts = _fields(self.raw, "macro")
        if len(parts) % 2:
            raise MilterProtocolError("macro: a name without a value")
        return parts

    def items(self) -> tuple[tuple[str, str], ...]:
        it = iter(self.fields())
        return tuple((_text(n), _text(v)) for n, v in zip(it, it, strict=True))

    def get(self, name: bytes) -> str | None:
        """One macro's value, decoded; None if this packet does not carry it."""
        f = self.fields()
        for i in range(0, len(f), 2):
            if f[i] == name:
                return _text(f[i + 1])
        return None


class Mail(NamedTuple):
    """SMFIC_MAIL: the envelope sender (as given, angle brackets included) and ESMTP arguments."""

    sender: str
    args: tuple[str, ...]


class Header(NamedTuple):
    """SMFIC_HEADER: one header, name and (unfolded by nobody: as sent) value, raw bytes."""

    name: bytes
    value: bytes


class Body(NamedTuple):
    """SMFIC_BODY: a chunk of the body (Postfix: at most 65,535 bytes, CRLF line ends)."""

    chunk: bytes


class EndOfBody(NamedTuple):
    """SMFIC_BODYEOB: the message is complete; it may carry the last chunk of the body."""

    chunk: bytes


class Event(NamedTuple):
    """A command without fields we use: EOH ``N``, ABORT ``A``, QUIT ``Q``, QUIT_NC ``K``, or one the
    negotiation asked the MTA to skip (``C``, ``H``, ``R``, ``T``, ``U``), ignored if sent anyway."""

    command: bytes


Command = OptNeg | Macros | Mail | Header | Body | EndOfBody | Event

#: One value per event command, shared: they carry nothing but the command.
_EVENTS = {bytes([c]): Event(bytes([c])) for c in b"NAQKCHRTU"}


def _fields(data: bytes, what: str) -> list[bytes]:
    """NUL-terminated fields; the last one must be terminated."""
    if not data.endswith(b"\0"):
        raise MilterProtocolError(f"{what}: field not NUL-terminated")
    return data[:-1].split(b"\0")


def _text(raw: bytes) -> str:
    """Protocol text (addresses, macro values): UTF-8 when it is, else Latin-1 so no byte is lost."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def decode(cmd: bytes, data: bytes) -> Command:
    """One packet's command byte and data as a command value (most frequent commands first)."""
    if cmd == b"D":
        if not data:
            raise MilterProtocolError("macro: empty")
        return Macros(_STAGE[data[0]], data[1:])
    if cmd == b"L":
        parts = _fields(data, "header")
        if len(parts) != 2 or not parts[0]:
            raise MilterProtocolError("header: expected name\\0value\\0")
        return Header(parts[0], parts[1])
    if cmd == b"B":
        return Body(data)
    if cmd == b"E":
        return EndOfBody(data)
    if cmd == b"M":
        parts = _fields(data, "mail")
        return Mail(_text(parts[0]), tuple(map(_text, parts[1:])))
    if cmd == b"O":
        if len(data) < _OPTNEG.size:
            raise MilterProtocolError("option negotiation: shorter than 12 bytes")
        return OptNeg(*_OPTNEG.unpack_from(data))
    event = _EVENTS.get(cmd)
    if event is not None:
        return event
    raise MilterProtocolError(f"unknown command {cmd!r}")


class MilterParser:
    """Incremental parser for one connection: bytes in, complete commands out, in order.

    ``max_packet`` bounds what one packet may hold (and so what is buffered): Postfix sends
    body chunks of at most 65,535 bytes and headers of at most ``header_size_limit``.
    """

    __slots__ = ("_buf", "_failed", "max_packet")

    def __init__(self, max_packet: int = 1024 * 1024) -> None:
        self.max_packet = max_packet
        self._buf = bytearray()
        self._failed = ""

    @property
    def pending(self) -> bool:
        """True while part of a packet has arrived."""
        return bool(self._buf)

    def feed(self, data: bytes) -> list[Command]:
        """Every command completed by ``data``; raises MilterProtocolError on bad or oversized input."""
        if self._failed:
            raise MilterProtocolError(self._failed)
        try:
            return self._feed(data)
        except MilterProtocolError as e:
            self._failed = str(e) or "protocol error"
            self._buf = bytearray()
            raise

    def _feed(self, data: bytes) -> list[Command]:
        buf = self._buf
        if buf:
            buf += data
        else:  # the usual case: the read holds whole packets; no copy into the buffer first
            buf = data  # type: ignore[assignment]
        out: list[Command] = []
        pos, end = 0, len(buf)
        while end - pos >= 4:
            (length,) = _LEN.unpack_from(buf, pos)
            if length == 0:
                raise MilterProtocolError("packet of length 0 (no command)")
            if length > self.max_packet:
                raise MilterProtocolError(f"packet of {length} bytes, more than {self.max_packet}")
            if end - pos - 4 < length:
                break
            start = pos + 4
            out.append(decode(_CMD[buf[start]], bytes(buf[start + 1:start + length])))
            pos = start + length
        if buf is self._buf:
            del buf[:pos]
        elif pos < end:
            self._buf = bytearray(buf[pos:])
        return out


# --------------------------------------------------------------------------- replies (filter → MTA)


def packet(cmd: bytes, data: bytes = b"") -> bytes:
    return _LEN.pack(len(data) + 1) + cmd + data


def negotiate(offer: OptNeg) -> tuple[bytes, int]:
    """Our SMFIC_OPTNEG answer to ``offer``, and the protocol flags agreed (what the MTA granted of WANTED).

    Refuses an MTA older than version 6 or one that does not let us add headers.
    """
    if offer.version < VERSION:
        raise MilterProtocolError(f"milter protocol version {offer.version}; version {VERSION} is needed "
                                  "(Postfix: milter_protocol = 6)")
    if not offer.actions & SMFIF_ADDHDRS:
        raise MilterProtocolError("the MTA does not allow adding headers (SMFIF_ADDHDRS)")
    agreed = offer.protocol & WANTED
    return packet(b"O", _OPTNEG.pack(VERSION, SMFIF_ADDHDRS, agreed)), agreed


def needs_reply(command: Command, agreed: int) -> bool:
    """True if the MTA waits for an answer to ``command`` under the ``agreed`` protocol flags."""
    if isinstance(command, Macros):
        return False
    if isinstance(command, EndOfBody):
        return True
    if isinstance(command, Event):
        if command.command in (b"A", b"Q", b"K"):
            return False
        key = command.command
    else:
        key = b"M" if isinstance(command, Mail) else b"L" if isinstance(command, Header) else \
            b"B" if isinstance(command, Body) else b""
    flag = NO_REPLY.get(key, 0)
    return not (flag and agreed & flag)


CONTINUE = packet(b"c")
ACCEPT = packet(b"a")
TEMPFAIL = packet(b"t")


def reply_code(line: str) -> bytes:
    """SMFIR_REPLYCODE: ``550 5.7.1 text`` as the SMTP reply Postfix gives the client.

    ``line`` must already be one clean line (``policyd.engine.decision_action`` bounds it);
    ``%`` is dropped, since an MTA may read the reply as a format string.
    """
    line = line.replace("%", "").replace("\0", "")
    return packet(b"y", line.encode("utf-8", "replace") + b"\0")


def add_header(name: str, value: str) -> bytes:
    """SMFIR_ADDHEADER: one header appended to the message."""
    return packet(b"h", name.encode() + b"\0" + value.replace("\0", "").encode("utf-8", "replace") + b"\0")
