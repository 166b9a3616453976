"""The self-service password page and the Roundcube ``httpapi`` API (CT25-5.2, CT25-5.3, CT25-3.2).

Why a page of its own: a user who must change a new password (CT25-5.2) or whose
password expired (CT25-6.4b, CT15-11.4) gets ``NO [EXPIRED]`` from IMAP, so webmail,
which logs into IMAP with that password, cannot help them.  The page checks the
current password itself through :meth:`AuthService.verify_current` (same lockout,
same rules, no IMAP login) and changes it with :meth:`AuthService.change_password`
(policy, history, must_change cleared, lifecycle back to active).

Routes (behind nginx at ``https://mail.<domain>/doimatkhau/``, see ``conf/nginx/``):

* ``GET /`` the page, Vietnamese first, ``?lang=en`` for English; it states the rules
  from the config with their requirement ids.
* ``POST /`` the form without JavaScript (CSRF token required).
* ``POST /api/strength`` server-side zxcvbn and policy feedback while typing (CSRF
  token required, ``web_strength_rate`` per client IP per minute).
* ``POST /api/password`` Roundcube's ``httpapi`` driver: form fields ``user``,
  ``curpass``, ``newpass`` → ``200 OK`` (body ``OK``; ``{"ok": true}`` with
  ``Accept: application/json``), otherwise 4xx with a JSON reason.  A browser request
  (it carries an Origin, Sec-Fetch-Site or our cookie) must pass the CSRF check; a
  server-side client such as Roundcube has no ambient credentials to abuse and needs none.
* ``GET /static/app.css|app.js``.

CSRF: double-submit of a token signed with the authd key (cookie ``congvu_csrf``,
SameSite=Strict, HttpOnly; the page echoes it in a form field or ``X-CSRF-Token``),
plus an Origin check (the Host, or ``web_origins``) and a refusal of
``Sec-Fetch-Site: cross-site``.  Rate limits (counter store): ``web_rate_user`` and
``web_rate_ip`` attempts per ``web_rate_window``; a wrong current password also counts
towards the login lockout, so the page is no faster a guessing oracle than IMAP.

The core (:class:`PasswordWeb`) maps a :class:`WebRequest` value to a
:class:`WebResponse` synchronously (the stores are synchronous); :class:`WebResource` is
the thin twisted.web wrapper that runs it in the auth service's thread pool.  No
password reaches a log line, a repr or an exception.  Internal errors answer 424 with
``"temporary": true`` (never 5xx).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import ipaddress
import json
import secrets
import string
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from authhooks.service import AuthService, ChangeResult, LoginResult, LoginStatus, load_secret
from directory.endpoints import listen
from directory.model import StateUnavailable
from rules.config import Config
from rules.decision import Decision, Verdict
from rules.passwords import PasswordCheck

log = Logger(namespace="congvu.authhooks.web")

MAX_BODY = 65536
COOKIE = "congvu_csrf"
STATIC = {"app.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}
LANGS = ("vi", "en")
_CSRF_LABEL = b"congvu-web-csrf-v1"
_STRENGTH_WINDOW = timedelta(minutes=1)

SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class WebRequest:
    """One HTTP request as the core sees it.  ``form`` holds passwords: never in a repr."""

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    cookies: Mapping[str, str] = field(default_factory=dict)
    form: Mapping[str, str] = field(default_factory=dict, repr=False)
    client_ip: str = ""
    secure: bool = False  # the browser talks https (directly, or to the trusted proxy)
    body_too_large: bool = False

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    @property
    def wants_json(self) -> bool:
        return "application/json" in self.header("accept")


@dataclass(frozen=True, slots=True)
class WebResponse:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of a change attempt, before it is rendered as JSON, ``OK`` or a page."""

    status: int
    code: str
    reasons: tuple[Decision, ...] = ()
    codes: tuple[str, ...] = ()
    score: int = 0
    retry_after: int | None = None
    temporary: bool = False

    @property
    def ok(self) -> bool:
        return self.status == 200


def _d(verdict: Verdict, rule_id: str, vi: str, en: str) -> Decision:
    return Decision(verdict, rule_id, text_vi=vi, text_en=en)


# --------------------------------------------------------------------------- texts

TEXT: dict[str, dict[str, str]] = {
    "vi": {
        "title": "Đổi mật khẩu thư điện tử công vụ",
        "intro": "Dùng trang này để đổi mật khẩu được cấp lần đầu, mật khẩu đã hết hạn, hoặc đổi định kỳ. "
                 "Trang tự kiểm tra mật khẩu hiện tại, không cần đăng nhập hộp thư trước.",
        "rules": "Quy định về mật khẩu",
        "user": "Địa chỉ thư hoặc tên đăng nhập",
        "curpass": "Mật khẩu hiện tại",
        "newpass": "Mật khẩu mới",
        "newpass2": "Nhập lại mật khẩu mới",
        "submit": "Đổi mật khẩu",
        "show": "Hiện mật khẩu",
        "strength": "Độ mạnh",
        "other_lang": "English",
        "other_lang_code": "en",
        "s0": "Rất yếu", "s1": "Yếu", "s2": "Trung bình", "s3": "Mạnh", "s4": "Rất mạnh",
        "typing": "Nhập mật khẩu mới để xem đánh giá.",
        "meets": "Mật khẩu đạt yêu cầu.",
        "mismatch": "Hai lần nhập mật khẩu mới không khớp.",
        "success": "Đã đổi mật khẩu. Bạn có thể đăng nhập hộp thư bằng mật khẩu mới ngay bây giờ.",
        "failed": "Chưa đổi được mật khẩu:",
        "network": "Không kết nối được máy chủ; hãy thử lại.",
        "footer": "Không ai, kể cả quản trị hệ thống, được hỏi mật khẩu của bạn. Không dùng chung mật khẩu "
                  "với người khác (CT25-3.2).",
    },
    "en": {
        "title": "Change your official e-mail password",
        "intro": "Use this page to change a first-issued password, an expired one, or for the periodic change. "
                 "It checks your current password itself; you do not need to log in to your mailbox first.",
        "rules": "Password rules",
        "user": "E-mail address or user name",
        "curpass": "Current password",
        "newpass": "New password",
        "newpass2": "Repeat the new password",
        "submit": "Change password",
        "show": "Show passwords",
        "strength": "Strength",
        "other_lang": "Tiếng Việt",
        "other_lang_code": "vi",
        "s0": "Very weak", "s1": "Weak", "s2": "Fair", "s3": "Strong", "s4": "Very strong",
        "typing": "Type a new password to see how strong it is.",
        "meets": "The password meets the rules.",
        "mismatch": "The two new passwords differ.",
        "success": "Your password has been changed. You can log in to your mailbox with it right away.",
        "failed": "The password was not changed:",
        "network": "Cannot reach the server; please try again.",
        "footer": "Nobody, not even the administrators, may ask for your password. Never share a password "
                  "(CT25-3.2).",
    },
}


def _lang(value: str, default: str = "vi") -> str:
    return value if value in LANGS else default


def _days(d: timedelta) -> int:
    return max(1, round(d / timedelta(days=1)))


def rules_list(cfg: Config) -> list[Decision]:
    """The password rules in force, from the config, each with the requirement id its value came from."""
    pw = cfg.password

    def rid(key: str) -> str:
        origin = cfg.origins.get(f"password.{key}")
        return origin.rule_id if origin is not None else "SUITE"

    out = [_d(Verdict.WARN, rid("min_length"), f"Dài từ {pw.min_length} đến {pw.max_length} ký tự.",
              f"Between {pw.min_length} and {pw.max_length} characters long.")]
    classes = [(pw.require_upper, "upper", "chữ in hoa", "an upper-case letter"),
               (pw.require_lower, "lower", "chữ thường", "a lower-case letter"),
               (pw.require_digit, "digit", "chữ số", "a digit"),
               (pw.require_special, "special", "ký tự đặc biệt (ví dụ @ # ! hoặc dấu cách)",
                "a special character (such as @ # ! or a space)")]
    wanted = [c for c in classes if c[0]]
    if wanted:
        out.append(_d(Verdict.WARN, rid(f"require_{wanted[0][1]}"),
                      "Có ít nhất một " + ", một ".join(c[2] for c in wanted)
                      + "; chữ có dấu như Đ, Ă, ơ đều được tính.",
                      "At least " + ", ".join(c[3] for c in wanted)
                      + "; letters with diacritics such as Đ, Ă, ơ count."))
    out.append(_d(Verdict.WARN, rid("min_score"),
                  f"Khó đoán: độ mạnh tối thiểu {pw.min_score}/4; không chứa họ tên, tên hộp thư, tên viết tắt "
                  "của cơ quan, tên địa phương, hay mật khẩu ví dụ in trong quy định.",
                  f"Hard to guess: strength at least {pw.min_score}/4; no name, mailbox name, agency "
                  "abbreviation, city name or the example printed in the regulation."))
    if pw.history > 0:
        out.append(_d(Verdict.WARN, rid("history"),
                      f"Khác mật khẩu hiện tại và {pw.history} mật khẩu gần nhất.",
                      f"Different from the current password and the last {pw.history}."))
    else:
        out.append(_d(Verdict.WARN, rid("history"), "Khác mật khẩu hiện tại.",
                      "Different from the current password."))
    if pw.must_change_on_create:
        out.append(_d(Verdict.WARN, rid("must_change_on_create"),
                      "Mật khẩu được cấp mới hoặc đặt lại phải được đổi trước khi dùng hộp thư.",
                      "A new or reset password must be changed before the mailbox can be used."))
    names = {"personal": ("cá nhân", "personal"), "unit": ("đơn vị", "unit"), "agency": ("cơ quan", "agency")}
    groups: dict[tuple[int | None, str], list[str]] = {}
    for kind in ("personal", "unit", "agency"):
        life = pw.expiry(kind)
        groups.setdefault((_days(life) if life else None, rid(f"expiry_{kind}")), []).append(kind)
    for (days, rule_id), kinds in groups.items():
        vi_kinds = ", ".join(names[k][0] for k in kinds)
        en_kinds = ", ".join(names[k][1] for k in kinds)
        if days is None:
            out.append(_d(Verdict.WARN, rule_id, f"Hộp thư {vi_kinds}: mật khẩu không có thời hạn.",
                          f"{en_kinds.capitalize()} mailboxes: the password does not expire."))
        else:
            warn = _days(pw.warn_before)
            out.append(_d(Verdict.WARN, rule_id,
                          f"Hộp thư {vi_kinds}: đổi mật khẩu ít nhất {days} ngày một lần (nhắc trước {warn} ngày); "
                          "quá hạn thì phải đổi tại trang này mới dùng được hộp thư.",
                          f"{en_kinds.capitalize()} mailboxes: change the password at least every {days} days "
                          f"(reminder {warn} days before); once expired, change it here to use the mailbox again."))
    return out


# --------------------------------------------------------------------------- CSRF and origins


class Csrf:
    """Double-submit tokens signed with a key derived from the authd secret."""

    def __init__(self, secret: bytes) -> None:
        self._key = hmac.new(secret, _CSRF_LABEL, hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "Csrf(<key>)"

    def new(self) -> str:
        nonce = base64.urlsafe_b64encode(secrets.token_bytes(18)).decode("ascii")
        return f"{nonce}.{self._mac(nonce)}"

    def _mac(self, nonce: str) -> str:
        return base64.urlsafe_b64encode(hmac.new(self._key, nonce.encode("ascii"), hashlib.sha256)
                                        .digest()[:18]).decode("ascii")

    def valid(self, token: str) -> bool:
        nonce, _, mac = token.partition(".")
        if not nonce or not mac or len(token) > 100 or not token.isascii():
            return False
        return hmac.compare_digest(mac, self._mac(nonce))

    def check(self, cookie: str, submitted: str) -> bool:
        """The submitted token is the cookie's, and ours (a cookie planted by a sibling host is not)."""
        return bool(cookie) and hmac.compare_digest(cookie.encode(), submitted.encode()) and self.valid(cookie)


def origin_allowed(origin: str, host: str, extra: Sequence[str]) -> bool:
    """An Origin header is the page's own (its host is the Host header) or a configured public origin."""
    origin = origin.strip()
    if not origin or origin == "null":
        return False
    if origin.rstrip("/") in {o.rstrip("/") for o in extra}:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host.strip().lower()


def _in_networks(ip: str, networks: Sequence[Any]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in networks)


def client_ip(peer: str, headers: Mapping[str, str], trusted: Sequence[Any]) -> str:
    """The client: the peer, or (from a trusted proxy) the right-most untrusted X-Forwarded-For hop."""
    def is_trusted(ip: str) -> bool:
        return _in_networks(ip, trusted)

    if not is_trusted(peer):
        return peer
    hops = [h.strip() for h in headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a garbled header: trust nothing in it
        if not is_trusted(hop):
            return hop
    return hops[0] if hops else peer


# --------------------------------------------------------------------------- the core


class PasswordWeb:
    """Routes, CSRF, rate limits, and the change itself; synchronous and thread-safe."""

    def __init__(self, cfg: Config, service: AuthService, secret: bytes,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.cfg = cfg
        self.service = service
        self.clock = clock or service.clock
        self.csrf = Csrf(secret)
        self._template = string.Template(_asset("page.html").decode("utf-8"))
        self._static = {name: _asset(name) for name in STATIC}

    def __repr__(self) -> str:
        return f"PasswordWeb(site={self.cfg.domain!r})"

    def reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg

    # ------------------------------------------------------------------ dispatch

    def handle(self, req: WebRequest) -> WebResponse:
        """One request → its response.  Never raises: a bug answers 424 (temporary)."""
        try:
            return self._route(req)
        except Exception as e:  # the page must never show a traceback or a 5xx
            log.failure("password page: request failed", Failure(e))  # type: ignore[no-untyped-call]
            out = Outcome(424, "unavailable", (self._unavailable(),), temporary=True, retry_after=30)
            return self._json(out, _lang(req.query.get("lang", ""), self._default_lang()))

    def _route(self, req: WebRequest) -> WebResponse:
        path, method = req.path, req.method.upper()
        if path.startswith("/static/"):
            name = path.removeprefix("/static/")
            if name not in STATIC:
                return _plain(404, "not found")
            if method not in ("GET", "HEAD"):
                return _plain(405, "method not allowed", (("Allow", "GET, HEAD"),))
            return WebResponse(200, self._static[name], STATIC[name], (("Cache-Control", "max-age=300"),))
        if path in ("/", ""):
            if method in ("GET", "HEAD"):
                return self._page(req)
            if method == "POST":
                return self._form_post(req)
            return _plain(405, "method not allowed", (("Allow", "GET, HEAD, POST"),))
        if path in ("/api/password", "/api/strength"):
            if method != "POST":
                return _plain(405, "method not allowed", (("Allow", "POST"),))
            if req.body_too_large:
                return self._json(Outcome(413, "too_large", (_d(
                    Verdict.REJECT, "SUITE", "Yêu cầu quá lớn.", "The request is too large."),)), self._req_lang(req))
            if path == "/api/strength":
                return self._strength(req)
            return self._api_password(req)
        return _plain(404, "not found")

    def _default_lang(self) -> str:
        return "en" if self.cfg.language == "en" else "vi"

    def _req_lang(self, req: WebRequest) -> str:
        return _lang(req.query.get("lang", "") or req.form.get("lang", ""), self._default_lang())

    # ------------------------------------------------------------------ CSRF

    def _csrf_ok(self, req: WebRequest) -> bool:
        if req.header("sec-fetch-site") == "cross-site":
            return False
        origin = req.header("origin")
        if origin and not origin_allowed(origin, req.header("host"), self.cfg.authhooks.web_origins):
            return False
        submitted = req.header("x-csrf-token") or req.form.get("csrf", "")
        return self.csrf.check(req.cookies.get(COOKIE, ""), submitted)

    @staticmethod
    def _from_browser(req: WebRequest) -> bool:
        """A browser sends Origin (or Sec-Fetch-Site) on every POST; a server-side client sends neither."""
        return bool(req.header("origin") or req.header("sec-fetch-site") or COOKIE in req.cookies)

    def _csrf_refusal(self) -> Outcome:
        return Outcome(403, "csrf", (_d(
            Verdict.REJECT, "SUITE",
            "Phiên làm việc đã hết hạn hoặc yêu cầu không đến từ trang đổi mật khẩu; hãy tải lại trang.",
            "The session expired or the request did not come from the password page; reload the page."),))

    # ------------------------------------------------------------------ rate limits

    def _ip_exempt(self, ip: str) -> bool:
        return _in_networks(ip, self.cfg.authhooks.lockout_exempt)

    def _limit(self, key: str, limit: int, window: timedelta) -> int | None:
        """None if allowed (and counted), else seconds to wait.  A store outage lets the request through."""
        if limit <= 0:
            return None
        try:
            decision = self.service.counters.hit_if_below(key, 1, [(window, limit)], self.clock().timestamp())
        except StateUnavailable as e:
            log.warn("password page: rate limit {key} not checked, state store unavailable ({err}) [CT25-3.2]",
                     key=key, err=str(e))
            return None
        if decision.allowed:
            return None
        retry = decision.retry_after
        return int(min(retry if retry is not None else window.total_seconds(), window.total_seconds())) + 1

    def _rate_refusal(self, retry: int) -> Outcome:
        minutes = max(1, -(-retry // 60))
        return Outcome(429, "rate_limited", (_d(
            Verdict.REJECT, "CT25-3.2",
            f"Thử đổi mật khẩu quá nhiều lần; hãy thử lại sau {minutes} phút.",
            f"Too many password change attempts; try again in {minutes} minute(s)."),), retry_after=retry)

    # ------------------------------------------------------------------ the change

    def change(self, user: str, curpass: str, newpass: str, ip: str, via: str) -> Outcome:
        """Rate limits, then the current password (with lockout), then the policy and the store."""
        s = self.cfg.authhooks
        user = user.strip()
        if not user or not curpass or not newpass:
            return Outcome(400, "missing_field", (_d(
                Verdict.REJECT, "SUITE", "Thiếu tài khoản, mật khẩu hiện tại hoặc mật khẩu mới.",
                "The user, the current password or the new password is missing."),))
        if ip and not self._ip_exempt(ip):
            retry = self._limit(f"pwweb:ip:{ip}", s.web_rate_ip, s.web_rate_window)
            if retry is not None:
                return self._logged(self._rate_refusal(retry), user, ip, via)
        address = self.service.canonical(user)
        retry = self._limit(f"pwweb:user:{address or user.lower()[:254]}", s.web_rate_user, s.web_rate_window)
        if retry is not None:
            return self._logged(self._rate_refusal(retry), user, ip, via)
        current = self.service.verify_current(user, curpass, ip, via=f"web-{via}")
        refused = self._refuse_login(current)
        if refused is not None:
            return self._logged(refused, user, ip, via)
        result: ChangeResult = self.service.change_password(current.address, newpass, remote_ip=ip)
        return self._logged(self._change_outcome(result), current.address, ip, via)

    def _refuse_login(self, r: LoginResult) -> Outcome | None:
        st = r.status
        if st in (LoginStatus.OK, LoginStatus.MUST_CHANGE, LoginStatus.EXPIRED):
            return None  # what the page exists for: the current password is right
        if st is LoginStatus.UNAVAILABLE:
            return Outcome(424, "unavailable", (r.decision,), temporary=True, retry_after=30)
        if st is LoginStatus.LOCKED_OUT:
            return Outcome(429, "locked_out", (r.decision,),
                           retry_after=int(self.cfg.authhooks.lockout_duration.total_seconds()))
        if st is LoginStatus.DISABLED:
            return Outcome(403, "disabled", (r.decision,))
        return Outcome(403, "wrong_password", (_d(
            Verdict.REJECT, "CT25-3.2", "Sai tài khoản hoặc mật khẩu hiện tại.",
            "Wrong user name or current password."),))

    def _change_outcome(self, r: ChangeResult) -> Outcome:
        if r.accepted:
            return Outcome(200, "ok", score=r.score)
        if "unavailable" in r.codes:
            return Outcome(424, "unavailable", r.reasons, r.codes, temporary=True, retry_after=30)
        if "unknown_user" in r.codes:
            return Outcome(403, "wrong_password", r.reasons, r.codes)
        code = "reused" if "reused" in r.codes else "weak_password"
        return Outcome(422, code, r.reasons, r.codes, r.score)

    def _unavailable(self) -> Decision:
        return _d(Verdict.DEFER, "SUITE", "Tạm thời không đổi được mật khẩu; hãy thử lại sau ít phút.",
                  "The password cannot be changed right now; try again in a few minutes.")

    def _logged(self, out: Outcome, user: str, ip: str, via: str) -> Outcome:
        """One line per decision, with the rule and its article; never the password."""
        d = out.reasons[0] if out.reasons else _d(Verdict.PERMIT, "CT25-5.2", "", "")
        log.info("password change {result} user={user} ip={ip} via={via} codes={codes} [{rule_id}: {cite}]",
                 result="accepted" if out.ok else f"refused ({out.code})", user=user[:254], ip=ip or "-", via=via,
                 codes=",".join(out.codes) or "-", rule_id=d.rule_id, cite=d.citation)
        return out

    # ------------------------------------------------------------------ endpoints

    def _api_password(self, req: WebRequest) -> WebResponse:
        lang = self._req_lang(req)
        browser = self._from_browser(req)
        if browser and not self._csrf_ok(req):
            return self._json(self._logged(self._csrf_refusal(), req.form.get("user", ""), req.client_ip,
                                           "api"), lang)
        out = self.change(req.form.get("user", ""), req.form.get("curpass", ""), req.form.get("newpass", ""),
                          req.client_ip, "page" if browser else "api")
        if out.ok and not req.wants_json:
            # Roundcube's httpapi checks 2xx and, if configured, the body against /^ok$/i.
            return WebResponse(200, b"OK", "text/plain; charset=utf-8")
        return self._json(out, lang)

    def _form_post(self, req: WebRequest) -> WebResponse:
        """The page without JavaScript: the same change, answered with the page and its message."""
        if not self._csrf_ok(req):
            out = self._logged(self._csrf_refusal(), req.form.get("user", ""), req.client_ip, "form")
        elif req.form.get("newpass2", req.form.get("newpass", "")) != req.form.get("newpass", ""):
            out = Outcome(400, "mismatch", (_d(Verdict.REJECT, "SUITE", TEXT["vi"]["mismatch"],
                                               TEXT["en"]["mismatch"]),))
        else:
            out = self.change(req.form.get("user", ""), req.form.get("curpass", ""), req.form.get("newpass", ""),
                              req.client_ip, "form")
        return self._page(req, outcome=out, status=out.status)

    def _strength(self, req: WebRequest) -> WebResponse:
        lang = self._req_lang(req)
        if not self._csrf_ok(req):
            return self._json(self._csrf_refusal(), lang)
        ip = req.client_ip
        if ip and not self._ip_exempt(ip):
            retry = self._limit(f"pwweb:strength:{ip}", self.cfg.authhooks.web_strength_rate, _STRENGTH_WINDOW)
            if retry is not None:
                return self._json(self._rate_refusal(retry), lang)
        password = req.form.get("password", "")
        user = req.form.get("user", "").strip().lower()
        local = user.partition("@")[0] if "@" in user else user
        check: PasswordCheck = self.service.policy().check(password, local_part=local[:64])
        body = {
            "ok": True,
            "accepted": check.accepted,
            "score": check.score,
            "min_score": self.cfg.password.min_score,
            "label": TEXT[lang][f"s{max(0, min(4, check.score))}"],
            "codes": list(check.codes),
            "reasons": [_reason(d, c, lang) for d, c in zip(check.reasons, check.codes, strict=True)],
        }
        return WebResponse(200, _dumps(body), "application/json; charset=utf-8")

    # ------------------------------------------------------------------ rendering

    def _json(self, out: Outcome, lang: str) -> WebResponse:
        body: dict[str, Any] = {"ok": out.ok, "code": out.code}
        if out.reasons:
            body["message"] = " ".join(d.text(lang) for d in out.reasons)  # type: ignore[arg-type]
            codes = out.codes if len(out.codes) == len(out.reasons) else (out.code,) * len(out.reasons)
            body["reasons"] = [_reason(d, c, lang) for d, c in zip(out.reasons, codes, strict=True)]
        if out.score:
            body["score"] = out.score
        if out.temporary:
            body["temporary"] = True
        headers: tuple[tuple[str, str], ...] = ()
        if out.retry_after is not None:
            body["retry_after"] = out.retry_after
            headers = (("Retry-After", str(out.retry_after)),)
        return WebResponse(out.status, _dumps(body), "application/json; charset=utf-8", headers)

    def _page(self, req: WebRequest, outcome: Outcome | None = None, status: int = 200) -> WebResponse:
        lang = self._req_lang(req)
        t = TEXT[lang]
        cookie = req.cookies.get(COOKIE, "")
        headers: list[tuple[str, str]] = []
        if not self.csrf.valid(cookie):
            cookie = self.csrf.new()
            attrs = "HttpOnly; SameSite=Strict" + ("; Secure" if req.secure else "")
            headers.append(("Set-Cookie", f"{COOKIE}={cookie}; {attrs}"))
        e = html.escape
        rules = "\n".join(
            f'<li><span class="rule-text">{e(d.text_vi if lang == "vi" else d.text_en)}</span> '
            f'<span class="rule-id" title="{e(d.citation)}">{e(d.rule_id)}</span></li>'
            for d in rules_list(self.cfg))
        message = ""
        if outcome is not None:
            if outcome.ok:
                message = f'<div id="result" class="result ok" role="status">{e(t["success"])}</div>'
            else:
                items = "".join(f"<li>{e(d.text(lang))}</li>" for d in outcome.reasons)  # type: ignore[arg-type]
                message = (f'<div id="result" class="result error" role="alert">{e(t["failed"])}'
                           f"<ul>{items}</ul></div>")
        else:
            message = '<div id="result" class="result" role="status" hidden></div>'
        org = self.cfg.organisation or self.cfg.domain
        i18n = {k: t[k] for k in ("s0", "s1", "s2", "s3", "s4", "typing", "meets", "mismatch", "success",
                                  "failed", "network", "strength")}
        values = {
            "lang": lang,
            "title": e(t["title"]),
            "org": e(org),
            "domain": e(self.cfg.domain),
            "intro": e(t["intro"]),
            "rules_title": e(t["rules"]),
            "rules": rules,
            "other_lang": e(t["other_lang"]),
            "other_lang_code": t["other_lang_code"],
            "label_user": e(t["user"]),
            "label_curpass": e(t["curpass"]),
            "label_newpass": e(t["newpass"]),
            "label_newpass2": e(t["newpass2"]),
            "label_show": e(t["show"]),
            "label_strength": e(t["strength"]),
            "typing": e(t["typing"]),
            "submit": e(t["submit"]),
            "footer": e(t["footer"]),
            "user": e(req.form.get("user", "") or req.query.get("user", "")),
            "csrf": e(cookie),
            "message": message,
            "min_length": str(self.cfg.password.min_length),
            "max_length": str(self.cfg.password.max_length),
            # Raw text inside <script type="application/json">: escape what could end the element.
            "i18n": json.dumps(i18n, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")
                    .replace("&", "\\u0026"),
        }
        body = self._template.substitute(values).encode("utf-8")
        return WebResponse(status, body, "text/html; charset=utf-8", tuple(headers))


def _reason(d: Decision, code: str, lang: str) -> dict[str, str]:
    return {"code": code, "rule_id": d.rule_id, "citation": d.citation, "text_vi": d.text_vi,
            "text_en": d.text_en, "text": d.text_vi if lang == "vi" else d.text_en}


def _dumps(v: Mapping[str, Any]) -> bytes:
    return json.dumps(v, ensure_ascii=False).encode("utf-8")


def _plain(status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> WebResponse:
    return WebResponse(status, text.encode() + b"\n", "text/plain; charset=utf-8", headers)


def _asset(name: str) -> bytes:
    return resources.files("authhooks").joinpath("web", name).read_bytes()


# --------------------------------------------------------------------------- twisted.web


Runner = Callable[..., "defer.Deferred[WebResponse]"]


def parse_form(content_type: str, body: bytes) -> dict[str, str]:
    """A urlencoded or JSON body → fields (first value wins); anything else → no fields."""
    ctype = content_type.split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return {}
    if ctype == "application/json":
        try:
            data = json.loads(text)
        except ValueError:
            return {}
        return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}
    if ctype in ("application/x-www-form-urlencoded", ""):
        out: dict[str, str] = {}
        for k, v in parse_qsl(text, keep_blank_values=True):
            out.setdefault(k, v)
        return out
    return {}


def parse_cookies(header: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name:
            out.setdefault(name, value.strip().strip('"'))
    return out


class WebResource(Resource):
    """Every path → :meth:`PasswordWeb.handle`; POSTs run in the thread pool (hashing, directory)."""

    isLeaf = True

    def __init__(self, app: PasswordWeb, run: Runner) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.app, self.run = app, run

    def to_request(self, request: Any) -> WebRequest:  # twisted.web's Request is untyped
        headers = {k.decode("latin-1").lower(): b", ".join(v).decode("latin-1")
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        query: dict[str, str] = {}
        for k, v in parse_qsl(urlsplit(request.uri.decode("latin-1")).query, keep_blank_values=True):
            query.setdefault(k, v)
        body = b""
        if request.content is not None:
            request.content.seek(0)
            body = request.content.read(MAX_BODY + 1)
        peer = request.getClientAddress()
        peer_ip = str(getattr(peer, "host", "") or "")
        trusted = self.app.cfg.authhooks.web_trusted_proxies
        ip = client_ip(peer_ip, headers, trusted)
        from_proxy = _in_networks(peer_ip, trusted)
        secure = bool(request.isSecure()) or (from_proxy and headers.get("x-forwarded-proto", "") == "https")
        return WebRequest(
            method=request.method.decode("ascii", "replace"), path=request.path.decode("utf-8", "replace"),
            query=query, headers=headers, cookies=parse_cookies(headers.get("cookie", "")),
            form=parse_form(headers.get("content-type", ""), body[:MAX_BODY]), client_ip=ip, secure=secure,
            body_too_large=len(body) > MAX_BODY)

    def render(self, request: Any) -> int | bytes:
        try:
            req = self.to_request(request)
        except Exception as e:
            log.failure("password page: unreadable request", Failure(e))  # type: ignore[no-untyped-call]
            return self._write(request, _plain(400, "bad request"))
        if req.method.upper() != "POST":
            return self._write(request, self.app.handle(req))
        d = self.run(self.app.handle, req)

        def done(resp: WebResponse) -> None:
            if not (request.finished or request._disconnected):
                self._write(request, resp)
                request.finish()

        def failed(f: Failure) -> None:
            log.failure("password page: request failed", f)
            done(_plain(424, "temporary failure, try again"))

        d.addCallbacks(done, failed)
        return NOT_DONE_YET

    @staticmethod
    def _write(request: Any, resp: WebResponse) -> bytes:
        request.setResponseCode(resp.status)
        request.setHeader(b"content-type", resp.content_type.encode())
        for name, value in SECURITY_HEADERS:
            if name == "Cache-Control" and any(h[0] == name for h in resp.headers):
                continue
            request.setHeader(name.encode(), value.encode())
        for name, value in resp.headers:
            if name == "Set-Cookie":
                request.responseHeaders.addRawHeader(b"set-cookie", value.encode())
            else:
                request.setHeader(name.encode(), value.encode())
        if request.method == b"HEAD":
            return b""
        if request.method == b"POST":
            request.write(resp.body)
            return b""
        return resp.body


# --------------------------------------------------------------------------- the service


class PasswordWebService:
    """A running password page (a ``congvu serve`` RunningService): its ports and, if its own, its pool."""

    name = "password-web"

    def __init__(self, cfg: Config, service: AuthService, reactor: Any, pool: ThreadPool | None = None,
                 *, owns_service: bool = False) -> None:
        self.cfg, self.service, self.reactor = cfg, service, reactor
        self.owns_service = owns_service
        self.owns_pool = pool is None
        self.pool = pool or ThreadPool(minthreads=1, maxthreads=cfg.authhooks.threads, name="congvu-web")
        secret = load_secret(cfg.state_file(cfg.authhooks.secret_file, "authd.key"))
        self.app = PasswordWeb(cfg, service, secret)
        self.ports: list[Any] = []
        self.listening: list[str] = []

    def _run(self, fn: Callable[..., WebResponse], *args: Any) -> defer.Deferred[WebResponse]:
        return deferToThreadPool(self.reactor, self.pool, fn, *args)

    @defer.inlineCallbacks
    def start(self) -> Any:
        if self.owns_pool:
            self.pool.start()
        try:
            for endpoint in self.cfg.authhooks.web_listen:
                site = Site(WebResource(self.app, self._run))  # type: ignore[no-untyped-call]
                site.noisy = False
                site.displayTracebacks = False
                self.ports.append((yield listen(self.reactor, endpoint, site, what="password page",
                                                setting="authhooks.web_listen")))
                self.listening.append(f"{endpoint} (password page, POST /api/password)")
        except Exception:
            yield self.stop()
            raise
        for line in self.listening:
            log.info("password page: listening on {where}", where=line)
        return self

    def reload(self, cfg: Config) -> None:
        """New limits and rules apply to the next request; endpoint changes need a restart."""
        self.cfg = cfg
        self.app.reconfigure(cfg)
        if self.owns_service:
            self.service.reconfigure(cfg)

    @defer.inlineCallbacks
    def stop(self) -> Any:
        ports, self.ports = self.ports, []
        yield defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports], consumeErrors=True)
        if self.owns_pool and self.pool.started:
            self.pool.stop()


def start_web(cfg: Config, reactor: Any, service: AuthService | None = None,
              pool: ThreadPool | None = None) -> defer.Deferred[PasswordWebService]:
    """Listen on ``[authhooks] web_listen``.

    ``congvu authd`` passes its own ``service`` and ``pool``, so a change made here
    invalidates the very cache the checkpassword path reads (the next IMAP login
    succeeds at once).  Without them the page builds its own (a page on another host).
    """
    if service is None:
        from authhooks.authd import build_service
        svc = PasswordWebService(cfg, build_service(cfg), reactor, pool, owns_service=True)
    else:
        svc = PasswordWebService(cfg, service, reactor, pool)
    d: defer.Deferred[PasswordWebService] = svc.start()
    return d


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m authhooks.web [--config FILE]``: the page alone, in the foreground (until SIGTERM)."""
    import argparse

    from directory.cli import EXIT_REFUSED, add_config_args, config_for
    from directory.cmd_serve import start_logging
    from directory.output import Output
    from rules.config import ConfigError

    parser = argparse.ArgumentParser(prog="python -m authhooks.web", description=main.__doc__)
    add_config_args(parser)
    args = parser.parse_args(argv)
    out = Output()
    try:
        cfg = config_for(args)
    except ConfigError as e:
        out.error(f"congvu: config error: {e}")
        return EXIT_REFUSED
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    start_logging()
    code = [0]
    running: list[PasswordWebService] = []

    def started(svc: PasswordWebService) -> None:
        running.append(svc)
        for line in svc.listening:
            out.line(f"password-web: listening on {line}")
        out.out.flush()

    def failed(f: Failure) -> None:
        out.error(f"congvu: cannot start the password page: {f.value}")
        code[0] = EXIT_REFUSED
        reactor.stop()

    reactor.callWhenRunning(lambda: start_web(cfg, reactor).addCallbacks(started, failed))
    reactor.addSystemEventTrigger("before", "shutdown",
                                  lambda: defer.gatherResults([s.stop() for s in running], consumeErrors=True))
    reactor.run()
    return code[0]


if __name__ == "__main__":
    sys.exit(main())
