"""A throwaway Postfix that asks congvu's policyd, for the end-to-end tests (issue 4).

The instance lives in one temp dir: its own ``config_directory``, ``queue_directory``,
``data_directory`` and a Maildir, started with ``postfix -c DIR start``.  ``main.cf`` is a
small test base (loopback only, virtual(8) delivery of every recipient into one Maildir,
told apart by ``Delivered-To`` since virtual maps may not use regexp substitution; XCLIENT
from loopback so
tests can present another client address or a SASL login) followed by the shipped
``conf/postfix/main.cf`` VERBATIM.  ``master.cf`` is Debian's stock file plus the shipped
``conf/postfix/master.cf`` entries, with two documented substitutions only: the service
name becomes a loopback port, and every service runs without chroot (a chroot would need
/etc files copied into the queue directory).  Without chroot Postfix still resolves the
snippet's ``unix:congvu/policy`` under ``queue_directory``, so policyd listens on
``<queue>/congvu/policy``: exactly the shipped path, inside this instance; likewise the
submission entry's ``smtpd_sasl_path = congvu/auth`` is ``<queue>/congvu/auth``, where the
SMTP AUTH tests run congvu authd's ``sasl_listen``.  An instance built with
``smtp_auth=False`` (the policy and milter suites, which run no auth service: XCLIENT LOGIN
stands in for SMTP AUTH there) also sets ``smtpd_sasl_auth_enable=no`` on submission,
because smtpd ends every session when it finds no SASL server.
The snippet's content milters (rspamd, then congvu's ``unix:congvu/milter``) are
optional: ``postfix_server`` (the policyd tests) empties ``smtpd_milters`` and
``non_smtpd_milters``, and ``milter_postfix`` (a second instance,
tests/integration/policyd/milter) keeps them, substituting only rspamd's endpoint with the
test rspamd's loopback port.  Both substitute the shipped line in place, a comment above it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.support import free_port, need, new_root, wait_port

REPO = Path(__file__).resolve().parents[3]
POSTFIX_CONF = REPO / "conf" / "postfix"
#: Debian's stock master.cf; a "No configuration" install may only have the .dist copy.
STOCK_MASTER_CF = next((p for p in (Path("/etc/postfix/master.cf"), Path("/usr/share/postfix/master.cf.dist"))
                        if p.exists()), Path("/etc/postfix/master.cf"))
#: Domains this instance delivers locally (cantho-2025's and thanhhoa-2013's, and an outsider's).
DOMAINS = ("cantho.gov.vn", "thanhhoa.gov.vn", "example.org")
#: Unprivileged owner of the Maildir (the virtual(8) agent refuses root).
VMAIL_UID = VMAIL_GID = 65534


def _service_entries(text: str) -> list[list[str]]:
    """master.cf entries of ``text``: each a list of its lines (first line + indented -o lines)."""
    entries: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            entries[-1].append(line)
        else:
            entries.append([line])
    return entries


def snippet_master_entries(name_map: dict[str, str], options: dict[str, str] | None = None) -> str:
    """The shipped master.cf entries, service names mapped to loopback ports and chroot set to n.

    ``options`` replaces the value of those ``-o name=value`` lines (each must be shipped).
    """
    unused = dict(options or {})
    out: list[str] = []
    for entry in _service_entries((POSTFIX_CONF / "master.cf").read_text(encoding="utf-8")):
        fields = entry[0].split()
        if fields[0] not in name_map:
            raise RuntimeError(f"conf/postfix/master.cf: no test port for service {fields[0]!r}")
        fields[0], fields[4] = name_map[fields[0]], "n"
        out.append("\t".join(fields))
        for line in entry[1:]:
            name = line.strip().removeprefix("-o ").partition("=")[0]
            out.append(f"  -o {name}={unused.pop(name)}" if name in unused else line)
    if unused:
        raise RuntimeError(f"conf/postfix/master.cf sets no {', '.join(unused)}")
    return "\n".join(out) + "\n"


def substitute(text: str, name: str, value: str, why: str) -> str:
    """``text`` (a main.cf) with the one line ``name = …`` set to ``value``, a comment saying why above it."""
    rx = re.compile(rf"^{re.escape(name)} = .*$", re.M)
    if len(rx.findall(text)) != 1:
        raise RuntimeError(f"conf/postfix/main.cf: expected one line setting {name}")
    return rx.sub(lambda _: f"# test substitution: {why}\n{name} = {value}", text)


class PostfixServer:
    """One Postfix instance in ``root``: build() once, then start()/stop()."""

    def __init__(self, root: Path, postfix: str = "/usr/sbin/postfix", postconf: str = "/usr/sbin/postconf",
                 swaks: str = "/usr/bin/swaks", rspamd_milter: str | None = None, *,
                 smtp_auth: bool = True) -> None:
        self.root = root
        self.smtp_auth = smtp_auth
        #: The test rspamd's milter endpoint; None = this instance runs without content milters.
        self.rspamd_milter = rspamd_milter
        self.postfix, self.postconf, self.swaks_bin = postfix, postconf, swaks
        self.config_dir = root / "etc"
        self.queue_dir = root / "spool"
        self.data_dir = root / "lib"
        self.mail_dir = root / "mail"
        self.log = root / "postfix.log"
        self.host = "127.0.0.1"
        self.smtp_port = free_port()
        self.submission_port = free_port()
        #: Where the shipped ``unix:congvu/policy`` resolves for this instance.
        self.policy_socket = self.queue_dir / "congvu" / "policy"
        #: Where the shipped ``unix:congvu/milter`` resolves for this instance.
        self.milter_socket = self.queue_dir / "congvu" / "milter"
        #: Where the shipped ``smtpd_sasl_path = congvu/auth`` resolves (``[authhooks] sasl_listen``).
        self.sasl_socket = self.queue_dir / "congvu" / "auth"

    def __repr__(self) -> str:
        return f"PostfixServer(smtp={self.host}:{self.smtp_port}, submission={self.host}:{self.submission_port})"

    # ------------------------------------------------------------------ building
    def build(self) -> None:
        """Write main.cf and master.cf; ``postfix check`` creates the queue."""
        for d in (self.config_dir, self.queue_dir, self.data_dir, self.mail_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chown(self.mail_dir, VMAIL_UID, VMAIL_GID)
        pw = pwd.getpwnam("postfix")
        os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
        (self.config_dir / "main.cf").write_text(self._main_cf(), encoding="utf-8")
        (self.config_dir / "master.cf").write_text(self._master_cf(), encoding="utf-8")
        self._run([self.postfix, "-c", str(self.config_dir), "check"])

    def _main_cf(self) -> str:
        base = f"""\
# Test base for the throwaway instance (tests/integration/servers/postfix.py).
compatibility_level = 3.6
config_directory = {self.config_dir}
queue_directory = {self.queue_dir}
data_directory = {self.data_dir}
maillog_file = {self.log}
maillog_file_prefixes = {self.root}
myhostname = mx.test.cantho.gov.vn
mydomain = test.cantho.gov.vn
myorigin = $myhostname
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_authorized_xclient_hosts = 127.0.0.0/8
smtpd_banner = $myhostname ESMTP congvu-test
biff = no
alias_maps =
alias_database =
relayhost =
default_transport = error:no outbound mail from the test instance
virtual_mailbox_domains = {" ".join(DOMAINS)}
virtual_mailbox_base = {self.mail_dir}
virtual_mailbox_maps = static:all/
virtual_uid_maps = static:{VMAIL_UID}
virtual_gid_maps = static:{VMAIL_GID}
virtual_mailbox_limit = 0
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
smtpd_junk_command_limit = 100000
smtpd_recipient_limit = 1000
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
in_flow_delay = 0

# ---- conf/postfix/main.cf, verbatim ----
"""
        shipped = (POSTFIX_CONF / "main.cf").read_text(encoding="utf-8")
        if self.rspamd_milter is None:
            for name in ("smtpd_milters", "non_smtpd_milters"):
                shipped = substitute(shipped, name, "", "no content milters in this instance")
        else:
            shipped = substitute(shipped, "rspamd_milter_service", self.rspamd_milter, "the test rspamd's port")
        return base + shipped

    def _master_cf(self) -> str:
        lines: list[str] = []
        for entry in _service_entries(STOCK_MASTER_CF.read_text(encoding="utf-8")):
            fields = entry[0].split()
            if fields[0] == "smtp" and fields[1] == "inet":
                fields[0] = f"{self.host}:{self.smtp_port}"
            if len(fields) > 4:
                fields[4] = "n"
            lines.append("\t".join(fields))
            lines.extend(entry[1:])
        stock = "\n".join(lines) + "\n"
        return (stock + "\n# ---- conf/postfix/master.cf (service name -> loopback port, chroot n) ----\n"
                + snippet_master_entries({"submission": f"{self.host}:{self.submission_port}"},
                                         None if self.smtp_auth else {"smtpd_sasl_auth_enable": "no"}))

    def _run(self, argv: list[str]) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}"
                               f"\n{self.log_tail()}")
        return done.stdout

    # ------------------------------------------------------------------ running
    def start(self) -> None:
        """``postfix -c DIR start`` and wait until both SMTP ports accept."""
        self._run([self.postfix, "-c", str(self.config_dir), "start"])
        wait_port(self.host, self.smtp_port)
        wait_port(self.host, self.submission_port)

    def stop(self) -> None:
        """``postfix -c DIR stop``; then kill whatever of this instance is still alive."""
        subprocess.run([self.postfix, "-c", str(self.config_dir), "stop"], capture_output=True, check=False)
        deadline = time.monotonic() + 10
        while self._pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in self._pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _pids(self) -> list[int]:
        """Processes of this instance: their environment names our config_directory."""
        marker = f"MAIL_CONFIG={self.config_dir}".encode()
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                env = (proc / "environ").read_bytes()
            except OSError:
                continue
            if marker in env.split(b"\0"):
                pids.append(int(proc.name))
        return pids

    def postconf_value(self, name: str) -> str:
        """The effective value of a parameter, as this instance sees it (``postconf -x``)."""
        out = self._run([self.postconf, "-c", str(self.config_dir), "-xh", name])
        return out.strip()

    # ------------------------------------------------------------------ observing
    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    @property
    def maildir(self) -> Path:
        """The one Maildir ``new`` directory every recipient's mail lands in (see ``Delivered-To``)."""
        return self.mail_dir / "all" / "new"

    def delivered(self, address: str, needle: str = "") -> list[Path]:
        """Delivered messages to ``address`` (its ``Delivered-To`` header) whose headers contain ``needle``."""
        d = self.maildir
        if not d.is_dir():
            return []
        mark = f"\nDelivered-To: {address.lower()}\n"
        found = []
        for p in sorted(d.iterdir()):
            with p.open("rb") as f:
                head = "\n" + f.read(16384).decode(errors="replace").split("\n\n", 1)[0] + "\n"
            if mark in head and needle in head:
                found.append(p)
        return found

    def wait_delivered(self, address: str, count: int, needle: str = "", timeout: float = 20.0) -> list[Path]:
        """Block until ``count`` messages for ``address`` (matching ``needle``) are delivered, no more."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.delivered(address, needle)
            if len(got) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(got) == count, (f"{address}: {len(got)} message(s) matching {needle!r} delivered, "
                                   f"expected {count}\n{self.log_tail()}")
        return got

    def log_lines(self, pattern: str) -> list[str]:
        rx = re.compile(pattern)
        try:
            return [line for line in self.log.read_text(errors="replace").splitlines() if rx.search(line)]
        except OSError:
            return []

    # ------------------------------------------------------------------ clients
    def connect(self, port: int | None = None, *, addr: str | None = None, login: str | None = None,
                helo: str = "client.example.org", timeout: float = 30.0) -> smtplib.SMTP:
        """An ESMTP session; ``addr``/``login`` are presented with XCLIENT (then EHLO again).

        ``addr`` makes Postfix (and policyd) see another client address, e.g. one outside
        mynetworks; ``login`` makes the session authenticated as that SASL user.
        """
        s = smtplib.SMTP(self.host, port or self.smtp_port, local_hostname=helo, timeout=timeout)
        s.ehlo()
        if addr is not None or login is not None:
            xclient(s, addr=addr, login=login, helo=helo)
        return s


    def swaks(self, *args: str, port: int | None = None, timeout: float = 60.0) -> str:
        """Run swaks against this instance; its transcript (swaks exits non-zero on a refusal)."""
        done = subprocess.run([self.swaks_bin, "--server", self.host, "--port", str(port or self.smtp_port),
                               "--helo", "client.example.org", "--timeout", "30", *args],
                              capture_output=True, text=True, timeout=timeout, check=False)
        return done.stdout + done.stderr


def xclient(s: smtplib.SMTP, *, addr: str | None = None, login: str | None = None,
            helo: str = "client.example.org") -> None:
    """Send XCLIENT (outside a transaction) and EHLO again, as the protocol requires."""
    attrs = []
    if addr is not None:
        attrs += [f"ADDR={addr}", "NAME=[UNAVAILABLE]"]
    attrs.append(f"LOGIN={login}" if login is not None else "LOGIN=[UNAVAILABLE]")
    code, text = s.docmd("XCLIENT", " ".join(attrs))
    if code != 220:
        raise smtplib.SMTPResponseException(code, text)
    s.ehlo(helo)


def running_postfix(prefix: str, rspamd_milter: str | None = None) -> Iterator[PostfixServer]:
    """Build and start an instance in a world-traversable temp dir; stop and remove it afterwards."""
    postfix = need("postfix", "postfix")
    postconf = need("postconf", "postfix")
    swaks = need("swaks", "swaks")
    root = new_root(prefix)
    server = PostfixServer(root, postfix=postfix, postconf=postconf, swaks=swaks, rspamd_milter=rspamd_milter,
                           smtp_auth=False)
    try:
        server.build()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postfix_server() -> Iterator[PostfixServer]:
    """A running Postfix with congvu's shipped main.cf/master.cf snippets, SMTP AUTH off; stopped at the end.

    Its temp dir is world-traversable (smtpd runs as ``postfix``, virtual(8) as nobody),
    so it is not under pytest's 0700 basetemp.
    """
    yield from running_postfix("congvu-postfix-")
