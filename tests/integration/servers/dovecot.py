"""A throwaway Dovecot 2.3 for the end-to-end auth tests (issue 5), started as root.

Everything lives in one temp dir: ``base_dir``, ``state_dir``, the log, the mail and
``dovecot.conf``, which is a small test base (loopback IMAP and POP3; no TLS; no auth
failure delay so lockout tests run at full speed; the shipped snippets turn Dovecot's
auth penalty off themselves) followed by the auth configuration the test hands in — normally
the shipped ``conf/dovecot/`` snippets, with two documented substitutions only: the
hook path becomes a launcher generated for this session by the very command the snippet
tells operators to run (``congvu authd hook-script FILE``, see :func:`generate_launcher`),
and the socket path the test's ``authd`` socket.  Dovecot's own processes drop to
``dovecot``/``dovenull`` as in production, so the hook runs as ``dovecot`` exactly as it
would on a server.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import poplib
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.support import free_port, need, new_root, wait_port

REPO = Path(__file__).resolve().parents[3]
DOVECOT_CONF = REPO / "conf" / "dovecot"
CONGVU = Path(sys.executable).parent / "congvu"
#: pip's console script; the shipped snippet recommends the launcher instead (kept working).
CONSOLE_HOOK = Path(sys.executable).parent / "congvu-checkpassword"
CHECKPASSWORD_SNIPPET = "congvu-checkpassword.conf.ext"
#: Paths written in the shipped snippets, replaced by the test's own.
SHIPPED_HOOK = "/usr/local/libexec/congvu/checkpassword"
SHIPPED_SOCKET = "/run/congvu/authd.sock"
#: Owner of the test mail (Dovecot refuses root for mail; nobody/nogroup exist everywhere).
MAIL_UID = MAIL_GID = 65534

#: The launcher of this session (set by the ``hook_launcher`` fixture, or by the bench).
_LAUNCHER: list[Path] = []


def shipped_generate_command() -> list[str]:
    """The ``congvu authd hook-script FILE`` command the shipped snippet tells operators to run."""
    text = (DOVECOT_CONF / CHECKPASSWORD_SNIPPET).read_text(encoding="utf-8")
    m = re.search(r"^#\s+(congvu authd hook-script \S+)\s*$", text, re.MULTILINE)
    if m is None:
        raise RuntimeError(f"{CHECKPASSWORD_SNIPPET} does not show the `congvu authd hook-script FILE` command")
    return shlex.split(m.group(1))


def generate_launcher(directory: Path) -> Path:
    """Run the snippet's own generation command, with FILE moved into ``directory``; returns the launcher."""
    argv = shipped_generate_command()
    if argv[-1] != SHIPPED_HOOK:
        raise RuntimeError(f"the snippet generates {argv[-1]} but its passdb runs {SHIPPED_HOOK}")
    path = directory / Path(SHIPPED_HOOK).name
    done = subprocess.run([str(CONGVU), *argv[1:-1], str(path)], capture_output=True, text=True, check=False,
                          timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"`congvu authd hook-script` failed ({done.returncode}): {done.stderr.strip()}")
    _LAUNCHER[:] = [path]
    return path


def current_launcher() -> Path:
    if not _LAUNCHER:
        raise RuntimeError("no hook launcher generated yet (use the dovecot_factory fixture)")
    return _LAUNCHER[0]


def shipped(name: str, *, hook: str | Path | None = None, socket_path: str | Path = "") -> str:
    """A conf/dovecot snippet with the hook (default: this session's launcher) and socket paths pointed at ours."""
    text = (DOVECOT_CONF / name).read_text(encoding="utf-8")
    if SHIPPED_HOOK in text:
        text = text.replace(SHIPPED_HOOK, str(hook if hook is not None else current_launcher()))
    if socket_path:
        text = text.replace(SHIPPED_SOCKET, str(socket_path))
    return text


class SourceIMAP(imaplib.IMAP4):
    """imaplib.IMAP4 from a chosen loopback source address (the client IP Dovecot reports)."""

    def __init__(self, host: str, port: int, source: str, timeout: float = 30.0) -> None:
        self._source = source
        super().__init__(host, port, timeout=timeout)
        self._encoding = "utf-8"  # Vietnamese passwords: imaplib's default ASCII cannot send them

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, source_address=(self._source, 0))


class DovecotServer:
    """One Dovecot instance in ``root``: build(auth_conf) once, then start()/stop()."""

    def __init__(self, root: Path, dovecot: str = "/usr/sbin/dovecot", doveadm: str = "/usr/bin/doveadm") -> None:
        self.root = root
        self.dovecot, self.doveadm_bin = dovecot, doveadm
        self.conf = root / "dovecot.conf"
        self.base_dir = root / "run"
        self.state_dir = root / "state"
        self.mail_dir = root / "mail"
        self.log = root / "dovecot.log"
        self.host = "127.0.0.1"
        self.imap_port = free_port()
        self.pop3_port = free_port()
        self.auth_user = "$default_internal_user"  # dovecot, as in production (see auth_user_for_hook)

    def __repr__(self) -> str:
        return f"DovecotServer(imap={self.host}:{self.imap_port}, pop3={self.host}:{self.pop3_port})"

    def build(self, auth_conf: str) -> None:
        for d in (self.base_dir, self.state_dir, self.mail_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chown(self.mail_dir, MAIL_UID, MAIL_GID)
        self.conf.write_text(self._base() + "\n# ---- auth configuration under test ----\n" + auth_conf,
                             encoding="utf-8")
        out = subprocess.run(["doveconf", "-c", str(self.conf), "-n"], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"doveconf refused the test config: {out.stderr.strip()}")

    def _base(self) -> str:
        return f"""\
# Test base for the throwaway instance (tests/integration/servers/dovecot.py).
base_dir = {self.base_dir}
state_dir = {self.state_dir}
instance_name = congvu-test-{self.imap_port}
log_path = {self.log}
info_log_path = {self.log}
auth_verbose = yes
protocols = imap pop3
listen = {self.host}
ssl = no
disable_plaintext_auth = no
mail_location = maildir:~/Maildir
first_valid_uid = {MAIL_UID}
last_valid_uid = {MAIL_UID}
auth_failure_delay = 0
login_trusted_networks =
service imap-login {{
  inet_listener imap {{
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service auth {{
  user = {self.auth_user}
}}
"""

    def start(self) -> None:
        # Not a pipe: the daemonised master keeps its stdio, and run() would wait for EOF forever.
        with (self.root / "start.err").open("w+") as err:
            done = subprocess.run([self.dovecot, "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                  stdout=err, stderr=err, check=False)
            err.seek(0)
            if done.returncode != 0:
                raise RuntimeError(f"dovecot did not start: {err.read().strip()}\n{self.log_tail()}")
        wait_port(self.host, self.imap_port)
        wait_port(self.host, self.pop3_port)

    def stop(self) -> None:
        pid_file = self.base_dir / "master.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # ------------------------------------------------------------------ clients
    def imap(self, source: str = "127.0.0.1") -> imaplib.IMAP4:
        return SourceIMAP(self.host, self.imap_port, source)

    def imap_login(self, user: str, password: str, source: str = "127.0.0.1", *,
                   plain: bool = False) -> tuple[bool, str]:
        """(logged in, server text): the tagged answer of LOGIN (or AUTHENTICATE PLAIN if ``plain``), decoded.

        The text is what follows ``NO``, e.g. ``[EXPIRED] https://… - Mật khẩu …``.
        """
        c = self.imap(source)
        try:
            if plain:
                token = f"\0{user}\0{password}".encode()
                c.authenticate("PLAIN", lambda _challenge: token)
            else:
                c.login(user, password)
            return True, "OK"
        except imaplib.IMAP4.error as e:
            text = e.args[0] if e.args else ""
            return False, text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                c.logout()

    def pop3_login(self, user: str, password: str) -> tuple[bool, str]:
        c = poplib.POP3(self.host, self.pop3_port, timeout=30)
        try:
            c.user(user)
            c.pass_(password)
            return True, "OK"
        except poplib.error_proto as e:
            return False, e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        finally:
            with contextlib.suppress(poplib.error_proto, OSError):
                c.quit()

    def doveadm(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.doveadm_bin, "-c", str(self.conf), *args], capture_output=True, text=True,
                              check=False, timeout=60)


def auth_user_for_hook(hook: Path | None = None) -> str:
    """The user Dovecot's auth process (which forks the hook) runs as in these tests.

    ``dovecot``, as in production, when that user can run the hook's interpreter (its
    ``#!`` line).  A development venv built on an interpreter under /root (pyenv) cannot
    be run by ``dovecot``; there, and only there, the auth process runs as root.
    """
    shebang = (hook or CONSOLE_HOOK).read_text(encoding="utf-8").splitlines()[0].removeprefix("#!")
    interpreter = shebang.split()[0]
    probe = subprocess.run(["runuser", "-u", "dovecot", "--", interpreter, "-c", "pass"],
                           capture_output=True, check=False)
    return "$default_internal_user" if probe.returncode == 0 else "root"


@pytest.fixture(scope="session")
def hook_launcher() -> Iterator[Path]:
    """The checkpassword launcher operators deploy, generated by the shipped snippet's own command."""
    if not CONGVU.exists():
        pytest.fail(f"{CONGVU} missing: pip install -e . (it installs the congvu command)", pytrace=False)
    root = new_root("congvu-hook-")  # Dovecot's auth process must reach it
    try:
        yield generate_launcher(root)
    finally:
        _LAUNCHER.clear()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def dovecot_factory(hook_launcher: Path) -> Iterator[Callable[[str], DovecotServer]]:
    """Start Dovecots with a given auth configuration; every one is stopped at the end.

    The temp dirs are world-traversable (Dovecot's processes run as dovecot and nobody),
    so they are not under pytest's 0700 basetemp.  :func:`shipped` points the snippets at
    ``hook_launcher``.
    """
    dovecot = need("dovecot", "dovecot-core")
    doveadm = need("doveadm", "dovecot-core")
    need("doveconf", "dovecot-core")
    if not (Path("/usr/lib/dovecot/imap").exists() and Path("/usr/lib/dovecot/pop3").exists()):
        pytest.fail("Dovecot's imap or pop3 missing: install dovecot-imapd dovecot-pop3d", pytrace=False)
    started: list[DovecotServer] = []
    auth_user = auth_user_for_hook(hook_launcher)

    def make(auth_conf: str) -> DovecotServer:
        root = new_root("congvu-dovecot-")
        server = DovecotServer(root, dovecot=dovecot, doveadm=doveadm)
        server.auth_user = auth_user
        started.append(server)
        server.build(auth_conf)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in started:
            server.stop()
            shutil.rmtree(server.root, ignore_errors=True)
