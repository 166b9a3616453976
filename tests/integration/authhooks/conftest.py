"""Fixtures for the auth tests: a real ``congvu authd`` (subprocess) over a seeded SQLite directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from congvu.config import Config, load_config
from congvu.directory.accounts import hasher_for, open_store
from congvu.directory.model import Account
from congvu.endpoints import unix_accepts
from congvu.rules.lifecycle import AccountState
from tests.integration.support import free_port, new_root, read_log, stop_process

REPO = Path(__file__).resolve().parents[3]
CONGVU = Path(sys.executable).parent / "congvu"
DOMAIN = "cantho.gov.vn"
GOOD = "Đúng-Mật-Khẩu-9x"
#: A short lockout so the "until the window passes" test waits seconds, not minutes.
LOCKOUT_SECONDS = 4


class Authd:
    """``congvu authd --config FILE`` in a temp dir, and the directory it serves."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mail = root / "mail"
        self.policy_port = free_port()
        self.config_path = root / "congvu.toml"
        self.config_path.write_text(f"""\
state_dir = "{root}/var"
language = "both"

[directory]
hash_cost = "test"
cache_ttl = "1h"  # authd must not rely on it: it reads the directory uncached

[authhooks]
socket = "{root}/var/authd.sock"
socket_group = "dovecot"
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
            if unix_accepts(self.socket):
                return
            time.sleep(0.05)
        pytest.fail(f"congvu authd did not listen on {self.socket}:\n{self.log_tail()}", pytrace=False)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None

    def log_tail(self, chars: int = 4000) -> str:
        return read_log(self.log)[-chars:]


@pytest.fixture(scope="module")
def authd() -> Iterator[Authd]:
    """A running auth service (module-wide); each test seeds its own accounts."""
    root = new_root("congvu-authd-")
    server = Authd(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        server.store.close()
        shutil.rmtree(root, ignore_errors=True)


__all__ = ["GOOD", "LOCKOUT_SECONDS", "Authd"]
