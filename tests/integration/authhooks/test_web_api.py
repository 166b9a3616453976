"""The password page and the Roundcube httpapi API over real HTTP (issue 5, self-service change).

The page runs as its own process (``python -m authhooks.web``) on a loopback port, over a
SQLite directory in a temp dir; requests go through urllib exactly as Roundcube's httpapi
driver (form_params POST) or a browser (cookie + CSRF token + Origin) sends them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from congvu.rules.lifecycle import AccountState
from tests.integration.authhooks.webproc import ISSUED, STRONG, STRONG2, Browser, WebSite, post
from tests.integration.support import new_root


@pytest.fixture(scope="module")
def site() -> Iterator[WebSite]:
    """The page alone, per-user limit 3 attempts per window, lockout out of the way."""
    s = WebSite(new_root("congvu-web-"), web_rate_user=3, web_rate_ip=200, lockout_failures=50)
    try:
        s.start_web_alone()
        yield s
    finally:
        s.close()


def test_roundcube_change_returns_200_ok_and_clears_must_change(site: WebSite) -> None:
    """POST user/curpass/newpass → 200 "OK"; must_change cleared, state active, new hash stored."""
    addr = site.add("roundcube1", state=AccountState.MUST_CHANGE_PASSWORD)
    r = post(site.url + "/api/password", {"user": addr, "curpass": ISSUED, "newpass": STRONG})
    assert (r.status, r.body) == (200, b"OK"), r
    acc = site.account(addr)
    assert acc.must_change is False and acc.state is AccountState.ACTIVE and acc.password_changed_at is not None
    assert site.hasher.verify(STRONG, acc.password_hash)[0]
    log = site.log_with("password change accepted user=roundcube1@cantho.gov.vn")
    assert STRONG not in log and ISSUED not in log


def test_wrong_current_password_is_403(site: WebSite) -> None:
    """A wrong curpass answers 403 with a JSON reason, and the account keeps its password."""
    addr = site.add("saicu")
    r = post(site.url + "/api/password", {"user": addr, "curpass": "Không-Phải#1", "newpass": STRONG})
    assert r.status == 403 and r.json()["code"] == "wrong_password", r
    assert site.hasher.verify(ISSUED, site.account(addr).password_hash)[0]


def test_weak_new_password_is_422_with_reasons(site: WebSite) -> None:
    """A weak new password answers 422 listing each failed rule with its id, in both languages."""
    addr = site.add("yeu")
    r = post(site.url + "/api/password", {"user": addr, "curpass": ISSUED, "newpass": "matkhau123"},
             {"Accept": "application/json"})
    data = r.json()
    assert r.status == 422 and data["code"] == "weak_password", r
    codes = {x["code"] for x in data["reasons"]}
    assert {"missing_upper", "missing_special"} <= codes
    assert {x["rule_id"] for x in data["reasons"]} >= {"CT25-5.3"}
    assert all(x["text_vi"] and x["text_en"] for x in data["reasons"])
    assert site.account(addr).must_change is True


def test_reusing_the_current_password_is_refused(site: WebSite) -> None:
    """After a change, changing back to the previous password is refused (history)."""
    addr = site.add("lapai")
    assert post(site.url + "/api/password", {"user": addr, "curpass": ISSUED, "newpass": STRONG}).status == 200
    r = post(site.url + "/api/password", {"user": addr, "curpass": STRONG, "newpass": ISSUED})
    assert r.status == 422 and r.json()["code"] in ("reused", "weak_password")
    r = post(site.url + "/api/password", {"user": addr, "curpass": STRONG, "newpass": STRONG})
    assert r.status == 422 and r.json()["code"] == "reused"


def test_browser_without_csrf_token_is_403(site: WebSite) -> None:
    """From a browser (cookie + Origin) without the token, and the plain form without it: 403."""
    addr = site.add("csrf1")
    b = Browser(site.url)
    b.load()
    r = b.post("/api/password", {"user": addr, "curpass": ISSUED, "newpass": STRONG}, token=False)
    assert r.status == 403 and r.json()["code"] == "csrf", r
    r = b.post("/", {"user": addr, "curpass": ISSUED, "newpass": STRONG, "newpass2": STRONG}, token=False)
    assert r.status == 403 and "tải lại trang".encode() in r.body
    assert site.account(addr).must_change is True


def test_browser_with_token_changes_the_password(site: WebSite) -> None:
    """The page's flow: load it (cookie), post with the token, get {"ok": true}; the form works too."""
    addr = site.add("csrf2")
    b = Browser(site.url)
    page = b.load("?lang=en")
    assert b"Change your official e-mail password" in page.body
    strength = b.post("/api/strength", {"user": addr, "password": STRONG})
    assert strength.status == 200 and strength.json()["accepted"] is True
    r = b.post("/api/password", {"user": addr, "curpass": ISSUED, "newpass": STRONG})
    assert r.status == 200 and r.json()["ok"] is True, r
    form = b.post("/", {"user": addr, "curpass": STRONG, "newpass": STRONG2, "newpass2": STRONG2,
                        "csrf": b.token, "lang": "vi"}, token=False)
    assert form.status == 200 and "Đã đổi mật khẩu".encode() in form.body, form
    assert site.hasher.verify(STRONG2, site.account(addr).password_hash)[0]


def test_too_many_attempts_for_one_user_is_429(site: WebSite) -> None:
    """The fourth attempt for one account within the window answers 429 with Retry-After."""
    addr = site.add("nhieulan")
    for i in range(3):
        r = post(site.url + "/api/password", {"user": addr, "curpass": f"Sai-{i}", "newpass": STRONG})
        assert r.status == 403, r
    r = post(site.url + "/api/password", {"user": addr, "curpass": ISSUED, "newpass": STRONG})
    assert r.status == 429 and r.json()["code"] == "rate_limited" and int(r.headers["Retry-After"]) > 0, r
    assert site.account(addr).must_change is True
