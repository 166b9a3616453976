"""A throwaway rspamd with congvu's shipped ``conf/rspamd`` settings, as the milter Postfix asks first (issue 14).

Debian's ``/etc/rspamd/rspamd.conf`` is read as installed; ``$LOCAL_CONFDIR`` points at a
temp dir whose ``local.d`` is the shipped ``conf/rspamd/local.d`` VERBATIM, and whose
``override.d`` holds the one documented test substitution: every worker listens on a free
loopback port instead of rspamd's fixed 11332-11334.  Its database, run and log dirs are
in the temp dir; it runs in the foreground as ``_rspamd`` and makes no network lookups
(the shipped config turns those modules off).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.support import free_port, need, new_root, stop_process, wait_port

REPO = Path(__file__).resolve().parents[3]
SHIPPED = REPO / "conf" / "rspamd" / "local.d"
MAIN_CONF = Path("/etc/rspamd/rspamd.conf")


class RspamdServer:
    """One rspamd (master + proxy worker in milter mode) in ``root``."""

    def __init__(self, root: Path, binary: str = "/usr/bin/rspamd") -> None:
        self.root = root
        self.binary = binary
        self.host = "127.0.0.1"
        self.milter_port = free_port()
        self.normal_port = free_port()
        self.controller_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def milter(self) -> str:
        """The Postfix milter address (``smtpd_milters`` syntax)."""
        return f"inet:{self.host}:{self.milter_port}"

    def build(self, local_d: Path = SHIPPED) -> None:
        """The shipped local.d (or, in the install test, the one ``congvu setup`` wrote) and the test's ports."""
        conf = self.root / "conf"
        shutil.copytree(local_d, conf / "local.d")
        override = conf / "override.d"
        override.mkdir()
        for name, port in (("proxy", self.milter_port), ("normal", self.normal_port),
                           ("controller", self.controller_port)):
            (override / f"worker-{name}.inc").write_text(f'bind_socket = "{self.host}:{port}";\n', encoding="utf-8")
        pw = pwd.getpwnam("_rspamd")
        for d in ("db", "run", "log"):
            (self.root / d).mkdir()
            os.chown(self.root / d, pw.pw_uid, pw.pw_gid)

    def start(self) -> None:
        """Start in the foreground and wait until the milter port accepts."""
        if self.proc is not None and self.proc.poll() is None:
            return
        argv = [self.binary, "-f", "-u", "_rspamd", "-g", "_rspamd", "-c", str(MAIN_CONF),
                "--var", f"LOCAL_CONFDIR={self.root / 'conf'}", "--var", f"DBDIR={self.root / 'db'}",
                "--var", f"RUNDIR={self.root / 'run'}", "--var", f"LOGDIR={self.root / 'log'}"]
        with (self.root / "stdout.log").open("ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        try:
            wait_port(self.host, self.milter_port, timeout=60)
        except BaseException:
            raise RuntimeError(f"rspamd did not listen on {self.milter}:\n{self.log_tail()}") from None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc)

    def log_tail(self, chars: int = 4000) -> str:
        text = ""
        for name in ("stdout.log", "log/rspamd.log"):
            p = self.root / name
            if p.exists():
                text += p.read_text(errors="replace")
        return text[-chars:]


@pytest.fixture(scope="session")
def rspamd_server() -> Iterator[RspamdServer]:
    """A running rspamd with the shipped conf/rspamd/local.d; stopped at the end."""
    binary = need("rspamd", "rspamd")
    root = new_root("congvu-rspamd-")
    server = RspamdServer(root, binary)
    try:
        server.build()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
