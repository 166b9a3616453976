"""The milter's Twisted protocol and service on an in-memory transport and clock (no sockets, no threads)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport

from congvu.config import config_from_mapping
from congvu.policyd.milter import protocol as mp
from congvu.policyd.milter.server import MilterProtocol, MilterService

#: Negotiation, then the connect macros Postfix sends even for a skipped CONNECT: a site host.
OPTNEG = (mp.packet(b"O", struct.pack("!III", 6, 0x1FF, 0x1FFFFF))
          + mp.packet(b"D", b"Cj\0mx.test\0_\0webmail.sonv [127.0.0.1]\0"))


def message(subject: bytes, body: bytes = b"Kinh gui\r\n", queue_id: bytes = b"Q1") -> bytes:
    return (mp.packet(b"D", b"M{auth_authen}\0\0") + mp.packet(b"M", b"<a@example.org>\0")
            + mp.packet(b"L", b"Subject\0" + subject + b"\0") + mp.packet(b"N") + mp.packet(b"B", body)
            + mp.packet(b"D", b"Ei\0" + queue_id + b"\0") + mp.packet(b"E"))


def service(tmp_path: Path, profile: str = "thanhhoa-2013", **milter: Any) -> MilterService:
    cfg = config_from_mapping({"state_dir": str(tmp_path), "milter": {"max_connections": 2, **milter}},
                              profile=profile)
    return MilterService(cfg, MemoryReactorClock())


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[MilterService]:
    s = service(tmp_path, idle_timeout="60s")
    yield s
    s.accounts.close()


def connect(svc: MilterService) -> tuple[MilterProtocol, StringTransport]:
    proto = MilterProtocol(svc)
    tr = StringTransport()
    proto.makeConnection(tr)
    return proto, tr


def packets(data: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    while data:
        (n,) = struct.unpack("!I", data[:4])
        out.append((data[4:5], data[5:4 + n]))
        data = data[4 + n:]
    return out


def test_one_reply_per_message_and_the_connection_stays(svc: MilterService) -> None:
    """Negotiation, then per message only the end-of-body answer: a refusal, then an accept on the same connection."""
    proto, tr = connect(svc)
    proto.dataReceived(OPTNEG + message(b"") + message("Báo cáo".encode(), queue_id=b"Q2"))
    (neg, _), (cmd, data), (ok, _) = packets(tr.value())
    assert neg == b"O" and cmd == b"y" and ok == b"a" and not tr.disconnecting
    assert data.startswith(b"550 5.7.1 ") and b"TH13-7" in data and data.endswith(b"\0")
    assert svc.stats["messages"] == 2 and svc.stats["decision:subject:reject"] == 1


def test_the_client_address_comes_from_the_connect_macros(svc: MilterService) -> None:
    """A client outside mynetworks without a login: the rules do not apply ([milter] apply_to = senders)."""
    proto, tr = connect(svc)
    outside = OPTNEG.replace(b"[127.0.0.1]", b"[IPv6:2001:db8::7]").replace(
        mp.packet(b"D", b"Cj\0mx.test\0_\0webmail.sonv [127.0.0.1]\0")[:4],
        struct.pack("!I", len(b"Cj\0mx.test\0_\0webmail.sonv [IPv6:2001:db8::7]\0") + 1))
    proto.dataReceived(outside + message(b""))
    assert [c for c, _ in packets(tr.value())] == [b"O", b"a"] and proto.client == "2001:db8::7"


def test_a_tag_is_a_header_then_accept(svc: MilterService) -> None:
    """A rule whose action is tag adds X-Congvu-Check before accepting."""
    proto, tr = connect(svc)
    proto.dataReceived(OPTNEG + message("Thông báo".encode(), "Vieät Nam caùc ñoàng chí".encode()))
    (_, _), (h, header), (a, _) = packets(tr.value())
    name, value, _ = header.split(b"\0")
    assert (h, a, name) == (b"h", b"a", b"X-Congvu-Check") and value.startswith(b"TH13-6.2 unicode: ")


def test_end_of_body_may_carry_the_last_chunk(svc: MilterService) -> None:
    """SMFIC_BODYEOB with data (libmilter allows it): that text is read like any body chunk."""
    proto, tr = connect(svc)
    vni = "Vieät Nam caùc ñoàng chí".encode()
    proto.dataReceived(OPTNEG + message("Thông báo".encode(), b"").replace(
        mp.packet(b"E"), mp.packet(b"E", vni)))
    assert [c for c, _ in packets(tr.value())] == [b"O", b"h", b"a"]


def test_malformed_packets_close_the_connection(svc: MilterService) -> None:
    """A broken peer is cut off; Postfix applies milter_default_action (tempfail)."""
    proto, tr = connect(svc)
    proto.dataReceived(OPTNEG + mp.packet(b"Z"))
    assert tr.disconnecting and svc.stats["protocol_errors"] == 1


def test_an_internal_error_tempfails_the_message_not_the_connection(svc: MilterService,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug at end of body answers tempfail (never a crash, never a 5xx); the next message is served."""
    proto, tr = connect(svc)
    proto.dataReceived(OPTNEG)

    def boom(*args: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(svc.engine, "evaluate", boom)
    proto.dataReceived(message("Báo cáo".encode()))
    monkeypatch.undo()
    proto.dataReceived(message("Báo cáo".encode()))
    assert [c for c, _ in packets(tr.value())] == [b"O", b"t", b"a"] and not tr.disconnecting
    assert svc.stats["internal_errors"] == 1


def test_abort_forgets_the_message(svc: MilterService) -> None:
    """SMFIC_ABORT drops the message being read; the next MAIL starts afresh (no reply to either)."""
    proto, tr = connect(svc)
    proto.dataReceived(OPTNEG + mp.packet(b"M", b"<a@b>\0") + mp.packet(b"L", b"Subject\0\0") + mp.packet(b"A")
                       + message("Báo cáo".encode()))
    assert [c for c, _ in packets(tr.value())] == [b"O", b"a"]


def test_idle_connections_time_out_and_extra_connections_are_refused(svc: MilterService) -> None:
    """max_connections = 2: a third is closed at once; a connection silent for idle_timeout is closed."""
    (_, a), (_, b), (_, c) = connect(svc), connect(svc), connect(svc)
    assert c.disconnecting and not a.disconnecting and svc.stats["refused_connections"] == 1
    svc.reactor.advance(61)
    svc._sweep()
    assert a.disconnecting and b.disconnecting and svc.stats["timeouts"] == 2


def test_reload_switches_the_rules(svc: MilterService, tmp_path: Path) -> None:
    """SIGHUP: a new profile's rules apply to the next message (cantho-2025 requires no subject)."""
    svc.reload(config_from_mapping({"state_dir": str(tmp_path)}, profile="cantho-2025"))
    proto, tr = connect(svc)
    proto.dataReceived(OPTNEG + message(b""))
    assert [c for c, _ in packets(tr.value())] == [b"O", b"a"]
