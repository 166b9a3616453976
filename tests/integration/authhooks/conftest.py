"""Fixtures for the auth tests: a real ``congvu authd`` (subprocess) over a seeded directory (SQLite, or LDAP)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from congvu.config import Config, load_config
from congvu.directory.accounts import hasher_for, open_store
from congvu.directory.model import Account
from congvu.endpoints import unix_accepts
from congvu.rules.lifecycle import AccountState
from tests.integration.servers.postfix import PostfixServer
from tests.integration.support import free_port, need, new_root, read_log, stop_process

REPO = Path(__file__).resolve().parents[3]
CONGVU = Path(sys.executable).parent / "congvu"
DOMAIN = "cantho.gov.vn"
GOOD = "Đúng-Mật-Khẩu-9x"
#: A short lockout so the "until the window passes" test waits seconds, not minutes.
LOCKOUT_SECONDS = 4


class Authd:
    """``congvu authd --config FILE`` in a temp dir, and the directory it serves.

    ``sasl_socket``: where it answers SMTP AUTH (a Postfix instance's ``<queue>/congvu/auth``,
    given to group postfix as shipped); ``directory``: more ``[directory]`` settings (LDAP).
    """

    def __init__(self, root: Path, *, sasl_socket: Path | None = None,
                 directory: dict[str, Any] | None = None) -> None:
        self.root = root
        self.mail = root / "mail"
        self.policy_port = free_port()
        self.config_path = root / "congvu.toml"
        self.sasl_socket = sasl_socket or root / "var" / "sasl.sock"
        more = "".join(f"{k} = {json.dumps(v)}\n" for k, v in (directory or {}).items())
        self.config_path.write_text(f"""\
state_dir = "{root}/var"
language = "both"

[directory]
hash_cost = "test"
cache_ttl = "1h"  # authd must not rely on it: it reads the directory uncached
{more}
[authhooks]
socket = "{root}/var/authd.sock"
socket_group = "dovecot"
sasl_listen = ["unix:{self.sasl_socket}:mode=660"]
sasl_group = "{"postfix" if sasl_socket else ""}"
uid = "65534"
gid = "65534"
home = "{self.mail}/{{domain}}/{{local_part}}"
lockout_failures = 10
lockout_window = "10m"
lockout_duration = "{LOCKOUT_SECONDS}s"
lockout_ip_failures = 5
lockout_exempt = ["127.0.0.1/32"]
policy_listen = ["tcp:{self.policy_port}:interface=127.0.0.1"]
web_listen = []  # the page is tested by test_authd_web.py & co; never the shared default port 8080
""", encoding="utf-8")
        self.cfg: Config = load_config(self.config_path)
        self.socket = root / "var" / "authd.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "authd.log"
        (root / "var").mkdir(exist_ok=True)
        self.mail.mkdir(exist_ok=True)
        os.chown(self.mail, 65534, 65534)
        self.store = open_store(self.cfg)
        self.hasher = hasher_for(self.cfg)

    def add(self, local_part: str, password: str = GOOD, *, must_change: bool = False, age_days: float = 1,
            state: AccountState = AccountState.ACTIVE, mailbox_type: str = "personal",
            password_hash: str | None = None) -> str:
        """Seed one account; returns its address."""
        now = datetime.now(UTC)
        self.store.add(Account(
            local_part=local_part, domain=DOMAIN, full_name="Trần Thị Kiểm Thử", mailbox_type=mailbox_type,  # type: ignore[arg-type]
            password_hash=password_hash or self.hasher.hash(password), must_change=must_change,
            password_changed_at=now - timedelta(days=age_days), created_at=now - timedelta(days=age_days),
            state=state))
        return f"{local_part}@{DOMAIN}"

    def start(self) -> None:
        log = self.log.open("ab")
        self.proc = subprocess.Popen([str(CONGVU), "authd", "--config", str(self.config_path)],
                                     stdout=log, stderr=log, cwd=self.root)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"congvu authd exited {self.proc.returncode}:\n{self.log_tail()}", pytrace=False)
            if unix_accepts(self.socket) and unix_accepts(self.sasl_socket):
                return
            time.sleep(0.05)
        pytest.fail(f"congvu authd did not listen on {self.socket}:\n{self.log_tail()}", pytrace=False)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None

    def log_tail(self, chars: int = 4000) -> str:
        return read_log(self.log)[-chars:]


@contextlib.contextmanager
def running_authd(**options: Any) -> Iterator[Authd]:
    """An Authd (``options`` as for :class:`Authd`) started in a fresh temp dir; stopped and removed afterwards."""
    root = new_root("congvu-authd-")
    server = Authd(root, **options)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        server.store.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def authd() -> Iterator[Authd]:
    """A running auth service (module-wide); each test seeds its own accounts."""
    with running_authd() as server:
        yield server


# --------------------------------------------------------------------------- SMTP AUTH through Postfix


@pytest.fixture(scope="module")
def postfix_instance() -> Iterator[PostfixServer]:
    """A built Postfix (shipped snippets, SMTP AUTH on submission), not started: see ``postfix``.

    The module's ``authd`` listens on its ``sasl_socket``, where the shipped ``smtpd_sasl_path`` points.
    """
    root = new_root("congvu-postfix-sasl-")
    server = PostfixServer(root, postfix=need("postfix", "postfix"), postconf=need("postconf", "postfix"))
    try:
        server.build()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def postfix(postfix_instance: PostfixServer, authd: Authd) -> PostfixServer:
    """``postfix_instance`` running, once the module's authd answers on its SASL socket."""
    postfix_instance.start()
    return postfix_instance


def submission(postfix: PostfixServer) -> smtplib.SMTP:
    """A session on the submission port, past EHLO (smtpd has asked congvu for its mechanisms)."""
    s = smtplib.SMTP(postfix.host, postfix.submission_port, timeout=30)
    s.ehlo()
    assert s.has_extn("auth") and "PLAIN" in s.esmtp_features["auth"], postfix.log_tail()
    return s


def auth_plain(s: smtplib.SMTP, user: str, password: str, authzid: str = "") -> tuple[int, str]:
    """(code, text) of AUTH PLAIN with an initial response (UTF-8 credentials, which smtplib.login cannot send)."""
    token = base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()
    code, text = s.docmd("AUTH", f"PLAIN {token}")
    return code, text.decode("utf-8", "replace")


def smtp_auth(postfix: PostfixServer, user: str, password: str, authzid: str = "") -> tuple[int, str]:
    """(reply code, text) of AUTH PLAIN in a fresh submission session."""
    s = submission(postfix)
    try:
        return auth_plain(s, user, password, authzid)
    finally:
        s.close()


__all__ = ["GOOD", "LOCKOUT_SECONDS", "Authd", "auth_plain", "running_authd", "smtp_auth", "submission"]
