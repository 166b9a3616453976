"""AuthService decisions over real SQLite stores, with an injected clock (the ``env`` fixture of conftest.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from congvu.authhooks import wire
from congvu.authhooks.policy_server import handle
from congvu.authhooks.service import AuthService, LoginAttempt, LoginStatus, answer, checkpassword_reply
from congvu.rules.lifecycle import AccountState
from tests.unit.authhooks.conftest import PW, Clock, add


def login(svc: AuthService, user: str, pw: str = PW, service: str = "imap", ip: str = "192.0.2.1") -> LoginStatus:
    return svc.login(LoginAttempt(user, pw, service, ip)).status


def test_right_password_ok_and_stamped(env: tuple[AuthService, Clock]) -> None:
    """A good login is OK and leaves a login stamp with service and IP (CT25-6.5)."""
    svc, clock = env
    user = add(svc, "tot")
    assert login(svc, "tot") is LoginStatus.OK
    stamps = svc.counters.take_login_stamps(clock().timestamp() + 1, timedelta(0))
    assert [(s.address, s.service, s.ip) for s in stamps] == [(user, "imap", "192.0.2.1")]


def test_lockout_counts_distinct_passwords_and_refuses_without_verifying(env: tuple[AuthService, Clock]) -> None:
    """Repeats count once; 3 distinct failures lock; the right password is then refused until the lockout ends."""
    svc, clock = env
    add(svc, "khoa")
    for _ in range(5):
        assert login(svc, "khoa", "same-wrong") is LoginStatus.BAD_PASSWORD
    assert login(svc, "khoa") is LoginStatus.OK  # one distinct failure only, and cleared by success
    for i in range(3):
        login(svc, "khoa", f"wrong-{i}")
    assert login(svc, "khoa") is LoginStatus.LOCKED_OUT
    clock.now += timedelta(minutes=10, seconds=1)
    assert login(svc, "khoa") is LoginStatus.OK


def test_aliases_share_the_accounts_lockout(env: tuple[AuthService, Clock]) -> None:
    """Failures through an alias count against the account: a locked mailbox is locked under every name."""
    svc, _ = env
    addr = add(svc, "chinh")
    svc.accounts.update(addr, aliases=("hotro@cantho.gov.vn", "banbientap@cantho.gov.vn"))
    login(svc, "hotro", "wrong-1")
    login(svc, "banbientap@cantho.gov.vn", "wrong-2")
    login(svc, "CHINH", "wrong-3")
    for name in ("chinh", "hotro", "banbientap@cantho.gov.vn"):
        assert login(svc, name) is LoginStatus.LOCKED_OUT, name
    info = svc.counters.lock_info(f"authfail:user:{addr}", svc.clock().timestamp())
    assert info is not None and info.reason.startswith("3 distinct wrong passwords within 15m")


def test_a_lockout_tells_until_when_in_vietnam_time(env: tuple[AuthService, Clock]) -> None:
    """The refusal says the account is temporarily locked and until when, in UTC+7 (08:00 UTC + 10 min = 15:10)."""
    svc, _ = env
    add(svc, "gio")
    for i in range(3):
        login(svc, "gio", f"wrong-{i}")
    result = svc.login(LoginAttempt("gio", PW, "imap", "192.0.2.1"))
    assert result.status is LoginStatus.LOCKED_OUT
    assert "khóa tạm thời đến 15:10 ngày 02/03/2026" in result.decision.text_vi
    assert "locked until 15:10 on 02/03/2026 (Vietnam time)" in result.decision.text_en


def test_ip_lockout_spans_accounts_and_spares_exempt_networks(env: tuple[AuthService, Clock]) -> None:
    """5 failures from one IP over different names lock that IP for every account."""
    svc, _ = env
    add(svc, "nannhan")
    for i in range(5):
        login(svc, f"khac{i}", "x", ip="198.51.100.9")
    assert login(svc, "nannhan", ip="198.51.100.9") is LoginStatus.LOCKED_OUT
    assert login(svc, "nannhan", ip="198.51.100.10") is LoginStatus.OK


def test_unknown_and_injection_names_are_unknown(env: tuple[AuthService, Clock]) -> None:
    """Unknown users and names with *, )(, \\ are UNKNOWN_USER, never an error."""
    svc, _ = env
    for name in ("khongco", "*", "a)(uid=*)", "a\\5c@cantho.gov.vn", "x" * 300):
        assert login(svc, name) is LoginStatus.UNKNOWN_USER


def test_overlong_password_refused_before_hashing(env: tuple[AuthService, Clock]) -> None:
    """A 10,000-character password is refused without touching the hash (the account is not even read)."""
    svc, _ = env
    add(svc, "dai")
    calls: list[str] = []
    real = svc.hasher.verify
    svc.hasher.verify = lambda p, h: (calls.append("v"), real(p, h))[1]  # type: ignore[method-assign]
    assert login(svc, "dai", "A" * 10_000) is LoginStatus.BAD_PASSWORD
    assert calls == []


def test_lifecycle_states(env: tuple[AuthService, Clock]) -> None:
    """must_change, 90-day expiry (CT25-6.4b), warning window, lock, suspension, reclaim and cancel."""
    svc, _ = env
    add(svc, "moi", must_change=True)
    add(svc, "cu", age=91)
    add(svc, "sap", age=80)
    assert login(svc, "moi") is LoginStatus.MUST_CHANGE
    assert login(svc, "cu") is LoginStatus.EXPIRED
    res = svc.login(LoginAttempt("sap", PW, "imap"))
    assert res.status is LoginStatus.OK and res.warning is not None
    for st in (AccountState.LOCKED, AccountState.SUSPENDED, AccountState.RECLAIMED, AccountState.CANCELLED):
        add(svc, st.value[:6])
        svc.accounts.update(f"{st.value[:6]}@cantho.gov.vn", state=st)
        assert login(svc, st.value[:6]) is LoginStatus.DISABLED


@pytest.mark.parametrize("proto", ["imap", "pop3", "smtp", "submission", "lmtp", ""])
def test_must_change_is_refused_with_the_url_on_every_service(env: tuple[AuthService, Clock], proto: str) -> None:
    """Every service gets refuse + code=pass_expired + the URL and article; never nologin, never ok (CT25-5.2)."""
    svc, _ = env
    add(svc, "moi", must_change=True)
    reply = answer(svc, wire.AuthRequest("auth", "moi", PW, proto))
    assert reply.status == wire.REFUSE
    fields = dict(reply.exports)
    assert set(fields) == {"reason", "code"} and fields["code"] == "pass_expired"
    assert fields["reason"].startswith(svc.cfg.change_url + " - Mật khẩu") and "(CT25-5.2: " in fields["reason"]
    assert "\n" not in fields["reason"] and "\t" not in fields["reason"]


def test_expired_and_disabled_accounts_are_refused_with_their_article(env: tuple[AuthService, Clock]) -> None:
    """An expired password is pass_expired (CT25-6.4b); locked and cancelled are user_disabled with their article."""
    svc, _ = env
    add(svc, "cu", age=91)
    add(svc, "khoa", state=AccountState.LOCKED)
    add(svc, "huy", state=AccountState.CANCELLED)
    cases = {"cu": ("pass_expired", "CT25-6.4b"), "khoa": ("user_disabled", "CT25-6.4a"),
             "huy": ("user_disabled", "CT25-6.3")}
    for name, (code, rule) in cases.items():
        reply = answer(svc, wire.AuthRequest("auth", name, PW, "imap"))
        fields = dict(reply.exports)
        assert reply.status == wire.REFUSE and fields["code"] == code and f"({rule}: " in fields["reason"], name
        assert not fields["reason"].startswith("[")


def test_lockout_is_refused_with_its_end_whatever_the_password(env: tuple[AuthService, Clock]) -> None:
    """Once locked out, the right password, a wrong one and an unknown name all read "locked until" (no code)."""
    svc, _ = env
    add(svc, "doan")
    for i in range(3):
        assert answer(svc, wire.AuthRequest("auth", "doan", f"wrong-{i}", "imap")).status == wire.FAIL
    for password in (PW, "wrong-9"):
        reply = answer(svc, wire.AuthRequest("auth", "doan", password, "imap"))
        assert reply.status == wire.REFUSE and "code" not in dict(reply.exports)
        assert "locked until 15:10 on 02/03/2026 (Vietnam time)" in dict(reply.exports)["reason"]
    for i in range(3):
        answer(svc, wire.AuthRequest("auth", "khongai", f"wrong-{i}", "imap"))
    assert answer(svc, wire.AuthRequest("auth", "khongai", PW, "imap")).status == wire.REFUSE


def test_wrong_password_and_unknown_user_are_plain_failures(env: tuple[AuthService, Clock]) -> None:
    """A wrong password and an unknown name carry no reason (IMAP: [AUTHENTICATIONFAILED])."""
    svc, _ = env
    add(svc, "sai")
    assert answer(svc, wire.AuthRequest("auth", "sai", "wrong", "imap")) == wire.AuthReply(wire.FAIL)
    assert answer(svc, wire.AuthRequest("auth", "khongco", PW, "imap")) == wire.AuthReply(wire.UNKNOWN)


def test_policy_server_reason_keeps_its_rfc5530_code(env: tuple[AuthService, Clock]) -> None:
    """The auth policy server's text starts with [EXPIRED] or [CONTACTADMIN], which IMAP shows verbatim."""
    svc, _ = env
    add(svc, "moi", must_change=True)
    add(svc, "khoa", state=AccountState.LOCKED)
    assert svc.client_reason(svc.login(LoginAttempt("moi", PW, "imap"))).startswith(
        f"[EXPIRED] {svc.cfg.change_url} - ")
    assert svc.client_reason(svc.login(LoginAttempt("khoa", PW, "imap"))).startswith("[CONTACTADMIN] ")


def test_quota_rule_follows_the_mailbox_type(env: tuple[AuthService, Clock]) -> None:
    """A unit mailbox gets the unit quota (CT25-5.1) in userdb_quota_rule."""
    svc, _ = env
    add(svc, "vanphong.sonv", kind="unit")
    reply = answer(svc, wire.AuthRequest("lookup", "vanphong.sonv@cantho.gov.vn"))
    assert dict(reply.exports)["userdb_quota_rule"] == f"*:bytes={svc.cfg.mailbox.quota_unit}"


def test_change_password_clears_must_change_and_refuses_reuse(env: tuple[AuthService, Clock]) -> None:
    """A change stores a new hash, clears must_change and lets the next login in; the old password is refused."""
    svc, _ = env
    user = add(svc, "doimk", must_change=True)
    assert not svc.change_password(user, PW).accepted
    assert not svc.change_password(user, "abc").accepted
    new = "Sông-Hậu-Chảy-Mãi-2026!"
    assert svc.change_password(user, new).accepted
    assert login(svc, user, new) is LoginStatus.OK
    assert login(svc, user, PW) is LoginStatus.BAD_PASSWORD


def test_unavailable_directory_is_a_tempfail(env: tuple[AuthService, Clock]) -> None:
    """A directory outage answers tempfail (exit 111), never ok or fail."""
    svc, _ = env
    svc.accounts.close()
    reply = checkpassword_reply(svc, svc.login(LoginAttempt("ai", PW, "imap")), False)
    assert reply.status == wire.TEMPFAIL


def test_policy_server_core(env: tuple[AuthService, Clock]) -> None:
    """allow before auth passes; after auth (authed=yes) refuses must_change with [EXPIRED]; reports count failures."""
    svc, _ = env
    add(svc, "moi", must_change=True)
    add(svc, "tot")
    assert handle(svc, "allow", b'{"login":"moi@cantho.gov.vn","remote":"192.0.2.3"}') == (200, b'{"status": 0}')
    code, body = handle(svc, "allow", b'{"login":"moi@cantho.gov.vn","authed":"yes","protocol":"imap"}')
    assert code == 200 and b'"status": -1' in body and b"[EXPIRED]" in body
    for i in range(3):
        handle(svc, "report", b'{"login":"tot@cantho.gov.vn","pwhash":"%d","success":false}' % i)
    assert handle(svc, "allow", b'{"login":"tot@cantho.gov.vn"}')[1] == b'{"status": -1}'
    assert handle(svc, "nonsense", b"{}")[0] == 400
    assert handle(svc, "allow", b"not json")[0] == 400
