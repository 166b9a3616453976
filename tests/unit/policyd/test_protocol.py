"""The policy protocol core: bytes → PolicyRequest, actions → bytes (SMTPD_POLICY_README)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from congvu.policyd.protocol import PolicyParser, PolicyProtocolError, PolicyRequest, clean_text, format_reply

#: Every attribute Postfix 3.12 sends, with realistic values.
FULL = (
    b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\nhelo_name=pc1.sonv.cantho.gov.vn\n"
    b"queue_id=8045F2AB23\nsender=nvminh@cantho.gov.vn\nrecipient=bar@example.com\nrecipient_count=0\n"
    b"client_address=2001:db8::5\nclient_name=pc1.example\nreverse_client_name=pc1.example\ninstance=123.456.7\n"
    b"sasl_method=plain\nsasl_username=nvminh\nsasl_sender=\nsize=12345\nccert_subject=solaris9\n"
    b"ccert_issuer=Wietse+20Venema\nccert_fingerprint=C2:9D\nccert_pubkey_fingerprint=68:B3\n"
    b"encryption_protocol=TLSv1.3\nencryption_cipher=TLS_AES_256_GCM_SHA384\nencryption_keysize=256\n"
    b"etrn_domain=\nstress=\nclient_port=1234\npolicy_context=submission\nserver_address=10.3.2.1\n"
    b"server_port=587\ncompatibility_level=3.6\nmail_version=3.12.0\ntls_sni=mail.cantho.gov.vn\n"
    b"future_attribute=ignored\n\n"
)


def test_full_request_parses_every_attribute() -> None:
    """All attributes up to Postfix 3.12 land in typed fields; unknown ones are ignored."""
    [r] = PolicyParser().feed(FULL)
    assert r.protocol_state == "RCPT" and r.sender == "nvminh@cantho.gov.vn"
    assert (r.size, r.recipient_count, r.encryption_keysize, r.client_port, r.server_port) == (12345, 0, 256, 1234, 587)
    assert r.client_address == "2001:db8::5" and r.instance == "123.456.7"
    assert r.tls_sni == "mail.cantho.gov.vn" and r.mail_version == "3.12.0" and r.policy_context == "submission"
    assert r.authenticated and r.sasl_username == "nvminh"
    assert not hasattr(r, "future_attribute")


def test_request_is_immutable() -> None:
    """A parsed request cannot be changed by a check."""
    [r] = PolicyParser().feed(FULL)
    with pytest.raises(AttributeError):
        r.sender = "x@y"  # type: ignore[misc]


def test_byte_by_byte_equals_one_chunk() -> None:
    """TCP may split a request anywhere; the result does not depend on where."""
    p = PolicyParser()
    got: list[PolicyRequest] = []
    for i in range(len(FULL)):
        got += p.feed(FULL[i:i + 1])
    assert got == PolicyParser().feed(FULL)
    assert not p.pending


def test_several_requests_in_one_chunk_come_out_in_order() -> None:
    """Pipelined requests are all returned, in order, and a partial tail is kept."""
    a = b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=a@x.vn\n\n"
    b = b"request=smtpd_access_policy\nprotocol_state=DATA\nsender=b@x.vn\n\n"
    p = PolicyParser()
    out = p.feed(a + b + b"request=smtpd")
    assert [r.sender for r in out] == ["a@x.vn", "b@x.vn"] and p.pending
    assert [r.protocol_state for r in p.feed(b"_access_policy\nprotocol_state=end-of-message\n\n")] == [
        "END-OF-MESSAGE"]


def test_missing_values_and_duplicates() -> None:
    """Absent or empty numbers are 0; a repeated attribute keeps the last value (README allows either)."""
    [r] = PolicyParser().feed(b"request=smtpd_access_policy\nsize=\nsender=a@x\nsender=b@x\n\n")
    assert r.size == 0 and r.recipient_count == 0 and r.sender == "b@x"


def test_crlf_is_tolerated() -> None:
    """Operators type requests with telnet; CRLF line ends parse like LF."""
    [r] = PolicyParser().feed(b"request=smtpd_access_policy\r\nprotocol_state=RCPT\r\n\r\n")
    assert r.protocol_state == "RCPT"


@pytest.mark.parametrize(("data", "why"), [
    (b"protocol_state=RCPT\n\n", "request="),
    (b"request=other_policy\n\n", "only smtpd_access_policy"),
    (b"\n", "empty request"),
    (b"request=smtpd_access_policy\nno equals sign\n\n", "name=value"),
    (b"request=smtpd_access_policy\n=value\n\n", "empty name"),
    (b"request=smtpd_access_policy\nsender=a\x00b\n\n", "NUL"),
    (b"request=smtpd_access_policy\nsender=\xff\xfe\n\n", "UTF-8"),
    (b"request=smtpd_access_policy\nsize=12a\n\n", "not a number"),
    (b"request=smtpd_access_policy\nsize= 12\n\n", "not a number"),
    ("request=smtpd_access_policy\nsize=١٢\n\n".encode(), "not a number"),
    (b"request=smtpd_access_policy\nsize=" + b"9" * 30 + b"\n\n", "not a number"),
])
def test_malformed_requests_raise_the_parsers_error(data: bytes, why: str) -> None:
    """What the README calls trouble raises PolicyProtocolError, naming the reason."""
    with pytest.raises(PolicyProtocolError, match=why):
        PolicyParser().feed(data)


def test_bounds_are_enforced_before_the_request_ends() -> None:
    """A long line, too many attributes or too many bytes fail as soon as they are seen."""
    with pytest.raises(PolicyProtocolError, match="line longer"):
        PolicyParser(max_line=300).feed(b"request=smtpd_access_policy\nsender=" + b"a" * 400)
    with pytest.raises(PolicyProtocolError, match="more than 10 attributes"):
        PolicyParser(max_attributes=10).feed(b"a=b\n" * 11)
    with pytest.raises(PolicyProtocolError, match="larger than 2048"):
        PolicyParser(max_request=2048, max_line=4096).feed(b"a=" + b"b" * 1000 + b"\n" + b"c=" + b"d" * 1100)
    with pytest.raises(PolicyProtocolError, match="more than 10 attributes"):
        PolicyParser(max_attributes=10).feed(b"request=smtpd_access_policy\n" + b"a=b\n" * 10 + b"\n")


def test_limits_are_inclusive() -> None:
    """Exactly max_attributes attributes and a line of exactly max_line bytes are accepted."""
    body = b"request=smtpd_access_policy\n" + b"".join(b"x%d=1\n" % i for i in range(9))
    assert len(PolicyParser(max_attributes=10).feed(body + b"\n")) == 1
    line = b"sender=" + b"a" * (300 - 7)
    assert len(PolicyParser(max_line=300).feed(b"request=smtpd_access_policy\n" + line + b"\n\n")) == 1


def test_a_dead_parser_stays_dead() -> None:
    """After an error the connection is closed; feeding more raises again instead of resyncing."""
    p = PolicyParser()
    with pytest.raises(PolicyProtocolError):
        p.feed(b"garbage\n\n")
    with pytest.raises(PolicyProtocolError):
        p.feed(FULL)


def test_to_bytes_round_trips() -> None:
    """A request written back to the wire parses to the same request."""
    [r] = PolicyParser().feed(FULL)
    assert PolicyParser().feed(r.to_bytes()) == [r]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_fuzz_arbitrary_bytes_raise_only_the_parsers_error(chunks: list[bytes]) -> None:
    """Any bytes, split anyhow, give requests or PolicyProtocolError, never another exception."""
    p = PolicyParser(max_request=1024, max_line=256, max_attributes=16)
    for c in chunks:
        try:
            out = p.feed(c)
        except PolicyProtocolError:
            return
        assert all(isinstance(r, PolicyRequest) for r in out)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["request", "size", "sender", "recipient_count", "protocol_state", "x"]),
                          st.text(max_size=30)), max_size=12), st.integers(1, 50))
def test_fuzz_structured_requests(attrs: list[tuple[str, str]], cut: int) -> None:
    """Near-valid requests (random values, known names) also give only requests or the parser's error."""
    data = "".join(f"{k}={v}\n" for k, v in attrs).encode("utf-8", "surrogatepass") + b"\n"
    p = PolicyParser()
    try:
        p.feed(data[:cut])
        p.feed(data[cut:])
    except PolicyProtocolError:
        pass


@given(st.text())
def test_replies_are_one_line_whatever_the_text(text: str) -> None:
    """No CR, LF, NUL or Unicode line break from a text ends up in the reply; it is valid UTF-8."""
    reply = format_reply("REJECT " + text)
    assert reply.startswith(b"action=") and reply.endswith(b"\n\n")
    body = reply[:-2]
    assert b"\n" not in body and b"\r" not in body and b"\x00" not in body
    decoded = body.decode("utf-8")
    assert "\u2028" not in decoded and "\u2029" not in decoded and "\x85" not in decoded


def test_clean_text_keeps_vietnamese() -> None:
    """Diacritics survive; control characters become spaces and runs of space collapse."""
    assert clean_text("Thư quá lớn\r\naction=OK") == "Thư quá lớn action=OK"
    assert format_reply("") == b"action=DUNNO\n\n"


def _line_by_line(lines: list[str]) -> PolicyRequest | None:
    """The README's reading, one line at a time: None where the parser must refuse."""
    attrs: dict[str, str] = {}
    for line in lines:
        if "=" not in line:
            return None
        name, value = line.split("=", 1)
        attrs[name] = value
    if "" in attrs:
        return None
    try:
        return PolicyRequest.from_attributes(attrs)
    except PolicyProtocolError:
        return None


_LINE_TEXT = st.text(st.characters(blacklist_characters="\n\r\x00", blacklist_categories=["Cs"]), max_size=12)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.sampled_from([*PolicyRequest._fields, "future_attribute", ""]), _LINE_TEXT).map("=".join),
    _LINE_TEXT.filter(bool)), max_size=10))
def test_fast_path_reads_like_the_readme(lines: list[str]) -> None:
    """Whatever the "=" count per line (0, 1, several), the parser's answer is the line-by-line one."""
    lines = ["request=smtpd_access_policy", *lines]
    want = _line_by_line(lines)
    try:
        got: PolicyRequest | None = PolicyParser().feed(("\n".join(lines) + "\n\n").encode())[0]
    except PolicyProtocolError:
        got = None
    assert got == want
