"""RESP2, the Redis wire protocol, without I/O: commands to bytes, bytes to frozen replies.

Only what congvu's native client needs: a command is an array of bulk strings
(:func:`encode`, :func:`encode_strs`); replies come back from :class:`RespParser` whole,
in order, however the bytes were split: ``+OK`` → ``str``, ``:1`` → ``int``, ``$n`` →
``bytes`` (``$-1`` → ``None``), ``*n`` → ``tuple`` (``*-1`` → ``None``), ``-ERR …`` →
:class:`ErrorReply`.  An error reply is a value, not an exception: Redis answered, and the
client decides what the answer means (NOSCRIPT: send the script; NOAUTH: the credentials).

A peer that breaks the protocol, or sends a reply larger than the bounds below (a broken
or hostile server must not make policyd buffer without end), raises
:class:`~congvu.rules.errors.ProtocolError`; the parser is dead afterwards, since nothing
after a broken reply can be matched to its command: drop the connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from congvu.rules.errors import ProtocolError

#: The longest bulk string accepted.  congvu's scripts answer a few kB at most (a batch of
#: MAX_BATCH messages); a megabyte leaves room without letting a reply eat memory.
MAX_BULK = 1 << 20
#: The most elements of one array.
MAX_ARRAY = 1 << 16
#: The deepest nesting of arrays (congvu's replies are flat; recursion stays far from Python's limit).
MAX_DEPTH = 8
#: The most bytes of one reply still incomplete: bounds what a reply can make us buffer,
#: whatever its shape (a line that never ends, an array of many bulk strings).
MAX_PENDING = 4 << 20
#: The reply types of RESP2: bulk string, integer, simple string, error, array.
_KINDS = b"$:+-*"
#: Digits (and sign) of a RESP2 integer or length: a signed 64-bit number.
_MAX_NUMBER = 20


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An error reply (``-NOSCRIPT No matching script``): what Redis answered, as a value."""

    message: str

    def __str__(self) -> str:
        return self.message

    @property
    def code(self) -> str:
        """The error's first word (``ERR``, ``NOSCRIPT``, ``NOAUTH``, ``WRONGPASS``, ``NOPERM`` …)."""
        return self.message.partition(" ")[0]


#: One reply.
Value: TypeAlias = int | str | bytes | ErrorReply | tuple["Value", ...] | None


def encode(*args: bytes | str | int) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else a.encode() if isinstance(a, str) else b"%d" % a
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def encode_strs(args: Sequence[str], blob: bytes | None = None) -> bytes:
    """:func:`encode` for text arguments (and one binary last one): one f-string per argument, one encode."""
    body = "".join([f"${len(a)}\r\n{a}\r\n" for a in args])
    if not body.isascii():  # lengths in characters are lengths in bytes only in ASCII
        return encode(*args) if blob is None else encode(*args, blob)
    if blob is None:
        return f"*{len(args)}\r\n{body}".encode()
    return b"%b$%d\r\n%b\r\n" % (f"*{len(args) + 1}\r\n{body}".encode(), len(blob), blob)


class _More(Exception):
    """The reply is not complete yet: keep its bytes for the next feed."""


def _number(line: bytes) -> int:
    """A RESP2 integer or length: ``-?[0-9]+``, 64-bit (``int()`` alone would take spaces, ``_`` and ``+``)."""
    digits = line[1:] if line[:1] == b"-" else line
    if not digits.isdigit() or len(line) > _MAX_NUMBER:  # bytes.isdigit: ASCII digits only
        raise ProtocolError(f"redis: bad number {line[:_MAX_NUMBER + 1]!r}")
    return int(line)


class RespParser:
    """Incremental RESP2 reply parser: bytes in, complete replies out (errors as :class:`ErrorReply` values)."""

    __slots__ = ("buf", "dead", "max_array", "max_bulk", "max_depth", "max_pending")

    def __init__(self, *, max_bulk: int = MAX_BULK, max_array: int = MAX_ARRAY, max_depth: int = MAX_DEPTH,
                 max_pending: int = MAX_PENDING) -> None:
        self.buf = b""
        self.dead = False
        self.max_bulk, self.max_array, self.max_depth, self.max_pending = max_bulk, max_array, max_depth, max_pending

    def feed(self, data: bytes) -> list[Value]:
        """The replies completed by ``data``, in order; raises ProtocolError (and stays dead) on a broken reply."""
        if self.dead:
            raise ProtocolError("redis: reply stream already broken")
        buf = self.buf + data if self.buf else data
        out: list[Value] = []
        pos = 0
        end = len(buf)
        try:
            while pos < end:
                value, pos = self._parse(buf, pos, 0)
                out.append(value)
        except _More:
            if end - pos > self.max_pending:
                self._die()
                raise ProtocolError(f"redis: reply larger than {self.max_pending} bytes") from None
        except ProtocolError:
            self._die()
            raise
        self.buf = buf[pos:] if pos else buf
        return out

    def _die(self) -> None:
        self.dead = True
        self.buf = b""

    def _parse(self, buf: bytes, pos: int, depth: int) -> tuple[Value, int]:
        if pos >= len(buf):
            raise _More
        kind = buf[pos]
        if kind not in _KINDS:  # before waiting for a line end: garbage fails at once
            raise ProtocolError(f"redis: unexpected reply type {bytes([kind])!r}")
        end = buf.find(b"\r\n", pos + 1)
        if end < 0:
            raise _More
        line = buf[pos + 1:end]
        pos = end + 2
        if kind == 36:  # $: bulk string
            n = _number(line)
            if n < 0:
                if n != -1:
                    raise ProtocolError(f"redis: bad bulk length {n}")
                return None, pos
            if n > self.max_bulk:
                raise ProtocolError(f"redis: bulk string of {n} bytes (at most {self.max_bulk})")
            stop = pos + n
            if len(buf) < stop + 2:
                raise _More
            if buf[stop:stop + 2] != b"\r\n":
                raise ProtocolError("redis: bulk string not ended by CRLF")
            return buf[pos:stop], stop + 2
        if kind == 58:  # :
            return _number(line), pos
        if kind == 43 or kind == 45:  # + and -: one line of text
            if b"\r" in line or b"\n" in line:
                raise ProtocolError("redis: CR or LF inside a simple reply")
            text = line.decode("utf-8", "replace")
            return (text if kind == 43 else ErrorReply(text)), pos
        n = _number(line)  # *: an array, the last of _KINDS
        if n < 0:
            if n != -1:
                raise ProtocolError(f"redis: bad array length {n}")
            return None, pos
        if n > self.max_array:
            raise ProtocolError(f"redis: array of {n} elements (at most {self.max_array})")
        if depth >= self.max_depth:
            raise ProtocolError(f"redis: arrays nested deeper than {self.max_depth}")
        items: list[Value] = []
        for _ in range(n):
            item, pos = self._parse(buf, pos, depth + 1)
            items.append(item)
        return tuple(items), pos
