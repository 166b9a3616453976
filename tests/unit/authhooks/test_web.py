"""The password page's core (authhooks.web.PasswordWeb): routes, CSRF, rate limits, the change (issue 5).

A real AuthService over the embedded SQLite stores in a temp dir, test-cost hashes and an
injected clock; requests are WebRequest values, as the twisted.web wrapper builds them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from congvu.authhooks.service import AuthService
from congvu.authhooks.web import (
    COOKIE,
    Csrf,
    PasswordWeb,
    WebRequest,
    WebResponse,
    client_ip,
    origin_allowed,
    parse_form,
    rules_list,
)
from congvu.config import Config, config_from_mapping
from congvu.directory.accounts import open_store
from congvu.directory.counters import open_counters
from congvu.directory.hashing import Hasher
from congvu.directory.model import Account, DirectoryUnavailable
from congvu.rules.lifecycle import AccountState

SECRET = b"unit-test-secret-0123456789abcdef"
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
OLD = "Tạm-Cấp#4821xq"            # the issued password
NEW = "Sông Hậu chiều 7 gió!"     # strong, passes every rule
HOST = "mail.cantho.gov.vn"


@dataclass
class Site:
    cfg: Config
    service: AuthService
    app: PasswordWeb
    hasher: Hasher
    now: list[datetime] = field(default_factory=lambda: [T0])

    def close(self) -> None:
        """Close both stores the service opened."""
        self.service.accounts.close()
        self.service.counters.close()

    def add(self, local: str, password: str = OLD, *, must_change: bool = True,
            state: AccountState = AccountState.ACTIVE, history: tuple[str, ...] = ()) -> str:
        acc = Account(local_part=local, domain="cantho.gov.vn", full_name="Nguyễn Văn Minh", mailbox_type="personal",
                      agency="sonv", password_hash=self.hasher.hash(password),
                      password_history=tuple(self.hasher.hash(h) for h in history), state=state,
                      created_at=T0 - timedelta(days=1), password_changed_at=T0 - timedelta(days=1),
                      must_change=must_change)
        self.service.accounts.add(acc)
        return acc.address

    def account(self, address: str) -> Account:
        a = self.service.accounts.get(address)
        assert a is not None
        return a

    def page(self, lang: str = "") -> tuple[WebResponse, str]:
        """GET the page; (response, the CSRF token it set)."""
        r = self.app.handle(WebRequest("GET", "/", query={"lang": lang} if lang else {}, headers={"host": HOST}))
        cookie = dict(r.headers)["Set-Cookie"].split(";")[0].split("=", 1)[1]
        return r, cookie

    def api(self, form: dict[str, str], *, headers: dict[str, str] | None = None, ip: str = "192.0.2.10",
            cookies: dict[str, str] | None = None, path: str = "/api/password") -> WebResponse:
        return self.app.handle(WebRequest("POST", path, headers={"host": HOST, **(headers or {})},
                                          cookies=cookies or {}, form=form, client_ip=ip))

    def browser(self, form: dict[str, str], *, path: str = "/api/password", ip: str = "192.0.2.10",
                token: str | None = None, origin: str = f"https://{HOST}") -> WebResponse:
        """A request from the page's own JavaScript: cookie + X-CSRF-Token + Origin."""
        _, cookie = self.page()
        return self.api(form, path=path, ip=ip, cookies={COOKIE: cookie},
                        headers={"origin": origin, "x-csrf-token": cookie if token is None else token,
                                 "accept": "application/json", "sec-fetch-site": "same-origin"})


def make_site(tmp_path: Path, **authhooks: Any) -> Site:
    cfg = config_from_mapping({"state_dir": str(tmp_path), "profile": "cantho-2025",
                               "directory": {"hash_cost": "test"}, "authhooks": authhooks})
    hasher = Hasher("test")
    now = [T0]
    service = AuthService(cfg, open_store(cfg), open_counters(cfg), hasher, SECRET, clock=lambda: now[0])
    return Site(cfg, service, PasswordWeb(cfg, service, SECRET), hasher, now)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = make_site(tmp_path)
    yield s
    s.close()


def body(r: WebResponse) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(r.body)
    return data


# --------------------------------------------------------------------------- the page


def test_page_is_vietnamese_first_and_states_the_rules_with_ids(site: Site) -> None:
    """GET / is in Vietnamese and lists length, classes, history and expiry with their requirement ids."""
    r, _ = site.page()
    text = r.body.decode()
    assert r.status == 200 and '<html lang="vi">' in text
    assert "Đổi mật khẩu thư điện tử công vụ" in text
    assert "Dài từ 8 đến 128 ký tự" in text and ">CT25-5.3<" in text
    assert "5 mật khẩu gần nhất" in text
    assert "ít nhất 90 ngày" in text and ">CT25-6.4b<" in text and ">CT25-5.2<" in text


def test_page_in_english_on_request(site: Site) -> None:
    """?lang=en serves the English page with the switch back to Vietnamese."""
    r, _ = site.page("en")
    text = r.body.decode()
    assert '<html lang="en">' in text and "Change your official e-mail password" in text
    assert "Between 8 and 128 characters long." in text and "Tiếng Việt" in text


def test_page_rules_follow_the_profile(tmp_path: Path) -> None:
    """Under cantho-2015 shared mailboxes show the 60-day lifetime of CT15-11.4."""
    cfg = config_from_mapping({"state_dir": str(tmp_path), "profile": "cantho-2015"})
    lines = {d.rule_id: d.text_vi for d in rules_list(cfg)}
    assert "60 ngày" in lines["CT15-11.4"] and "90 ngày" in lines["CT15-10.3"]


def test_page_sets_a_signed_strict_cookie_and_echoes_it(site: Site) -> None:
    """The CSRF cookie is HttpOnly + SameSite=Strict, signed, and the form carries the same value."""
    r, token = site.page()
    cookie = dict(r.headers)["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    assert f'name="csrf" value="{token}"' in r.body.decode()
    assert site.app.csrf.valid(token) and not Csrf(b"another key 0123456789").valid(token)
    secure = site.app.handle(WebRequest("GET", "/", secure=True))
    assert "; Secure" in dict(secure.headers)["Set-Cookie"]


def test_page_keeps_a_valid_cookie(site: Site) -> None:
    """A browser that already holds a valid token keeps it (no new Set-Cookie)."""
    _, token = site.page()
    r = site.app.handle(WebRequest("GET", "/", cookies={COOKIE: token}))
    assert "Set-Cookie" not in dict(r.headers) and token in r.body.decode()


def test_user_input_is_escaped(site: Site) -> None:
    """A user name in the query string is HTML-escaped in the page."""
    r = site.app.handle(WebRequest("GET", "/", query={"user": '"><script>x</script>'}))
    assert b"<script>x</script>" not in r.body and b"&lt;script&gt;" in r.body


def test_static_files_and_unknown_paths(site: Site) -> None:
    """app.css and app.js are served with their types; anything else is 404, a wrong method 405."""
    css = site.app.handle(WebRequest("GET", "/static/app.css"))
    js = site.app.handle(WebRequest("GET", "/static/app.js"))
    assert css.status == 200 and css.content_type.startswith("text/css") and b".meter" in css.body
    assert js.status == 200 and "javascript" in js.content_type and b"api/strength" in js.body
    assert site.app.handle(WebRequest("GET", "/static/../web.py")).status == 404
    assert site.app.handle(WebRequest("GET", "/etc/passwd")).status == 404
    assert site.app.handle(WebRequest("GET", "/api/password")).status == 405


# --------------------------------------------------------------------------- the Roundcube API


def test_api_change_succeeds_and_clears_must_change(site: Site) -> None:
    """user/curpass/newpass → 200 "OK"; the hash, must_change, password_changed_at and state are updated."""
    addr = site.add("nvminh", state=AccountState.MUST_CHANGE_PASSWORD)
    before = site.account(addr)
    site.now[0] = T0 + timedelta(hours=1)
    r = site.api({"user": "nvminh", "curpass": OLD, "newpass": NEW})
    assert (r.status, r.body) == (200, b"OK")
    after = site.account(addr)
    assert after.must_change is False and after.state is AccountState.ACTIVE
    assert after.password_changed_at == T0 + timedelta(hours=1)
    assert site.hasher.verify(NEW, after.password_hash)[0]
    assert after.password_history[0] == before.password_hash


def test_api_answers_json_when_asked(site: Site) -> None:
    """With Accept: application/json the success body is {"ok": true}."""
    site.add("nvminh")
    r = site.api({"user": "nvminh@cantho.gov.vn", "curpass": OLD, "newpass": NEW},
                 headers={"accept": "application/json"})
    assert r.status == 200 and body(r) == {"ok": True, "code": "ok", "score": 4}


def test_api_stores_the_nfc_form(site: Site) -> None:
    """A new password typed decomposed (NFD) logs in when typed composed (NFC), and the other way round."""
    import unicodedata
    addr = site.add("nvminh")
    assert site.api({"user": "nvminh", "curpass": OLD, "newpass": unicodedata.normalize("NFD", NEW)}).status == 200
    assert site.hasher.verify(unicodedata.normalize("NFC", NEW), site.account(addr).password_hash)[0]


def test_api_wrong_current_password_is_403_and_counts_for_lockout(site: Site) -> None:
    """A wrong curpass answers 403 wrong_password, changes nothing and counts as a login failure."""
    addr = site.add("nvminh")
    before = site.account(addr).password_hash
    r = site.api({"user": "nvminh", "curpass": "not-it", "newpass": NEW})
    assert r.status == 403 and body(r)["code"] == "wrong_password"
    assert body(r)["reasons"][0]["rule_id"] == "CT25-3.2"
    assert site.account(addr).password_hash == before
    assert site.service.counters.failures(f"authfail:user:{addr}", timedelta(minutes=15), T0.timestamp()) == 1


def test_api_unknown_user_looks_like_a_wrong_password(site: Site) -> None:
    """An unknown user gets exactly the wrong-password answer (no account enumeration)."""
    site.add("nvminh")
    wrong = site.api({"user": "nvminh", "curpass": "not-it", "newpass": NEW})
    unknown = site.api({"user": "nobody", "curpass": "not-it", "newpass": NEW})
    assert (unknown.status, unknown.body) == (wrong.status, wrong.body)


def test_api_weak_password_is_422_with_reasons(site: Site) -> None:
    """A weak new password answers 422 with each failed rule, its id and both languages."""
    addr = site.add("nvminh")
    r = site.api({"user": "nvminh", "curpass": OLD, "newpass": "abc"})
    data = body(r)
    assert r.status == 422 and data["code"] == "weak_password"
    codes = {x["code"] for x in data["reasons"]}
    assert {"too_short", "missing_upper", "missing_digit", "missing_special"} <= codes
    assert all(x["rule_id"] and x["citation"] and x["text_vi"] and x["text_en"] for x in data["reasons"])
    assert site.account(addr).must_change is True


def test_api_refuses_the_current_and_recent_passwords(site: Site) -> None:
    """The current password and one of the last N are refused as "reused" (history rule)."""
    site.add("nvminh", history=(NEW,))
    same = site.api({"user": "nvminh", "curpass": OLD, "newpass": OLD})
    old = site.api({"user": "nvminh", "curpass": OLD, "newpass": NEW})
    assert same.status == old.status == 422
    assert body(same)["code"] == body(old)["code"] == "reused"


def test_api_missing_fields_is_400(site: Site) -> None:
    """A request without newpass is a 400, and verifies nothing."""
    site.add("nvminh")
    r = site.api({"user": "nvminh", "curpass": OLD})
    assert r.status == 400 and body(r)["code"] == "missing_field"


def test_api_refuses_a_disabled_account(site: Site) -> None:
    """A locked mailbox (CT25-6.4a) cannot unlock itself by changing its password."""
    addr = site.add("nvminh", state=AccountState.LOCKED, must_change=False)
    r = site.api({"user": "nvminh", "curpass": OLD, "newpass": NEW})
    assert r.status == 403 and body(r)["code"] == "disabled" and body(r)["reasons"][0]["rule_id"] == "CT25-6.4a"
    assert site.hasher.verify(OLD, site.account(addr).password_hash)[0]


def test_api_during_a_login_lockout_is_429(tmp_path: Path) -> None:
    """After lockout_failures wrong passwords the right one is refused with 429 locked_out."""
    s = make_site(tmp_path, lockout_failures=3, web_rate_user=0, web_rate_ip=0)
    s.add("nvminh")
    for i in range(3):
        assert s.api({"user": "nvminh", "curpass": f"wrong{i}", "newpass": NEW}).status == 403
    r = s.api({"user": "nvminh", "curpass": OLD, "newpass": NEW})
    assert r.status == 429 and body(r)["code"] == "locked_out" and "Retry-After" in dict(r.headers)


def test_api_directory_down_is_a_temporary_4xx(site: Site) -> None:
    """A directory outage answers 424 temporary (never 5xx) and changes nothing."""
    site.add("nvminh")

    def down(address: str) -> Account | None:
        raise DirectoryUnavailable("test outage")

    site.service.accounts.get = down  # type: ignore[method-assign]
    r = site.api({"user": "nvminh", "curpass": OLD, "newpass": NEW})
    assert r.status == 424 and body(r)["temporary"] is True and "Retry-After" in dict(r.headers)


def test_api_bug_is_a_temporary_4xx(site: Site) -> None:
    """An unexpected exception inside the handler answers 424, not a 5xx or a traceback."""
    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("bug")

    site.service.verify_current = boom  # type: ignore[method-assign]
    r = site.api({"user": "nvminh", "curpass": OLD, "newpass": NEW})
    assert r.status == 424 and b"Traceback" not in r.body


# --------------------------------------------------------------------------- CSRF


def test_browser_request_without_token_is_403(site: Site) -> None:
    """A request carrying an Origin (a browser) but no CSRF token is refused 403 csrf, nothing verified."""
    addr = site.add("nvminh")
    r = site.api({"user": "nvminh", "curpass": OLD, "newpass": NEW}, headers={"origin": f"https://{HOST}"})
    assert r.status == 403 and body(r)["code"] == "csrf"
    assert site.account(addr).must_change is True
    assert site.service.counters.failures(f"authfail:user:{addr}", timedelta(minutes=15), T0.timestamp()) == 0


def test_browser_request_with_token_succeeds(site: Site) -> None:
    """The page's own request (cookie = X-CSRF-Token, same Origin) changes the password."""
    site.add("nvminh")
    r = site.browser({"user": "nvminh", "curpass": OLD, "newpass": NEW})
    assert r.status == 200 and body(r)["ok"] is True


def test_forged_or_cross_origin_tokens_are_refused(site: Site) -> None:
    """A token that differs from the cookie, a foreign Origin, or Sec-Fetch-Site cross-site → 403."""
    site.add("nvminh")
    form = {"user": "nvminh", "curpass": OLD, "newpass": NEW}
    assert site.browser(form, token="x.y").status == 403
    assert site.browser(form, origin="https://evil.example").status == 403
    _, cookie = site.page()
    r = site.api(form, cookies={COOKIE: cookie}, headers={"x-csrf-token": cookie, "sec-fetch-site": "cross-site"})
    assert r.status == 403
    planted = "abc.def"  # a cookie planted by a sibling host: not signed with our key
    r = site.api(form, cookies={COOKIE: planted}, headers={"x-csrf-token": planted, "origin": f"https://{HOST}"})
    assert r.status == 403


def test_configured_public_origin_is_accepted(tmp_path: Path) -> None:
    """An Origin listed in web_origins passes even when the Host header is the backend's."""
    s = make_site(tmp_path, web_origins=["https://mail.cantho.gov.vn"])
    assert origin_allowed("https://mail.cantho.gov.vn", "127.0.0.1:8080", s.cfg.authhooks.web_origins)
    assert not origin_allowed("https://mail.cantho.gov.vn.evil.example", "127.0.0.1:8080",
                              s.cfg.authhooks.web_origins)
    assert not origin_allowed("null", "127.0.0.1:8080", ())


def test_form_post_without_token_is_403_and_with_token_succeeds(site: Site) -> None:
    """POST / (no JavaScript) needs the token: 403 page without it, the success message with it."""
    site.add("nvminh")
    form = {"user": "nvminh", "curpass": OLD, "newpass": NEW, "newpass2": NEW}
    bad = site.app.handle(WebRequest("POST", "/", headers={"host": HOST}, form=form))
    assert bad.status == 403 and "tải lại trang" in bad.body.decode()
    _, token = site.page()
    ok = site.app.handle(WebRequest("POST", "/", headers={"host": HOST}, cookies={COOKIE: token},
                                    form={**form, "csrf": token}))
    assert ok.status == 200 and 'class="result ok"' in ok.body.decode()


def test_form_post_with_different_confirmation_is_400(site: Site) -> None:
    """The no-JavaScript form refuses two different new passwords without verifying anything."""
    addr = site.add("nvminh")
    _, token = site.page()
    r = site.app.handle(WebRequest("POST", "/", cookies={COOKIE: token},
                                   form={"user": "nvminh", "curpass": OLD, "newpass": NEW, "newpass2": NEW + "x",
                                         "csrf": token, "lang": "en"}))
    assert r.status == 400 and "The two new passwords differ." in r.body.decode()
    assert site.account(addr).must_change is True


# --------------------------------------------------------------------------- rate limits


def test_rate_limit_per_user(tmp_path: Path) -> None:
    """web_rate_user attempts per window per account, then 429 with Retry-After; the window passes."""
    s = make_site(tmp_path, web_rate_user=2, lockout_failures=0)
    s.add("nvminh")
    for _ in range(2):
        assert s.api({"user": "nvminh", "curpass": "x", "newpass": NEW}).status == 403
    r = s.api({"user": "nvminh@cantho.gov.vn", "curpass": OLD, "newpass": NEW}, ip="192.0.2.99")
    assert r.status == 429 and body(r)["code"] == "rate_limited" and int(dict(r.headers)["Retry-After"]) > 0
    s.now[0] = T0 + timedelta(minutes=16)
    assert s.api({"user": "nvminh", "curpass": OLD, "newpass": NEW}).status == 200


def test_rate_limit_per_ip_spares_exempt_networks(tmp_path: Path) -> None:
    """web_rate_ip attempts per client IP across accounts; the webmail host (lockout_exempt) is not limited."""
    s = make_site(tmp_path, web_rate_ip=2, lockout_failures=0, lockout_exempt=["10.0.0.5/32"])
    for i in range(3):
        s.add(f"user{i}")
    assert s.api({"user": "user0", "curpass": "x", "newpass": NEW}, ip="192.0.2.7").status == 403
    assert s.api({"user": "user1", "curpass": "x", "newpass": NEW}, ip="192.0.2.7").status == 403
    assert s.api({"user": "user2", "curpass": OLD, "newpass": NEW}, ip="192.0.2.7").status == 429
    for i in range(3):
        assert s.api({"user": f"user{i}", "curpass": "x", "newpass": NEW}, ip="10.0.0.5").status == 403


# --------------------------------------------------------------------------- strength feedback


def test_strength_feedback_scores_and_explains(site: Site) -> None:
    """POST /api/strength returns zxcvbn's score and the failed rules; a strong password is accepted."""
    weak = site.browser({"user": "nvminh", "password": "Password1!"}, path="/api/strength")
    strong = site.browser({"user": "nvminh", "password": NEW}, path="/api/strength")
    w, s = body(weak), body(strong)
    assert weak.status == strong.status == 200
    assert w["accepted"] is False and "weak" in w["codes"] and w["score"] < s["score"]
    assert s["accepted"] is True and s["score"] >= 3 and s["reasons"] == []
    named = body(site.browser({"user": "nvminh", "password": "Nvminh#2026xyz!"}, path="/api/strength"))
    assert "contains_name" in named["codes"]


def test_strength_needs_the_csrf_token(site: Site) -> None:
    """The strength endpoint is the page's own: no token, 403."""
    r = site.api({"password": NEW}, path="/api/strength")
    assert r.status == 403 and body(r)["code"] == "csrf"


def test_strength_is_rate_limited_per_ip(tmp_path: Path) -> None:
    """web_strength_rate checks per minute per client IP, then 429."""
    s = make_site(tmp_path, web_strength_rate=3)
    codes = [s.browser({"password": "abc"}, path="/api/strength").status for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    assert s.browser({"password": "abc"}, path="/api/strength", ip="192.0.2.11").status == 200


# --------------------------------------------------------------------------- secrets stay secret


def test_passwords_never_reach_logs_or_reprs(site: Site) -> None:
    """Neither the current nor the new password appears in any log event or in the request's repr."""
    events: list[LogEvent] = []
    site.add("nvminh")
    globalLogPublisher.addObserver(events.append)
    try:
        site.api({"user": "nvminh", "curpass": "wrong-Secret-1", "newpass": NEW})
        site.api({"user": "nvminh", "curpass": OLD, "newpass": "weak"})
        site.api({"user": "nvminh", "curpass": OLD, "newpass": NEW})
        site.browser({"user": "nvminh", "password": "Typing-Secret-9"}, path="/api/strength")
    finally:
        globalLogPublisher.removeObserver(events.append)
    text = "\n".join(str(formatEvent(e)) + repr(e) for e in events)
    assert "password change accepted user=nvminh@cantho.gov.vn" in text
    for secret in ("wrong-Secret-1", OLD, NEW, "Typing-Secret-9"):
        assert secret not in text
    assert NEW not in repr(WebRequest("POST", "/api/password", form={"newpass": NEW}))


def test_wrong_current_password_is_logged_via_the_page_not_checkpassword(site: Site) -> None:
    """The service logs a page's wrong current password with via=web-api / web-page, never via=checkpassword."""
    events: list[LogEvent] = []
    site.add("nvminh")
    globalLogPublisher.addObserver(events.append)
    try:
        site.api({"user": "nvminh", "curpass": "Sai-Hiện-Tại-1", "newpass": NEW})
        site.browser({"user": "nvminh", "curpass": "Sai-Hiện-Tại-2", "newpass": NEW})
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [str(formatEvent(e)) for e in events if e.get("log_namespace") == "congvu.authhooks.service"]
    logins = [ln for ln in lines if ln.startswith("login bad_password user=nvminh@cantho.gov.vn")]
    assert len(logins) == 2, lines
    assert "service=password-web" in logins[0] and "via=web-api" in logins[0]
    assert "via=web-page" in logins[1]
    assert not any("via=checkpassword" in ln for ln in lines)


# --------------------------------------------------------------------------- helpers


def test_client_ip_from_trusted_proxy_only(site: Site) -> None:
    """X-Forwarded-For counts only from a trusted proxy, right-most untrusted hop first."""
    trusted = site.cfg.authhooks.web_trusted_proxies
    assert client_ip("127.0.0.1", {"x-forwarded-for": "198.51.100.1, 203.0.113.9"}, trusted) == "203.0.113.9"
    assert client_ip("203.0.113.50", {"x-forwarded-for": "198.51.100.1"}, trusted) == "203.0.113.50"
    assert client_ip("127.0.0.1", {}, trusted) == "127.0.0.1"
    assert client_ip("127.0.0.1", {"x-forwarded-for": "garbage"}, trusted) == "127.0.0.1"


def test_parse_form_reads_urlencoded_and_json() -> None:
    """Roundcube's form_params and a JSON client both work; other types give no fields."""
    assert parse_form("application/x-www-form-urlencoded", b"user=a%40b&curpass=x%26y&newpass=") == {
        "user": "a@b", "curpass": "x&y", "newpass": ""}
    assert parse_form("application/json; charset=utf-8", '{"user": "á", "n": 1}'.encode()) == {"user": "á"}
    assert parse_form("text/plain", b"user=a") == {}
    assert parse_form("application/x-www-form-urlencoded", b"\xff\xfe") == {}
