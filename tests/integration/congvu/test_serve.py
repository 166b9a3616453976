"""`congvu serve` as systemd runs it: READY once listening, RELOADING/READY on SIGHUP, STOPPING; failed starts exit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.support import free_port

CONGVU = Path(sys.executable).parent / "congvu"


def _config(root: Path, web_port: int) -> Path:
    conf = root / "congvu.toml"
    conf.write_text(f"""\
state_dir = "var"
[directory]
hash_cost = "test"
[policyd]
listen = ["unix:var/policy.sock:mode=660"]
socket_group = ""
stats_listen = []
[milter]
listen = ["unix:var/milter.sock:mode=660"]
[authhooks]
socket = "var/authd.sock"
socket_group = ""
sasl_listen = ["unix:var/sasl.sock:mode=660"]
sasl_group = ""
web_listen = ["tcp:{web_port}:interface=127.0.0.1"]
""", encoding="utf-8")
    return conf


def _receive(sock: socket.socket, want: str, timeout: float = 30.0) -> list[str]:
    """Datagrams until one contains ``want`` (every one received, in order)."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if want in got[-1]:
            return got
    raise AssertionError(f"no {want!r} from congvu serve; got {got}")


def test_systemd_hears_ready_reloading_and_stopping(tmp_path: Path) -> None:
    """Type=notify: READY=1 (and STATUS) once all listen; SIGHUP: RELOADING=1 then READY=1; SIGTERM: STOPPING=1."""
    conf = _config(tmp_path, free_port())
    notify = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        proc = subprocess.Popen([str(CONGVU), "serve", "--config", str(conf)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={**os.environ, "NOTIFY_SOCKET": str(notify)})
        try:
            ready = _receive(sock, "READY=1")
            assert "STATUS=4 service(s) running" in ready[-1]
            assert (tmp_path / "var" / "policy.sock").is_socket() and (tmp_path / "var" / "authd.sock").is_socket()
            assert (tmp_path / "var" / "sasl.sock").is_socket()
            proc.send_signal(signal.SIGHUP)
            assert _receive(sock, "READY=1")[0] == "RELOADING=1"
            proc.send_signal(signal.SIGTERM)
            assert "STOPPING=1" in _receive(sock, "STOPPING=1")[-1]
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_service_that_cannot_start_stops_the_others_and_exits_1(tmp_path: Path) -> None:
    """The page's port taken: one line naming [authhooks] web_listen, exit 1 promptly, nothing left listening."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    conf = _config(tmp_path, taken.getsockname()[1])
    try:
        done = subprocess.run([str(CONGVU), "serve", "--config", str(conf)], capture_output=True, text=True,
                              timeout=60)
    finally:
        taken.close()
    assert done.returncode == 1
    assert "[authhooks] web_listen" in done.stderr and "address already in use" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "var" / "policy.sock").exists() and not (tmp_path / "var" / "authd.sock").exists()
    assert not (tmp_path / "var" / "sasl.sock").exists()
