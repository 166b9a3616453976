"""Postfix SMTP AUTH through Dovecot's auth service and the congvu hook (Postfix ignores nologin)."""

from __future__ import annotations

import base64
import shutil
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.authhooks.conftest import GOOD, Authd
from tests.integration.servers.dovecot import DovecotServer, shipped
from tests.integration.servers.postfix import PostfixServer
from tests.integration.support import need, new_root


class SaslPostfix(PostfixServer):
    """The shared Postfix test instance plus Dovecot SASL on port 25 (plaintext AUTH: loopback test only)."""

    def __init__(self, root: Path, auth_port: int, **kw: str) -> None:
        super().__init__(root, **kw)
        self.auth_port = auth_port

    def _main_cf(self) -> str:
        return super()._main_cf() + f"""
# ---- SASL through the test Dovecot (tests/integration/authhooks/test_postfix_sasl.py) ----
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:127.0.0.1:{self.auth_port}
smtpd_tls_auth_only = no
"""


@pytest.fixture(scope="module")
def dovecot(authd: Authd, dovecot_factory: Callable[[str], DovecotServer]) -> DovecotServer:
    return dovecot_factory(shipped("congvu-checkpassword.conf.ext", socket_path=authd.socket))


@pytest.fixture(scope="module")
def postfix(dovecot: DovecotServer) -> Iterator[SaslPostfix]:
    root = new_root("congvu-postfix-sasl-")
    server = SaslPostfix(root, dovecot.auth_port, postfix=need("postfix", "postfix"),
                         postconf=need("postconf", "postfix"))
    try:
        server.build()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def smtp_auth(postfix: SaslPostfix, user: str, password: str) -> int:
    """The reply code of AUTH PLAIN (UTF-8 credentials, which smtplib.login cannot send)."""
    s = smtplib.SMTP(postfix.host, postfix.smtp_port, timeout=30)
    try:
        s.ehlo()
        assert s.has_extn("auth"), postfix.log_tail()
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        code, _ = s.docmd("AUTH", f"PLAIN {token}")
        return code
    finally:
        s.close()


def test_must_change_user_gets_535_on_smtp_auth(authd: Authd, postfix: SaslPostfix) -> None:
    """A must-change user's right password is refused with 535 (CT25-5.2); an active user gets 235."""
    moi = authd.add("smtpmoi", must_change=True)
    tot = authd.add("smtptot")
    assert smtp_auth(postfix, moi, GOOD) == 535
    assert smtp_auth(postfix, tot, GOOD) == 235
    assert smtp_auth(postfix, tot, "Sai-Mật-Khẩu-1") == 535
