"""Malformed MIME against the real ``congvu milter`` process: a clean answer per the failure policy, never a crash,
bounded memory (issue 14).

The messages are sent with :class:`MilterClient` (the MTA side of the protocol, as Postfix
speaks it) rather than through Postfix, which would cut some of them before the milter
sees them (a header longer than ``header_size_limit``).  Under thanhhoa-2013 (an allow-list
in force) a structure the walker could not see whole is ``fail_attachment_type = tempfail``
(451 4.3.0); under cantho-2025 (no allow-list) the same message is accepted.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.policyd.conftest import write_config
from tests.integration.policyd.milter.conftest import MilterClient, MilterProcess

MiB = 1024 * 1024
Headers = list[tuple[bytes, bytes]]


class Milters:
    """``congvu milter`` on thanhhoa-2013 and on cantho-2025, each on its own socket."""

    def __init__(self, root: Path) -> None:
        self.procs: dict[str, MilterProcess] = {}
        self.sockets: dict[str, Path] = {}
        for profile in ("thanhhoa-2013", "cantho-2025"):
            sock = root / f"{profile}.sock"
            cfg = write_config(root / f"{profile}.toml", {
                "profile": profile, "state_dir": str(root / profile),
                "directory": {"backend": "sqlite", "hash_cost": "test"},
                "milter": {"listen": [f"unix:{sock}:mode=600"]}})
            proc = MilterProcess(root / f"{profile}.log")
            proc.start(cfg, sock)
            self.procs[profile], self.sockets[profile] = proc, sock

    def send(self, profile: str, headers: Headers, body: bytes) -> tuple[bytes, bytes]:
        """One message on a fresh connection; the final answer (command, data)."""
        client = MilterClient(self.sockets[profile])
        try:
            client.negotiate()
            return client.message(headers, body)[1]
        finally:
            client.close()

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()


@pytest.fixture(scope="module")
def milters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Milters]:
    m = Milters(tmp_path_factory.mktemp("milter-malformed"))
    try:
        yield m
    finally:
        m.stop()


def multipart(boundary: bytes = b"b") -> Headers:
    return [(b"From", b"a@example.org"), (b"Subject", b"Th\xc6\xb0"), (b"MIME-Version", b"1.0"),
            (b"Content-Type", b'multipart/mixed; boundary="' + boundary + b'"')]


def pdf_part(boundary: bytes, name: str = "a.pdf", size: int = 300) -> bytes:
    data = base64.encodebytes(b"%PDF-1.4\n" + bytes(size)).replace(b"\n", b"\r\n")
    return (b"--" + boundary + b"\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
            b'Content-Disposition: attachment; filename="' + name.encode() + b'"\r\n\r\n' + data)


def is_tempfail(answer: tuple[bytes, bytes]) -> bool:
    cmd, data = answer
    return cmd == b"y" and data.startswith(b"451 4.3.0 ") and b"TH13-6.1" in data


def test_unterminated_boundaries_end_with_the_message(milters: Milters) -> None:
    """Parts whose multipart never closes (nested, no closing boundary) are still checked: a PDF passes."""
    body = (b"preamble\r\n" + pdf_part(b"b") + b"--b\r\nContent-Type: multipart/alternative; boundary=c\r\n\r\n"
            b"--c\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nKinh gui\r\n")
    assert milters.send("thanhhoa-2013", multipart(), body) == (b"a", b"")
    assert milters.procs["thanhhoa-2013"].running


def test_10000_parts_tempfail_where_types_are_checked_accept_elsewhere(milters: Milters) -> None:
    """10,000 parts exceed max_parts: thanhhoa-2013 answers 451 4.3.0 (fail_attachment_type), cantho-2025 accepts."""
    body = b"".join(pdf_part(b"b", f"p{i}.pdf", 10) for i in range(10_000)) + b"--b--\r\n"
    assert is_tempfail(milters.send("thanhhoa-2013", multipart(), body))
    assert milters.send("cantho-2025", multipart(), body) == (b"a", b"")


def test_one_megabyte_header_lines_inside_parts(milters: Milters) -> None:
    """A 1 MB part header line is cut at max_line: the structure is incomplete, so thanhhoa-2013 tempfails."""
    long = b"X-Filler: " + b"x" * MiB + b"\r\n"
    body = (b"--b\r\n" + long + b'Content-Type: application/pdf; name="a.pdf"\r\n\r\n%PDF-1.4\r\n'
            + pdf_part(b"b") + b"--b--\r\n")
    assert is_tempfail(milters.send("thanhhoa-2013", multipart(), body))
    assert milters.send("cantho-2025", multipart(), body) == (b"a", b"")


def test_base64_garbage_is_counted_not_fatal(milters: Milters) -> None:
    """An attachment of base64 garbage is decoded leniently: not a PDF by content, so refused (TH13-6.1), no crash."""
    garbage = os.urandom(200_000).replace(b"--", b"__")
    body = (b"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
            b'Content-Disposition: attachment; filename="x.pdf"\r\n\r\n' + garbage + b"\r\n--b--\r\n")
    cmd, data = milters.send("thanhhoa-2013", multipart(), body)
    assert cmd == b"y" and data.startswith(b"550 5.7.1 ") and b"TH13-6.1" in data, (cmd, data)
    assert milters.send("cantho-2025", multipart(), body) == (b"a", b"")


def test_message_rfc822_nested_50_deep(milters: Milters) -> None:
    """50 nested message/rfc822 parts stop at max_depth: thanhhoa-2013 tempfails, cantho-2025 accepts."""
    inner = b"Subject: innermost\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    for _ in range(50):
        inner = b"Subject: fw\r\nContent-Type: message/rfc822\r\n\r\n" + inner
    body = b"--b\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"--b--\r\n"
    assert is_tempfail(milters.send("thanhhoa-2013", multipart(), body))
    assert milters.send("cantho-2025", multipart(), body) == (b"a", b"")
    assert all(p.running for p in milters.procs.values())


def test_a_30mb_message_costs_far_less_than_30mb_of_memory(milters: Milters) -> None:
    """A 30 MB message (a 22 MB attachment) raises the milter's peak RSS by less than 16 MB (bounded, not ×30 MB)."""
    proc = milters.procs["cantho-2025"]
    milters.send("cantho-2025", multipart(), pdf_part(b"b", size=1000) + b"--b--\r\n")  # warm up
    before = proc.peak_rss()
    body = pdf_part(b"b", "big.pdf", 22 * MiB) + b"--b--\r\n"
    assert 29 * MiB < len(body) < 31 * MiB
    cmd, data = milters.send("cantho-2025", multipart(), body)
    assert cmd == b"y" and data.startswith(b"552 5.3.4 ") and b"CT25-5.1" in data, (cmd, data)
    grown = proc.peak_rss() - before
    assert grown < 16 * MiB, f"peak RSS grew by {grown / MiB:.1f} MB for a 30 MB message"
