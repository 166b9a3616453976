"""The native Redis client's wire helpers: RESP encoding and the batch script's reply."""

from __future__ import annotations

import struct

import pytest

from congvu.directory.model import RateDecision
from congvu.policyd.redis_native import RespParser, _multi_answers, encode, encode_strs


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


def test_resp_parser_reads_a_split_batch_of_replies() -> None:
    """Replies split anywhere come out whole and in order, nested arrays and errors included."""
    data = b"+OK\r\n$5\r\n1,1,2\r\n*2\r\n:1\r\n*1\r\n$-1\r\n-NOSCRIPT No matching script\r\n"
    p = RespParser()
    out = []
    for i in range(len(data)):
        out += p.feed(data[i:i + 1])
    assert out[:3] == ["OK", b"1,1,2", [1, [None]]] and str(out[3]).startswith("NOSCRIPT")
    assert p.buf == b""


def test_batch_reply_gives_each_message_its_decisions() -> None:
    """Per message (``;``): the totals of the keys answered, then ``/retry`` (ms, -1: never) if refused."""
    got = _multi_answers(b"5,40;100/120000;1/-1;3,8/0", [2, 2, 1, 2])
    assert got == [[RateDecision(True, (5,), None), RateDecision(True, (40,), None)],
                   [RateDecision(False, (100,), 120.0)],
                   [RateDecision(False, (1,), float("inf"))],
                   [RateDecision(True, (3,), None), RateDecision(False, (8,), 0.0)]]


@pytest.mark.parametrize(("reply", "sizes"), [
    (b"5,40", [2, 1]),  # fewer answers than messages
    (b"5;40;1", [1, 1]),  # more answers than messages
    (b"5", [2]),  # a counted message must answer every key
    (b"5,6,7/100", [2]),  # a refused message answers at most every key
    (b"", [1]), (b"1,x", [2]), (b"1/-2", [1]), (b"1/", [1]),  # empty, garbage, bad retry
])
def test_batch_reply_that_does_not_fit_the_batch_is_refused(reply: bytes, sizes: list[int]) -> None:
    """A reply that does not match the messages sent is an error, never answers given to the wrong message."""
    with pytest.raises(ValueError):
        _multi_answers(reply, sizes)
