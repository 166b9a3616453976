"""Bad input against the real ``congvu policyd`` process: every case closes that connection, others go on."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.integration.policyd.conftest import PROBE, PolicydProcess, ask, site_config, write_config
from tests.integration.support import free_port

GOOD = b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=a@example.com\nclient_address=192.0.2.1\nsize=1\n\n"


@pytest.fixture(scope="module")
def policyd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PolicydProcess, str]]:
    """One policyd on TCP loopback with a 1 s request timeout (so slowloris is quick to test)."""
    root = tmp_path_factory.mktemp("policyd-bad-input")
    endpoint = f"tcp:{free_port()}:interface=127.0.0.1"
    cfg = write_config(root / "congvu.toml", site_config(root / "state", profile="cantho-2025", listen=[endpoint],
                                                         redis=None, policyd={"request_timeout": "1s"}))
    proc = PolicydProcess(root / "policyd.log")
    proc.start(cfg, [endpoint])
    yield proc, endpoint
    proc.stop()


def _open(endpoint: str) -> socket.socket:
    port = int(endpoint.split(":")[1])
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def _closed_without_reply(s: socket.socket, timeout: float = 10.0) -> bool:
    """True when the server closes the connection (EOF or reset) having sent no reply at all."""
    s.settimeout(timeout)
    got = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except ConnectionResetError:
        pass
    return b"action=" not in got


def _send_all(s: socket.socket, data: bytes, chunk: int = 65536) -> None:
    """Send until done or until the server has closed on us (a reset is the expected end)."""
    try:
        for i in range(0, len(data), chunk):
            s.sendall(data[i:i + chunk])
    except (BrokenPipeError, ConnectionResetError):
        pass


@pytest.mark.parametrize("payload", [
    pytest.param(b"request=smtpd_access_policy\nsender=" + b"a" * (10 * 1024 * 1024), id="10MB-no-blank-line"),
    pytest.param(b"request=smtpd_access_policy\nsender=a\x00b@example.com\n\n", id="NUL"),
    pytest.param(b"request=smtpd_access_policy\nsender=\xc3\x28@example.com\n\n", id="invalid-UTF-8"),
    pytest.param(b"request=smtpd_access_policy\n" + b"".join(b"x%d=1\n" % i for i in range(10_000)) + b"\n",
                 id="10000-attributes"),
    pytest.param(b"no equals sign here\n\n", id="not-name-value"),
])
def test_bad_input_closes_the_connection_and_others_keep_working(policyd: tuple[PolicydProcess, str],
                                                                 payload: bytes) -> None:
    """The bad connection is closed with no reply; an already open one and a new one are still answered."""
    proc, endpoint = policyd
    bystander = _open(endpoint)
    bad = _open(endpoint)
    _send_all(bad, payload)
    assert _closed_without_reply(bad)
    bad.close()
    bystander.sendall(GOOD)
    assert bystander.recv(4096) == b"action=DUNNO\n\n"
    bystander.close()
    assert ask(endpoint, PROBE).startswith(b"action=")
    assert proc.running


def test_slowloris_is_cut_off_after_request_timeout(policyd: tuple[PolicydProcess, str]) -> None:
    """One byte every 0.2 s never finishes a request: closed after request_timeout (1 s), others unaffected."""
    proc, endpoint = policyd
    slow = _open(endpoint)
    start = time.monotonic()
    closed = False
    try:
        for b in GOOD[:-2]:
            slow.sendall(bytes([b]))
            time.sleep(0.2)
            if time.monotonic() - start > 1.0:
                assert ask(endpoint, GOOD) == b"action=DUNNO\n\n"  # the server is not blocked by it
            if time.monotonic() - start > 8:
                break
    except (BrokenPipeError, ConnectionResetError):
        closed = True
    assert closed or _closed_without_reply(slow, timeout=5)
    assert time.monotonic() - start < 8
    slow.close()
    assert "request unfinished after 1s" in proc.log_text()


def test_a_connection_is_reused_for_many_requests(policyd: tuple[PolicydProcess, str]) -> None:
    """Postfix keeps one connection per smtpd: 200 requests in a row on it each get their answer."""
    _, endpoint = policyd
    s = _open(endpoint)
    for _ in range(200):
        s.sendall(GOOD)
        assert s.recv(4096) == b"action=DUNNO\n\n"
    s.close()


def test_protocol_errors_are_logged(policyd: tuple[PolicydProcess, str]) -> None:
    """Each close without reply leaves a warning naming the reason (README: log a warning, disconnect)."""
    proc, endpoint = policyd
    s = _open(endpoint)
    s.sendall(b"request=smtpd_access_policy\nsender=a\x00b\n\n")
    assert _closed_without_reply(s)
    s.close()
    deadline = time.monotonic() + 5
    while "NUL byte in request" not in proc.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "without reply: NUL byte in request" in proc.log_text()


