"""A password-protected redis-server: both counter clients log in from the one RedisTarget, and a wrong login is loud.

Regression of a security finding: the native client sent AUTH only from ``[state] password_file``,
so with the password in ``[state] url`` it got NOAUTH on every call and the rate check failed
open with a warning per message, while redis-py (authd, the thread path) logged in fine.
"""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher

from congvu.config import Config, config_from_mapping
from congvu.directory.counters import open_counters
from congvu.directory.counters_redis import RedisCounters
from congvu.directory.model import RateDecision, StateMisconfigured, StateUnavailable
from congvu.policyd.checks.rates import Call
from congvu.policyd.redis_native import NativeCounters
from congvu.policyd.stats import parse_metrics
from tests.integration.policyd.conftest import PolicydProcess, ask, site_config, turn, write_config
from tests.integration.servers.redis import RedisServer
from tests.integration.support import free_port

pytestmark = pytest.mark.integration

HOUR = timedelta(hours=1)
SECRET = "Đúng-pw 7/@x"  # non-ASCII, a space, a slash and an @: percent-encoded in the URL
ACL_PW = "acl-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server that wants SECRET from the default user, and has an ACL user ``congvu``."""
    server = RedisServer(tmp_path_factory.mktemp("redis-auth"), password=SECRET,
                         users=[f"congvu on >{ACL_PW} ~* &* +@all"])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def events() -> Iterator[list[LogEvent]]:
    got: list[LogEvent] = []
    globalLogPublisher.addObserver(got.append)
    yield got
    globalLogPublisher.removeObserver(got.append)


def _config(tmp_path: Path, url: str, **state: Any) -> Config:
    return config_from_mapping({"state_dir": str(tmp_path), "state": {
        "backend": "redis", "url": url, "prefix": f"{uuid.uuid4().hex[:8]}:", "timeout": "2s", **state}})


def _count(reactor: Any, native: NativeCounters, key: str, amount: int = 1,
           limit: int = 100) -> list[RateDecision] | StateUnavailable:
    got: list[list[RateDecision] | StateUnavailable] = []
    native.count([Call(key, amount, HOUR, limit, "messages per hour", time.time())], got.append)
    turn(reactor, lambda: bool(got))
    return got[0]


def _errors(events: list[LogEvent]) -> list[str]:
    return [str(formatEvent(e)) for e in events if e.get("log_level") == LogLevel.error]


def test_the_url_password_counts_on_both_clients(tmp_path: Path, locked: RedisServer, reactor: Any) -> None:
    """Password only in state.url: the native client and redis-py both count, on the same keys."""
    cfg = _config(tmp_path, locked.url_with(SECRET))
    native = NativeCounters(cfg, reactor)
    blocking = open_counters(cfg)
    try:
        assert _count(reactor, native, "policyd:msgs:a", 2) == [RateDecision(True, (2,), None)]
        assert blocking.hit_if_below("policyd:msgs:a", 3, [(HOUR, 100)], time.time()).totals == (5,)
        assert _count(reactor, native, "policyd:msgs:a") == [RateDecision(True, (6,), None)]
        assert blocking.peek("policyd:msgs:a", [HOUR], time.time()) == (6,)
        assert native.health.up and isinstance(blocking, RedisCounters) and blocking.health.up
    finally:
        native.close()
        blocking.close()


def test_an_acl_user_and_database_from_the_url(tmp_path: Path, locked: RedisServer, reactor: Any) -> None:
    """``redis://congvu:pw@host/3``: both clients AUTH as the ACL user and count in database 3, not 0."""
    cfg = _config(tmp_path, locked.url_with(ACL_PW, user="congvu", db=3))
    native = NativeCounters(cfg, reactor)
    blocking = open_counters(cfg)
    direct = redis.Redis(port=locked.port, username="congvu", password=ACL_PW, db=3)
    try:
        assert _count(reactor, native, "k", 4) == [RateDecision(True, (4,), None)]
        assert blocking.hit("k", 1, [HOUR], time.time()) == (5,)
        assert direct.exists(cfg.state.prefix + "c:k") == 1
        assert direct.acl_whoami() == "congvu"
        direct.select(0)
        assert direct.exists(cfg.state.prefix + "c:k") == 0
    finally:
        direct.close()
        native.close()
        blocking.close()


def test_a_password_file_with_the_urls_user(tmp_path: Path, locked: RedisServer, reactor: Any) -> None:
    """The user in the URL, its password in state.password_file: both clients log in."""
    pw = tmp_path / "redis.pw"
    pw.write_text(ACL_PW + "\n")
    cfg = _config(tmp_path, f"redis://congvu@127.0.0.1:{locked.port}/0", password_file=str(pw))
    native = NativeCounters(cfg, reactor)
    blocking = open_counters(cfg)
    try:
        assert _count(reactor, native, "k") == [RateDecision(True, (1,), None)]
        assert blocking.peek("k", [HOUR], time.time()) == (1,)
    finally:
        native.close()
        blocking.close()


@pytest.mark.parametrize(("url_password", "fix"), [
    ("not-the-pw-93", "the password in [state] url"),
    (None, "[state] password_file (Redis asks for a password"),
])
def test_a_refused_login_is_one_error_on_each_client(tmp_path: Path, locked: RedisServer, reactor: Any,
                                                     events: list[LogEvent], url_password: str | None,
                                                     fix: str) -> None:
    """Wrong or missing password: every call fails with StateMisconfigured; each client logs ONE error."""
    cfg = _config(tmp_path, locked.url_with(url_password))
    native = NativeCounters(cfg, reactor)
    blocking = open_counters(cfg)
    try:
        native.probe()
        turn(reactor, lambda: not native.health.up)
        for _ in range(4):
            assert isinstance(_count(reactor, native, "k"), StateMisconfigured)
            reactor.iterate(0.3)
        assert native.health.problem == "misconfigured"
        for _ in range(3):
            with pytest.raises(StateMisconfigured):
                blocking.hit("k", 1, [HOUR], time.time())
        errors = _errors(events)
        assert len(errors) == 2, errors
        assert "(policyd native client)" in errors[0] and "(redis-py)" in errors[1]
        assert all("refuses congvu's credentials" in e and fix in e for e in errors)
        assert "not-the-pw-93" not in "".join(str(formatEvent(e)) + repr(e) for e in events)
    finally:
        native.close()
        blocking.close()
    with redis.Redis(port=locked.port, password=SECRET) as direct:  # nothing was counted
        assert direct.exists(cfg.state.prefix + "c:k") == 0


def _gauge(stats_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/metrics", timeout=5) as r:
        rows = parse_metrics(r.read().decode())
    [up] = [v for name, _, v in rows if name == "congvu_policyd_state_store_up"]
    return up


def _wait_for(pred: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _message(n: int) -> bytes:
    return (f"request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\nsender=a@example.com\n"
            f"client_address=192.0.2.77\nrecipient_count=1\ninstance=cred{n}.{time.monotonic_ns()}\n\n").encode()


def test_policyd_shows_a_refused_login_on_metrics_then_recovers_on_reload(tmp_path: Path,
                                                                         locked: RedisServer) -> None:
    """The real policyd: a wrong URL password → gauge 0 and ONE error line, messages fail open;
    the password fixed and SIGHUP → gauge 1 and the limit counts again."""
    ep, stats = f"tcp:{free_port()}:interface=127.0.0.1", free_port()
    data = site_config(tmp_path / "state", profile="cantho-2025", listen=[ep], redis=None,
                       policyd={"stats_listen": [f"tcp:{stats}:interface=127.0.0.1"], "ip_messages_per_hour": 2})
    data["state"] = {"backend": "redis", "url": locked.url_with("not-the-pw-93"), "prefix": f"{uuid.uuid4().hex[:8]}:"}
    cfg = write_config(tmp_path / "congvu.toml", data)
    proc = PolicydProcess(tmp_path / "policyd.log")
    try:
        proc.start(cfg, [ep])
        _wait_for(lambda: _gauge(stats) == 0.0)  # probed at start, before any message
        for n in range(5):
            assert ask(ep, _message(n)) == b"action=DUNNO\n\n"  # fail_rates = dunno
        log = proc.log_text()
        refused = [ln for ln in log.splitlines() if "refuses congvu's credentials" in ln]
        assert len(refused) == 1 and "the password in [state] url" in refused[0], log
        assert "check rates unavailable" not in log  # no warning per message
        assert "not-the-pw-93" not in log
        data["state"]["url"] = locked.url_with(SECRET)
        write_config(cfg, data)
        proc.reload()
        _wait_for(lambda: "configuration reloaded" in proc.log_text())
        _wait_for(lambda: _gauge(stats) == 1.0)
        assert ask(ep, _message(10)) == b"action=DUNNO\n\n"
        assert ask(ep, _message(11)) == b"action=DUNNO\n\n"
        assert ask(ep, _message(12)).startswith(b"action=450 4.7.1 ")  # 3rd message this hour from the IP
    finally:
        proc.stop()
