"""AuthService decisions over real SQLite stores, with an injected clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from congvu.authhooks import wire
from congvu.authhooks.policy_server import handle
from congvu.authhooks.service import AuthService, LoginAttempt, LoginStatus, answer, checkpassword_reply
from congvu.config import config_from_mapping
from congvu.directory.counters_sqlite import SqliteCounters
from congvu.directory.hashing import Hasher
from congvu.directory.model import Account
from congvu.directory.sqlite_store import SqliteAccountStore
from congvu.rules.lifecycle import AccountState

PW = "Đúng-Mật-Khẩu-9x"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[AuthService, Clock]]:
    cfg = config_from_mapping({"directory": {"hash_cost": "test"},
                               "authhooks": {"lockout_failures": 3, "lockout_ip_failures": 5,
                                             "lockout_duration": "10m", "lockout_window": "15m"}})
    accounts = SqliteAccountStore(tmp_path / "d.sqlite3")
    counters = SqliteCounters(tmp_path / "s.sqlite3")
    clock = Clock()
    svc = AuthService(cfg, accounts, counters, Hasher("test"), b"k" * 32, clock)
    yield svc, clock
    accounts.close()
    counters.close()


def add(svc: AuthService, lp: str, *, age: int = 1, must_change: bool = False, kind: str = "personal",
        state: AccountState = AccountState.ACTIVE) -> str:
    now = svc.clock()
    svc.accounts.add(Account(local_part=lp, domain="cantho.gov.vn", full_name="Lê Văn Thử", mailbox_type=kind,  # type: ignore[arg-type]
                             password_hash=svc.hasher.hash(PW), must_change=must_change, state=state,
                             password_changed_at=now - timedelta(days=age), created_at=now - timedelta(days=age)))
    return f"{lp}@cantho.gov.vn"


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


def test_expired_on_imap_is_nologin_with_url_but_plain_failure_on_smtp(env: tuple[AuthService, Clock]) -> None:
    """IMAP/POP3 get nologin + reason=[EXPIRED] URL; SMTP and submission get fail (Postfix ignores nologin)."""
    svc, _ = env
    add(svc, "moi", must_change=True)
    imap = answer(svc, wire.AuthRequest("auth", "moi", PW, "imap"))
    assert imap.status == wire.OK
    exports = dict(imap.exports)
    assert exports["nologin"] == "y" and exports["reason"].startswith("[EXPIRED] " + svc.cfg.change_url)
    for proto in ("smtp", "submission"):
        assert answer(svc, wire.AuthRequest("auth", "moi", PW, proto)).status == wire.FAIL


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
    reply = checkpassword_reply(svc, svc.login(LoginAttempt("ai", PW, "imap")), "imap", False)
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
