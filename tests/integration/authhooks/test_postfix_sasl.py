"""SMTP AUTH on Postfix's submission port, answered by congvu authd as shipped, beside IMAP and POP3 through Dovecot.

Postfix loads the shipped master.cf entry (``smtpd_sasl_type = dovecot``,
``smtpd_sasl_path = congvu/auth``), which resolves inside this instance's queue
directory, where authd's ``[authhooks] sasl_listen`` is (group postfix, as shipped).
Every user sees the same decision on all three: IMAP and POP3 through the shipped
checkpassword snippet, SMTP AUTH through authd's own socket.
"""

from __future__ import annotations

import base64
import grp
import smtplib
import stat
import time
from collections.abc import Callable, Iterator

import pytest

from congvu.rules.lifecycle import AccountState
from tests.integration.authhooks.conftest import (
    GOOD,
    LOCKOUT_SECONDS,
    Authd,
    auth_plain,
    running_authd,
    smtp_auth,
    submission,
)
from tests.integration.servers.dovecot import DovecotServer, shipped
from tests.integration.servers.postfix import PostfixServer


@pytest.fixture(scope="module")
def authd(postfix_instance: PostfixServer) -> Iterator[Authd]:
    """authd answering SMTP AUTH on the socket the shipped smtpd_sasl_path names for this Postfix."""
    with running_authd(sasl_socket=postfix_instance.sasl_socket) as server:
        yield server


@pytest.fixture(scope="module")
def dovecot(authd: Authd, dovecot_factory: Callable[[str], DovecotServer]) -> DovecotServer:
    return dovecot_factory(shipped("congvu-checkpassword.conf.ext", socket_path=authd.socket))


def test_good_login_works_on_smtp_imap_and_pop3(authd: Authd, postfix: PostfixServer,
                                                 dovecot: DovecotServer) -> None:
    """An active account logs in everywhere, on the socket as shipped (0660, group postfix); LOGIN works too."""
    st = postfix.sasl_socket.stat()
    assert stat.S_IMODE(st.st_mode) == 0o660 and grp.getgrgid(st.st_gid).gr_name == "postfix"
    user = authd.add("smtptot")
    assert smtp_auth(postfix, "smtptot", GOOD)[0] == 235, postfix.log_tail()
    assert dovecot.imap_login(user, GOOD) == (True, "OK")
    assert dovecot.pop3_login(user, GOOD) == (True, "OK")
    s = submission(postfix)
    try:
        assert s.docmd("AUTH", "LOGIN")[0] == 334
        assert s.docmd(base64.b64encode(b"smtptot").decode())[0] == 334
        assert s.docmd(base64.b64encode(GOOD.encode()).decode())[0] == 235, "the LOGIN mechanism works too"
    finally:
        s.close()


def test_wrong_password_is_535_with_the_same_words_as_an_unknown_user(authd: Authd, postfix: PostfixServer) -> None:
    """A wrong password and an unknown user both get 535 5.7.8 with "wrong user name or password" (CT25-3.2)."""
    authd.add("smtpsai")
    code, text = smtp_auth(postfix, "smtpsai", "Sai-Mật-Khẩu-1")
    assert code == 535 and text.startswith("5.7.8 Error: authentication failed: Sai tên đăng nhập hoặc mật khẩu."), text
    assert smtp_auth(postfix, "khongcoai", GOOD) == (code, text)


def test_must_change_user_is_refused_with_the_url_everywhere(authd: Authd, postfix: PostfixServer,
                                                             dovecot: DovecotServer) -> None:
    """Must change (CT25-5.2): SMTP AUTH 535 with URL and article (never 235), IMAP NO [EXPIRED], POP3 -ERR [AUTH]."""
    user = authd.add("smtpmoi", must_change=True)
    reason = f"{authd.cfg.change_url} - Mật khẩu được cấp mới hoặc đặt lại phải được đổi trước khi sử dụng hộp thư."
    code, text = smtp_auth(postfix, user, GOOD)
    assert code == 535 and text.startswith(f"5.7.8 Error: authentication failed: {reason} / A new"), text
    assert text.endswith("(CT25-5.2: QĐ 21/2025/QĐ-UBND TP Cần Thơ, Điều 5 khoản 2)"), text
    ok, text = dovecot.imap_login(user, GOOD)
    assert not ok and text.startswith(f"[EXPIRED] {reason}"), text
    ok, text = dovecot.pop3_login(user, GOOD)
    assert not ok and text.startswith(f"-ERR [AUTH] {reason}"), text


def test_expired_and_disabled_accounts_are_refused_on_smtp(authd: Authd, postfix: PostfixServer) -> None:
    """Expired (CT25-6.4b), operator-locked (CT25-6.4a) and suspended (CT15-5.4) mailboxes get 535 with why."""
    cases = {authd.add("smtpcu", age_days=91): "CT25-6.4b",
             authd.add("smtpkhoa", state=AccountState.LOCKED): "CT25-6.4a",
             authd.add("smtpngung", state=AccountState.SUSPENDED): "CT15-5.4"}
    for user, rule in cases.items():
        code, text = smtp_auth(postfix, user, GOOD)
        assert code == 535 and f"({rule}: " in text, (user, text)


def test_proxy_login_is_refused(authd: Authd, postfix: PostfixServer) -> None:
    """AUTH PLAIN as someone else (an authzid other than the login) is refused, the right password or not."""
    authd.add("smtpchu")
    authd.add("smtpkhach")
    code, text = smtp_auth(postfix, "smtpkhach@cantho.gov.vn", GOOD, authzid="smtpchu@cantho.gov.vn")
    assert code == 535 and "another user" in text, text
    assert smtp_auth(postfix, "smtpkhach", GOOD, authzid="smtpkhach")[0] == 235


def test_lockout_is_told_with_its_end_on_smtp_imap_and_pop3(authd: Authd, postfix: PostfixServer,
                                                            dovecot: DovecotServer) -> None:
    """10 wrong passwords over SMTP lock the account: all three say until when, whatever password is typed."""
    user = authd.add("smtpdoan")
    s = submission(postfix)
    try:
        for i in range(10):
            assert auth_plain(s, user, f"Đoán-Sai-{i}")[0] == 535
    finally:
        s.close()
    locked_at = time.monotonic()
    code, text = smtp_auth(postfix, user, GOOD)
    assert code == 535 and "Đăng nhập sai quá nhiều lần; tài khoản bị khóa tạm thời đến " in text, text
    assert "is locked until" in text and "(CT25-3.2: " in text
    ok, text = dovecot.imap_login(user, GOOD)
    assert not ok and text.startswith("[ALERT] Đăng nhập sai quá nhiều lần"), text
    ok, text = dovecot.pop3_login(user, "Sai-Nữa")
    assert not ok and text.startswith("-ERR [AUTH] Đăng nhập sai quá nhiều lần"), text
    assert time.monotonic() - locked_at < LOCKOUT_SECONDS, "the checks above must happen inside the lockout"


def test_auth_service_down_is_temporary_everywhere(authd: Authd, postfix: PostfixServer,
                                                   dovecot: DovecotServer) -> None:
    """authd stopped: SMTP AUTH 454 4.7.0, IMAP NO [UNAVAILABLE], POP3 -ERR [SYS/TEMP]; back up, all three log in."""
    user = authd.add("smtptat")
    open_session = submission(postfix)  # its smtpd already talks to authd, as a busy server's do
    authd.stop()
    try:
        code, text = auth_plain(open_session, user, GOOD)
        assert code == 454 and text.startswith("4.7.0 Temporary authentication failure"), text
        ok, text = dovecot.imap_login(user, GOOD)
        assert not ok and text.startswith("[UNAVAILABLE]"), text
        ok, text = dovecot.pop3_login(user, GOOD)
        assert not ok and text.startswith("-ERR [SYS/TEMP]"), text
        # A session that starts during the outage: 454 from an smtpd that kept its (dead) connection,
        # or an end of session from an smtpd that found no SASL server; never a 5xx, never 235.
        try:
            late = smtplib.SMTP(postfix.host, postfix.submission_port, timeout=30)
            late.ehlo()
            code = auth_plain(late, user, GOOD)[0]
            late.close()
        except (smtplib.SMTPServerDisconnected, ConnectionError):
            code = 0
        assert code in (0, 454), code
    finally:
        open_session.close()
        authd.start()
    assert smtp_auth(postfix, user, GOOD)[0] == 235, postfix.log_tail()
    assert dovecot.imap_login(user, GOOD)[0]
    assert dovecot.pop3_login(user, GOOD)[0]
