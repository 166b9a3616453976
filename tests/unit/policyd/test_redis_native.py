"""The native Redis client's wire helpers: RESP encoding and the batch script's reply."""

from __future__ import annotations

import pytest

from directory.model import RateDecision
from policyd.redis_native import RespParser, _multi_answers, encode, encode_strs


@pytest.mark.parametrize("args", [["EVALSHA", "abc", "2", "k1", "k2"], ["SET", "key:nguyễn@x.vn", "thư"], [""]])
def test_text_encoding_equals_the_general_encoding(args: list[str]) -> None:
    """The one-string fast path gives the same bytes as per-argument encoding, non-ASCII included."""
    assert encode_strs(args) == encode(*args)


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
    """Per message: how many windows were counted, then allowed/retry/total for each (retry -2: none, -1: never)."""
    got = _multi_answers(b"2,1,-2,5,1,-2,40,1,0,120000,100,1,0,-1,1", 3)
    assert got == [[RateDecision(True, (5,), None), RateDecision(True, (40,), None)],
                   [RateDecision(False, (100,), 120.0)],
                   [RateDecision(False, (1,), float("inf"))]]
    for bad in (b"1,1,-2,5,9", b"2,1,-2,5", b"0", b"", b"1,1,x,5"):  # trailing, truncated, empty, garbage
        with pytest.raises(ValueError):
            _multi_answers(bad, 1)
