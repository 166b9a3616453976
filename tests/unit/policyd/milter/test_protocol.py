"""The milter protocol core: packets → commands, negotiation, replies → bytes (milter v6, as Postfix speaks it)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from congvu.policyd.milter import protocol as mp


def pk(cmd: bytes, data: bytes = b"") -> bytes:
    return struct.pack("!I", len(data) + 1) + cmd + data


#: One message as Postfix 3.7 sends it after negotiation: macros, MAIL, headers, EOH, body, macros, EOB.
SESSION = (pk(b"O", struct.pack("!III", 6, 0x1FF, 0x1FFFFF))
           + pk(b"D", b"M{auth_authen}\0nvminh@cantho.gov.vn\0i\0\0")
           + pk(b"M", b"<nvminh@cantho.gov.vn>\0SIZE=120\0")
           + pk(b"L", b"Subject\0B\xc3\xa1o c\xc3\xa1o\0")
           + pk(b"N")
           + pk(b"B", b"Kinh gui\r\n")
           + pk(b"D", b"Ei\0ABC123\0")
           + pk(b"E"))


def test_a_postfix_session_decodes_to_frozen_commands() -> None:
    """Every packet of a session becomes one typed, immutable command, in order."""
    cmds = mp.MilterParser().feed(SESSION)
    assert cmds == [
        mp.OptNeg(6, 0x1FF, 0x1FFFFF),
        mp.Macros("M", b"{auth_authen}\0nvminh@cantho.gov.vn\0i\0\0"),
        mp.Mail("<nvminh@cantho.gov.vn>", ("SIZE=120",)),
        mp.Header(b"Subject", "Báo cáo".encode()),
        mp.Event(b"N"), mp.Body(b"Kinh gui\r\n"), mp.Macros("E", b"i\0ABC123\0"), mp.EndOfBody(b"")]
    assert cmds[1].items() == (("{auth_authen}", "nvminh@cantho.gov.vn"), ("i", ""))
    assert cmds[1].get(b"i") == "" and cmds[1].get(b"j") is None
    for bad in (b"Mname\0", b"Mno terminator"):  # macros are split when read, and refused then
        [m] = mp.MilterParser().feed(pk(b"D", bad))
        with pytest.raises(mp.MilterProtocolError):
            m.items()
    with pytest.raises(AttributeError):
        cmds[2].sender = "x"  # type: ignore[misc]


def test_byte_by_byte_equals_one_chunk() -> None:
    """A socket may split packets anywhere; the commands do not depend on where."""
    p = mp.MilterParser()
    got: list[mp.Command] = []
    for i in range(len(SESSION)):
        got += p.feed(SESSION[i:i + 1])
    assert got == mp.MilterParser().feed(SESSION) and not p.pending


@pytest.mark.parametrize("bad", [
    struct.pack("!I", 0),  # no command byte
    pk(b"Z", b"x"),  # unknown command
    pk(b"L", b"Subject\0no terminator"),
    pk(b"L", b"\0value\0"),  # empty header name
    pk(b"O", b"\0\0\0\6"),  # negotiation too short
    struct.pack("!I", 2 * 1024 * 1024) + b"B",  # over max_packet
])
def test_malformed_or_oversized_packets_raise_and_the_parser_stays_dead(bad: bytes) -> None:
    """Anything the protocol does not allow raises MilterProtocolError; the connection cannot be resumed."""
    p = mp.MilterParser(max_packet=1024 * 1024)
    with pytest.raises(mp.MilterProtocolError):
        p.feed(bad)
    with pytest.raises(mp.MilterProtocolError):
        p.feed(pk(b"N"))


def test_negotiation_asks_for_one_reply_per_message() -> None:
    """We skip CONNECT/HELO/RCPT/DATA/unknown and ask no reply to MAIL, headers, EOH and body: only end of body."""
    answer, agreed = mp.negotiate(mp.OptNeg(6, 0x1FF, 0x1FFFFF))
    assert answer == pk(b"O", struct.pack("!III", 6, mp.SMFIF_ADDHDRS, mp.WANTED)) and agreed == mp.WANTED
    for cmd in (mp.Mail("<a@b>", ()), mp.Header(b"A", b"b"), mp.Event(b"N"), mp.Body(b"x"),
                mp.Macros("E", b""), mp.Event(b"A"), mp.Event(b"Q")):
        assert not mp.needs_reply(cmd, agreed), cmd
    assert mp.needs_reply(mp.EndOfBody(b""), agreed)


def test_flags_the_mta_does_not_offer_are_not_asked_for() -> None:
    """An MTA without no-reply support (an older Sendmail) is asked only what it offers, and gets its replies."""
    _, agreed = mp.negotiate(mp.OptNeg(6, 0x1FF, 0x3F))
    assert agreed == mp.WANTED & 0x3F
    assert mp.needs_reply(mp.Header(b"A", b"b"), agreed) and mp.needs_reply(mp.Event(b"N"), agreed)


@pytest.mark.parametrize("offer", [mp.OptNeg(2, 0x1FF, 0x1FFFFF), mp.OptNeg(6, 0x0, 0x1FFFFF)])
def test_an_mta_that_cannot_speak_v6_or_add_headers_is_refused(offer: mp.OptNeg) -> None:
    """Version 6 and SMFIF_ADDHDRS are needed (milter_protocol = 6 in the shipped snippet)."""
    with pytest.raises(mp.MilterProtocolError):
        mp.negotiate(offer)


def test_replies_are_packets_with_one_clean_line() -> None:
    """A reply code is one NUL-terminated line without "%"; an added header is name and value."""
    assert mp.reply_code("550 5.7.1 100% sai\0") == pk(b"y", b"550 5.7.1 100 sai\0")
    assert mp.add_header("X-Congvu-Check", "TH13-6.2 Việt") == pk(b"h", "X-Congvu-Check\0TH13-6.2 Việt\0".encode())
    assert pk(b"a") == mp.ACCEPT and pk(b"t") == mp.TEMPFAIL and pk(b"c") == mp.CONTINUE


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=1, max_value=50))
def test_arbitrary_bytes_give_commands_or_a_protocol_error(data: bytes, step: int) -> None:
    """Fuzz: whatever arrives, in whatever pieces, the parser returns commands or raises MilterProtocolError only."""
    p = mp.MilterParser(max_packet=300)
    try:
        for i in range(0, len(data), step):
            for cmd in p.feed(data[i:i + step]):
                assert isinstance(cmd, mp.OptNeg | mp.Macros | mp.Mail | mp.Header | mp.Body | mp.EndOfBody | mp.Event)
    except mp.MilterProtocolError:
        pass


_COMMAND = st.one_of(
    st.binary(max_size=200).map(lambda b: pk(b"B", b)),
    st.tuples(st.binary(min_size=1, max_size=20).filter(lambda b: b"\0" not in b),
              st.binary(max_size=60).filter(lambda b: b"\0" not in b))
    .map(lambda t: pk(b"L", t[0] + b"\0" + t[1] + b"\0")),
    st.sampled_from([pk(b"N"), pk(b"E"), pk(b"A"), pk(b"D", b"Ei\0Q1\0")]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_COMMAND, max_size=20), st.lists(st.integers(min_value=0, max_value=5000), max_size=10))
def test_well_formed_packets_decode_the_same_however_split(packets: list[bytes], cuts: list[int]) -> None:
    """Fuzz: valid packets split at random points decode to the same commands as in one piece."""
    stream = b"".join(packets)
    whole = mp.MilterParser().feed(stream)
    assert len(whole) == len(packets)
    p, got, last = mp.MilterParser(), [], 0
    for cut in sorted({c % (len(stream) + 1) for c in cuts}):
        got += p.feed(stream[last:cut])
        last = cut
    got += p.feed(stream[last:])
    assert got == whole
