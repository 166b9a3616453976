"""The framed protocol between ``congvu-checkpassword`` and ``congvu authd``: bytes ↔ values, no I/O.

Stdlib only and cheap to import (no dataclasses, typing or enum at run time): the hook
is forked on every login (Dovecot 2.3 never caches checkpassword), so every import here
is paid per login.

A frame is a 4-byte big-endian length and that many bytes of UTF-8 payload; the payload
is ``key=value`` fields separated by NUL.  NUL cannot occur in a value: Dovecot hands the
hook NUL-terminated fields on fd 3, and the service refuses anything else.

This module also parses what Dovecot writes on fd 3 (``user NUL password NUL …``),
so the hook's whole input handling is pure and unit-testable.
"""

from __future__ import annotations

from congvu.rules.errors import ProtocolError

MAX_FRAME = 4096  # a request holds at most 512 bytes of credentials; replies are small
HEADER = 4
VERSION = "1"

#: Dovecot refuses user+password+3 > 512 bytes itself; more on fd 3 is not Dovecot talking.
MAX_FD3 = 512
#: Longest login name accepted (an address is at most 254 octets, RFC 5321 4.5.3.1.3).
MAX_LOGIN = 254

# Request operations.
OP_AUTH = "auth"      # verify a password and decide (passdb)
OP_LOOKUP = "lookup"  # AUTHORIZED=1: userdb (or passdb-only) lookup without a password
OPS = (OP_AUTH, OP_LOOKUP)

# Reply statuses.
OK = "ok"              # exec checkpassword-reply with the exported fields
REFUSE = "refuse"      # refused with a reason (must change, expired, disabled, locked out): exec the reply
                       # exporting noauthenticate (set by the hook itself) and the reason and code fields
FAIL = "fail"          # wrong password: exit 1
UNKNOWN = "unknown"    # no such user: exit 1 (auth) or 3 (lookup)
TEMPFAIL = "tempfail"  # internal error, directory down: exit 111
STATUSES = (OK, REFUSE, FAIL, UNKNOWN, TEMPFAIL)


# Malformed input (a frame, a field, or fd 3) raises congvu.rules.errors.ProtocolError; the
# message never contains a secret.


# --------------------------------------------------------------------------- fd 3


def parse_fd3(data: bytes) -> tuple[str, str]:
    """``user NUL password NUL [timestamp NUL …]`` → (user, password), strictly.

    Refuses empty input, more than 512 bytes, a missing NUL after the password
    (truncated), text that is not UTF-8, and a login name with control characters.
    """
    if not data:
        raise ProtocolError("fd 3 is empty")
    if len(data) > MAX_FD3:
        raise ProtocolError(f"fd 3 holds more than {MAX_FD3} bytes")
    parts = data.split(b"\0")
    if len(parts) < 3:  # user, password and what follows the password's NUL
        raise ProtocolError("fd 3 is truncated: expected user NUL password NUL")
    try:
        user = parts[0].decode("utf-8")
        password = parts[1].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("fd 3 is not UTF-8") from None
    check_login(user)
    return user, password


def check_login(user: str) -> None:
    """Refuse a login name that no account can have: empty, too long, or with control characters.

    LDAP filter characters (``*``, ``(``, ``)``, ``\\``) are *not* refused here: the
    directory escapes them, and the service answers "unknown user" in the same time
    as for any other name, so the hook reveals nothing.
    """
    if not user:
        raise ProtocolError("empty login name")
    if len(user.encode("utf-8")) > MAX_LOGIN:
        raise ProtocolError("login name too long")
    for ch in user:
        if ch < " " or ch == "\x7f" or "\x80" <= ch <= "\x9f" or ch in "\u2028\u2029":
            raise ProtocolError("control character in login name")


# --------------------------------------------------------------------------- frames


def encode_fields(fields: list[tuple[str, str]]) -> bytes:
    """Fields → one frame (length prefix included)."""
    parts = []
    for key, value in fields:
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise ProtocolError(f"field {key!r} cannot be framed")
        parts.append(f"{key}={value}")
    payload = "\0".join(parts).encode("utf-8")
    if len(payload) > MAX_FRAME:
        raise ProtocolError("frame too large")
    return len(payload).to_bytes(HEADER, "big") + payload


def decode_fields(payload: bytes) -> list[tuple[str, str]]:
    """One frame's payload → fields, in order."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("frame is not UTF-8") from None
    out = []
    for item in text.split("\0") if text else []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ProtocolError("frame field without '='")
        out.append((key, value))
    return out


class FrameDecoder:
    """Bytes as they arrive → complete payloads.  Raises ProtocolError on an oversized frame."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        frames = []
        while len(self._buf) >= HEADER:
            size = int.from_bytes(self._buf[:HEADER], "big")
            if size > MAX_FRAME:
                raise ProtocolError(f"frame of {size} bytes exceeds {MAX_FRAME}")
            if len(self._buf) < HEADER + size:
                break
            frames.append(self._buf[HEADER:HEADER + size])
            self._buf = self._buf[HEADER + size:]
        return frames

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a frame."""
        return len(self._buf)


# --------------------------------------------------------------------------- values


class AuthRequest:
    """One question from the hook: verify (``auth``) or look up (``lookup``) a login.

    The password never appears in the repr or in an error message.
    """

    __slots__ = ("local_ip", "op", "password", "remote_ip", "service", "username")

    def __init__(self, op: str, username: str, password: str = "", service: str = "",
                 remote_ip: str = "", local_ip: str = "") -> None:
        if op not in OPS:
            raise ProtocolError(f"unknown op {op!r}")
        self.op = op
        self.username = username
        self.password = password
        self.service = service
        self.remote_ip = remote_ip
        self.local_ip = local_ip

    def __repr__(self) -> str:
        return (f"AuthRequest(op={self.op!r}, username={self.username!r}, password=<hidden>, "
                f"service={self.service!r}, remote_ip={self.remote_ip!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AuthRequest):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def encode(self) -> bytes:
        return encode_fields([("v", VERSION), ("op", self.op), ("user", self.username),
                              ("password", self.password), ("service", self.service),
                              ("rip", self.remote_ip), ("lip", self.local_ip)])

    @classmethod
    def decode(cls, payload: bytes) -> AuthRequest:
        f = dict(decode_fields(payload))
        if f.get("v") != VERSION:
            raise ProtocolError("unsupported protocol version")
        try:
            return cls(f["op"], f["user"], f.get("password", ""), f.get("service", ""),
                       f.get("rip", ""), f.get("lip", ""))
        except KeyError as e:
            raise ProtocolError(f"request lacks {e.args[0]}") from None


class AuthReply:
    """The service's answer: a status and the environment to export for ``checkpassword-reply``.

    ``exports`` are (NAME, value) pairs; the hook sets each and lists every name but
    USER and HOME in ``EXTRA``.  ``message`` is for Dovecot's log (stderr), never a secret.
    """

    __slots__ = ("exports", "message", "status")

    def __init__(self, status: str, exports: tuple[tuple[str, str], ...] = (), message: str = "") -> None:
        if status not in STATUSES:
            raise ProtocolError(f"unknown status {status!r}")
        self.status = status
        self.exports = tuple(exports)
        self.message = message

    def __repr__(self) -> str:
        return f"AuthReply(status={self.status!r}, exports={self.exports!r}, message={self.message!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AuthReply):
            return NotImplemented
        return (self.status, self.exports, self.message) == (other.status, other.exports, other.message)

    __hash__ = None  # type: ignore[assignment]

    def encode(self) -> bytes:
        fields = [("v", VERSION), ("status", self.status)]
        if self.message:
            fields.append(("msg", self.message))
        fields.extend(("set", f"{name}={value}") for name, value in self.exports)
        return encode_fields(fields)

    @classmethod
    def decode(cls, payload: bytes) -> AuthReply:
        fields = decode_fields(payload)
        f = dict(fields)
        if f.get("v") != VERSION:
            raise ProtocolError("unsupported protocol version")
        exports = []
        for key, value in fields:
            if key == "set":
                name, sep, val = value.partition("=")
                if not sep or not valid_env_name(name) or "\n" in val or "\r" in val:
                    raise ProtocolError("bad exported field")
                exports.append((name, val))
        return cls(f.get("status", ""), tuple(exports), f.get("msg", ""))


def valid_env_name(name: str) -> bool:
    """An environment variable name checkpassword-reply can read back: [A-Za-z_][A-Za-z0-9_]*."""
    return bool(name) and not name[0].isdigit() and all(
        ch == "_" or ("a" <= ch <= "z") or ("A" <= ch <= "Z") or ("0" <= ch <= "9") for ch in name)
