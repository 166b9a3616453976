"""Helpers to run the real ``congvu policyd`` as a subprocess with a temp config (issue 4).

:class:`PolicydProcess` starts ``congvu policyd --config FILE`` in the foreground, waits
until every ``listen`` endpoint answers a real policy request, and stops it with SIGTERM
(or SIGKILL, for crash tests).  :func:`write_config` writes a congvu.toml from a mapping;
:class:`Accounts` creates mailboxes through the operator's own ``congvu account`` CLI.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.epollreactor import EPollReactor

from congvu.cli import main as congvu_main
from congvu.output import Output
from tests.integration.servers.postfix import PostfixServer
from tests.integration.servers.redis import RedisServer
from tests.integration.support import read_log, stop_process

REPO = Path(__file__).resolve().parents[3]

#: A complete request, as Postfix 3.7 sends it at CONNECT: used to see that policyd answers.
PROBE = (b"request=smtpd_access_policy\nprotocol_state=CONNECT\nprotocol_name=SMTP\n"
         b"client_address=127.0.0.1\nclient_name=localhost\ninstance=probe\n\n")


# --------------------------------------------------------------------------- config files


def toml_value(v: Any) -> str:
    """The TOML spelling of the few value types a congvu.toml uses."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{toml_value(str(k))} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML spelling for {type(v).__name__}")


def write_config(path: Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` (top-level keys, then ``{section: {key: value}}``) as a congvu.toml."""
    lines = [f"{k} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, Mapping)]
    for section, values in data.items():
        if isinstance(values, Mapping):
            lines += ["", f"[{section}]", *(f"{k} = {toml_value(v)}" for k, v in values.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def site_config(state_dir: Path, *, profile: str, listen: list[str], redis: RedisServer | None,
                policyd: Mapping[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    """A test site: SQLite directory in ``state_dir``, counters in ``redis`` (or SQLite), no stats port."""
    state: dict[str, Any] = ({"backend": "redis", "url": redis.url, "prefix": f"congvu-{state_dir.name}:"}
                             if redis is not None else {"backend": "sqlite"})
    return {
        "profile": profile, "state_dir": str(state_dir), **top,
        "directory": {"backend": "sqlite", "hash_cost": "test", "cache_ttl": "1s"},
        "password": {"must_change_on_create": False},  # Accounts.add decides, per test
        "state": state,
        "policyd": {"listen": listen, "stats_listen": [], **(policyd or {})},
    }


# --------------------------------------------------------------------------- the process


def _endpoint_address(endpoint: str) -> tuple[int, Any]:
    """(socket family, address) of a Twisted server endpoint string, to connect to it."""
    kind, _, rest = endpoint.partition(":")
    parts = rest.split(":")
    if kind == "unix":
        return socket.AF_UNIX, parts[0]
    opts = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    if kind == "tcp6":
        return socket.AF_INET6, (opts.get("interface", "::1"), int(parts[0]))
    return socket.AF_INET, (opts.get("interface", "127.0.0.1"), int(parts[0]))


def ask(endpoint: str, request: bytes, timeout: float = 5.0) -> bytes:
    """One policy request over a fresh connection; the raw reply (b"" if closed without one)."""
    family, address = _endpoint_address(endpoint)
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(address)
        s.sendall(request)
        reply = b""
        while not reply.endswith(b"\n\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply


class PolicydProcess:
    """``congvu policyd --config FILE`` in the foreground; its output goes to ``log``."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.config: Path | None = None
        self.listen: tuple[str, ...] = ()
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"PolicydProcess(config={self.config}, running={self.running})"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, config: Path, listen: list[str] | tuple[str, ...], timeout: float = 20.0) -> None:
        """Start on ``config`` and wait until every endpoint in ``listen`` answers PROBE with an action."""
        self.stop()
        self.config, self.listen = config, tuple(listen)
        with self.log.open("ab") as log:
            log.write(f"\n===== start {config} =====\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; from congvu.cli import main; sys.exit(main())",
                 "policyd", "--config", str(config)],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        pending = list(self.listen)
        while pending:
            if self._proc.poll() is not None:
                code, self._proc = self._proc.returncode, None
                raise RuntimeError(f"congvu policyd exited ({code}) at start:\n{self.log_tail()}")
            try:
                if ask(pending[0], PROBE, timeout=2).startswith(b"action="):
                    pending.pop(0)
                    continue
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"congvu policyd did not answer on {pending[0]} within {timeout}s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it with ``sig`` (SIGKILL simulates a crash) and wait for it to exit."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        stop_process(proc, sig)

    def reload(self) -> None:
        """SIGHUP: policyd rereads its config file."""
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGHUP)

    def log_text(self) -> str:
        return read_log(self.log)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]


# --------------------------------------------------------------------------- accounts


class Accounts:
    """Mailboxes created the way an operator does it: ``congvu account add`` / ``set`` (in-process)."""

    def __init__(self, config: Path) -> None:
        self.config = config

    def congvu(self, *argv: str) -> str:
        """Run one ``congvu`` command on this site's config; fails the test unless it exits 0."""
        out, err = io.StringIO(), io.StringIO()
        code = congvu_main([*argv, "--config", str(self.config)], out=Output(out, err))
        assert code == 0, f"congvu {' '.join(argv)} exited {code}: {err.getvalue()}{out.getvalue()}"
        return out.getvalue()

    def add(self, address: str, *, kind: str = "personal", agency: str = "sonv", must_change: bool = False,
            state: str | None = None, reason: str = "") -> str:
        """A mailbox that may send (the site does not force a change at creation) unless told otherwise."""
        self.congvu("account", "add", address, "--name", "Nguyễn Văn Thử", "--agency", agency, "--type", kind)
        if must_change:
            self.congvu("account", "set", address, "--must-change", "yes")
        if state is not None:
            self.congvu("account", "set", address, "--state", state, "--reason", reason or "test")
        return address


# --------------------------------------------------------------------------- fixtures


class PostfixSite:
    """The session's Postfix with policyd behind it, and the site configs policyd can be switched to."""

    def __init__(self, postfix: PostfixServer, policyd: PolicydProcess, redis: RedisServer, root: Path) -> None:
        self.postfix, self.policyd, self.redis, self.root = postfix, policyd, redis, root
        self.listen = [f"unix:{postfix.policy_socket}:mode=666"]
        self.configs: dict[str, Path] = {}
        self.current = ""

    def config(self, name: str, profile: str, policyd: Mapping[str, Any] | None = None) -> Path:
        """Write (once) the config ``name``: its own state dir, the shared Redis, Postfix's socket."""
        if name not in self.configs:
            state_dir = self.root / name
            state_dir.mkdir(parents=True, exist_ok=True)
            self.configs[name] = write_config(
                self.root / f"{name}.toml",
                site_config(state_dir, profile=profile, listen=self.listen, redis=self.redis, policyd=policyd))
        return self.configs[name]

    def use(self, name: str) -> Accounts:
        """Make sure policyd runs on config ``name`` (restarting it if needed); its accounts."""
        path = self.configs[name]
        if self.current != name or not self.policyd.running:
            self.policyd.start(path, self.listen)
            self.current = name
        return Accounts(path)


@pytest.fixture(scope="session")
def postfix_site(postfix_server: PostfixServer, redis_server: RedisServer,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostfixSite]:
    """Postfix + congvu policyd on the shipped socket path + Redis; configs ``cantho`` and ``thanhhoa``."""
    root = tmp_path_factory.mktemp("policyd-site")
    proc = PolicydProcess(root / "policyd.log")
    site = PostfixSite(postfix_server, proc, redis_server, root)
    site.config("cantho", "cantho-2025", {
        "rate_overrides": {"rate1@cantho.gov.vn": {"messages_per_hour": 1}},
    })
    site.config("thanhhoa", "thanhhoa-2013")
    try:
        yield site
    finally:
        proc.stop()


@pytest.fixture
def cantho(postfix_site: PostfixSite) -> Iterator[Accounts]:
    """policyd on the cantho-2025 profile (started or switched to), with the session Redis running."""
    postfix_site.redis.start()
    yield postfix_site.use("cantho")
    postfix_site.redis.start()


@pytest.fixture
def thanhhoa(postfix_site: PostfixSite) -> Iterator[Accounts]:
    """policyd on the thanhhoa-2013 profile (started or switched to)."""
    postfix_site.redis.start()
    yield postfix_site.use("thanhhoa")


# --------------------------------------------------------------------------- a reactor turned by hand


@pytest.fixture
def reactor() -> Iterator[Any]:
    """A private, never-installed reactor that the test turns by hand (:func:`turn`), closed afterwards."""
    r: Any = EPollReactor()  # type: ignore[no-untyped-call]
    yield r
    r.disconnectAll()
    for call in r.getDelayedCalls():
        call.cancel()
    for reader in list(r._internalReaders):
        r.removeReader(reader)
        reader.connectionLost(None)


def turn(reactor: Any, done: Callable[[], bool], timeout: float = 10.0) -> None:
    """Iterate ``reactor`` until ``done()``; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "no answer in time"
        reactor.iterate(0.01)
