"""End to end through a real Dovecot 2.3: passdb checkpassword → congvu-checkpassword → congvu authd."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from passlib.hash import sha512_crypt

from congvu.rules.lifecycle import AccountState
from tests.integration.authhooks.conftest import GOOD, LOCKOUT_SECONDS, Authd
from tests.integration.servers.dovecot import DovecotServer, shipped


@pytest.fixture(scope="module")
def dovecot(authd: Authd, dovecot_factory: Callable[[str], DovecotServer]) -> DovecotServer:
    """Dovecot with the shipped checkpassword and quota snippets, hook pointed at this authd."""
    conf = (shipped("congvu-checkpassword.conf.ext", socket_path=authd.socket)
            + shipped("congvu-quota.conf"))
    return dovecot_factory(conf)


def test_dovecot_execs_the_launcher_operators_generate(authd: Authd, dovecot: DovecotServer,
                                                       hook_launcher: Path) -> None:
    """passdb and userdb run the `congvu authd hook-script` launcher (python -S), not pip's console script."""
    effective = subprocess.run(["doveconf", "-c", str(dovecot.conf), "-n"], capture_output=True, text=True,
                               check=True).stdout
    assert effective.count(f"args = {hook_launcher} --socket {authd.socket}") == 2, effective
    assert hook_launcher.read_text(encoding="utf-8").startswith(f"#!{sys.executable} -S\n")


def test_shipped_passdbs_end_in_a_terminator_and_the_penalty_is_off(dovecot: DovecotServer) -> None:
    """The effective config: return-fail on the hook's failures, a static terminator that never logs in, no penalty."""
    effective = subprocess.run(["doveconf", "-c", str(dovecot.conf), "-n"], capture_output=True, text=True,
                               check=True).stdout
    hook, terminator = effective.split("passdb {")[1:3]
    assert "result_failure = return-fail" in hook and "result_internalfail = return-fail" in hook
    assert "driver = static" in terminator and "result_success = return-fail" in terminator
    penalty = effective.split("unix_listener anvil-auth-penalty {")[1].split("}")[0]
    assert "mode = 00" in penalty, effective


def test_good_password_logs_in_over_imap_and_pop3(authd: Authd, dovecot: DovecotServer) -> None:
    """A personal account with a fresh password logs in over IMAP and POP3."""
    user = authd.add("dangnhap")
    assert dovecot.imap_login(user, GOOD) == (True, "OK"), dovecot.log_tail()
    assert dovecot.pop3_login(user, GOOD) == (True, "OK"), dovecot.log_tail()
    assert dovecot.imap_login("dangnhap", GOOD)[0], "the bare local part means the site's domain"


def test_bad_password_and_unknown_user_get_authenticationfailed(authd: Authd, dovecot: DovecotServer) -> None:
    """A wrong password and an unknown user both answer NO [AUTHENTICATIONFAILED]."""
    user = authd.add("saimatkhau")
    ok, text = dovecot.imap_login(user, "Sai-Mật-Khẩu-1")
    assert not ok and "[AUTHENTICATIONFAILED]" in text
    ok, text = dovecot.imap_login("khongtontai@cantho.gov.vn", GOOD)
    assert not ok and "[AUTHENTICATIONFAILED]" in text
    ok, text = dovecot.imap_login("x*)(\\\tab", GOOD, plain=True)
    assert not ok and "[AUTHENTICATIONFAILED]" in text


def test_new_account_gets_expired_with_the_change_url(authd: Authd, dovecot: DovecotServer) -> None:
    """A must-change account gets exactly NO [EXPIRED] <URL> - <reason> over IMAP, -ERR [AUTH] <URL> over POP3."""
    user = authd.add("moitao", must_change=True)
    reason = f"{authd.cfg.change_url} - Mật khẩu được cấp mới hoặc đặt lại phải được đổi trước khi sử dụng hộp thư."
    ok, text = dovecot.imap_login(user, GOOD)
    assert not ok and text.startswith(f"[EXPIRED] {reason} / A new or reset password"), text
    assert text.count("[") == 1 and text.endswith("Điều 5 khoản 2)"), "one RFC 5530 code, then the article"
    ok, text = dovecot.imap_login(user, GOOD, plain=True)
    assert not ok and text.startswith(f"[EXPIRED] {reason}"), text
    ok, text = dovecot.pop3_login(user, GOOD)
    assert not ok and text.startswith(f"-ERR [AUTH] {reason}") and "(CT25-5.2: " in text, text
    ok, text = dovecot.imap_login(user, "Sai-Mật-Khẩu-1")
    assert not ok and "[AUTHENTICATIONFAILED]" in text, "a wrong password must not reveal the state"


def test_password_older_than_90_days_is_expired(authd: Authd, dovecot: DovecotServer) -> None:
    """A password changed 91 days ago is refused with [EXPIRED] citing CT25-6.4b; 80 days still logs in."""
    old = authd.add("matkhaucu", age_days=91)
    ok, text = dovecot.imap_login(old, GOOD)
    assert not ok and text.startswith(f"[EXPIRED] {authd.cfg.change_url} - Mật khẩu đã quá hạn 90 ngày"), text
    assert "(CT25-6.4b: " in text
    warned = authd.add("sapethan", age_days=80)
    assert dovecot.imap_login(warned, GOOD) == (True, "OK")


def test_locked_and_cancelled_accounts_are_refused(authd: Authd, dovecot: DovecotServer) -> None:
    """Operator-locked (CT25-6.4a) and cancelled (CT25-6.3) mailboxes read why: NO [ALERT] …, -ERR [AUTH] …."""
    locked = authd.add("bikhoa", state=AccountState.LOCKED)
    ok, text = dovecot.imap_login(locked, GOOD)
    assert not ok and text.startswith("[ALERT] Hộp thư đang bị tạm khóa; liên hệ quản trị hệ thống.") and (
        "(CT25-6.4a: " in text), text
    ok, text = dovecot.pop3_login(locked, GOOD)
    assert not ok and text.startswith("-ERR [AUTH] Hộp thư đang bị tạm khóa"), text
    cancelled = authd.add("dahuy", state=AccountState.CANCELLED)
    ok, text = dovecot.imap_login(cancelled, GOOD)
    assert not ok and text.startswith("[ALERT] Hộp thư đã bị hủy.") and "(CT25-6.3: " in text, text
    ok, text = dovecot.imap_login(cancelled, "Sai-Mật-Khẩu-1")
    assert not ok and "[AUTHENTICATIONFAILED]" in text, "a wrong password must not reveal the state"


def test_ten_wrong_passwords_lock_the_account_until_the_lockout_ends(authd: Authd, dovecot: DovecotServer) -> None:
    """10 distinct wrong passwords lock the account: the right one is refused, then accepted after the lockout."""
    user = authd.add("doanmo")
    for _ in range(3):  # the same wrong password repeated counts once
        assert not dovecot.imap_login(user, "Lặp-Lại-1")[0]
    for i in range(8):
        assert not dovecot.imap_login(user, f"Đoán-Sai-{i}")[0]
    assert dovecot.imap_login(user, GOOD)[0], "9 distinct failures must not lock yet"
    for i in range(10):
        assert not dovecot.imap_login(user, f"Lần-Hai-{i}")[0]
    locked_at = time.monotonic()
    ok, text = dovecot.imap_login(user, GOOD)
    assert not ok and text.startswith("[ALERT] Đăng nhập sai quá nhiều lần; tài khoản bị khóa tạm thời đến "), text
    assert "is locked until" in text and "(Vietnam time)" in text and "(CT25-3.2: " in text
    ok, text = dovecot.pop3_login(user, "Sai-Nữa-1")
    assert not ok and text.startswith("-ERR [AUTH] Đăng nhập sai quá nhiều lần"), "whatever password is typed"
    assert time.monotonic() - locked_at < LOCKOUT_SECONDS, "the checks above must happen inside the lockout"
    deadline = locked_at + LOCKOUT_SECONDS + 10
    while time.monotonic() < deadline:
        if dovecot.imap_login(user, GOOD)[0]:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the lockout never ended")
    assert time.monotonic() - locked_at >= LOCKOUT_SECONDS - 0.5


def test_wrong_logins_from_one_ip_lock_that_ip(authd: Authd, dovecot: DovecotServer) -> None:
    """5 wrong logins from 127.0.0.7 over several accounts lock that IP, not 127.0.0.1 (exempt)."""
    victim = authd.add("cungip")
    for i in range(5):
        assert not dovecot.imap_login(f"ipguess{i}@cantho.gov.vn", "Sai-1", source="127.0.0.7")[0]
    ok, text = dovecot.imap_login(victim, GOOD, source="127.0.0.7")
    assert not ok and text.startswith("[ALERT] ") and "this IP address is locked until" in text, text
    assert dovecot.imap_login(victim, GOOD, source="127.0.0.1")[0]


def test_quota_rule_of_the_mailbox_type_reaches_the_session(authd: Authd, dovecot: DovecotServer) -> None:
    """GETQUOTAROOT shows the personal quota (CT25-5.1); doveadm user sees the unit mailbox's rule."""
    user = authd.add("hanmuc")
    c = dovecot.imap()
    c.login(user, GOOD)
    typ, data = c.getquotaroot("INBOX")
    c.logout()
    assert typ == "OK"
    limit_kib = authd.cfg.mailbox.quota_personal // 1024  # type: ignore[operator]
    assert f"STORAGE 0 {limit_kib}" in " ".join(str(d) for d in data[1]), data
    unit = authd.add("vanphong.sonv", mailbox_type="unit")
    out = dovecot.doveadm("user", unit)
    assert out.returncode == 0, out.stderr + dovecot.log_tail()
    assert f"quota_rule\t*:bytes={authd.cfg.mailbox.quota_unit}" in out.stdout, out.stdout
    assert dovecot.doveadm("user", "khongco@cantho.gov.vn").returncode != 0


def test_deprecated_hash_is_replaced_at_login(authd: Authd, dovecot: DovecotServer) -> None:
    """A sha512-crypt hash verifies and is replaced by argon2 on the first login."""
    user = authd.add("bamcu", password_hash=sha512_crypt.using(rounds=5000).hash(GOOD))
    assert dovecot.imap_login(user, GOOD)[0]
    stored = authd.store.get(user)
    assert stored is not None and stored.password_hash.startswith("$argon2")


def test_auth_service_down_is_a_temporary_failure(authd: Authd, dovecot: DovecotServer) -> None:
    """authd stopped: the right password gets NO [UNAVAILABLE] / -ERR [SYS/TEMP], never a login; back up, it works."""
    user = authd.add("dichvutat")
    authd.stop()
    try:
        ok, text = dovecot.imap_login(user, GOOD)
        assert not ok and text.startswith("[UNAVAILABLE]"), text
        ok, text = dovecot.pop3_login(user, GOOD)
        assert not ok and text.startswith("-ERR [SYS/TEMP]"), text
    finally:
        authd.start()
    assert dovecot.imap_login(user, GOOD)[0]
    assert dovecot.pop3_login(user, GOOD)[0]
