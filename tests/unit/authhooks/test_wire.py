"""The framed protocol core: bytes ↔ values, fd 3 parsing; no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from congvu.authhooks import wire
from congvu.rules.errors import ProtocolError

text = st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=100)


@given(user=text, password=text, service=text)
def test_request_round_trips_through_a_frame(user: str, password: str, service: str) -> None:
    """Any NUL-free request survives encode → FrameDecoder → decode unchanged."""
    req = wire.AuthRequest("auth", user, password, service, "192.0.2.1", "127.0.0.1")
    frames = wire.FrameDecoder().feed(req.encode())
    assert frames and wire.AuthRequest.decode(frames[0]) == req


def test_frames_split_at_any_byte_are_reassembled() -> None:
    """Two frames fed one byte at a time come out whole and in order."""
    data = wire.AuthReply(wire.OK, (("USER", "a@b.vn"),)).encode() + wire.AuthReply(wire.FAIL).encode()
    dec, out = wire.FrameDecoder(), []
    for i in range(len(data)):
        out += dec.feed(data[i:i + 1])
    assert [wire.AuthReply.decode(f).status for f in out] == ["ok", "fail"] and dec.pending == 0


def test_oversized_frame_is_refused() -> None:
    """A length prefix above MAX_FRAME raises ProtocolError instead of buffering."""
    with pytest.raises(ProtocolError):
        wire.FrameDecoder().feed((wire.MAX_FRAME + 1).to_bytes(4, "big"))


def test_repr_hides_the_password() -> None:
    """The password never appears in a request's repr."""
    assert "hunter2" not in repr(wire.AuthRequest("auth", "u", "hunter2"))


def test_parse_fd3_accepts_dovecots_format() -> None:
    """user NUL password NUL NUL (empty timestamp) parses; extra fields are ignored."""
    assert wire.parse_fd3(b"nvminh\0M\xe1\xba\xadt-kh\xe1\xba\xa9u\0\0") == ("nvminh", "Mật-khẩu")


@pytest.mark.parametrize("data", [b"", b"u\0p", b"up", b"u" * 600 + b"\0p\0", b"\xff\0p\0", b"a\x85b\0p\0".replace(
    b"\x85", "\x85".encode()), b"\0p\0"])
def test_parse_fd3_refuses_malformed_input(data: bytes) -> None:
    """Empty, truncated, NUL-less, oversized, non-UTF-8, control-character and empty names are refused."""
    with pytest.raises(ProtocolError):
        wire.parse_fd3(data)


def test_reply_refuses_exports_with_newlines_or_bad_names() -> None:
    """A reply exporting a newline or an invalid variable name does not decode."""
    for field in ("reason=a\nb", "1BAD=x", "=x"):
        with pytest.raises(ProtocolError):
            wire.AuthReply.decode(wire.encode_fields([("v", "1"), ("status", "ok"), ("set", field)]))
