"""The RESP2 codec core: commands → bytes, bytes → frozen replies, bounded, fuzzed like the policy protocol."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from congvu.policyd.resp import ErrorReply, RespParser, Value, encode, encode_strs
from congvu.rules.errors import ProtocolError


def wire(v: Value) -> bytes:
    """A reply as Redis writes it (the test's own encoder, independent of the parser)."""
    if v is None:
        return b"$-1\r\n"
    if isinstance(v, ErrorReply):
        return b"-" + v.message.encode() + b"\r\n"
    if isinstance(v, str):
        return b"+" + v.encode() + b"\r\n"
    if isinstance(v, int):
        return b":%d\r\n" % v
    if isinstance(v, bytes):
        return b"$%d\r\n%b\r\n" % (len(v), v)
    return b"*%d\r\n" % len(v) + b"".join(wire(x) for x in v)


def feed_all(parser: RespParser, chunks: list[bytes]) -> list[Value]:
    out: list[Value] = []
    for c in chunks:
        out += parser.feed(c)
    return out


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` split at ``points`` (any positions, repeats and the ends allowed)."""
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


_LINE = st.text(st.characters(codec="utf-8", exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=20)
_SCALAR = st.one_of(st.integers(-(2**63), 2**63 - 1), _LINE, _LINE.map(ErrorReply), st.binary(max_size=40),
                    st.none())
_REPLY: st.SearchStrategy[Value] = st.recursive(
    _SCALAR, lambda inner: st.lists(inner, max_size=5).map(tuple), max_leaves=20)


def _is_value(v: object, depth: int = 0) -> bool:
    """Only the frozen reply types come out, arrays included."""
    if isinstance(v, tuple):
        return depth < 8 and all(_is_value(x, depth + 1) for x in v)
    return v is None or isinstance(v, int | str | bytes | ErrorReply)


# --------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("args", [["EVALSHA", "abc", "2", "k1", "k2"], ["SET", "key:nguyễn@x.vn", "thư"], [""]])
def test_text_encoding_equals_the_general_encoding(args: list[str]) -> None:
    """The one-string fast path gives the same bytes as per-argument encoding, non-ASCII included."""
    assert encode_strs(args) == encode(*args)


@pytest.mark.parametrize("args", [["EVALSHA", "abc", "1", "k1"], ["EVALSHA", "abc", "1", "nguyễn@x.vn"]])
def test_binary_last_argument_is_encoded_as_given(args: list[str]) -> None:
    """The batch plan (raw doubles, CR/LF bytes included) goes last, byte for byte, ASCII or not before it."""
    blob = struct.pack("<3d", 60, 13.0, 1_800_000_000_123) + b"\r\n\x00"
    assert encode_strs(args, blob) == encode(*args, blob)
    assert encode_strs(args, blob).endswith(b"$%d\r\n%b\r\n" % (len(blob), blob))


@given(st.lists(st.one_of(st.binary(max_size=30), _LINE, st.integers(-(2**63), 2**63 - 1)), max_size=8))
def test_a_command_parses_back_to_its_arguments(args: list[bytes | str | int]) -> None:
    """encode → parse: one array holding every argument as bytes, CR/LF and non-ASCII included."""
    want = tuple(a if isinstance(a, bytes) else str(a).encode() for a in args)
    assert RespParser().feed(encode(*args)) == [want]
    texts = [str(a) if isinstance(a, int) else a for a in args if not isinstance(a, bytes)]
    assert RespParser().feed(encode_strs(texts, b"\r\n")) == [(*(t.encode() for t in texts), b"\r\n")]


# --------------------------------------------------------------------------- replies


def test_resp_parser_reads_a_split_batch_of_replies() -> None:
    """Replies split anywhere come out whole and in order, nested arrays and errors included."""
    data = b"+OK\r\n$5\r\n1,1,2\r\n*2\r\n:1\r\n*1\r\n$-1\r\n-NOSCRIPT No matching script\r\n*-1\r\n$0\r\n\r\n"
    p = RespParser()
    out = feed_all(p, [data[i:i + 1] for i in range(len(data))])
    assert out == ["OK", b"1,1,2", (1, (None,)), ErrorReply("NOSCRIPT No matching script"), None, b""]
    assert p.buf == b""


def test_an_error_reply_is_a_frozen_value_with_its_code() -> None:
    """``-ERR …`` is data (the client decides what it means), immutable, its first word its code."""
    [err] = RespParser().feed(b"-WRONGPASS invalid username-password pair\r\n")
    assert isinstance(err, ErrorReply) and not isinstance(err, BaseException)
    assert err.code == "WRONGPASS" and str(err) == "WRONGPASS invalid username-password pair"
    with pytest.raises(AttributeError):
        err.message = "x"  # type: ignore[misc]


@settings(max_examples=300, deadline=None)
@given(st.lists(_REPLY, min_size=1, max_size=6), st.lists(st.integers(0, 10_000), max_size=12))
def test_fuzz_any_split_of_valid_replies_gives_the_same_replies(replies: list[Value], points: list[int]) -> None:
    """However TCP splits valid replies, the parser returns exactly them, in order, and keeps nothing."""
    data = b"".join(wire(r) for r in replies)
    p = RespParser()
    assert feed_all(p, cut(data, points)) == replies
    assert p.buf == b""


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_fuzz_arbitrary_bytes_raise_only_the_parsers_error(chunks: list[bytes]) -> None:
    """Any bytes, split anyhow, give frozen replies or ProtocolError, never another exception."""
    p = RespParser(max_bulk=64, max_array=8, max_depth=3, max_pending=256)
    for c in chunks:
        try:
            out = p.feed(c)
        except ProtocolError:
            return
        assert all(_is_value(v) for v in out)


@settings(max_examples=400, deadline=None)
@given(st.lists(_REPLY, min_size=1, max_size=4), st.integers(0, 10_000), st.binary(min_size=1, max_size=3),
       st.integers(0, 3))
def test_fuzz_near_valid_replies_raise_only_the_parsers_error(replies: list[Value], at: int, junk: bytes,
                                                               how: int) -> None:
    """Valid replies with bytes replaced, inserted or dropped: replies or ProtocolError, never another exception."""
    data = bytearray(b"".join(wire(r) for r in replies))
    i = at % len(data)
    if how == 0:
        data[i:i + len(junk)] = junk
    elif how == 1:
        data[i:i] = junk
    elif how == 2:
        del data[i:i + len(junk)]
    else:
        data = data[:i]
    p = RespParser(max_depth=4)
    try:
        out = feed_all(p, cut(bytes(data), [at, at // 2]))
    except ProtocolError:
        return
    assert all(_is_value(v) for v in out)


@pytest.mark.parametrize("data", [
    b"?what\r\n", b"\r\n", b"hello\r\n",  # not a reply type
    b":12a\r\n", b": 12\r\n", b":1_000\r\n", b":+5\r\n", b":\r\n", b":" + b"9" * 5000 + b"\r\n",  # not a number
    b"$-2\r\n", b"*-7\r\n", b"$x\r\n",  # lengths
    b"$3\r\nabcde\r\n",  # the bulk string is longer than announced
    b"+a\rb\r\n", b"-ERR a\nb\r\n",  # CR or LF inside a simple reply
])
def test_malformed_replies_raise_protocol_error(data: bytes) -> None:
    """What RESP2 does not allow raises ProtocolError (not ValueError from int(), not a silent None)."""
    with pytest.raises(ProtocolError):
        RespParser().feed(data)


def test_garbage_fails_at_its_first_byte() -> None:
    """An unknown type byte is refused at once, without waiting for a line end that may never come."""
    with pytest.raises(ProtocolError, match="unexpected reply type"):
        RespParser().feed(b"H")


def test_bounds_refuse_oversized_replies_before_their_body_arrives() -> None:
    """A bulk string or array longer than allowed, or nested too deep, fails on its header alone."""
    with pytest.raises(ProtocolError, match="bulk string of 101 bytes"):
        RespParser(max_bulk=100).feed(b"$101\r\n")
    with pytest.raises(ProtocolError, match="array of 11 elements"):
        RespParser(max_array=10).feed(b"*11\r\n")
    with pytest.raises(ProtocolError, match="nested deeper than 3"):
        RespParser(max_depth=3).feed(b"*1\r\n" * 4)
    with pytest.raises(ProtocolError, match="larger than 64 bytes"):
        RespParser(max_pending=64).feed(b"+" + b"x" * 100)  # a line that never ends
    with pytest.raises(ProtocolError, match="larger than 64 bytes"):
        RespParser(max_pending=64).feed(b"*10\r\n" + b"$5\r\nabcde\r\n" * 6)  # small parts, too big a whole


def test_bounds_are_inclusive() -> None:
    """Exactly max_bulk bytes, max_array elements and max_depth levels are accepted."""
    assert RespParser(max_bulk=100).feed(b"$100\r\n" + b"x" * 100 + b"\r\n") == [b"x" * 100]
    assert RespParser(max_array=10).feed(b"*10\r\n" + b":1\r\n" * 10) == [(1,) * 10]
    assert RespParser(max_depth=3).feed(b"*1\r\n" * 3 + b":7\r\n") == [(((7,),),)]


def test_the_default_bounds_hold_a_deep_recursion_attempt() -> None:
    """Arrays nested thousands deep end in ProtocolError, not RecursionError."""
    with pytest.raises(ProtocolError):
        RespParser().feed(b"*1\r\n" * 5000 + b":1\r\n")


def test_a_big_bulk_string_within_bounds_arrives_in_pieces() -> None:
    """A 1 MiB bulk string fed in 4 KiB reads comes out once, whole."""
    body = bytes(range(256)) * 4096
    data = b"$%d\r\n%b\r\n" % (len(body), body)
    p = RespParser()
    assert feed_all(p, [data[i:i + 4096] for i in range(0, len(data), 4096)]) == [body]


def test_a_dead_parser_stays_dead() -> None:
    """After a broken reply nothing can be matched to its command: feeding more raises again."""
    p = RespParser()
    with pytest.raises(ProtocolError):
        p.feed(b":x\r\n")
    with pytest.raises(ProtocolError):
        p.feed(b"+OK\r\n")
