"""Dovecot's auth-client protocol, server side, without I/O: what Postfix's ``smtpd_sasl_type = dovecot`` speaks.

Why congvu answers Postfix itself: Postfix 3.7 maps every ``FAIL`` from an auth server
to ``535 5.7.8`` (``xsasl_dovecot_server.c``), a permanent failure, even Dovecot's
``code=temp_fail``; only a lost connection (or none) makes it answer ``454 4.7.0``.
So an outage must close the connection without a word, which only the server that
decides can do (``authhooks.sasl_server``).

The protocol (Dovecot's auth-client protocol 1.x, the lines Postfix sends and reads):

* the server greets with ``VERSION 1 2``, one ``MECH`` line per mechanism, ``SPID``,
  ``CUID``, ``COOKIE`` and ``DONE`` (fields TAB-separated, lines LF-terminated);
* the client sends ``VERSION 1 <minor>`` and ``CPID <pid>``, then requests:
  ``AUTH <id> <mech> service=smtp [nologin] [lip=…] [rip=…] [secured] [resp=<base64>]``
  (``resp`` last; ``nologin`` and ``secured`` are not used: TLS before AUTH is Postfix's
  ``smtpd_tls_auth_only`` / ``smtpd_tls_security_level = encrypt``), ``CONT <id> <base64>``
  and ``CANCEL <id>``;
* the server answers ``OK <id> user=<user>``, ``FAIL <id> [code=…] [reason=…]`` or
  ``CONT <id> <base64 challenge>``.

Only PLAIN and LOGIN are offered: congvu verifies passwords, it has no hashes to hand out.
A PLAIN authorization identity other than the authentication identity (a master or
proxy login) is refused.  Credentials that cannot be decoded are the SMTP client's fault
and get a ``FAIL`` (Postfix: 535); a client that breaks the protocol (Postfix never does)
gets :class:`SaslProtocolError`, and the connection is closed.
"""

from __future__ import annotations

import binascii
from base64 import b64decode, b64encode
from dataclasses import dataclass, field

from congvu.authhooks.wire import check_login
from congvu.rules.errors import ProtocolError

MECHANISMS = ("PLAIN", "LOGIN")
#: Dovecot's own bound (AUTH_CLIENT_MAX_LINE_LENGTH); credentials are far shorter.
MAX_LINE = 16384
#: Requests of one connection waiting for a CONT (Postfix has one at a time).
MAX_PENDING = 16
#: Longest reason sent, in UTF-8 bytes: Postfix puts "535 5.7.8 Error: authentication failed: " in
#: front, and an SMTP reply line holds 512 octets (RFC 5321 4.5.3.1.5).
MAX_REASON = 400
MAJOR = 1
MINOR = 2
_LOGIN_USER = b"Username:"
_LOGIN_PASSWORD = b"Password:"
_ELLIPSIS = "..."


class SaslProtocolError(ProtocolError):
    """The client broke the auth protocol; the connection is closed (the parser is dead afterwards)."""


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Verify:
    """Complete credentials of request ``id``, for the auth service to judge.  The password never reaches a repr."""

    id: int
    mechanism: str
    username: str
    password: str = field(repr=False)
    service: str = ""
    remote_ip: str = ""
    local_ip: str = ""


@dataclass(frozen=True, slots=True)
class Challenge:
    """``CONT``: the mechanism asks the client for more (LOGIN's prompts, PLAIN's empty one)."""

    id: int
    data: bytes

    def encode(self) -> bytes:
        return f"CONT\t{self.id}\t".encode() + b64encode(self.data) + b"\n"


@dataclass(frozen=True, slots=True)
class Failure:
    """``FAIL``: the request is refused; ``reason`` is what Postfix puts in its 535 reply, ``user`` only in its log."""

    id: int
    reason: str = ""
    code: str = ""
    user: str = ""

    def encode(self) -> bytes:
        line = f"FAIL\t{self.id}"
        if self.user:
            line += f"\tuser={escape(self.user)}"
        if self.code:
            line += f"\tcode={escape(self.code)}"
        if self.reason:
            line += f"\treason={reply_text(self.reason)}"
        return line.encode("utf-8") + b"\n"


@dataclass(frozen=True, slots=True)
class Success:
    """``OK``: the request succeeded; ``user`` is the name Postfix records (and policyd compares senders with)."""

    id: int
    user: str

    def encode(self) -> bytes:
        return f"OK\t{self.id}\tuser={escape(self.user)}".encode() + b"\n"


Event = Verify | Challenge | Failure


def handshake(pid: int, cuid: int, cookie: bytes) -> bytes:
    """The server's greeting: protocol version, mechanisms, process and connection ids, cookie, DONE."""
    mechs = "".join(f"MECH\t{m}\tplaintext\n" for m in MECHANISMS)
    return f"VERSION\t{MAJOR}\t{MINOR}\n{mechs}SPID\t{pid}\nCUID\t{cuid}\nCOOKIE\t{cookie.hex()}\nDONE\n".encode()


# --------------------------------------------------------------------------- escaping

_ESCAPES = {"\x01": "\x011", "\t": "\x01t", "\r": "\x01r", "\n": "\x01n", "\0": "\x010"}
_UNESCAPES = {v[1]: k for k, v in _ESCAPES.items()}


def escape(value: str) -> str:
    """Dovecot's TAB escaping (``str_append_tabescaped``): \\x01, TAB, CR, LF and NUL as \\x01 + a letter."""
    if not any(ch in value for ch in _ESCAPES):
        return value
    return "".join(_ESCAPES.get(ch, ch) for ch in value)


def unescape(value: str) -> str:
    """The inverse of :func:`escape`; a dangling or unknown escape is a protocol error."""
    if "\x01" not in value:
        return value
    out, i = [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\x01":
            if i + 1 >= len(value) or value[i + 1] not in _UNESCAPES:
                raise SaslProtocolError("bad \\x01 escape in a field")
            out.append(_UNESCAPES[value[i + 1]])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def reply_text(reason: str) -> str:
    """A reason Postfix can print as is: it does not unescape, so control characters become spaces; bounded."""
    text = " ".join("".join(" " if ch < " " or ch == "\x7f" else ch for ch in reason).split())
    raw = text.encode("utf-8")
    if len(raw) <= MAX_REASON:
        return text
    return raw[:MAX_REASON - len(_ELLIPSIS)].decode("utf-8", "ignore").rstrip() + _ELLIPSIS


# --------------------------------------------------------------------------- the connection


@dataclass(slots=True)
class _Pending:
    """A request waiting for the client's CONT: its mechanism, the LOGIN name so far, and the AUTH fields."""

    mechanism: str
    service: str
    remote_ip: str
    local_ip: str
    username: str | None = None


def _uint(text: str) -> int | None:
    """A decimal below 2**32 (Dovecot's unsigned int), or None."""
    if not (text.isascii() and text.isdigit()) or len(text) > 10 or int(text) >= 2 ** 32:
        return None
    return int(text)


def _number(text: str, what: str) -> int:
    n = _uint(text)
    if not n:
        raise SaslProtocolError(f"{what}: not a request id: {text[:20]!r}")
    return n


class SaslServer:
    """One client connection: bytes in, :data:`Event` values out; the caller answers each :class:`Verify`.

    Lines are bounded by :data:`MAX_LINE` and requests awaiting a ``CONT`` by
    :data:`MAX_PENDING`; anything else the protocol forbids raises :class:`SaslProtocolError`.
    """

    __slots__ = ("_buf", "_failed", "_minor", "_pending", "_ready", "_versioned")

    def __init__(self) -> None:
        self._buf = b""
        self._failed = ""
        self._versioned = False
        self._ready = False  # VERSION and CPID received
        self._minor = 0
        self._pending: dict[int, _Pending] = {}

    def feed(self, data: bytes) -> list[Event]:
        """Every event completed by ``data``, in order; raises SaslProtocolError (and stays failed)."""
        if self._failed:
            raise SaslProtocolError(self._failed)
        try:
            return self._feed(data)
        except SaslProtocolError as e:
            self._failed = str(e) or "protocol error"
            self._buf = b""
            self._pending.clear()
            raise

    def _feed(self, data: bytes) -> list[Event]:
        buf = self._buf + data
        events: list[Event] = []
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            if end - start > MAX_LINE:
                raise SaslProtocolError(f"line longer than {MAX_LINE} bytes")
            event = self._line(buf[start:end])
            if event is not None:
                events.append(event)
            start = end + 1
        self._buf = buf[start:]
        if len(self._buf) > MAX_LINE:
            raise SaslProtocolError(f"line longer than {MAX_LINE} bytes")
        return events

    def _line(self, raw: bytes) -> Event | None:
        try:
            line = raw.removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            raise SaslProtocolError("line is not UTF-8") from None
        if not self._ready:
            self._handshake(line)
            return None
        cmd, _, rest = line.partition("\t")
        if cmd == "AUTH":
            return self._auth(rest)
        if cmd == "CONT":
            return self._cont(rest)
        if cmd == "CANCEL":
            self._pending.pop(_number(rest, "CANCEL"), None)
            return None
        raise SaslProtocolError(f"unknown command {cmd[:20]!r}")

    def _handshake(self, line: str) -> None:
        fields = line.split("\t")
        if not self._versioned:
            numbers = [_uint(f) for f in fields[1:]]
            if fields[0] != "VERSION" or len(numbers) != 2 or None in numbers:
                raise SaslProtocolError("expected VERSION <major> <minor> first")
            if numbers[0] != MAJOR:
                raise SaslProtocolError(f"protocol version {numbers[0]} is not {MAJOR}")
            self._versioned, self._minor = True, numbers[1] or 0
            return
        if fields[0] != "CPID" or len(fields) != 2 or _uint(fields[1]) is None:
            raise SaslProtocolError("expected CPID <pid> after VERSION")
        self._ready = True

    def _auth(self, rest: str) -> Event:
        fields = [unescape(f) for f in rest.split("\t")]
        if len(fields) < 2:
            raise SaslProtocolError("AUTH without id and mechanism")
        rid = _number(fields[0], "AUTH")
        if rid in self._pending:
            raise SaslProtocolError(f"AUTH reuses the pending id {rid}")
        params: dict[str, str] = {}
        resp: str | None = None
        for i, item in enumerate(fields[2:], 2):
            name, _, value = item.partition("=")
            if name == "resp":
                if i != len(fields) - 1:
                    raise SaslProtocolError("AUTH parameters after resp")
                resp = value
            else:
                params[name] = value
        if "service" not in params:
            raise SaslProtocolError("AUTH without service")
        mechanism = fields[1].upper()
        if mechanism not in MECHANISMS:
            return Failure(rid, "Unsupported authentication mechanism")
        if len(self._pending) >= MAX_PENDING:
            raise SaslProtocolError(f"more than {MAX_PENDING} requests waiting for CONT")
        request = _Pending(mechanism, params["service"], params.get("rip", ""), params.get("lip", ""))
        if resp is None or (resp == "" and self._minor < 2):  # protocol < 1.2: an empty resp means none
            initial = None
        else:
            try:
                initial = _base64(resp)
            except ValueError:
                return Failure(rid, "Invalid base64 data in initial response", "invalid_base64")
        return self._step(rid, request, initial)

    def _cont(self, rest: str) -> Event:
        rid_text, sep, data = rest.partition("\t")
        if not sep:
            raise SaslProtocolError("CONT without data")
        rid = _number(rid_text, "CONT")
        request = self._pending.pop(rid, None)
        if request is None:
            return Failure(rid, "Authentication request timed out")
        try:
            response = _base64(data)
        except ValueError:
            return Failure(rid, "Invalid base64 data in continued response", "invalid_base64")
        return self._step(rid, request, response)

    def _step(self, rid: int, request: _Pending, data: bytes | None) -> Event:
        """Advance one request by the client's response (None: no initial response)."""
        if request.mechanism == "PLAIN":
            if data is None:
                self._pending[rid] = request
                return Challenge(rid, b"")
            return self._plain(rid, request, data)
        if request.username is None:  # LOGIN, first the name
            if not data:
                self._pending[rid] = request
                return Challenge(rid, _LOGIN_USER)
            name = _login_name(data)
            if name is None:
                return Failure(rid, "Invalid user name")
            request.username = name
            self._pending[rid] = request
            return Challenge(rid, _LOGIN_PASSWORD)
        password = _text(data or b"")
        if password is None:
            return Failure(rid, "Invalid password encoding")
        return Verify(rid, "LOGIN", request.username, password, request.service, request.remote_ip,
                      request.local_ip)

    @staticmethod
    def _plain(rid: int, request: _Pending, data: bytes) -> Event:
        """``authzid NUL authcid NUL password`` (RFC 4616); an authzid other than the authcid is refused."""
        parts = data.split(b"\0")
        if len(parts) != 3:
            return Failure(rid, "Invalid PLAIN response")
        authzid, password = _text(parts[0]), _text(parts[2])
        authcid = _login_name(parts[1])
        if authcid is None or authzid is None or password is None:
            return Failure(rid, "Invalid PLAIN response")
        if authzid and authzid != authcid:
            return Failure(rid, "Logging in as another user is not allowed", "authz_fail")
        return Verify(rid, "PLAIN", authcid, password, request.service, request.remote_ip, request.local_ip)


def _base64(text: str) -> bytes:
    """Strict base64 (RFC 4648 alphabet and padding); ``=`` alone is an empty response.  ValueError otherwise."""
    if text == "=":
        return b""
    try:
        return b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("not base64") from None


def _text(data: bytes) -> str | None:
    """Credentials are UTF-8 (RFC 4616); None when they are not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _login_name(data: bytes) -> str | None:
    """A login name no account can refuse to have: UTF-8, not empty, no control characters, bounded; else None.

    The same check the checkpassword hook makes before asking, so both paths refuse such
    names without counting them (no lockout key can be built from a NUL or a newline).
    """
    name = _text(data)
    if name is None:
        return None
    try:
        check_login(name)
    except ProtocolError:
        return None
    return name
