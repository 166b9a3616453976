"""A throwaway redis-server: temp dir, loopback port, no persistence; stoppable for outage tests.

``redis_server`` is session-scoped.  Tests that stop or pause it must start or resume it
again (use try/finally); tests share it safely by using their own key prefix.  A server of
one's own may require a password (``password=``, the default user's) and have ACL users
(``users=``, rules as in redis.conf: ``"congvu on >pw ~* &* +@all"``).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.integration.support import free_port, need, wait_port


class RedisServer:
    """One redis-server process on 127.0.0.1; ``start()`` after ``stop()`` reuses the port."""

    def __init__(self, directory: Path, extra_args: Sequence[str] = (), *, port: int | None = None,
                 tls: bool = False, password: str | None = None, users: Sequence[str] = ()) -> None:
        self.binary = need("redis-server", "redis-server")
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.tls = tls
        self.extra_args = list(extra_args)
        if password is not None:
            self.extra_args += ["--requirepass", password]
        for rule in users:
            self.extra_args += ["--user", *rule.split()]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.url_with()

    def url_with(self, password: str | None = None, user: str = "", db: int = 0) -> str:
        """The server's URL with credentials in it (percent-encoded) and a database."""
        login = f"{quote(user, safe='')}:{quote(password, safe='')}@" if password is not None else ""
        return f"{'rediss' if self.tls else 'redis'}://{login}127.0.0.1:{self.port}/{db}"

    def _args(self) -> list[str]:
        listen = (["--port", "0", "--tls-port", str(self.port)] if self.tls else ["--port", str(self.port)])
        return [self.binary, *listen, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log"), "--daemonize", "no",
                *self.extra_args]

    def start(self) -> None:
        """Start (or restart) the server and wait until it accepts connections."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = subprocess.Popen(self._args(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port("127.0.0.1", self.port)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for it to exit."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections are accepted by the kernel, never answered."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def log(self) -> str:
        p = self.dir / "redis.log"
        return p.read_text(errors="replace") if p.exists() else ""


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The shared throwaway redis-server of the test session."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
