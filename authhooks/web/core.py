"""The page's core: routes, CSRF, rate limits and the change itself, with no I/O of its own.

:class:`PasswordWeb` maps a :class:`WebRequest` to a :class:`WebResponse` synchronously
(the stores it calls through :class:`AuthService` are synchronous); the twisted.web
resource (:mod:`congvu.authhooks.web.resource`) runs it in the auth service's thread pool.
No password reaches a log line, a repr or an exception.  Internal errors answer 424 with
``"temporary": true`` (never a 5xx).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from twisted.logger import Logger
from twisted.python.failure import Failure

from congvu.authhooks.service import AuthService, ChangeResult, LoginResult, LoginStatus
from congvu.authhooks.settings import AuthConfig
from congvu.authhooks.web.csrf import COOKIE, Csrf, origin_allowed
from congvu.authhooks.web.proxies import in_networks
from congvu.authhooks.web.render import STATIC, Renderer
from congvu.authhooks.web.texts import TEXT, pick_lang, reason
from congvu.authhooks.web.values import Outcome, WebRequest, WebResponse, dumps, plain
from congvu.directory.model import StateUnavailable
from congvu.rules.decision import Decision, Verdict
from congvu.rules.passwords import PasswordCheck

log = Logger()

_STRENGTH_WINDOW = timedelta(minutes=1)


class PasswordWeb:
    """Routes, CSRF, rate limits, and the change itself; synchronous and thread-safe."""

    def __init__(self, cfg: AuthConfig, service: AuthService, secret: bytes,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.cfg = cfg
        self.service = service
        self.clock = clock or service.clock
        self.csrf = Csrf(secret)
        self.render = Renderer()

    def __repr__(self) -> str:
        return f"PasswordWeb(site={self.cfg.domain!r})"

    def reconfigure(self, cfg: AuthConfig) -> None:
        self.cfg = cfg

    # ------------------------------------------------------------------ dispatch

    def handle(self, req: WebRequest) -> WebResponse:
        """One request → its response.  Never raises: a bug answers 424 (temporary)."""
        try:
            return self._route(req)
        except Exception as e:  # the page must never show a traceback or a 5xx
            log.failure("password page: request failed", Failure(e))  # type: ignore[no-untyped-call]
            out = Outcome(424, "unavailable", (self._unavailable(),), temporary=True, retry_after=30)
            return self.render.json(out, pick_lang(req.query.get("lang", ""), self._default_lang()))

    def _route(self, req: WebRequest) -> WebResponse:
        path, method = req.path, req.method.upper()
        if path.startswith("/static/"):
            name = path.removeprefix("/static/")
            if name not in STATIC:
                return plain(404, "not found")
            if method not in ("GET", "HEAD"):
                return plain(405, "method not allowed", (("Allow", "GET, HEAD"),))
            return WebResponse(200, self.render.static[name], STATIC[name], (("Cache-Control", "max-age=300"),))
        if path in ("/", ""):
            if method in ("GET", "HEAD"):
                return self._page(req)
            if method == "POST":
                return self._form_post(req)
            return plain(405, "method not allowed", (("Allow", "GET, HEAD, POST"),))
        if path in ("/api/password", "/api/strength"):
            if method != "POST":
                return plain(405, "method not allowed", (("Allow", "POST"),))
            if req.body_too_large:
                return self.render.json(Outcome(413, "too_large", (Decision(
                    Verdict.REJECT, "SUITE", "Yêu cầu quá lớn.", "The request is too large."),)), self._req_lang(req))
            if path == "/api/strength":
                return self._strength(req)
            return self._api_password(req)
        return plain(404, "not found")

    def _default_lang(self) -> str:
        return "en" if self.cfg.language == "en" else "vi"

    def _req_lang(self, req: WebRequest) -> str:
        return pick_lang(req.query.get("lang", "") or req.form.get("lang", ""), self._default_lang())

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
        return Outcome(403, "csrf", (Decision(
            Verdict.REJECT, "SUITE",
            "Phiên làm việc đã hết hạn hoặc yêu cầu không đến từ trang đổi mật khẩu; hãy tải lại trang.",
            "The session expired or the request did not come from the password page; reload the page."),))

    # ------------------------------------------------------------------ rate limits

    def _ip_exempt(self, ip: str) -> bool:
        return in_networks(ip, self.cfg.authhooks.lockout_exempt)

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
        return Outcome(429, "rate_limited", (Decision(
            Verdict.REJECT, "CT25-3.2",
            f"Thử đổi mật khẩu quá nhiều lần; hãy thử lại sau {minutes} phút.",
            f"Too many password change attempts; try again in {minutes} minute(s)."),), retry_after=retry)

    # ------------------------------------------------------------------ the change

    def change(self, user: str, curpass: str, newpass: str, ip: str, via: str) -> Outcome:
        """Rate limits, then the current password (with lockout), then the policy and the store."""
        s = self.cfg.authhooks
        user = user.strip()
        if not user or not curpass or not newpass:
            return Outcome(400, "missing_field", (Decision(
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
        return Outcome(403, "wrong_password", (Decision(
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

    def _page(self, req: WebRequest, outcome: Outcome | None = None, status: int = 200) -> WebResponse:
        """The page, with a fresh CSRF cookie when the browser's is missing or not ours."""
        cookie = req.cookies.get(COOKIE, "")
        headers: tuple[tuple[str, str], ...] = ()
        if not self.csrf.valid(cookie):
            cookie = self.csrf.new()
            attrs = "HttpOnly; SameSite=Strict" + ("; Secure" if req.secure else "")
            headers = (("Set-Cookie", f"{COOKIE}={cookie}; {attrs}"),)
        return self.render.page(self.cfg, req, self._req_lang(req), cookie, outcome=outcome, status=status,
                                headers=headers)

    def _unavailable(self) -> Decision:
        return Decision(Verdict.DEFER, "SUITE", "Tạm thời không đổi được mật khẩu; hãy thử lại sau ít phút.",
                  "The password cannot be changed right now; try again in a few minutes.")

    def _logged(self, out: Outcome, user: str, ip: str, via: str) -> Outcome:
        """One line per decision, with the rule and its article; never the password."""
        d = out.reasons[0] if out.reasons else Decision(Verdict.PERMIT, "CT25-5.2", "", "")
        log.info("password change {result} user={user} ip={ip} via={via} codes={codes} [{rule_id}: {cite}]",
                 result="accepted" if out.ok else f"refused ({out.code})", user=user[:254], ip=ip or "-", via=via,
                 codes=",".join(out.codes) or "-", rule_id=d.rule_id, cite=d.citation)
        return out

    # ------------------------------------------------------------------ endpoints

    def _api_password(self, req: WebRequest) -> WebResponse:
        lang = self._req_lang(req)
        browser = self._from_browser(req)
        if browser and not self._csrf_ok(req):
            return self.render.json(self._logged(self._csrf_refusal(), req.form.get("user", ""), req.client_ip,
                                           "api"), lang)
        out = self.change(req.form.get("user", ""), req.form.get("curpass", ""), req.form.get("newpass", ""),
                          req.client_ip, "page" if browser else "api")
        if out.ok and not req.wants_json:
            # Roundcube's httpapi checks 2xx and, if configured, the body against /^ok$/i.
            return WebResponse(200, b"OK", "text/plain; charset=utf-8")
        return self.render.json(out, lang)

    def _form_post(self, req: WebRequest) -> WebResponse:
        """The page without JavaScript: the same change, answered with the page and its message."""
        if not self._csrf_ok(req):
            out = self._logged(self._csrf_refusal(), req.form.get("user", ""), req.client_ip, "form")
        elif req.form.get("newpass2", req.form.get("newpass", "")) != req.form.get("newpass", ""):
            out = Outcome(400, "mismatch", (Decision(Verdict.REJECT, "SUITE", TEXT["vi"]["mismatch"],
                                               TEXT["en"]["mismatch"]),))
        else:
            out = self.change(req.form.get("user", ""), req.form.get("curpass", ""), req.form.get("newpass", ""),
                              req.client_ip, "form")
        return self._page(req, outcome=out, status=out.status)

    def _strength(self, req: WebRequest) -> WebResponse:
        lang = self._req_lang(req)
        if not self._csrf_ok(req):
            return self.render.json(self._csrf_refusal(), lang)
        ip = req.client_ip
        if ip and not self._ip_exempt(ip):
            retry = self._limit(f"pwweb:strength:{ip}", self.cfg.authhooks.web_strength_rate, _STRENGTH_WINDOW)
            if retry is not None:
                return self.render.json(self._rate_refusal(retry), lang)
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
            "reasons": [reason(d, c, lang) for d, c in zip(check.reasons, check.codes, strict=True)],
        }
        return WebResponse(200, dumps(body), "application/json; charset=utf-8")
