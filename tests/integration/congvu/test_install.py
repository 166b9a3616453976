"""The README's "Install on a mail host", followed to the letter on real Postfix and Dovecot, then the user's path.

Everything lives under one temp root: a venv made with Debian's /usr/bin/python3 from
requirements.lock and the built wheel, a Postfix config directory as a fresh Debian
install leaves it and a copy of the packaged /etc/dovecot.  ``congvu setup --apply``
then does the install, with the documented substitutions of a test only:

* ``--root`` puts /etc/congvu, /var/lib/congvu, /run/congvu, /usr/local/libexec/congvu and
  /var/vmail under the temp root; ``--postfix-config``/``--dovecot-config`` name the copies;
* ``--submission 127.0.0.1:PORT`` for master.cf's ``submission`` (no port 587 as a test);
* Postfix's queue, data and log under the root, loopback only, no chroot (copying /etc
  files into a chroot is not the point); Dovecot's base/state/log under the root, loopback
  ports, no TLS (the snakeoil certificate is not the point either);
* the password page and metrics on free ports instead of 8080 and 10049;
* rspamd started from the local.d setup wrote, on free loopback ports (its fixture), and
  main.cf's ``rspamd_milter_service`` pointed at that port.

congvu itself runs as systemd would run it: the unit's ExecStart, as the unit's User,
with NOTIFY_SOCKET to hear READY=1.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import json
import os
import poplib
import re
import shlex
import shutil
import signal
import smtplib
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.servers.rspamd import RspamdServer
from tests.integration.support import free_port, need, new_root, wait_port

REPO = Path(__file__).resolve().parents[3]
DOMAIN = "cantho.gov.vn"
NEW_PASSWORD = "Ngân-Hà#2026-Sông.Hậu"


@dataclass
class Host:
    """The installed host: its root, ports and the running servers."""

    root: Path
    venv: Path
    postfix_dir: Path
    dovecot_conf: Path
    smtp_port: int
    submission_port: int
    imap_port: int
    pop3_port: int
    web_port: int
    rspamd: RspamdServer | None = None
    congvu: subprocess.Popen[bytes] | None = None
    notify: socket.socket | None = None

    # ------------------------------------------------------------------ commands

    def cli(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``congvu …`` of the installed venv, as root (it acts as the state directory's owner)."""
        done = subprocess.run([str(self.venv / "bin" / "congvu"), *argv], capture_output=True, text=True,
                              timeout=120, check=False)
        if check:
            assert done.returncode == 0, f"congvu {shlex.join(argv)}: {done.returncode}\n{done.stdout}{done.stderr}"
        return done

    def admin(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cli(*argv, "--config", str(self.root / "etc/congvu/congvu.toml"), check=check)

    def doctor(self, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        return self.cli("doctor", "--config", str(config or self.root / "etc/congvu/congvu.toml"), "--root",
                        str(self.root), "--postfix-config", str(self.postfix_dir), "--dovecot-config",
                        str(self.dovecot_conf.parent), check=False)

    def postconf(self, *argv: str) -> str:
        return subprocess.run(["postconf", "-c", str(self.postfix_dir), *argv], check=True, capture_output=True,
                              text=True).stdout.strip()

    # ------------------------------------------------------------------ congvu, as systemd runs it

    def start_congvu(self) -> None:
        unit = (self.root / "etc/systemd/system/congvu.service").read_text(encoding="utf-8")
        exec_start = shlex.split(next(x for x in unit.splitlines() if x.startswith("ExecStart="))[10:])
        user = next(x for x in unit.splitlines() if x.startswith("User="))[5:]
        path = self.root / "notify.sock"
        path.unlink(missing_ok=True)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(path))
        os.chmod(path, 0o777)  # the service writes to it as its own user
        log = (self.root / "congvu.log").open("ab")
        self.congvu = subprocess.Popen(["runuser", "-u", user, "--", *exec_start], stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT,
                                       env={**os.environ, "NOTIFY_SOCKET": str(path)}, start_new_session=True)
        self.notify.settimeout(60)
        while True:
            try:
                msg = self.notify.recv(4096).decode()
            except TimeoutError:
                pytest.fail(f"congvu never said READY=1\n{self.log_tail('congvu.log')}", pytrace=False)
            if "READY=1" in msg:
                return

    def stop_congvu(self) -> None:
        if self.congvu is not None and self.congvu.poll() is None:
            os.killpg(self.congvu.pid, signal.SIGTERM)
            try:
                self.congvu.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.congvu.pid, signal.SIGKILL)
                self.congvu.wait()
        if self.notify is not None:
            self.notify.close()
            self.notify = None

    def log_tail(self, name: str, chars: int = 3000) -> str:
        try:
            return (self.root / name).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # ------------------------------------------------------------------ clients

    def imap_login(self, user: str, password: str) -> tuple[bool, str]:
        c = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=30)
        c._encoding = "utf-8"  # type: ignore[attr-defined]  # Vietnamese passwords
        try:
            c.login(user, password)
            return True, "OK"
        except imaplib.IMAP4.error as e:
            return False, e.args[0].decode("utf-8", "replace") if isinstance(e.args[0], bytes) else str(e)
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                c.logout()

    def inbox(self, user: str, password: str) -> list[bytes]:
        """The messages of the user's INBOX, over IMAP."""
        c = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=30)
        c._encoding = "utf-8"  # type: ignore[attr-defined]
        try:
            c.login(user, password)
            c.select("INBOX")
            _, ids = c.search(None, "ALL")
            out = []
            for num in ids[0].split():
                _, data = c.fetch(num, "(RFC822)")
                out.append(data[0][1])  # type: ignore[index]
            return out
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                c.logout()

    def pop3_login(self, user: str, password: str) -> tuple[bool, str]:
        c = poplib.POP3("127.0.0.1", self.pop3_port, timeout=30)
        try:
            c.user(user)
            c.pass_(password)
            return True, "OK"
        except poplib.error_proto as e:
            return False, e.args[0].decode("utf-8", "replace") if e.args else str(e)
        finally:
            with contextlib.suppress(poplib.error_proto, OSError):
                c.quit()

    def smtp(self, port: int | None = None) -> smtplib.SMTP:
        s = smtplib.SMTP("127.0.0.1", port or self.smtp_port, local_hostname="client.example.org", timeout=60)
        s.ehlo()
        return s

    @staticmethod
    def smtp_auth(s: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
        """AUTH PLAIN in UTF-8 (smtplib's login() encodes ASCII only; passwords here are Vietnamese)."""
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return s.docmd("AUTH", "PLAIN " + token)

    def change_password(self, user: str, current: str, new: str) -> tuple[int, bytes]:
        data = urllib.parse.urlencode({"user": user, "curpass": current, "newpass": new}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.web_port}/api/password", data=data, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def wait_inbox(self, user: str, password: str, needle: bytes, timeout: float = 30.0) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.inbox(user, password) if needle in m]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                pytest.fail(f"{needle!r} never reached {user}'s INBOX\n{self.log_tail('postfix.log')}"
                            f"\n{self.log_tail('dovecot.log')}", pytrace=False)
            time.sleep(0.2)


# --------------------------------------------------------------------------- the install


def readme_steps() -> list[str]:
    """The commands of README.md's "Install on a mail host" block, continuation lines joined, comments dropped."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("## Install on a mail host", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    block = block.replace("\\\n", " ")
    return [re.sub(r"\s+", " ", re.sub(r"\[[^]]*\]", "", line)).strip()
            for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _step(steps: list[str], prefix: str) -> str:
    found = [x for x in steps if x.startswith(prefix)]
    assert len(found) == 1, f"README's install block has {len(found)} step(s) starting {prefix!r}: {steps}"
    return found[0]


def _venv(root: Path, steps: list[str]) -> Path:
    """README steps 1-2, run as written with the test's paths: Debian's python3, the lock, congvu's wheel."""
    packages = _step(steps, "apt-get install ").split()[2:]
    missing = [p for p in packages
               if subprocess.run(["dpkg", "-s", p], capture_output=True, check=False).returncode != 0]
    assert not missing, f"README's apt-get line names packages the test host lacks: {missing}"
    venv = root / "opt" / "congvu"
    src = root / "src"
    shutil.copytree(REPO, src, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", ".venv*", "build", "var", "__pycache__", "*.egg-info"))
    for line in [x for x in steps if x.startswith(("/usr/bin/python3 ", "/opt/congvu/bin/pip "))]:
        cmd = line.replace("/opt/congvu", str(venv)).replace("/tmp/congvu-wheel", str(root / "wheels"))
        cmd = cmd.replace("/bin/pip ", "/bin/pip -q --disable-pip-version-check ")
        subprocess.run(["bash", "-c", cmd], check=True, cwd=src)
    shutil.rmtree(src)
    assert (venv / "bin" / "congvu").exists(), "README's steps installed no congvu command"
    return venv


def _fresh_postfix(root: Path, smtp_port: int) -> Path:
    """Postfix's config directory as `apt-get install postfix` ("No configuration") leaves it, test-substituted."""
    etc = root / "etc" / "postfix"
    etc.mkdir(parents=True)
    queue, data = root / "var/spool/postfix", root / "var/lib/postfix"
    for d in (queue, data):
        d.mkdir(parents=True)
    import pwd
    pw = pwd.getpwnam("postfix")
    os.chown(data, pw.pw_uid, pw.pw_gid)
    (etc / "main.cf").write_text(f"""\
# A fresh Debian main.cf ("No configuration"), with the test's substitutions.
compatibility_level = 3.6
smtpd_banner = $myhostname ESMTP
biff = no
append_dot_mydomain = no
readme_directory = no
myhostname = mx.{DOMAIN}
mydestination = localhost
relayhost =
mynetworks = 127.0.0.0/8
mailbox_size_limit = 0
recipient_delimiter = +
alias_maps =
alias_database =
# test substitutions:
config_directory = {etc}
queue_directory = {queue}
data_directory = {data}
maillog_file = {root / 'postfix.log'}
maillog_file_prefixes = {root}
inet_interfaces = loopback-only
inet_protocols = ipv4
default_transport = error:no outbound mail from the test host
smtpd_error_sleep_time = 0
""", encoding="utf-8")
    lines = []
    stock = Path("/etc/postfix/master.cf") if Path("/etc/postfix/master.cf").exists() else \
        Path("/usr/share/postfix/master.cf.dist")
    for line in stock.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if line and not line[0].isspace() and not line.startswith("#") and len(fields) > 4:
            if fields[0] == "smtp" and fields[1] == "inet":
                fields[0] = f"127.0.0.1:{smtp_port}"
            fields[4] = "n"
            line = "\t".join(fields)
        lines.append(line)
    (etc / "master.cf").write_text("\n".join(lines) + "\n", encoding="utf-8")
    subprocess.run(["postfix", "-c", str(etc), "check"], check=True, capture_output=True)
    return etc


def _packaged_dovecot(root: Path, imap_port: int, pop3_port: int) -> Path:
    """A copy of the packaged /etc/dovecot, with the test's substitutions in conf.d/05-test.conf."""
    etc = root / "etc" / "dovecot"
    shutil.copytree("/etc/dovecot", etc, symlinks=True)
    for d in ("run", "state"):
        (root / "dovecot" / d).mkdir(parents=True)
    (etc / "conf.d" / "05-test.conf").write_text(f"""\
# Test substitutions: everything under the temp root, loopback ports, no TLS.
base_dir = {root / 'dovecot/run'}
state_dir = {root / 'dovecot/state'}
instance_name = congvu-install-{imap_port}
log_path = {root / 'dovecot.log'}
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
service imap-login {{
  inet_listener imap {{
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = 0
  }}
}}
""", encoding="utf-8")
    (root / "etc" / "rspamd" / "local.d").mkdir(parents=True)  # as `apt-get install rspamd` leaves it
    (root / "etc" / "rspamd" / "rspamd.conf").write_text("# the package's, read from /etc/rspamd by the fixture\n")
    # 10-ssl.conf names a certificate; with ssl = no Dovecot still reads the paths: point them at a pair.
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    f"/CN=mx.{DOMAIN}", "-keyout", str(etc / "private/test.key"), "-out",
                    str(etc / "private/test.pem")], check=True, capture_output=True)
    ssl = etc / "conf.d" / "10-ssl.conf"
    ssl.write_text(re.sub(r"^ssl_(cert|key) = .*$", "", ssl.read_text(encoding="utf-8"), flags=re.M)
                   + f"ssl_cert = <{etc / 'private/test.pem'}\nssl_key = <{etc / 'private/test.key'}\n",
                   encoding="utf-8")
    return etc / "dovecot.conf"


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    """A mail host installed as the README says, running Postfix, Dovecot and congvu."""
    for binary, package in (("postfix", "postfix"), ("dovecot", "dovecot-core"), ("doveconf", "dovecot-core"),
                            ("openssl", "openssl"), ("runuser", "util-linux")):
        need(binary, package)
    root = new_root("congvu-install-")
    steps = readme_steps()
    h = Host(root, _venv(root, steps), Path(), Path(), free_port(), free_port(), free_port(), free_port(), free_port())
    h.postfix_dir = _fresh_postfix(root, h.smtp_port)
    h.dovecot_conf = _packaged_dovecot(root, h.imap_port, h.pop3_port)
    # README step 3, with the test's substitutions appended (see the module docstring).
    apply = shlex.split(next(x for x in steps if x.startswith("/opt/congvu/bin/congvu setup") and "--apply" in x))
    plan = shlex.split(next(x for x in steps if x.startswith("/opt/congvu/bin/congvu setup") and "--apply" not in x))
    assert plan[2:] == ["--domain", DOMAIN] and apply[2:] == ["--domain", DOMAIN, "--apply"], (plan, apply)
    subs = ["--root", str(root), "--postfix-config", str(h.postfix_dir), "--dovecot-config",
            str(h.dovecot_conf.parent), "--submission", f"127.0.0.1:{h.submission_port}"]
    h.cli(*plan[1:], *subs)
    setup = h.cli(*apply[1:], *subs)
    (root / "setup.out").write_text(setup.stdout, encoding="utf-8")
    conf = root / "etc/congvu/congvu.toml"
    text = conf.read_text(encoding="utf-8")  # test substitution: free ports for the page and the metrics
    text = text.replace('socket_group = "dovecot"\n', f'socket_group = "dovecot"\nweb_listen = '
                        f'["tcp:{h.web_port}:interface=127.0.0.1"]\n', 1)
    text = text.replace('socket_group = "postfix"\n', 'socket_group = "postfix"\nstats_listen = []\n', 1)
    text = text.replace("[directory]\n", '[directory]\nhash_cost = "test"\n', 1)
    conf.write_text(text, encoding="utf-8")
    try:
        h.rspamd = RspamdServer(root / "rspamd", need("rspamd", "rspamd"))
        (root / "rspamd").mkdir()
        h.rspamd.build(local_d=root / "etc" / "rspamd" / "local.d")
        h.rspamd.start()
        subprocess.run(["postconf", "-c", str(h.postfix_dir), "-e", f"rspamd_milter_service = {h.rspamd.milter}"],
                       check=True, capture_output=True)
        h.start_congvu()
        subprocess.run(["postfix", "-c", str(h.postfix_dir), "start"], check=True, capture_output=True)
        with (root / "dovecot.start").open("w") as err:  # not a pipe: the daemon keeps its stdio open
            subprocess.run(["dovecot", "-c", str(h.dovecot_conf)], check=True, stdin=subprocess.DEVNULL,
                           stdout=err, stderr=err)
        wait_port("127.0.0.1", h.smtp_port)
        wait_port("127.0.0.1", h.imap_port)
        yield h
    finally:
        subprocess.run(["postfix", "-c", str(h.postfix_dir), "stop"], capture_output=True, check=False)
        subprocess.run(["doveadm", "-c", str(h.dovecot_conf), "stop"], capture_output=True, check=False)
        h.stop_congvu()
        if h.rspamd is not None:
            h.rspamd.stop()
        if os.environ.get("CONGVU_KEEP_INSTALL"):
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- the path


def test_setup_made_a_host_that_doctor_passes(host: Host) -> None:
    """Every step of the plan was applied, and `congvu doctor` finds nothing to fix."""
    out = (host.root / "setup.out").read_text(encoding="utf-8")
    assert "failed" not in out and "→ written" in out
    done = host.doctor()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 failed" in done.stdout


def test_a_new_mailbox_must_change_its_password_then_everything_works(host: Host) -> None:
    """New mailbox → IMAP NO [EXPIRED]; a change on the page → IMAP, POP3 and submission log in."""
    added = json.loads(host.admin("account", "add", f"nvminh@{DOMAIN}", "--name", "Nguyễn Văn Minh", "--agency",
                                  "sonv", "--type", "personal", "--agency-name", "Sở Nội vụ", "--json").stdout)
    temp = added["temporary_password"]
    ok, text = host.imap_login(f"nvminh@{DOMAIN}", temp)
    assert not ok and text.startswith("[EXPIRED]"), text
    status, body = host.change_password(f"nvminh@{DOMAIN}", temp, NEW_PASSWORD)
    assert (status, body) == (200, b"OK"), body
    assert host.imap_login(f"nvminh@{DOMAIN}", NEW_PASSWORD) == (True, "OK")
    assert host.pop3_login(f"nvminh@{DOMAIN}", NEW_PASSWORD) == (True, "OK")
    with host.smtp(host.submission_port) as s:
        code, text = host.smtp_auth(s, f"nvminh@{DOMAIN}", NEW_PASSWORD)
        assert code == 235, text


def test_mail_is_delivered_over_lmtp_and_unknown_recipients_are_refused_at_rcpt(host: Host) -> None:
    """A message for nvminh lands in its INBOX through LMTP; an unknown address gets 550 5.1.1 from the map."""
    with host.smtp() as s:
        s.sendmail("outside@example.org", [f"nvminh@{DOMAIN}"],
                   f"From: outside@example.org\r\nTo: nvminh@{DOMAIN}\r\nSubject: lmtp-1\r\n\r\nxin chao\r\n")
        s.mail("outside@example.org")
        code, text = s.rcpt(f"khongco@{DOMAIN}")
        assert code == 550 and b"5.1.1" in text, text
    host.wait_inbox(f"nvminh@{DOMAIN}", NEW_PASSWORD, b"Subject: lmtp-1")


def test_ten_wrong_passwords_lock_and_unlock_restores(host: Host) -> None:
    """After 10 wrong passwords even the right one is refused (NO [ALERT] …until…); `account unlock` restores."""
    for i in range(10):
        ok, _ = host.imap_login(f"nvminh@{DOMAIN}", f"sai-{i}")
        assert not ok
    ok, text = host.imap_login(f"nvminh@{DOMAIN}", NEW_PASSWORD)
    assert not ok and "khóa tạm thời" in text, text
    show = json.loads(host.admin("account", "show", "nvminh", "--json").stdout)
    assert show["lockout"]["reason"].startswith("10 distinct wrong passwords")
    host.admin("account", "unlock", "nvminh", "--reason", "người dùng xác minh qua điện thoại")
    assert host.imap_login(f"nvminh@{DOMAIN}", NEW_PASSWORD) == (True, "OK")


def test_congvu_stopped_is_temporary_everywhere_and_nothing_is_lost(host: Host) -> None:
    """congvu down: IMAP [UNAVAILABLE], POP3 -ERR [SYS/TEMP], SASL 454, SMTP 451; queued mail arrives after.

    An smtpd that already knows congvu's mechanisms answers AUTH 454; one started during the
    outage finds no SASL server and ends the session (Postfix's own behaviour): temporary too.
    """
    open_session = host.smtp(host.submission_port)
    host.stop_congvu()
    try:
        ok, text = host.imap_login(f"nvminh@{DOMAIN}", NEW_PASSWORD)
        assert not ok and "[UNAVAILABLE]" in text, text
        ok, text = host.pop3_login(f"nvminh@{DOMAIN}", NEW_PASSWORD)
        assert not ok and "[SYS/TEMP]" in text, text
        with open_session as s:
            code, text = host.smtp_auth(s, f"nvminh@{DOMAIN}", NEW_PASSWORD)
            assert (code, text[:5]) == (454, b"4.7.0"), text
        try:
            with host.smtp(host.submission_port) as s:
                code, text = host.smtp_auth(s, f"nvminh@{DOMAIN}", NEW_PASSWORD)
                assert 400 <= code < 500, text
        except smtplib.SMTPServerDisconnected:
            pass  # a new smtpd without its SASL server ends the session: the client retries later
        with host.smtp() as s:
            # The milter (default action tempfail) answers at MAIL, policyd at RCPT: 4xx either way.
            code, text = s.mail("outside@example.org")
            if code == 250:
                code, text = s.rcpt(f"nvminh@{DOMAIN}")
            assert code == 451, text
        # Mail Postfix already holds (local submission, no smtpd restrictions) waits in the queue.
        subprocess.run(["sendmail", "-C", str(host.postfix_dir), "-f", f"root@{DOMAIN}", f"nvminh@{DOMAIN}"],
                       input=f"To: nvminh@{DOMAIN}\nSubject: queued-1\n\nwhile congvu was down\n", text=True,
                       check=True, timeout=60)
    finally:
        host.start_congvu()
    subprocess.run(["postqueue", "-c", str(host.postfix_dir), "-f"], check=True, capture_output=True)
    host.wait_inbox(f"nvminh@{DOMAIN}", NEW_PASSWORD, b"Subject: queued-1", timeout=60)


# --------------------------------------------------------------------------- doctor, one planted fault each
# The eight things that went wrong by hand (issue 10), planted on the installed host one at a
# time: doctor must name each with a FAIL line and exit 1, and pass again once it is undone.


@contextlib.contextmanager
def planted(host: Host, check: str, config: Path | None = None) -> Iterator[None]:
    """Run the body (which plants a fault and undoes it on exit); doctor must FAIL ``check``."""
    yield
    done = host.doctor(config)
    lines = [x for x in done.stdout.splitlines() if x.startswith(f"FAIL  {check}")]
    assert done.returncode == 1 and lines, done.stdout + done.stderr


def _doctor_passes_again(host: Host) -> None:
    done = host.doctor()
    assert done.returncode == 0, done.stdout + done.stderr


def test_doctor_finds_an_interpreter_dovecot_cannot_run(host: Host) -> None:
    """Fault 1: the venv under a 0700 directory: the launcher fails as dovecot (exit 126), doctor says so."""
    opt = host.root / "opt"
    mode = opt.stat().st_mode
    try:
        with planted(host, "checkpassword launcher"):
            opt.chmod(0o700)
    finally:
        opt.chmod(mode)
    _doctor_passes_again(host)


def test_doctor_finds_missing_delivery_and_an_unreadable_recipient_map(host: Host) -> None:
    """Fault 2: a hand-kept hash map instead of congvu's, and a recipient map postfix cannot read."""
    maps = host.postconf("-h", "virtual_mailbox_maps")
    try:
        with planted(host, "postfix delivery"):
            host.postconf("-e", "virtual_mailbox_maps = hash:/etc/postfix/vmailbox")
    finally:
        host.postconf("-e", f"virtual_mailbox_maps = {maps}")
    rmap = host.root / "var/lib/congvu/maps/recipients.sqlite3"
    st = rmap.stat()
    try:
        with planted(host, "recipient map"):
            os.chown(rmap, st.st_uid, 0)
            rmap.chmod(0o600)
    finally:
        os.chown(rmap, st.st_uid, st.st_gid)
        rmap.chmod(stat_mode(st))
    _doctor_passes_again(host)


def test_doctor_finds_a_policy_socket_postfix_cannot_use_and_a_lock_beside_it(host: Host) -> None:
    """Fault 3: the policy socket root:root (Postfix gets Permission denied), and a lock symlink in its directory."""
    sock = host.root / "var/spool/postfix/congvu/policy"
    st = sock.stat()
    try:
        with planted(host, "policy socket"):
            os.chown(sock, 0, 0)
    finally:
        os.chown(sock, st.st_uid, st.st_gid)
    lock = sock.with_name("policy.lock")
    try:
        with planted(host, "policy socket lock"):
            lock.symlink_to("12345")
    finally:
        lock.unlink(missing_ok=True)
    _doctor_passes_again(host)


def test_doctor_finds_a_second_config_and_a_policy_service_that_is_not_congvus(host: Host) -> None:
    """Fault 4: a config other than the unit's (two sets of databases); main.cf naming another socket."""
    conf = host.root / "etc/congvu/congvu.toml"
    relative = host.root / "relative.toml"
    relative.write_text(re.sub(r'^state_dir = .*$', 'state_dir = "./var"', conf.read_text(encoding="utf-8"),
                               flags=re.M), encoding="utf-8")
    relative.chmod(0o644)
    with planted(host, "config in use", config=relative):
        pass
    service = host.postconf("-h", "congvu_policy_service")
    try:
        with planted(host, "postfix policy"):
            host.postconf("-e", "congvu_policy_service = unix:private/congvu-policy")
    finally:
        host.postconf("-e", f"congvu_policy_service = {service}")
    _doctor_passes_again(host)


def test_doctor_finds_no_unit_and_a_service_user_outside_postfixs_group(host: Host) -> None:
    """Fault 5: no systemd unit; the service user not in group postfix (it cannot hand its sockets over)."""
    unit = host.root / "etc/systemd/system/congvu.service"
    aside = unit.with_suffix(".aside")
    try:
        with planted(host, "systemd unit"):
            unit.rename(aside)
    finally:
        aside.rename(unit)
    try:
        with planted(host, "service user"):
            subprocess.run(["gpasswd", "-d", "congvu", "postfix"], check=True, capture_output=True)
    finally:
        subprocess.run(["gpasswd", "-a", "congvu", "postfix"], check=True, capture_output=True)
    _doctor_passes_again(host)


def test_doctor_finds_a_dovecot_config_that_loses_expired(host: Host) -> None:
    """Fault 6: congvu's passdb without its terminator: a must-change login would not read NO [EXPIRED]."""
    ext = host.root / "etc/congvu/dovecot/congvu-checkpassword.conf.ext"
    text = ext.read_text(encoding="utf-8")
    try:
        with planted(host, "dovecot refusal codes"):
            ext.write_text(re.sub(r"^passdb \{\n  driver = static\n.*?^\}\n", "", text, flags=re.M | re.S),
                           encoding="utf-8")
            assert ext.read_text(encoding="utf-8") != text
    finally:
        ext.write_text(text, encoding="utf-8")
    _doctor_passes_again(host)


def test_doctor_finds_smtp_auth_through_dovecots_socket(host: Host) -> None:
    """Fault 7: submission asking Dovecot's private/auth (535 on outages) instead of congvu's SASL socket."""
    key = f"127.0.0.1:{host.submission_port}/inet/smtpd_sasl_path"
    before = host.postconf("-P", key).partition(" = ")[2]
    try:
        with planted(host, f"SMTP AUTH 127.0.0.1:{host.submission_port}"):
            host.postconf("-P", f"{key}=private/auth")
    finally:
        host.postconf("-P", f"{key}={before}")
    _doctor_passes_again(host)


def test_doctor_finds_state_files_congvu_cannot_write(host: Host) -> None:
    """Fault 8: state.sqlite3 left to root (a CLI run as root): congvu cannot record failures or lockouts."""
    state = host.root / "var/lib/congvu/state.sqlite3"
    st = state.stat()
    try:
        with planted(host, "state owner"):
            os.chown(state, 0, 0)
    finally:
        os.chown(state, st.st_uid, st.st_gid)
    _doctor_passes_again(host)


def stat_mode(st: os.stat_result) -> int:
    import stat as _stat
    return _stat.S_IMODE(st.st_mode)
