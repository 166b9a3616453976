"""The native Redis client on an in-memory connection and clock: its login, its health, its failures.

The wire format and the batch plan have their own tests (test_resp.py, test_batch.py); real
Redis behaviour is in tests/integration/policyd.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher

from congvu.config import config_from_mapping
from congvu.directory.model import RateDecision, StateMisconfigured, StateUnavailable
from congvu.policyd.checks.rates import Call
from congvu.policyd.redis_native import NativeCounters
from congvu.policyd.resp import encode

HOUR = timedelta(hours=1)
T0 = 1_800_000_000.0


class Endpoint:
    """Stands in for the TCP endpoint: each connection is a StringTransport the test reads and answers."""

    def __init__(self) -> None:
        self.transports: list[StringTransport] = []
        self.protocols: list[Any] = []
        self.refuse = False

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        if self.refuse:
            return defer.fail(ConnectionRefusedError())
        proto = factory.buildProtocol(None)
        tr = StringTransport()
        proto.makeConnection(tr)
        self.transports.append(tr)
        self.protocols.append(proto)
        return defer.succeed(proto)

    def answer(self, data: bytes) -> None:
        """Redis's reply on the latest connection."""
        self.protocols[-1].dataReceived(data)


@pytest.fixture
def events() -> Iterator[list[LogEvent]]:
    got: list[LogEvent] = []
    globalLogPublisher.addObserver(got.append)
    yield got
    globalLogPublisher.removeObserver(got.append)


def client(tmp_path: Path, **state: Any) -> tuple[NativeCounters, Endpoint, MemoryReactorClock]:
    cfg = config_from_mapping({"state_dir": str(tmp_path), "state": {"backend": "redis", "prefix": "t:", **state}})
    reactor = MemoryReactorClock()
    native = NativeCounters(cfg, reactor)
    endpoint = Endpoint()
    native.endpoint = endpoint
    return native, endpoint, reactor


def count(native: NativeCounters, reactor: MemoryReactorClock) -> list[Any]:
    """One message handed to ``count`` and the tick run; what its callback got so far."""
    got: list[Any] = []
    native.count([Call("msgs:a", 1, HOUR, 5, "m", T0)], got.append)
    reactor.advance(0)
    return got


def lines(events: list[LogEvent], level: LogLevel) -> list[str]:
    return [str(formatEvent(e)) for e in events if e.get("log_level") == level]


def test_a_password_in_the_url_is_sent_with_auth_and_the_database_selected(tmp_path: Path) -> None:
    """``redis://user:pw@host/3``: the first round trip is AUTH user pw and SELECT 3, in one write."""
    native, endpoint, _ = client(tmp_path, url="redis://congvu:p%40ss@127.0.0.1:6390/3")
    native.probe()
    assert endpoint.transports[0].value() == encode("AUTH", "congvu", "p@ss") + encode("SELECT", 3)
    endpoint.answer(b"+OK\r\n+OK\r\n")
    assert native.conn is endpoint.protocols[0] and native.health.up


def test_the_password_file_replaces_the_urls_password_and_keeps_its_user(tmp_path: Path) -> None:
    """One rule for both clients: the file's password wins, the URL's user name stays."""
    pw = tmp_path / "redis.pw"
    pw.write_text("from-file\n")
    native, endpoint, _ = client(tmp_path, url="redis://congvu:in-url@127.0.0.1:6390", password_file=str(pw))
    native.probe()
    assert endpoint.transports[0].value() == encode("AUTH", "congvu", "from-file")


def test_without_credentials_a_ping_checks_that_redis_wants_none(tmp_path: Path, events: list[LogEvent]) -> None:
    """No password: PING; ``-NOAUTH`` makes the client unhealthy, with ONE error naming the setting to set."""
    native, endpoint, reactor = client(tmp_path, url="redis://127.0.0.1:6390/0")
    native.probe()
    assert endpoint.transports[0].value() == encode("PING")
    endpoint.answer(b"-NOAUTH Authentication required.\r\n")
    assert not native.health.up and native.health.problem == "misconfigured"
    assert endpoint.transports[0].disconnecting  # the refused connection is not kept (nor leaked)
    answers = [count(native, reactor) for _ in range(5)]  # within the fail-fast second: no new connection
    assert all(isinstance(a, StateMisconfigured) for [a] in answers) and len(endpoint.transports) == 1
    [error] = lines(events, LogLevel.error)
    assert "refuses congvu's credentials" in error and "NOAUTH" in error and "[state] password_file" in error
    assert not lines(events, LogLevel.warn)


def test_a_wrong_password_is_one_error_then_recovery_is_one_info(tmp_path: Path, events: list[LogEvent]) -> None:
    """WRONGPASS: one error naming the URL's password (never the password); fixed in Redis, one info line."""
    native, endpoint, reactor = client(tmp_path, url="redis://:not-it-4711@127.0.0.1:6390")
    native.probe()
    endpoint.answer(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
    for _ in range(3):
        reactor.advance(1.5)  # past the fail-fast second: each message tries a new connection, refused again
        got = count(native, reactor)
        endpoint.answer(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
        assert len(got) == 1 and isinstance(got[0], StateMisconfigured)
    assert len(endpoint.transports) == 4
    [error] = lines(events, LogLevel.error)
    assert "the password in [state] url" in error
    assert "not-it-4711" not in "".join(str(formatEvent(e)) + repr(e) for e in events)
    reactor.advance(1.5)
    got = count(native, reactor)
    endpoint.answer(b"+OK\r\n")  # the hello
    assert native.health.up and got == []
    endpoint.answer(b"$1\r\n1\r\n")  # the batch
    assert got == [[RateDecision(True, (1,), None)]]
    assert [ln for ln in lines(events, LogLevel.info) if "answers again" in ln]
    assert len(lines(events, LogLevel.error)) == 1


def test_a_permission_refused_on_the_script_names_the_acl(tmp_path: Path, events: list[LogEvent]) -> None:
    """``-NOPERM`` on EVALSHA: StateMisconfigured and one error pointing at the Redis user's ACL."""
    native, endpoint, reactor = client(tmp_path, url="redis://limited:pw@127.0.0.1:6390")
    native.probe()
    endpoint.answer(b"+OK\r\n")
    for _ in range(3):
        got = count(native, reactor)
        endpoint.answer(b"-NOPERM User limited has no permissions to run the 'evalsha' command\r\n")
        assert len(got) == 1 and isinstance(got[0], StateMisconfigured)
    [error] = lines(events, LogLevel.error)
    assert "ACL of Redis user limited" in error and not native.health.up


def test_a_refused_connection_stays_an_outage_warned_once(tmp_path: Path, events: list[LogEvent]) -> None:
    """Redis down: StateUnavailable (not a configuration error), one warning however many messages."""
    native, endpoint, reactor = client(tmp_path, url="redis://127.0.0.1:6390")
    endpoint.refuse = True
    for _ in range(3):
        [got] = count(native, reactor)
        assert isinstance(got, StateUnavailable) and not isinstance(got, StateMisconfigured)
        reactor.advance(1.5)
    assert native.health.problem == "unavailable"
    assert len(lines(events, LogLevel.warn)) == 1 and not lines(events, LogLevel.error)


def test_a_select_redis_refuses_is_a_configuration_error(tmp_path: Path, events: list[LogEvent]) -> None:
    """``SELECT 99`` out of range can never work: one error naming the database in [state] url."""
    native, endpoint, _ = client(tmp_path, url="redis://127.0.0.1:6390/99")
    native.probe()
    endpoint.answer(b"-ERR DB index is out of range\r\n")
    [error] = lines(events, LogLevel.error)
    assert "database number (99) in [state] url" in error and native.health.problem == "misconfigured"


def test_a_hello_without_answer_times_out(tmp_path: Path) -> None:
    """A Redis that accepts but never answers the hello: StateUnavailable after [state] timeout."""
    native, endpoint, reactor = client(tmp_path, url="redis://127.0.0.1:6390", timeout="2s")
    got = count(native, reactor)
    assert got == []
    reactor.advance(2.1)
    assert len(got) == 1 and "no answer within 2s" in str(got[0]) and endpoint.transports[0].disconnecting


def test_a_broken_reply_ends_the_connection_and_its_calls(tmp_path: Path) -> None:
    """Bytes that are not RESP: every waiting call gets StateUnavailable and the connection is dropped."""
    native, endpoint, reactor = client(tmp_path, url="redis://127.0.0.1:6390")
    native.probe()
    endpoint.answer(b"+PONG\r\n")
    got = count(native, reactor)
    endpoint.answer(b"HTTP/1.1 400 Bad Request\r\n")
    assert len(got) == 1 and "bad reply" in str(got[0]) and endpoint.transports[0].disconnecting


def test_noscript_sends_the_script_itself_once(tmp_path: Path) -> None:
    """Redis lost the script (restart, SCRIPT FLUSH): the same call goes again as EVAL, answered normally."""
    native, endpoint, reactor = client(tmp_path, url="redis://127.0.0.1:6390")
    native.probe()
    endpoint.answer(b"+PONG\r\n")
    tr = endpoint.transports[0]
    tr.clear()
    got = count(native, reactor)
    assert tr.value().startswith(b"*5\r\n$7\r\nEVALSHA\r\n")
    tr.clear()
    endpoint.answer(b"-NOSCRIPT No matching script. Please use EVAL.\r\n")
    assert tr.value().startswith(b"*5\r\n$4\r\nEVAL\r\n") and got == []
    endpoint.answer(b"$1\r\n1\r\n")
    assert got == [[RateDecision(True, (1,), None)]]
