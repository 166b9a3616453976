"""The real ``congvu policyd``/``congvu serve`` process: endpoints, SIGHUP reload, stats, explain, Redis counters."""

from __future__ import annotations

import io
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from congvu.cli import main as congvu_main
from congvu.config import load_config
from congvu.directory.accounts import open_store
from congvu.directory.model import Account
from congvu.output import Output
from congvu.rules.units import MB
from tests.integration.policyd.conftest import PROBE, REPO, PolicydProcess, ask, site_config, write_config
from tests.integration.servers.redis import RedisServer
from tests.integration.support import free_port

BIG_16MB = (b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=a@example.com\nclient_address=192.0.2.1\n"
            b"size=%d\n\n" % (16 * MB))


def _message(user: str, n: int, state: str = "DATA") -> bytes:
    return (f"request=smtpd_access_policy\nprotocol_state={state}\nsasl_username={user}\nsender={user}\n"
            f"client_address=192.0.2.7\nrecipient_count=1\ninstance=m{n}.{time.monotonic_ns()}\n\n").encode()


def _wait_for(pred: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def _cli(*argv: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    if stdin is None:
        code = congvu_main(list(argv), out=Output(out, err))
        return code, out.getvalue(), err.getvalue()
    proc = subprocess.run([sys.executable, "-c", "import sys; from congvu.cli import main; sys.exit(main())",
                           *argv], input=stdin, capture_output=True, cwd=REPO, timeout=60)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def _add(cfg_path: Path, local: str, **kw: Any) -> None:
    store = open_store(load_config(cfg_path))
    kw.setdefault("password_changed_at", datetime.now(UTC))
    store.add(Account(local_part=local, domain="cantho.gov.vn", full_name="Nguyễn Văn Thử",
                      mailbox_type=kw.pop("mailbox_type", "personal"), must_change=False, **kw))
    store.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A config with TCP v4, TCP v6 and a unix socket (mode 660) and a stats port; policyd not yet started."""
    v4, v6, stats_port = free_port(), free_port("::1"), free_port()
    listen = [f"tcp:{v4}:interface=127.0.0.1", f"tcp6:{v6}:interface=\\:\\:1",
              f"unix:{tmp_path}/sock/policy.sock:mode=660"]
    data = site_config(tmp_path / "state", profile="cantho-2025", listen=listen, redis=None,
                       policyd={"stats_listen": [f"tcp:{stats_port}:interface=127.0.0.1"]})
    cfg = write_config(tmp_path / "congvu.toml", data)
    proc = PolicydProcess(tmp_path / "policyd.log")
    yield {"cfg": cfg, "data": data, "listen": listen, "proc": proc, "tmp": tmp_path}
    proc.stop()


def test_listens_on_v4_v6_and_a_unix_socket_with_its_mode(site: dict[str, Any]) -> None:
    """Every endpoint answers; the unix socket gets the configured mode; startup prints what it listens on."""
    proc: PolicydProcess = site["proc"]
    v4, v6, unix = site["listen"]
    proc.start(site["cfg"], [v4, unix])
    for ep in (v4, unix):
        assert ask(ep, PROBE) == b"action=DUNNO\n\n"
    with socket.create_connection(("::1", int(v6.split(":")[1])), timeout=5) as s6:
        s6.sendall(PROBE)
        assert s6.recv(4096) == b"action=DUNNO\n\n"
    sock = site["tmp"] / "sock" / "policy.sock"
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
    log = proc.log_text()
    assert f"policyd: listening on unix:{sock}:mode=660" in log and "(127.0.0.1:" in log and "([::1]:" in log


def test_sighup_reloads_a_valid_config_and_keeps_the_old_one_on_error(site: dict[str, Any]) -> None:
    """SIGHUP: a new profile takes effect on the open connection; a broken file is refused and logged."""
    proc: PolicydProcess = site["proc"]
    proc.start(site["cfg"], site["listen"][:1])
    ep = site["listen"][0]
    assert ask(ep, BIG_16MB) == b"action=DUNNO\n\n"  # 16 MB is within cantho-2025's 20 MB attachments
    data = dict(site["data"], profile="thanhhoa-2013")
    write_config(site["cfg"], data)
    proc.reload()
    _wait_for(lambda: "configuration reloaded" in proc.log_text())
    reply = ask(ep, BIG_16MB)
    assert reply.startswith(b"action=552 5.3.4 ") and b"TH13-9" in reply
    site["cfg"].write_text("profile = \"no-such-profile\"\n[policyd\n", encoding="utf-8")
    proc.reload()
    _wait_for(lambda: "reload refused" in proc.log_text())
    assert "not valid TOML" in proc.log_text()
    assert ask(ep, BIG_16MB).startswith(b"action=552 5.3.4 ")  # still thanhhoa-2013
    assert proc.running


def test_stats_endpoint_and_cli(site: dict[str, Any]) -> None:
    """/metrics counts decisions per check; ``congvu policyd stats`` shows them in a table."""
    proc: PolicydProcess = site["proc"]
    proc.start(site["cfg"], site["listen"][:1])
    ep = site["listen"][0]
    big = BIG_16MB.replace(b"size=%d" % (16 * MB), b"size=%d" % (60 * MB))
    for _ in range(3):
        assert ask(ep, big).startswith(b"action=552")
    code, out, err = _cli("policyd", "stats", "--config", str(site["cfg"]))
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith("size "))
    assert row.split() == ["size", "reject", "3"]
    code, out, _ = _cli("policyd", "stats", "--config", str(site["cfg"]), "--json")
    assert '"metric": "congvu_policyd_requests_total"' in out


def test_stats_cli_says_when_policyd_is_not_running(site: dict[str, Any]) -> None:
    """No server on the stats port: exit 1 with a sentence, not a traceback."""
    code, _, err = _cli("policyd", "stats", "--config", str(site["cfg"]))
    assert code == 1 and "is policyd running?" in err


def test_explain_prints_the_checks_and_why(site: dict[str, Any]) -> None:
    """``congvu policyd explain < request`` shows each check's outcome and the action, counting nothing."""
    _add(site["cfg"], "nvminh")
    req = (b"request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_username=nvminh\n"
           b"sender=other@cantho.gov.vn\nclient_address=192.0.2.1\nsize=1000\n")
    code, out, err = _cli("policyd", "explain", "--config", str(site["cfg"]), stdin=req)
    assert code == 0, err
    assert "account_state  passed" in out and "sender_login   refused" in out
    assert "action=553 5.7.1" in out and "CT25-3.2" in out
    code, _, err = _cli("policyd", "explain", "--config", str(site["cfg"]), stdin=b"garbage\n\n")
    assert code == 1 and "without reply" in err


def test_rates_on_redis_defer_then_fail_open_when_redis_stops(tmp_path: Path) -> None:
    """Counters in a real redis-server (native client): the 2nd message defers at limit 1; Redis down → DUNNO."""
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    proc = PolicydProcess(tmp_path / "policyd.log")
    try:
        ep = f"tcp:{free_port()}:interface=127.0.0.1"
        cfg = write_config(tmp_path / "congvu.toml", site_config(
            tmp_path / "state", profile="cantho-2025", listen=[ep], redis=redis,
            policyd={"rate_overrides": {"rate1@cantho.gov.vn": {"messages_per_hour": 1}},
                     "stats_listen": [f"tcp:{free_port()}:interface=127.0.0.1"]}))
        _add(cfg, "rate1")
        proc.start(cfg, [ep])
        assert ask(ep, _message("rate1@cantho.gov.vn", 1)) == b"action=DUNNO\n\n"
        from congvu.directory.counters import open_counters
        blocking = open_counters(load_config(cfg))  # redis-py sees what the native client counted
        assert blocking.peek("policyd:msgs:rate1@cantho.gov.vn", [timedelta(hours=1)], time.time()) == (1,)
        blocking.close()
        reply = ask(ep, _message("rate1@cantho.gov.vn", 2))
        assert reply.startswith(b"action=450 4.7.1 ") and b"retry in" in reply
        _, out, _ = _cli("policyd", "stats", "--config", str(cfg))
        assert "native_counter_requests_total" in out
        native = next(line for line in out.splitlines() if line.startswith("native_counter_requests_total"))
        assert int(native.split()[-1]) >= 1  # the rate check ran in the reactor, not in a thread
        redis.stop()
        assert ask(ep, _message("rate1@cantho.gov.vn", 3)) == b"action=DUNNO\n\n"  # fails open
        assert ask(ep, BIG_16MB.replace(b"size=%d" % (16 * MB), b"size=%d" % (60 * MB))).startswith(b"action=552")
        _wait_for(lambda: "fail_rates = dunno" in proc.log_text())
        redis.start()
        _wait_for(lambda: ask(ep, _message("rate1@cantho.gov.vn", 4)).startswith(b"action=450"), timeout=15)
    finally:
        proc.stop()
        redis.stop()


def test_serve_runs_policyd_and_prints_where(tmp_path: Path) -> None:
    """``congvu serve`` (what scripts/run.sh starts) prints each endpoint and answers on it."""
    ep = f"tcp:{free_port()}:interface=127.0.0.1"
    cfg = write_config(tmp_path / "congvu.toml", site_config(tmp_path / "state", profile="cantho-2025",
                                                             listen=[ep], redis=None))
    p = subprocess.Popen([sys.executable, "-c", "import sys; from congvu.cli import main; sys.exit(main())",
                          "serve", "--only", "policyd", "--config", str(cfg)], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert p.stdout is not None
        line = p.stdout.readline().decode()
        assert line.startswith(f"policyd: listening on {ep} (127.0.0.1:")
        assert ask(ep, PROBE) == b"action=DUNNO\n\n"
    finally:
        p.terminate()
        p.wait(timeout=10)
    assert p.returncode == 0


def test_a_config_error_stops_startup_with_one_sentence(tmp_path: Path) -> None:
    """An unknown key: exit 1 naming the file and key, no traceback, nothing listening."""
    cfg = tmp_path / "congvu.toml"
    cfg.write_text("[policyd]\nlisten = [\"tcp:1:interface=127.0.0.1\"]\nmax_recipient = 3\n", encoding="utf-8")
    code, _, err = _cli("policyd", "--config", str(cfg))
    assert code == 1 and "policyd.max_recipient: unknown key" in err and "Traceback" not in err


def test_port_in_use_fails_cleanly(tmp_path: Path) -> None:
    """A listen endpoint already taken: exit 1 with one line naming the endpoint, the setting and the reason."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = write_config(tmp_path / "congvu.toml", site_config(
            tmp_path / "state", profile="cantho-2025", listen=[f"tcp:{port}:interface=127.0.0.1"], redis=None))
        proc = subprocess.run([sys.executable, "-c", "import sys; from congvu.cli import main; sys.exit(main())",
                               "policyd", "--config", str(cfg)], cwd=REPO, capture_output=True, timeout=60)
    assert proc.returncode == 1 and b"cannot start" in proc.stderr
    line = f"policy server: cannot listen on tcp:{port}:interface=127.0.0.1 ([policyd] listen): address already in use"
    assert line.encode() in proc.stderr and b"Traceback" not in proc.stderr


def test_a_listen_on_all_interfaces_is_refused_without_allow_remote(tmp_path: Path) -> None:
    """tcp without a loopback interface: exit 1 naming policyd.listen and allow_remote; with it, it listens."""
    port = free_port()
    data = site_config(tmp_path / "state", profile="cantho-2025", listen=[f"tcp:{port}"], redis=None)
    cfg = write_config(tmp_path / "congvu.toml", data)
    proc = subprocess.run([sys.executable, "-c", "import sys; from congvu.cli import main; sys.exit(main())",
                           "policyd", "--config", str(cfg)], cwd=REPO, capture_output=True, timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "policyd.listen" in err and "allow_remote" in err and "all interfaces" in err, err
    with socket.socket() as s:  # nothing was left listening
        assert s.connect_ex(("127.0.0.1", port)) != 0
    data["policyd"]["allow_remote"] = True
    write_config(cfg, data)
    running = PolicydProcess(tmp_path / "policyd.log")
    try:
        running.start(cfg, [f"tcp:{port}:interface=127.0.0.1"])  # all interfaces include loopback
    finally:
        running.stop()


def test_every_decision_line_is_written_before_sigterm_ends_the_process(tmp_path: Path) -> None:
    """The buffered log loses nothing: 300 decisions answered, SIGTERM at once, 300 lines in the log."""
    ep = f"tcp:{free_port()}:interface=127.0.0.1"
    cfg = write_config(tmp_path / "congvu.toml", site_config(tmp_path / "state", profile="cantho-2025",
                                                             listen=[ep], redis=None))
    proc = PolicydProcess(tmp_path / "policyd.log")
    proc.start(cfg, [ep])
    try:
        n = 300
        requests = b"".join(BIG_16MB.replace(b"client_address=192.0.2.1", b"client_address=192.0.2.1\n"
                                             b"queue_id=Q%05d" % i) for i in range(n))
        with socket.create_connection(("127.0.0.1", int(ep.split(":")[1])), timeout=10) as s:
            s.sendall(requests)
            got = b""
            while got.count(b"\n\n") < n:
                chunk = s.recv(65536)
                assert chunk, "connection closed early"
                got += chunk
    finally:
        proc.stop()  # SIGTERM right after the last answer, well within the 50 ms flush interval
    log = proc.log_text()
    assert all(f"queue_id=Q{i:05d} " in log for i in range(n)), log[-2000:]
