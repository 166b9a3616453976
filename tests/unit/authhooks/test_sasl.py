"""The auth-client protocol core Postfix speaks (``smtpd_sasl_type = dovecot``): bytes in, values out; no I/O."""

from __future__ import annotations

from base64 import b64encode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from congvu.authhooks import sasl

HELLO = b"VERSION\t1\t0\nCPID\t4242\n"  # what Postfix 3.7 sends first


def b64(data: bytes) -> str:
    return b64encode(data).decode()


def auth(rid: int, mech: str, resp: bytes | None = None, *, extra: str = "") -> bytes:
    """An AUTH line exactly as Postfix 3.7 writes it (xsasl_dovecot_server_first)."""
    line = f"AUTH\t{rid}\t{mech}\tservice=smtp\tnologin\tlip=127.0.0.1\trip=192.0.2.5{extra}"
    if resp is not None:
        line += f"\tresp={b64(resp)}"
    return line.encode() + b"\n"


def ready() -> sasl.SaslServer:
    server = sasl.SaslServer()
    assert server.feed(HELLO) == []
    return server


def test_handshake_is_what_postfix_reads() -> None:
    """VERSION 1, a MECH line per plaintext mechanism, SPID, CUID, COOKIE (hex), then DONE."""
    lines = sasl.handshake(1234, 7, b"\x01" * 16).decode().split("\n")
    assert lines == ["VERSION\t1\t2", "MECH\tPLAIN\tplaintext", "MECH\tLOGIN\tplaintext", "SPID\t1234", "CUID\t7",
                     "COOKIE\t" + "01" * 16, "DONE", ""]


def test_plain_with_initial_response_gives_credentials() -> None:
    """AUTH PLAIN resp=… → Verify with name, password, service and addresses; the password stays out of repr."""
    events = ready().feed(auth(1, "PLAIN", "\0nvminh\0Mật-khẩu-1".encode(), extra="\tsecured\tsession=x"))
    assert events == [sasl.Verify(1, "PLAIN", "nvminh", "Mật-khẩu-1", "smtp", "192.0.2.5", "127.0.0.1")]
    assert "Mật-khẩu-1" not in repr(events[0])


def test_plain_without_initial_response_asks_for_it() -> None:
    """AUTH PLAIN alone → an empty CONT; the client's CONT then completes the request."""
    server = ready()
    assert server.feed(auth(3, "plain")) == [sasl.Challenge(3, b"")]
    assert sasl.Challenge(3, b"").encode() == b"CONT\t3\t\n"
    creds = b64(b"nvminh@cantho.gov.vn\0nvminh@cantho.gov.vn\0pw")
    events = server.feed(f"CONT\t3\t{creds}\n".encode())
    assert events == [sasl.Verify(3, "PLAIN", "nvminh@cantho.gov.vn", "pw", "smtp", "192.0.2.5", "127.0.0.1")]


def test_login_two_step_dance() -> None:
    """AUTH LOGIN → CONT Username: → CONT Password: → Verify; an initial response is the user name."""
    server = ready()
    (first,) = server.feed(auth(1, "LOGIN"))
    assert first.encode() == b"CONT\t1\tVXNlcm5hbWU6\n"  # "Username:", what Postfix relays as 334
    assert server.feed(f"CONT\t1\t{b64(b'nvminh')}\n".encode()) == [sasl.Challenge(1, b"Password:")]
    assert server.feed(f"CONT\t1\t{b64('Bí-mật'.encode())}\n".encode()) == [
        sasl.Verify(1, "LOGIN", "nvminh", "Bí-mật", "smtp", "192.0.2.5", "127.0.0.1")]
    assert server.feed(auth(2, "login", b"ltthu")) == [sasl.Challenge(2, b"Password:")]


def test_proxy_login_is_refused_unless_the_identities_match() -> None:
    """A PLAIN authzid other than the authcid (master or proxy login) is refused; the same name is fine."""
    events = ready().feed(auth(1, "PLAIN", b"admin\0nvminh\0pw"))
    assert events == [sasl.Failure(1, "Logging in as another user is not allowed", "authz_fail")]
    assert isinstance(ready().feed(auth(1, "PLAIN", b"nvminh\0nvminh\0pw"))[0], sasl.Verify)


@pytest.mark.parametrize("resp", [b"nvminh\0pw", b"\0nvminh\0pw\0more", b"\0\0pw", b"\0nv\nminh\0pw",
                                  b"\0\xff\xfe\0pw", b"\0nvminh\0\xff"])
def test_malformed_plain_credentials_fail(resp: bytes) -> None:
    """Missing or extra NULs, an empty or control-character name, or non-UTF-8 text: FAIL, not a dead connection."""
    (event,) = ready().feed(auth(1, "PLAIN", resp))
    assert isinstance(event, sasl.Failure) and event.id == 1


@pytest.mark.parametrize("resp", ["!!!", "bnZtaW5o=x", "bnZ", "đ"])
def test_base64_garbage_fails_with_invalid_base64(resp: str) -> None:
    """Base64 that does not decode strictly fails the request (code invalid_base64), initial or continued."""
    line = f"AUTH\t1\tPLAIN\tservice=smtp\tresp={resp}\n".encode()
    assert ready().feed(line) == [sasl.Failure(1, "Invalid base64 data in initial response", "invalid_base64")]
    server = ready()
    server.feed(auth(2, "LOGIN"))
    assert server.feed(f"CONT\t2\t{resp}\n".encode()) == [
        sasl.Failure(2, "Invalid base64 data in continued response", "invalid_base64")]


def test_unknown_mechanism_fails() -> None:
    """A mechanism other than PLAIN and LOGIN gets FAIL (no hashes to hand out for CRAM-MD5 and the like)."""
    assert ready().feed(auth(5, "CRAM-MD5")) == [sasl.Failure(5, "Unsupported authentication mechanism")]


def test_empty_resp_means_none_before_protocol_1_2() -> None:
    """Postfix (1.0) with an empty resp= gets the PLAIN prompt; a 1.2 client's empty resp is an empty response."""
    assert ready().feed(b"AUTH\t1\tPLAIN\tservice=smtp\tresp=\n") == [sasl.Challenge(1, b"")]
    new = sasl.SaslServer()
    new.feed(b"VERSION\t1\t2\nCPID\t1\n")
    assert new.feed(b"AUTH\t1\tPLAIN\tservice=smtp\tresp=\n") == [sasl.Failure(1, "Invalid PLAIN response")]


def test_cont_and_cancel_bookkeeping() -> None:
    """CONT for an unknown id fails as timed out; CANCEL forgets a pending request."""
    server = ready()
    assert server.feed(b"CONT\t9\tYQ==\n") == [sasl.Failure(9, "Authentication request timed out")]
    server.feed(auth(1, "LOGIN"))
    assert server.feed(b"CANCEL\t1\n") == []
    assert server.feed(b"CONT\t1\tYQ==\n") == [sasl.Failure(1, "Authentication request timed out")]


@pytest.mark.parametrize("data", [
    auth(1, "PLAIN", b"\0a\0b"),                             # AUTH before the handshake
    b"VERSION\t2\t0\n",                                     # another major version
    b"VERSION\t1\n",                                        # malformed version
    HELLO + b"AUTH\t1\tPLAIN\tresp=YQ==\n",                 # no service
    HELLO + b"AUTH\t1\tPLAIN\tservice=smtp\tresp=YQ==\tsecured\n",  # parameters after resp
    HELLO + b"AUTH\t0\tPLAIN\tservice=smtp\n",              # id 0
    HELLO + b"AUTH\t99999999999\tPLAIN\tservice=smtp\n",    # id beyond 32 bits
    HELLO + b"AUTH\t1\tPLAIN\tservice=smtp\nAUTH\t1\tPLAIN\tservice=smtp\n",  # a pending id reused
    HELLO + b"AUTH\t1\n",                                   # no mechanism
    HELLO + b"CONT\t1\n",                                   # CONT without data
    HELLO + b"HELO\n",                                      # unknown command
    HELLO + b"\n",                                          # empty line
    HELLO + b"AUTH\t1\tPLAIN\tservice=sm\x01xtp\n",         # bad escape
    HELLO + b"AUTH\t1\tPLAIN\tservice=\xff\n",              # not UTF-8
])
def test_protocol_violations_raise_and_stay_dead(data: bytes) -> None:
    """What Postfix never sends raises SaslProtocolError (the connection is closed), and the parser stays failed."""
    server = sasl.SaslServer()
    with pytest.raises(sasl.SaslProtocolError):
        server.feed(data)
    with pytest.raises(sasl.SaslProtocolError):
        server.feed(auth(2, "PLAIN", b"\0a\0b"))


def test_lines_and_pending_requests_are_bounded() -> None:
    """A line past MAX_LINE (even without its LF) and more than MAX_PENDING open requests raise."""
    with pytest.raises(sasl.SaslProtocolError):
        ready().feed(b"A" * (sasl.MAX_LINE + 1))
    server = ready()
    with pytest.raises(sasl.SaslProtocolError):
        server.feed(b"".join(auth(i, "LOGIN") for i in range(1, sasl.MAX_PENDING + 2)))
    big = ready().feed(auth(1, "PLAIN", b"\0nvminh\0" + b"x" * 12000))
    assert isinstance(big[0], sasl.Verify), "a long but bounded line is fine"


def test_answers_are_single_lines_postfix_prints_as_is() -> None:
    """FAIL's reason loses TAB, CR, LF and control characters and is cut to MAX_REASON bytes; OK escapes user."""
    line = sasl.Failure(1, "Mật khẩu\thết hạn\r\nđổi tại https://x/\x01", "pass_expired").encode()
    assert line == "FAIL\t1\tcode=pass_expired\treason=Mật khẩu hết hạn đổi tại https://x/\n".encode()
    long = sasl.Failure(2, "ế" * 500).encode()
    assert len(long) <= len(b"FAIL\t2\treason=\n") + sasl.MAX_REASON and long.endswith(b"...\n")
    long.decode("utf-8")
    assert sasl.Failure(3).encode() == b"FAIL\t3\n"
    refused = sasl.Failure(5, "x", "user_disabled", "a@b.vn")
    assert refused.encode() == b"FAIL\t5\tuser=a@b.vn\tcode=user_disabled\treason=x\n"
    assert sasl.Success(4, "a\tb@cantho.gov.vn").encode() == b"OK\t4\tuser=a\x01tb@cantho.gov.vn\n"


@given(st.text())
def test_escaping_round_trips(value: str) -> None:
    """unescape(escape(v)) == v, and an escaped value holds no TAB, CR, LF or NUL."""
    escaped = sasl.escape(value)
    assert sasl.unescape(escaped) == value
    assert not any(ch in escaped for ch in "\t\r\n\0")


@given(st.binary(max_size=3000))
def test_arbitrary_bytes_only_give_values_or_protocol_errors(data: bytes) -> None:
    """Whatever follows the handshake, feed() returns events or raises SaslProtocolError, nothing else."""
    server = ready()
    try:
        events = server.feed(data)
    except sasl.SaslProtocolError:
        return
    assert all(isinstance(e, sasl.Verify | sasl.Challenge | sasl.Failure) for e in events)


_line = st.one_of(
    st.builds(lambda rid, mech, resp: auth(rid, mech, resp), st.integers(1, 40),
              st.sampled_from(["PLAIN", "LOGIN", "login", "XOAUTH2"]), st.none() | st.binary(max_size=40)),
    st.builds(lambda rid, data: f"CONT\t{rid}\t{b64(data)}\n".encode(), st.integers(1, 40), st.binary(max_size=40)),
    st.builds(lambda rid: f"CANCEL\t{rid}\n".encode(), st.integers(1, 40)),
    st.builds(lambda rid, junk: f"CONT\t{rid}\t{junk}\n".encode(), st.integers(1, 40), st.text("!@#ab=", max_size=8)),
)


def _run(chunks: list[bytes]) -> list[sasl.Event] | str:
    server = sasl.SaslServer()
    out: list[sasl.Event] = []
    try:
        for chunk in chunks:
            out += server.feed(chunk)
    except sasl.SaslProtocolError as e:
        return f"error: {e}"
    return out


@given(st.lists(_line, max_size=12), st.lists(st.integers(0, 2000), max_size=10))
def test_arbitrary_splits_give_the_same_events(lines: list[bytes], cuts: list[int]) -> None:
    """A conversation fed whole or cut at arbitrary points yields the same events (or the same error)."""
    stream = HELLO + b"".join(lines)
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert _run(chunks) == _run([stream])
