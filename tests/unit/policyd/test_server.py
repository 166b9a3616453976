"""The Twisted protocol and service, on an in-memory transport and clock (no sockets, no threads)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.web.test.requesthelper import DummyRequest

from congvu.config import config_from_mapping
from congvu.directory.model import RateDecision, StateMisconfigured, StateUnavailable
from congvu.endpoints import unix_path
from congvu.policyd.checks.rates import Call
from congvu.policyd.redis_native import NativeCounters
from congvu.policyd.server import PolicyProtocol, PolicyService, _Metrics
from congvu.policyd.stats import parse_metrics
from congvu.rules.units import MB

RCPT_BIG = (b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=a@example.com\nclient_address=1.2.3.4\n"
            b"size=%d\n\n")


def _service(tmp_path: Path, **policyd: Any) -> PolicyService:
    cfg = config_from_mapping({"state_dir": str(tmp_path), "policyd": {"stats_listen": [], **policyd}})
    return PolicyService(cfg, MemoryReactorClock())


def _connect(svc: PolicyService) -> tuple[PolicyProtocol, StringTransport]:
    proto = PolicyProtocol(svc)
    tr = StringTransport()
    proto.makeConnection(tr)
    return proto, tr


@pytest.fixture
def svc(tmp_path: Path) -> Any:
    # ip_messages_per_hour is off by default; these tests count unauthenticated mail per client IP.
    s = _service(tmp_path, request_timeout="5s", idle_timeout="60s", max_connections=2, ip_messages_per_hour=300)
    yield s
    s.engine.ctx.accounts.close()


def test_answers_every_request_in_order_and_keeps_the_connection(svc: PolicyService) -> None:
    """Pipelined requests get one reply each, in order; the connection stays open for the next."""
    proto, tr = _connect(svc)
    proto.dataReceived(RCPT_BIG % (100 * MB) + RCPT_BIG % 1000 + (RCPT_BIG % (50 * MB))[:20])
    replies = tr.value().split(b"\n\n")
    assert replies[0].startswith(b"action=552 5.3.4 ") and replies[1] == b"action=DUNNO" and replies[2] == b""
    proto.dataReceived((RCPT_BIG % (50 * MB))[20:])
    assert tr.value().count(b"action=") == 3 and not tr.disconnecting
    assert svc.stats.requests == 3 and svc.stats.decisions[("size", "reject")] == 2


def test_malformed_input_closes_without_a_reply(svc: PolicyService) -> None:
    """The README's rule for trouble: log, no reply, disconnect (Postfix retries)."""
    proto, tr = _connect(svc)
    proto.dataReceived(b"request=smtpd_access_policy\nsender=a\x00b\n\n" + RCPT_BIG % 1)
    assert tr.value() == b"" and tr.disconnecting and svc.stats.protocol_errors == 1
    proto.dataReceived(RCPT_BIG % 1)  # whatever still arrives is ignored
    assert tr.value() == b""


def test_unfinished_request_and_idle_connections_time_out(svc: PolicyService) -> None:
    """A request not finished within request_timeout (slowloris) and an idle connection are closed."""
    reactor = svc.reactor
    slow, slow_tr = _connect(svc)
    idle, idle_tr = _connect(svc)
    idle.dataReceived(RCPT_BIG % 1)
    for _ in range(5):
        reactor.advance(1.5)
        slow.dataReceived(b"x")  # one byte at a time keeps it "active" but never finishes
        svc._sweep()
    assert slow_tr.disconnecting and not idle_tr.disconnecting
    reactor.advance(61)
    svc._sweep()
    assert idle_tr.disconnecting and svc.stats.timeouts == 2


def test_max_connections_closes_the_extra_connection(svc: PolicyService) -> None:
    """Beyond max_connections a new connection is closed at once; the others keep working."""
    conns = [_connect(svc) for _ in range(3)]
    assert [tr.disconnecting for _, tr in conns] == [False, False, True]
    assert svc.stats.refused_connections == 1
    conns[0][0].dataReceived(RCPT_BIG % 1)
    assert conns[0][1].value() == b"action=DUNNO\n\n"


def test_reload_switches_config_for_the_next_request(tmp_path: Path, svc: PolicyService) -> None:
    """After reload(cfg) the same open connection is judged by the new profile (TH13-9: 10 MB attachments)."""
    proto, tr = _connect(svc)
    proto.dataReceived(RCPT_BIG % (16 * MB))
    assert tr.value() == b"action=DUNNO\n\n"
    svc.reload(config_from_mapping({"state_dir": str(tmp_path), "profile": "thanhhoa-2013",
                                    "policyd": {"stats_listen": []}}))
    tr.clear()
    proto.dataReceived(RCPT_BIG % (16 * MB))
    assert tr.value().startswith(b"action=552 5.3.4 ") and b"TH13-9" in tr.value()
    assert svc.stats.reloads_ok == 1


def test_metrics_count_decisions_per_check(svc: PolicyService) -> None:
    """The Prometheus text has one counter per (check, verdict) and reads back with parse_metrics."""
    proto, _ = _connect(svc)
    proto.dataReceived(RCPT_BIG % (100 * MB) + RCPT_BIG % 1)
    rows = parse_metrics(svc.stats.render(c.name for c in svc.engine.checks))
    got = {(lab["check"], lab["verdict"]): v for n, lab, v in rows if n == "congvu_policyd_decisions_total"}
    assert got == {("size", "reject"): 1, ("none", "dunno"): 1}
    assert ("congvu_policyd_connections_open", {}, 1.0) in rows


def test_unix_endpoint_path() -> None:
    """The socket path is read from unix: endpoints (with escaped colons); others have none."""
    assert unix_path("unix:/var/spool/postfix/private/congvu-policy:mode=660") == \
        "/var/spool/postfix/private/congvu-policy"
    assert unix_path(r"unix:/tmp/a\:b.sock:lockfile=0") == "/tmp/a:b.sock"
    assert unix_path("tcp:10040:interface=127.0.0.1") is None


EOM = (b"request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\nsender=a@example.com\n"
       b"client_address=192.0.2.9\nrecipient_count=1\nsize=1000\ninstance=m%d\n\n")


class PendingCounters:
    """Stands in for NativeCounters.count: keeps each message's calls and callback until the test answers."""

    def __init__(self) -> None:
        self.pending: list[tuple[Sequence[Call], Callable[[Any], None]]] = []

    def count(self, calls: Sequence[Call], done: Callable[[Any], None]) -> None:
        self.pending.append((calls, done))


def test_counted_messages_are_answered_in_order_once_the_counters_answer(svc: PolicyService) -> None:
    """END-OF-MESSAGE waits for its counter answer; what was pipelined behind it is answered after it, in order."""
    counters = PendingCounters()
    svc.native = counters  # type: ignore[assignment]
    proto, tr = _connect(svc)
    proto.dataReceived(RCPT_BIG % 1 + EOM % 1 + RCPT_BIG % 2 + EOM % 2)
    assert tr.value() == b"action=DUNNO\n\n" and len(counters.pending) == 1  # the 2nd RCPT waits behind EOM 1
    calls, done = counters.pending.pop()
    assert [(c.key, c.amount, c.limit) for c in calls] == [("policyd:ip:192.0.2.9", 1, 300)]
    done([RateDecision(True, (1,), None)])
    assert tr.value() == b"action=DUNNO\n\n" * 3 and len(counters.pending) == 1
    counters.pending.pop()[1]([RateDecision(False, (300,), 120.0)])
    last = tr.value().split(b"\n\n")[3]
    assert last.startswith(b"action=450 4.7.1 ") and b"300" in last and b"CT25-3.1" in last
    assert svc.stats.native == 2 and svc.stats.requests == 4 and svc.stats.decisions[("rates", "defer")] == 1


def test_counter_store_failure_fails_open_and_is_counted(svc: PolicyService) -> None:
    """The counter store's StateUnavailable answers DUNNO (fail_rates = dunno) and counts a failure."""
    counters = PendingCounters()
    svc.native = counters  # type: ignore[assignment]
    proto, tr = _connect(svc)
    proto.dataReceived(EOM % 7)
    counters.pending.pop()[1](StateUnavailable("redis 127.0.0.1:1: no answer within 0.5s"))
    assert tr.value() == b"action=DUNNO\n\n" and not tr.disconnecting
    assert svc.stats.failures[("rates", "dunno")] == 1


def test_a_store_refusing_congvus_credentials_is_not_warned_once_per_message(svc: PolicyService) -> None:
    """StateMisconfigured fails open like an outage and is counted, but its client logged it: no warning per message."""
    counters = PendingCounters()
    svc.native = counters  # type: ignore[assignment]
    proto, tr = _connect(svc)
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for n, err in enumerate([StateMisconfigured("redis h:1: refused (WRONGPASS …)")] * 3
                                + [StateUnavailable("redis h:1: connection refused")]):
            proto.dataReceived(EOM % (20 + n))
            counters.pending.pop()[1](err)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert tr.value() == b"action=DUNNO\n\n" * 4 and svc.stats.failures[("rates", "dunno")] == 4
    warned = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
    assert len(warned) == 1 and "connection refused" in str(warned[0])  # an outage still warns, as before


def test_metrics_export_whether_the_state_store_answers(svc: PolicyService) -> None:
    """/metrics has congvu_policyd_state_store_up: 1 with a working store, 0 while its client is unhealthy."""
    def scrape() -> float:
        request = DummyRequest([b"metrics"])
        body = _Metrics(svc).render_GET(request)  # type: ignore[arg-type]
        [up] = [v for n, _, v in parse_metrics(body.decode()) if n == "congvu_policyd_state_store_up"]
        return up

    assert scrape() == 1.0  # SQLite counters: opened, so up
    native = NativeCounters(config_from_mapping({"state": {"backend": "redis", "url": "redis://127.0.0.1:1"}}),
                            svc.reactor)
    svc.native = native
    native.health.refused("WRONGPASS invalid username-password pair", "the password in [state] url")
    assert scrape() == 0.0
    native.health.answered()
    assert scrape() == 1.0
    svc.native = None
    svc.engine.ctx.counters = None  # type: ignore[misc]  # the store failed to open
    assert scrape() == 0.0


def test_a_message_counted_once_is_not_counted_again(svc: PolicyService) -> None:
    """The same instance at DATA and END-OF-MESSAGE goes to the counter store once."""
    counters = PendingCounters()
    svc.native = counters  # type: ignore[assignment]
    proto, tr = _connect(svc)
    proto.dataReceived(EOM.replace(b"END-OF-MESSAGE", b"DATA") % 3)
    counters.pending.pop()[1]([RateDecision(True, (1,), None)])
    proto.dataReceived(EOM % 3)
    assert not counters.pending and tr.value() == b"action=DUNNO\n\n" * 2


def test_remote_listen_endpoints_need_allow_remote(tmp_path: Path) -> None:
    """A TCP listen on all interfaces or a public address is a config error naming the key; loopback is fine."""
    from congvu.policyd.settings import check_listen
    from congvu.rules.errors import ConfigError

    def cfg(listen: list[str], **kw: Any) -> Any:
        return config_from_mapping({"state_dir": str(tmp_path), "policyd": {"listen": listen, **kw}})

    check_listen(cfg(["tcp:10040:interface=127.0.0.1", r"tcp6:10040:interface=\:\:1", "unix:/tmp/p.sock:mode=660"]))
    for bad in ("tcp:10040", "tcp:10040:interface=0.0.0.0", "tcp:10040:interface=192.0.2.1", "tcp6:10040"):
        with pytest.raises(ConfigError) as e:  # the loader itself refuses it: `congvu config check` says so
            cfg(["tcp:10041:interface=127.0.0.1", bad])
        assert e.value.key == "policyd.listen" and "allow_remote" in e.value.reason and bad in e.value.reason
    check_listen(cfg(["tcp:10040"], allow_remote=True))


def test_log_lines_are_buffered_and_flushed_by_the_reactor_and_at_shutdown() -> None:
    """Decision lines wait in memory for the 50 ms flush; warnings go out at once; shutdown writes the rest."""
    import io

    from congvu.logging import BufferedLog
    out = io.StringIO()
    clock = MemoryReactorClock()
    buf = BufferedLog(out)
    buf.start(clock, 0.05)
    buf.write("one\n")
    buf.write("two\n")
    assert out.getvalue() == ""
    clock.advance(0.05)
    assert out.getvalue() == "one\ntwo\n"
    buf.write("three\n")
    for fn, args, kw in clock.triggers["after"]["shutdown"]:  # what reactor.stop() runs last
        fn(*args, **kw)
    assert out.getvalue() == "one\ntwo\nthree\n"
    small = BufferedLog(out, max_bytes=10)
    small.write("x" * 11)
    assert out.getvalue().endswith("x" * 11)  # a full buffer is written without waiting
