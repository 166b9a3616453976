"""``[policyd] workers = 2``: the real ``congvu policyd`` master and its worker process sharing the sockets."""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import stat
import time
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from congvu.policyd.stats import parse_metrics
from congvu.rules.units import MB
from tests.integration.policyd.conftest import PolicydProcess, _endpoint_address, ask, site_config, write_config
from tests.integration.support import free_port

BIG_16MB = (b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=a@example.com\nclient_address=192.0.2.1\n"
            b"size=%d\n\n" % (16 * MB))
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[[\w.]+#\w+\] (\[w\d+\] )?policyd: queue_id=\S+ "
                      r"instance=\S+ sasl_username=\S+ sender=<[^>]*> client=\S+ state=\S+ check=\S+ id=\S+ "
                      r"action='[^']*'$")


def _wait_for(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.05)


def _search(pattern: re.Pattern[str], proc: PolicydProcess) -> re.Match[str] | None:
    return pattern.search(proc.log_text())


def _master_pid(proc: PolicydProcess) -> int:
    assert proc._proc is not None
    return proc._proc.pid


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> set[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    out = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(entry.name))
    return out


def _metrics(port: int) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return parse_metrics(resp.read().decode())


def _per_worker(rows: list[tuple[str, dict[str, str], float]]) -> dict[str, float]:
    return {lab["worker"]: v for n, lab, v in rows if n == "congvu_policyd_worker_requests_total"}


def _value(rows: list[tuple[str, dict[str, str], float]], name: str) -> float:
    return next(v for n, lab, v in rows if n == name and not lab)


def _connect(endpoint: str) -> socket.socket:
    family, address = _endpoint_address(endpoint)
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(address)
    return s


def _request(s: socket.socket, request: bytes) -> bytes:
    """One request on an open connection; the reply."""
    s.sendall(request)
    reply = b""
    while not reply.endswith(b"\n\n"):
        chunk = s.recv(4096)
        assert chunk, "connection closed without a reply"
        reply += chunk
    return reply


_TAGS = itertools.count()


def _tagged(n: int) -> bytes:
    """BIG_16MB with instance=cN, to find in the log which process answered it."""
    return BIG_16MB.replace(b"size=", b"instance=c%d\nsize=" % n)


def _spread(proc: PolicydProcess, endpoint: str, *, each: int, bursts: int = 25) -> list[tuple[socket.socket, str]]:
    """Open connections in bursts of 8 until master and worker hold ``each`` of them: [(connection, "w0"/"w1")].

    Which process accepts is the kernel's and the scheduler's choice; the log says who answered.
    Bursts, as when Postfix starts smtpd processes under load: one connection at a time to
    idle processes tends to go to the same one, whichever the kernel wakes first.
    """
    conns: list[tuple[socket.socket, str]] = []
    try:
        for _ in range(bursts):
            burst = [_connect(endpoint) for _ in range(8)]
            for s in burst:
                n = next(_TAGS)
                assert _request(s, _tagged(n)) == b"action=DUNNO\n\n"
                pattern = re.compile(rf"(\[w(\d+)\] )?policyd: queue_id=\S+ instance=c{n} ")
                m = _wait_for(partial(_search, pattern, proc), what=f"the log line of request c{n}")
                conns.append((s, f"w{m.group(2) or 0}"))
            if all(sum(w == tag for _, w in conns) >= each for tag in ("w0", "w1")):
                return conns
    except BaseException:
        for s, _ in conns:
            s.close()
        raise
    for s, _ in conns:
        s.close()
    raise AssertionError(f"{len(conns)} connections, not {each} for each process: {[w for _, w in conns]}")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """workers = 2 on TCP and a unix socket (mode 660), a stats port; policyd not yet started."""
    tcp_port, stats_port = free_port(), free_port()
    listen = [f"tcp:{tcp_port}:interface=127.0.0.1", f"unix:{tmp_path}/sock/policy.sock:mode=660"]
    data = site_config(tmp_path / "state", profile="cantho-2025", listen=listen, redis=None,
                       policyd={"workers": 2, "stats_listen": [f"tcp:{stats_port}:interface=127.0.0.1"]})
    cfg = write_config(tmp_path / "congvu.toml", data)
    proc = PolicydProcess(tmp_path / "policyd.log")
    yield {"cfg": cfg, "data": data, "listen": listen, "proc": proc, "stats": stats_port,
           "sock": tmp_path / "sock" / "policy.sock"}
    proc.stop()


def _start(site: dict[str, Any]) -> tuple[PolicydProcess, int]:
    """Start the master and wait for its worker 1 to serve; (process, worker pid)."""
    proc: PolicydProcess = site["proc"]
    proc.start(site["cfg"], site["listen"])
    m = _wait_for(lambda: re.search(r"\[w1\] policyd: worker 1 \(pid (\d+)\) serving", proc.log_text()),
                  what="worker 1 serving")
    return proc, int(m.group(1))


def test_connections_are_spread_and_metrics_sum_every_worker(site: dict[str, Any]) -> None:
    """Connections on both endpoints go to both processes; /metrics sums them exactly; no torn log line."""
    proc, _ = _start(site)
    conns = [c for ep in site["listen"] for c in _spread(proc, ep, each=3)]
    sent = len(site["listen"]) + len(conns)  # PolicydProcess.start's PROBE (one per endpoint), then _spread's
    try:
        for _round in range(3):
            for s, _ in conns:
                assert _request(s, BIG_16MB) == b"action=DUNNO\n\n"
                sent += 1
    finally:
        for s, _ in conns:
            s.close()
    rows = _wait_for(lambda: (r := _metrics(site["stats"])) and _value(r, "congvu_policyd_requests_total") == sent
                     and r, what=f"requests_total == {sent}")
    per_worker = _per_worker(rows)
    assert set(per_worker) == {"0", "1"} and sum(per_worker.values()) == sent
    on_w1 = sum(w == "w1" for _, w in conns)
    on_w0 = len(conns) - on_w1  # 4 requests each, and the probes went to either
    assert 4 * on_w1 <= per_worker["1"] <= 4 * on_w1 + 2 and 4 * on_w0 <= per_worker["0"] <= 4 * on_w0 + 2
    assert _value(rows, "congvu_policyd_workers") == 2
    assert _value(rows, "congvu_policyd_connections_total") == len(conns) + len(site["listen"])
    proc.stop()
    decisions = [line for line in proc.log_text().splitlines() if "action=" in line]
    assert len(decisions) == sent
    assert [line for line in decisions if not LOG_LINE.match(line)] == []
    assert sum("[w1] policyd: queue_id=" in line for line in decisions) == per_worker["1"]


def test_sighup_lowering_the_size_limit_applies_on_every_connection(site: dict[str, Any]) -> None:
    """SIGHUP to the master reloads it and its worker: open connections of both processes see the new limit."""
    proc, _ = _start(site)
    conns = _spread(proc, site["listen"][0], each=4)
    try:
        write_config(site["cfg"], dict(site["data"], profile="thanhhoa-2013"))
        proc.reload()
        _wait_for(lambda: "] policyd: configuration reloaded" in proc.log_text()
                  and "[w1] policyd: configuration reloaded" in proc.log_text(), what="both reloaded")
        for s, _ in conns:
            reply = _request(s, BIG_16MB)  # 16 MB: within cantho-2025's 20 MB attachments, over thanhhoa-2013's
            assert reply.startswith(b"action=552 5.3.4 ") and b"TH13-9" in reply
    finally:
        for s, _ in conns:
            s.close()


def test_a_killed_worker_is_restarted_and_answers_new_connections(site: dict[str, Any]) -> None:
    """kill -9 of the worker: one log line names it, and a new worker process answers new connections."""
    proc, old = _start(site)
    os.kill(old, signal.SIGKILL)
    line = _wait_for(lambda: re.search(rf"policyd: worker 1 \(pid {old}\) exited unexpectedly, killed by signal 9; "
                                       r"restarting it in 1s", proc.log_text()), what="restart line")
    assert line
    m = _wait_for(lambda: re.search(rf"\[w1\] policyd: worker 1 \(pid (?!{old}\))(\d+)\) serving", proc.log_text()),
                  what="new worker 1 serving")
    new = int(m.group(1))
    assert new in _children(_master_pid(proc))
    before = _per_worker(_metrics(site["stats"]))["1"]

    def new_worker_answered() -> bool:
        for ep in site["listen"]:
            assert ask(ep, BIG_16MB) == b"action=DUNNO\n\n"
        return _per_worker(_metrics(site["stats"]))["1"] > before

    _wait_for(new_worker_answered, what="the new worker answered")


def test_sigterm_of_the_master_leaves_no_worker(site: dict[str, Any]) -> None:
    """SIGTERM: the master stops its worker before exiting; no process is left."""
    proc, worker = _start(site)
    master = _master_pid(proc)
    assert _children(master) == {worker}
    proc.stop()  # SIGTERM, and waits for the master's exit
    assert not _alive(master)
    assert not _alive(worker)
    assert "still running" not in proc.log_text()  # it stopped on SIGTERM, not on the SIGKILL fallback
    assert "Traceback" not in proc.log_text()


def test_sigkill_of_the_master_stops_the_workers_by_themselves(site: dict[str, Any]) -> None:
    """The master SIGKILLed: its worker sees its control pipe close and exits within a few seconds."""
    proc, worker = _start(site)
    proc.stop(signal.SIGKILL)
    _wait_for(lambda: not _alive(worker), timeout=5, what="the orphaned worker exited")
    assert "[w1] policyd: control pipe closed" in proc.log_text() and "Traceback" not in proc.log_text()


def test_the_unix_socket_keeps_its_mode_and_file_with_workers(site: dict[str, Any]) -> None:
    """The worker serves the unix socket without chmod-ing it to 666, and its own stop does not unlink it."""
    proc, worker = _start(site)
    sock: Path = site["sock"]
    assert stat.S_IMODE(sock.stat().st_mode) == 0o660
    os.kill(worker, signal.SIGTERM)  # a clean stop of the worker alone: the master restarts it
    _wait_for(lambda: re.search(rf"worker 1 \(pid {worker}\) exited unexpectedly, exit status 0", proc.log_text()),
              what="worker stopped")
    _wait_for(lambda: len(re.findall(r"\[w1\] policyd: worker 1 \(pid \d+\) serving", proc.log_text())) == 2,
              what="worker restarted")
    assert sock.exists() and stat.S_IMODE(sock.stat().st_mode) == 0o660
    before = _per_worker(_metrics(site["stats"]))

    def both_answered() -> bool:
        assert ask(site["listen"][1], BIG_16MB) == b"action=DUNNO\n\n"
        now = _per_worker(_metrics(site["stats"]))
        return now["0"] > before["0"] and now["1"] > before["1"]

    _wait_for(both_answered, what="both processes answered on the unix socket")
    assert stat.S_IMODE(sock.stat().st_mode) == 0o660
