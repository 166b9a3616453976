"""Redis-only behaviour of the counter store: outages, timeouts, password, TLS, Sentinel, memory bounds."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from congvu.config import config_from_mapping
from congvu.directory.counters import open_counters
from congvu.directory.model import StateUnavailable
from congvu.directory.windows import BUCKETS
from congvu.rules.errors import ConfigError
from tests.integration.servers.redis import RedisServer
from tests.integration.support import free_port, need, wait_port

T0 = 1_800_000_000.0
HOUR = timedelta(hours=1)


def counters(tmp_path: Path, **state: Any) -> Any:
    """A RedisCounters built by the real factory; ``state`` overrides the [state] keys."""
    section = {"backend": "redis", "prefix": f"t-{uuid.uuid4().hex}:", "timeout": "1s", **state}
    return open_counters(config_from_mapping({"state": section, "state_dir": str(tmp_path)}))


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, so stopping it disturbs no other test."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def test_stopped_redis_fails_fast_and_recovers(tmp_path: Path, own_redis: RedisServer) -> None:
    """With Redis stopped every call raises StateUnavailable within the timeout; after a restart it works."""
    store = counters(tmp_path, url=own_redis.url)
    try:
        assert store.hit("k", 1, [HOUR], T0) == (1,)
        own_redis.stop()
        calls: list[Callable[[], object]] = [
            lambda: store.hit("k", 1, [HOUR], T0), lambda: store.hit_if_below("k", 1, [(HOUR, 5)], T0),
            lambda: store.seen("m", HOUR, T0), lambda: store.lock_info("k", T0),
            lambda: store.record_failure("k", "fp", HOUR, T0),
            lambda: store.stamp_login("a@x", T0, "imap", "10.0.0.1")]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(StateUnavailable):
                call()
            assert time.monotonic() - started < 1.0
        own_redis.start()  # same port, empty (no persistence)
        assert store.hit("k", 2, [HOUR], T0) == (2,)
        assert store.seen("m", HOUR, T0) is False
    finally:
        store.close()


def test_hung_redis_times_out(tmp_path: Path, own_redis: RedisServer) -> None:
    """A frozen Redis (accepts, never answers) raises StateUnavailable after the timeout, not later."""
    store = counters(tmp_path, url=own_redis.url, timeout="1s")
    try:
        store.hit("k", 1, [HOUR], T0)
        own_redis.pause()
        try:
            started = time.monotonic()
            with pytest.raises(StateUnavailable):
                store.hit("k", 1, [HOUR], T0)
            elapsed = time.monotonic() - started
            assert 0.9 <= elapsed < 1.9
        finally:
            own_redis.resume()
        assert store.peek("k", [HOUR], T0) in ((1,), (2,))  # the frozen call may have landed
    finally:
        store.close()


def test_redis_restart_mid_use_on_shared_server(tmp_path: Path, redis_server: RedisServer) -> None:
    """The session server stopped in the middle of a test: errors, then recovery without a new store."""
    store = counters(tmp_path, url=redis_server.url)
    try:
        store.hit("k", 1, [HOUR], T0)
        redis_server.stop()
        try:
            with pytest.raises(StateUnavailable):
                store.peek("k", [HOUR], T0)
        finally:
            redis_server.start()
        assert store.hit("k", 1, [HOUR], T0) == (1,)
    finally:
        store.close()


def test_password_file_and_secret_hygiene(tmp_path: Path) -> None:
    """A password-protected Redis is reached with the password file; it never shows in reprs or errors."""
    secret = "s3cr3t-" + uuid.uuid4().hex
    server = RedisServer(tmp_path / "redis", ["--requirepass", secret])
    server.start()
    try:
        pwfile = tmp_path / "redis.pw"
        pwfile.write_text(secret + "\n")
        store = counters(tmp_path, url=server.url, password_file=str(pwfile))
        try:
            assert store.hit("k", 3, [HOUR], T0) == (3,)
            assert secret not in repr(store) and secret not in repr(store._r)
        finally:
            store.close()
        wrong = tmp_path / "wrong.pw"
        wrong.write_text("not-it\n")
        bad = counters(tmp_path, url=server.url, password_file=str(wrong))
        with pytest.raises(StateUnavailable) as err:
            bad.hit("k", 1, [HOUR], T0)
        assert "not-it" not in str(err.value)
        bad.close()
        with pytest.raises(ConfigError, match=r"state\.password_file"):
            counters(tmp_path, url=server.url, password_file=str(tmp_path / "missing.pw"))
    finally:
        server.stop()


def _make_tls(d: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl."""
    openssl = need("openssl", "openssl")
    ca_key, ca, key, csr, crt = (d / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = d / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")

    def run(*a: str) -> None:
        subprocess.run([openssl, *a], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
        "-days", "2", "-subj", "/CN=congvu test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(crt), "-days", "2", "-extfile", str(ext))
    return ca, crt, key


def test_rediss_url_uses_tls(tmp_path: Path) -> None:
    """A rediss:// URL talks TLS, verifying the server against the CA named in the URL."""
    ca, crt, key = _make_tls(tmp_path)
    server = RedisServer(tmp_path / "redis", ["--tls-cert-file", str(crt), "--tls-key-file", str(key),
                                              "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"],
                         tls=True)
    server.start()
    try:
        store = counters(tmp_path, url=f"{server.url}?ssl_ca_certs={ca}")
        try:
            assert store.hit("k", 1, [HOUR], T0) == (1,)
        finally:
            store.close()
        plain = counters(tmp_path, url=f"redis://127.0.0.1:{server.port}/0")  # TLS port, no TLS
        with pytest.raises(StateUnavailable):
            plain.hit("k", 1, [HOUR], T0)
        plain.close()
    finally:
        server.stop()


def test_sentinel_finds_the_master(tmp_path: Path, redis_server: RedisServer) -> None:
    """With [state] sentinels set, the store asks a real Sentinel for the master and uses it."""
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor congvu-test 127.0.0.1 {redis_server.port} 1\n")
    proc = subprocess.Popen([need("redis-server", "redis-server"), str(conf), "--sentinel"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", port)
        store = counters(tmp_path, sentinels=[f"127.0.0.1:{port}"], sentinel_service="congvu-test")
        try:
            assert store.hit("k", 4, [HOUR], T0) == (4,)
            direct = redis.Redis(port=redis_server.port)
            assert direct.exists(store.prefix + "c:k") == 1
            direct.close()
        finally:
            store.close()
        unknown = counters(tmp_path, sentinels=[f"127.0.0.1:{port}"], sentinel_service="nobody")
        with pytest.raises(StateUnavailable):
            unknown.hit("k", 1, [HOUR], T0)
        unknown.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_memory_is_bounded(tmp_path: Path, redis_server: RedisServer) -> None:
    """Every key has a TTL, and a counter keeps at most one window of buckets however long it runs."""
    store = counters(tmp_path, url=redis_server.url)
    direct = redis.Redis(port=redis_server.port)
    try:
        for i in range(500):
            store.hit("busy", 1, [HOUR], T0 + i * 60)  # one hit a minute for 500 minutes
            store.record_failure("auth", f"fp{i}", timedelta(minutes=15), T0 + i)
        store.seen("inst", HOUR, T0)
        store.lock("auth", T0 + 60, T0)
        assert direct.hlen(store.prefix + "c:busy") <= BUCKETS + 1
        for kind in ("c:busy", "f:auth", "s:inst", "l:auth"):
            ttl = direct.pttl(store.prefix + kind)
            assert 0 < ttl <= (HOUR + timedelta(minutes=1)).total_seconds() * 1000, kind
    finally:
        direct.close()
        store.close()


def test_one_round_trip_per_decision(tmp_path: Path, redis_server: RedisServer) -> None:
    """A rate-limit decision is one command from the client (EVALSHA); the rest runs inside the script."""
    store = counters(tmp_path, url=redis_server.url)
    direct = redis.Redis(port=redis_server.port)
    sent: list[object] = []
    real = store._r.execute_command

    def counting(*args: Any, **kwargs: Any) -> Any:
        sent.append(args[0])
        return real(*args, **kwargs)

    store._r.execute_command = counting
    try:
        store.hit_if_below("warm", 1, [(HOUR, 5)], T0)  # loads the script once
        direct.config_resetstat()
        sent.clear()
        for i in range(50):
            store.hit_if_below("rt", 1, [(timedelta(minutes=1), 10), (HOUR, 30)], T0 + i)
        assert sent == ["EVALSHA"] * 50
        stats = direct.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 50
        in_script = {"cmdstat_hgetall", "cmdstat_hincrby", "cmdstat_hdel", "cmdstat_pexpire"}
        assert set(stats) - {"cmdstat_info", "cmdstat_config|resetstat", "cmdstat_evalsha"} <= in_script
    finally:
        direct.close()
        store.close()


def test_unix_socket_url(tmp_path: Path) -> None:
    """A unix:// URL reaches Redis over its local socket."""
    sock = tmp_path / "redis.sock"
    server = RedisServer(tmp_path / "redis", ["--unixsocket", str(sock), "--unixsocketperm", "700"])
    server.start()
    try:
        store = counters(tmp_path, url=f"unix://{sock}?db=2")
        try:
            assert store.hit("k", 5, [HOUR], T0) == (5,)
            assert repr(store).startswith(f"RedisCounters('{sock}'")
        finally:
            store.close()
    finally:
        server.stop()
