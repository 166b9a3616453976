"""Helpers for the password page tests: a site in a temp dir, the page as a real process, HTTP clients.

:class:`WebSite` writes a congvu.toml (SQLite directory and counters, test-cost hashes),
seeds accounts straight into the store, and runs one of two real processes:

* ``python -m authhooks.web --config FILE``: the page alone (a page on its own host);
* ``congvu authd --config FILE``, which serves the page itself on ``[authhooks] web_listen``
  (same AuthService, same thread pool), or, for a site that runs the page elsewhere, with
  a twin config whose ``web_listen`` is empty.

HTTP goes through urllib; :class:`Browser` keeps the CSRF cookie like a browser does.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from congvu.config import load_config
from congvu.directory.accounts import hasher_for, open_store
from congvu.directory.model import Account
from congvu.endpoints import unix_accepts
from congvu.rules.lifecycle import AccountState
from tests.integration.support import free_port, read_log, stop_process

REPO = Path(__file__).resolve().parents[3]
DOMAIN = "cantho.gov.vn"
ISSUED = "Cấp-Lần-Đầu#5093"        # the password an operator hands out
STRONG = "Bến Ninh Kiều mưa 9 giờ!"  # passes every rule of every profile
STRONG2 = "Đò ngang qua sông lúc 6h?"


CONGVU = Path(sys.executable).parent / "congvu"


class WebSite:
    """One site: config, directory, and the page (alone or inside authd) as a subprocess."""

    def __init__(self, root: Path, **authhooks: Any) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (root / "var").mkdir(parents=True, exist_ok=True)
        self.mail = root / "mail"
        self.mail.mkdir(exist_ok=True)
        os.chown(self.mail, 65534, 65534)
        self.socket = root / "var" / "authd.sock"
        self._extra = "\n".join(f"{k} = {json.dumps(v)}" for k, v in authhooks.items())
        self.config_path = root / "congvu.toml"
        self.config_path.write_text(self._config([f"tcp:{self.port}:interface=127.0.0.1"]), encoding="utf-8")
        #: The same site without the page: authd where the page runs in a process of its own.
        self.config_noweb = root / "congvu-noweb.toml"
        self.config_noweb.write_text(self._config([]), encoding="utf-8")
        self.cfg = load_config(self.config_path)
        self.store = open_store(self.cfg)
        self.hasher = hasher_for(self.cfg)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = root / "processes.log"

    def _config(self, web_listen: list[str]) -> str:
        return f"""\
state_dir = "{self.root}/var"
language = "both"

[directory]
hash_cost = "test"

[authhooks]
web_listen = {json.dumps(web_listen)}
socket = "{self.root}/var/authd.sock"
socket_group = "dovecot"
sasl_listen = ["unix:{self.root}/var/sasl.sock:mode=660"]
sasl_group = ""
uid = "65534"
gid = "65534"
home = "{self.mail}/{{domain}}/{{local_part}}"
{self._extra}
"""

    # ------------------------------------------------------------------ accounts

    def add(self, local_part: str, password: str = ISSUED, *, must_change: bool = True,
            state: AccountState = AccountState.ACTIVE) -> str:
        """A mailbox as an operator creates it: the issued password, to be changed at first login."""
        now = datetime.now(UTC)
        self.store.add(Account(local_part=local_part, domain=DOMAIN, full_name="Lê Thị Thử Nghiệm",
                               mailbox_type="personal", agency="sonv", password_hash=self.hasher.hash(password),
                               must_change=must_change, password_changed_at=now - timedelta(days=1),
                               created_at=now - timedelta(days=1), state=state))
        return f"{local_part}@{DOMAIN}"

    def account(self, address: str) -> Account:
        a = self.store.get(address)
        assert a is not None
        return a

    # ------------------------------------------------------------------ processes

    def start_web_alone(self) -> None:
        """``congvu serve --only web``: the page in its own process."""
        self._spawn([str(CONGVU), "serve", "--only", "web", "--config", str(self.config_path)])
        self._wait_http()

    def start_authd(self, *, with_web: bool) -> None:
        """``congvu authd``: serving the page too (``with_web``), or with ``web_listen = []``."""
        config = self.config_path if with_web else self.config_noweb
        self._spawn([str(CONGVU), "authd", "--config", str(config)])
        self._wait_socket()
        if with_web:
            self._wait_http()

    def _spawn(self, argv: list[str]) -> None:
        with self.log.open("ab") as log:
            log.write(f"\n===== {' '.join(argv)} =====\n".encode())
            log.flush()
            self.procs.append(subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True))

    def _check_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                pytest.fail(f"a site process exited ({p.returncode}):\n{self.log_tail()}", pytrace=False)

    def _wait_http(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"the password page did not answer on {self.url}:\n{self.log_tail()}", pytrace=False)

    def _wait_socket(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if unix_accepts(self.socket):
                return
            time.sleep(0.05)
        pytest.fail(f"congvu authd did not listen on {self.socket}:\n{self.log_tail()}", pytrace=False)

    def stop(self) -> None:
        procs, self.procs = self.procs, []
        for p in procs:
            stop_process(p)

    def close(self) -> None:
        """Stop the processes and remove the site's temp dir (its log is gone with it)."""
        self.stop()
        self.store.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_text(self) -> str:
        return read_log(self.log)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

    def log_with(self, text: str, timeout: float = 10.0) -> str:
        """The log once it contains ``text`` (the services flush their log every 50 ms), else fail."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log_text()
            if text in log or time.monotonic() > deadline:
                assert text in log, f"{text!r} not logged within {timeout}s:\n{log[-4000:]}"
                return log
            time.sleep(0.05)




# --------------------------------------------------------------------------- HTTP clients


class Reply:
    """Status, headers and body of one HTTP exchange."""

    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body[:300]!r})"


def _open(opener: urllib.request.OpenerDirector, req: urllib.request.Request) -> Reply:
    try:
        with opener.open(req, timeout=30) as r:
            return Reply(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        with e:
            return Reply(e.code, e.headers, e.read())


def post(url: str, fields: dict[str, str], headers: dict[str, str] | None = None) -> Reply:
    """A form POST as Roundcube's httpapi driver (Guzzle form_params) sends it."""
    req = urllib.request.Request(url, data=urllib.parse.urlencode(fields).encode(), method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})})
    return _open(urllib.request.build_opener(), req)


class Browser:
    """A cookie-keeping client that loads the page and posts with its CSRF token, like the page's script."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.token = ""

    def load(self, query: str = "") -> Reply:
        r = _open(self.opener, urllib.request.Request(self.base + "/" + query))
        m = re.search(rb'name="csrf" value="([^"]+)"', r.body)
        assert m is not None, r
        self.token = m.group(1).decode()
        return r

    def post(self, path: str, fields: dict[str, str], *, token: bool = True) -> Reply:
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json",
                   "Origin": self.base}
        if token:
            headers["X-CSRF-Token"] = self.token
        req = urllib.request.Request(self.base + path, data=urllib.parse.urlencode(fields).encode(),
                                     method="POST", headers=headers)
        return _open(self.opener, req)
