"""``congvu authd`` and ``congvu serve`` serve the password page themselves (real subprocesses, real HTTP).

The page shares authd's AuthService and thread pool; a taken ``web_listen`` port stops
the start with one line naming the setting and the endpoint, never a traceback.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.integration.authhooks.webproc import CONGVU, ISSUED, STRONG, Browser, WebSite, post
from tests.integration.support import new_root


@pytest.fixture
def site() -> Iterator[WebSite]:
    s = WebSite(new_root("congvu-authdweb-"), web_rate_user=1)
    try:
        yield s
    finally:
        s.close()


def test_congvu_authd_serves_the_page_and_the_roundcube_api(site: WebSite) -> None:
    """`congvu authd` prints the page's endpoint, serves GET / and POST /api/password, and applies SIGHUP to it."""
    addr = site.add("trang.authd")
    site.start_authd(with_web=True)
    b = Browser(site.url)
    page = b.load()
    assert page.status == 200 and "Đổi mật khẩu".encode() in page.body
    r = post(site.url + "/api/password", {"user": addr, "curpass": ISSUED, "newpass": STRONG})
    assert (r.status, r.body) == (200, b"OK"), r
    account = site.account(addr)
    assert not account.must_change and site.hasher.verify(STRONG, account.password_hash)[0]
    assert f"web: listening on tcp:{site.port}:interface=127.0.0.1 (password page" in site.log_text()
    # web_rate_user = 1: the next attempt for this account is rate limited ...
    wrong = {"user": addr, "curpass": "Sai-Hiện-Tại-1", "newpass": STRONG}
    assert post(site.url + "/api/password", wrong).status == 429
    # ... until a reload lifts the limit: SIGHUP reaches the page inside authd.
    site.config_path.write_text(site.config_path.read_text().replace("web_rate_user = 1", "web_rate_user = 0"))
    site.procs[0].send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while (status := post(site.url + "/api/password", wrong).status) == 429 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status == 403, f"the reloaded limit never applied:\n{site.log_tail()}"


def test_congvu_serve_prints_the_page_endpoint(site: WebSite) -> None:
    """`congvu serve --only authd` starts the page too and prints where it listens."""
    proc = subprocess.Popen([str(CONGVU), "serve", "--only", "authd", "--config", str(site.config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode("utf-8", "replace")
            if not line:
                break
            lines.append(line)
            if line.startswith("congvu serve:"):
                break
        text = "".join(lines)
        assert f"web: listening on tcp:{site.port}:interface=127.0.0.1 (password page, POST /api/password)" \
            in text, text
        assert Browser(site.url).load().status == 200
    finally:
        proc.terminate()
        proc.wait(15)


def _listening_socket() -> tuple[socket.socket, int]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s, s.getsockname()[1]


@pytest.mark.parametrize("command", [["authd"], ["serve", "--only", "authd"]])
def test_taken_web_port_is_one_clear_line_not_a_traceback(command: list[str]) -> None:
    """Another program on web_listen's port: exit 1 and one line naming web_listen and the endpoint."""
    holder, port = _listening_socket()
    site = WebSite(new_root("congvu-authdbusy-"))
    try:
        endpoint = f"tcp:{port}:interface=127.0.0.1"
        site.config_path.write_text(site.config_path.read_text().replace(
            f"tcp:{site.port}:interface=127.0.0.1", endpoint))
        done = subprocess.run([str(CONGVU), *command, "--config", str(site.config_path)], capture_output=True,
                              text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    finally:
        holder.close()
        site.close()
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr + done.stdout
    errors = [ln for ln in done.stderr.splitlines() if "cannot" in ln]
    assert errors == [f"congvu: cannot start: password page: cannot listen on {endpoint} ([authhooks] web_listen): "
                      "address already in use (another program listens there: stop it, or set [authhooks] "
                      "web_listen to a free endpoint)"], done.stderr
