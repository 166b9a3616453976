"""A second Postfix with the shipped content milters: rspamd, then ``congvu milter`` (issue 14).

``milter_postfix`` is its own instance (``running_postfix`` with the test rspamd's port), so
the policyd tests keep an instance without milters.  ``congvu policyd`` and ``congvu milter``
run as two processes on one site config, so a test can stop the milter alone.  The milter
listens on the snippet's ``unix:congvu/milter`` under this instance's queue.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from congvu.policyd.milter import protocol as mp
from tests.integration.policyd.conftest import Accounts, PolicydProcess, site_config, write_config
from tests.integration.servers.postfix import PostfixServer, running_postfix
from tests.integration.servers.redis import RedisServer
from tests.integration.servers.rspamd import RspamdServer
from tests.integration.support import read_log, stop_process

REPO = Path(__file__).resolve().parents[4]


# --------------------------------------------------------------------------- a milter client (the MTA side)


class MilterClient:
    """Speaks the MTA side of the milter protocol to a unix socket, as Postfix 3.7 does (version 6)."""

    def __init__(self, path: Path, timeout: float = 30.0, tcp_port: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX if tcp_port is None else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path) if tcp_port is None else ("127.0.0.1", tcp_port))
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, cmd: bytes, data: bytes = b"") -> None:
        self.sock.sendall(mp.packet(cmd, data))

    def read(self) -> tuple[bytes, bytes]:
        """One reply packet: (command, data); (b"", b"") if the filter closed the connection."""
        while len(self.buf) < 4 or len(self.buf) < 4 + struct.unpack("!I", self.buf[:4])[0]:
            chunk = self.sock.recv(65536)
            if not chunk:
                return b"", b""
            self.buf += chunk
        (n,) = struct.unpack("!I", self.buf[:4])
        packet, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
        return packet[:1], packet[1:]

    def negotiate(self) -> int:
        """Offer what Postfix offers; the protocol flags the filter asked for."""
        self.send(b"O", struct.pack("!III", 6, 0x1FF, 0x1FFFFF))
        cmd, data = self.read()
        assert cmd == b"O", (cmd, data)
        return int(struct.unpack("!III", data[:12])[2])

    def message(self, headers: list[tuple[bytes, bytes]], body: bytes, *, login: str = "",
                sender: str = "<a@example.org>", queue_id: str = "TESTQ") -> tuple[list[tuple[bytes, bytes]],
                                                                                 tuple[bytes, bytes]]:
        """Send one message the way Postfix does (from a site host, 127.0.0.1); the headers added and the answer."""
        self.send(b"D", b"C_\0localhost [127.0.0.1]\0")
        self.send(b"D", b"M" + b"".join(k + b"\0" + v.encode() + b"\0"
                                        for k, v in ((b"{auth_authen}", login), (b"i", queue_id)) if v))
        self.send(b"M", sender.encode() + b"\0")
        for name, value in headers:
            self.send(b"L", name + b"\0" + value + b"\0")
        self.send(b"N")
        for i in range(0, len(body), 65535):
            self.send(b"B", body[i:i + 65535])
        self.send(b"D", b"Ei\0" + queue_id.encode() + b"\0")
        self.send(b"E")
        added: list[tuple[bytes, bytes]] = []
        while True:
            cmd, data = self.read()
            if cmd == b"h":
                name, value, _ = data.split(b"\0")
                added.append((name, value))
                continue
            return added, (cmd, data)


# --------------------------------------------------------------------------- the milter process


class MilterProcess:
    """``congvu milter --config FILE`` in the foreground; its output goes to ``log``."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.socket: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, config: Path, socket_path: Path, timeout: float = 20.0, tcp_port: int | None = None) -> None:
        """Start on ``config`` and wait until ``socket_path`` (or loopback ``tcp_port``) answers a negotiation."""
        self.stop()
        self.socket = socket_path
        with self.log.open("ab") as log:
            log.write(f"\n===== start {config} =====\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; from congvu.cli import main; sys.exit(main())",
                 "milter", "--config", str(config)],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                code, self._proc = self._proc.returncode, None
                raise RuntimeError(f"congvu milter exited ({code}) at start:\n{self.log_text()[-4000:]}")
            try:
                client = MilterClient(socket_path, timeout=2, tcp_port=tcp_port)
                try:
                    client.negotiate()
                    return
                finally:
                    client.close()
            except (OSError, AssertionError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"congvu milter did not answer on {socket_path}:\n{self.log_text()[-4000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc)

    def peak_rss(self) -> int:
        """The process's peak resident set size so far, bytes (VmHWM)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    def log_text(self) -> str:
        return read_log(self.log)


# --------------------------------------------------------------------------- the site


class MilterSite:
    """The milter Postfix, with congvu policyd and congvu milter on one site config; rspamd in front."""

    def __init__(self, postfix: PostfixServer, rspamd: RspamdServer, redis: RedisServer, root: Path) -> None:
        self.postfix, self.rspamd, self.redis, self.root = postfix, rspamd, redis, root
        self.policyd = PolicydProcess(root / "policyd.log")
        self.milter = MilterProcess(root / "milter.log")
        self.policy_listen = [f"unix:{postfix.policy_socket}:mode=666"]
        self.milter_listen = [f"unix:{postfix.milter_socket}:mode=666"]
        self.configs: dict[str, Path] = {}
        self.current = ""

    def config(self, name: str, profile: str, milter: Mapping[str, Any] | None = None,
               **sections: Mapping[str, Any]) -> Path:
        if name not in self.configs:
            state_dir = self.root / name
            state_dir.mkdir(parents=True, exist_ok=True)
            data = site_config(state_dir, profile=profile, listen=self.policy_listen, redis=self.redis,
                               policyd=sections.pop("policyd", None))
            data["milter"] = {"listen": self.milter_listen, **(milter or {})}
            data.update(sections)
            self.configs[name] = write_config(self.root / f"{name}.toml", data)
        return self.configs[name]

    def use(self, name: str) -> Accounts:
        """policyd and the milter on config ``name`` (restarted if needed); its accounts."""
        path = self.configs[name]
        if self.current != name or not self.policyd.running:
            self.policyd.start(path, self.policy_listen)
        if self.current != name or not self.milter.running:
            self.milter.start(path, self.postfix.milter_socket)
        self.current = name
        return Accounts(path)


@pytest.fixture(scope="session")
def milter_postfix(rspamd_server: RspamdServer) -> Iterator[PostfixServer]:
    """A second Postfix whose shipped smtpd_milters are kept: the test rspamd, then congvu's socket."""
    yield from running_postfix("congvu-milter-postfix-", rspamd_server.milter)


@pytest.fixture(scope="session")
def milter_site(milter_postfix: PostfixServer, rspamd_server: RspamdServer, redis_server: RedisServer,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilterSite]:
    """Configs ``thanhhoa`` and ``cantho``.  policyd's whole-message size check is off in both, so the
    milter's exact attachment check is what answers (policyd's own first line is tested in
    tests/integration/policyd/test_postfix_policy.py)."""
    site = MilterSite(milter_postfix, rspamd_server, redis_server, tmp_path_factory.mktemp("milter-site"))
    off = {"disabled_checks": ["size"]}
    site.config("thanhhoa", "thanhhoa-2013", policyd=off)
    site.config("cantho", "cantho-2025", policyd=off)
    try:
        yield site
    finally:
        site.milter.stop()
        site.policyd.stop()


@pytest.fixture
def thanhhoa_milter(milter_site: MilterSite) -> Accounts:
    """policyd + milter on thanhhoa-2013."""
    milter_site.redis.start()
    return milter_site.use("thanhhoa")


@pytest.fixture
def cantho_milter(milter_site: MilterSite) -> Accounts:
    """policyd + milter on cantho-2025."""
    milter_site.redis.start()
    return milter_site.use("cantho")
