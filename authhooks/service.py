"""Every login decision, behind one interface: checkpassword (2.3), the policy server (2.4/LDAP) and the password page.

:class:`AuthService` is synchronous (the stores are); ``congvu authd`` calls it from a
thread pool.  What it decides, in order:

1. Refuse input no account can match, before any hashing: a malformed name, an empty
   password, or one longer than ``[password] max_length`` (after NFC).
2. Lockout (CT25-3.2): a login whose account or client IP is locked is refused without
   verifying the password.  ``lockout_failures`` distinct wrong passwords for an
   account within ``lockout_window`` (``lockout_ip_failures`` for one client IP) lock
   it for ``lockout_duration``.  Repeats of the same wrong password count once (phones
   retry a stale password endlessly): the store keeps a keyed hash, never the password.
3. Verify with passlib (a dummy verify for unknown names, so timing does not tell which
   accounts exist); a deprecated hash is replaced at once.
4. Decide from the lifecycle: locked (CT25-6.4a), suspended (CT15-5.4), reclaimed
   (CT25-6.5), cancelled (CT25-6.3) refuse; a new or reset password (CT25-5.2) or an
   expired one (CT25-6.4b, CT15-11.4) refuses with the change-page URL; the warning
   window succeeds and records a reminder.
5. Record the successful login (time, service, client IP) for the inactivity rules.

A login refused for a reason the user can act on (must change, expired, disabled, locked
out) is told why, on every service alike (:meth:`AuthService.refusal`: Dovecot's failure
code and the bilingual, cited text).  :func:`checkpassword_reply` maps a result onto the
checkpassword protocol (such a refusal becomes ``noauthenticate`` + ``code`` + ``reason``,
which the passdb snippet turns into IMAP ``NO [EXPIRED] …`` / ``NO [ALERT] …``);
``authhooks.sasl_server`` answers Postfix's SMTP AUTH with the same decisions, and
``authhooks.policy_server`` maps the same service onto Dovecot's auth policy protocol.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from twisted.logger import Logger

from congvu.authhooks import wire
from congvu.authhooks.settings import AuthConfig
from congvu.directory.accounts import password_changes
from congvu.directory.hashing import Hasher
from congvu.directory.model import (
    Account,
    AccountNotFound,
    AccountStore,
    CounterStore,
    DirectoryUnavailable,
    LockInfo,
    StateUnavailable,
)
from congvu.rules.addresses import canonical
from congvu.rules.decision import Decision, Verdict
from congvu.rules.errors import ProtocolError
from congvu.rules.lifecycle import AccountState
from congvu.rules.limits import dovecot_quota_rule, effective_quota, message_size_limit
from congvu.rules.passwords import ExpiryState, PasswordCheck, PasswordPolicy, normalize_password, password_state_for
from congvu.rules.units import VIETNAM_TIME, format_duration

log = Logger()

Clock = Callable[[], datetime]

_ADDRESS = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"
                      r"[a-z]{2,63}$")


class LoginStatus(enum.Enum):
    OK = "ok"                      # may use the mailbox
    MUST_CHANGE = "must_change"    # password right; a new or reset password must be changed first
    EXPIRED = "expired"            # password right but past its lifetime
    DISABLED = "disabled"          # password right; locked, suspended, reclaimed or cancelled
    BAD_PASSWORD = "bad_password"  # wrong password (or refused input)
    UNKNOWN_USER = "unknown_user"
    LOCKED_OUT = "locked_out"      # too many failures: refused without verifying
    UNAVAILABLE = "unavailable"    # directory or state store down: a temporary failure

    @property
    def password_verified(self) -> bool:
        return self in (LoginStatus.OK, LoginStatus.MUST_CHANGE, LoginStatus.EXPIRED, LoginStatus.DISABLED)


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    """One login to judge.  The password never reaches a repr."""

    username: str
    password: str = field(repr=False)
    service: str = ""
    remote_ip: str = ""
    local_ip: str = ""


@dataclass(frozen=True, slots=True)
class UserdbFields:
    """What Dovecot's userdb needs for the session (quota from the mailbox type, CT25-5.1)."""

    user: str
    home: str
    uid: str
    gid: str
    quota_rule: str
    max_mail_size: int


@dataclass(frozen=True, slots=True)
class LoginResult:
    """A decision on a login: status, the rule behind it, and the session's userdb fields."""

    status: LoginStatus
    decision: Decision
    address: str = ""
    userdb: UserdbFields | None = None
    warning: Decision | None = None  # the expiry reminder on a successful login
    account: Account | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class ChangeResult:
    """The answer to a password change: accepted, or the reasons (bilingual, cited)."""

    accepted: bool
    reasons: tuple[Decision, ...] = ()
    codes: tuple[str, ...] = ()
    score: int = 0


@dataclass(frozen=True, slots=True)
class Refusal:
    """How a login refused for a reason is told: Dovecot's auth failure code and the client's one-line text.

    ``code`` is ``pass_expired`` (IMAP shows ``NO [EXPIRED]``), ``user_disabled`` (Dovecot
    2.3 shows it as ``NO [ALERT]``, as any failure with a reason) or empty (a lockout).
    ``reason`` never starts with ``[`` (IMAP would show it verbatim, with no code of its own)
    and holds no TAB, CR or LF.
    """

    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class PolicyAnswer:
    """Dovecot auth policy answer: -1 refuse, 0 accept (msg becomes the client's reason)."""

    status: int
    msg: str = ""


def lockout_decision(info: LockInfo, *, account: bool) -> Decision:
    """What a locked-out user is told: temporarily locked, until when in Vietnam's time (CT25-3.2)."""
    until = datetime.fromtimestamp(info.until, VIETNAM_TIME)
    what_vi, what_en = ("tài khoản", "the account") if account else ("địa chỉ IP này", "this IP address")
    return Decision(Verdict.REJECT, "CT25-3.2",
                    f"Đăng nhập sai quá nhiều lần; {what_vi} bị khóa tạm thời đến {until:%H:%M} ngày {until:%d/%m/%Y}.",
                    f"Too many failed logins; {what_en} is locked until {until:%H:%M} on {until:%d/%m/%Y} "
                    "(Vietnam time).")


def load_secret(path: Path) -> bytes:
    """The key for failure fingerprints: read it, or create it (0600) on first start."""
    try:
        data = path.read_bytes()
        if len(data) >= 16:
            return data
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, secrets.token_bytes(32))
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path.read_bytes()


class AuthService:
    """Every login and password-change decision of one site.  Thread-safe as far as its stores are."""

    def __init__(self, cfg: AuthConfig, accounts: AccountStore, counters: CounterStore, hasher: Hasher,
                 secret: bytes, clock: Clock = lambda: datetime.now(UTC)) -> None:
        self.cfg = cfg
        self.accounts = accounts
        self.counters = counters
        self.hasher = hasher
        self.clock = clock
        self._secret = secret
        self._policy: PasswordPolicy | None = None
        s = cfg.authhooks
        self._exempt = tuple(s.lockout_exempt)

    def __repr__(self) -> str:
        return f"AuthService(site={self.cfg.domain!r})"

    def close(self) -> None:
        """Close the stores (the service is done)."""
        self.accounts.close()
        self.counters.close()

    def reconfigure(self, cfg: AuthConfig) -> None:
        """Apply a reloaded config (SIGHUP) to the next decision."""
        self.cfg = cfg
        self._policy = None
        self._exempt = tuple(cfg.authhooks.lockout_exempt)

    # ------------------------------------------------------------------ names

    def canonical(self, username: str) -> str | None:
        """The address a login name stands for (``nvminh`` → ``nvminh@domain``), or None if it cannot exist."""
        try:
            wire.check_login(username)
        except ProtocolError:
            return None
        name = canonical(username, self.cfg.domain)
        return name if name is not None and _ADDRESS.match(name) else None

    # ------------------------------------------------------------------ login

    def login(self, attempt: LoginAttempt, *, stamp: bool = True, via: str = "checkpassword") -> LoginResult:
        """Verify and decide one login (checkpassword, the password page's current password).

        ``via`` names the path in the decision's log line (checkpassword, web-api, …).
        """
        now = self.clock()
        address = self.canonical(attempt.username)
        result = self._login(attempt, address, now, stamp)
        self._log(attempt, result, via=via)
        return result

    def verify_current(self, username: str, password: str, remote_ip: str = "", *, via: str = "web") -> LoginResult:
        """The password page's check of the current password: the same lockout and rules, no login stamp.

        MUST_CHANGE and EXPIRED (``status.password_verified``) are what the page exists for.
        Logged ``via=web`` (or the page's own ``web-page``/``web-api``/``web-form``), never
        ``via=checkpassword``: no Dovecot login happened.
        """
        return self.login(LoginAttempt(username, password, "password-web", remote_ip), stamp=False, via=via)

    def _login(self, attempt: LoginAttempt, address: str | None, now: datetime, stamp: bool) -> LoginResult:
        try:
            account = self.accounts.get(address) if address else None
        except DirectoryUnavailable as e:
            return LoginResult(LoginStatus.UNAVAILABLE, self._unavailable(f"directory: {e}"), address or "")
        # Failures count against the account the name resolves to, aliases included (CT25-3.2): every
        # alias of a locked mailbox is locked with it.  A name no account has keeps its own key, so
        # guessing names still costs.
        key_name = account.address if account is not None else (
            address or attempt.username.strip().lower()[:wire.MAX_LOGIN])
        keys = self._failure_keys(key_name, attempt.remote_ip)
        fp = self._fingerprint(key_name, attempt.password)
        t = now.timestamp()
        refused = self._refuse_input(attempt.password)
        if refused is not None:
            self._count_failure(keys, fp, t, attempt)
            return LoginResult(LoginStatus.BAD_PASSWORD, refused, key_name if account else address or "")
        try:
            locked = self._locked(keys, t)
        except StateUnavailable as e:
            log.warn("lockout check skipped, state store unavailable ({err}) [CT25-3.2]", err=str(e))
            locked = None
        if locked is not None:
            return LoginResult(LoginStatus.LOCKED_OUT, locked, key_name if account else address or "")
        if account is None:
            self.hasher.dummy_verify()
            self._count_failure(keys, fp, t, attempt)
            return LoginResult(LoginStatus.UNKNOWN_USER, Decision(
                Verdict.REJECT, "CT25-3.2", "Sai tên đăng nhập hoặc mật khẩu.", "Wrong user name or password."),
                address or "")
        ok, new_hash = self.hasher.verify(attempt.password, account.password_hash)
        if not ok:
            self._count_failure(keys, fp, t, attempt)
            return LoginResult(LoginStatus.BAD_PASSWORD, Decision(
                Verdict.REJECT, "CT25-3.2", "Sai tên đăng nhập hoặc mật khẩu.", "Wrong user name or password."),
                account.address, account=account)
        if new_hash:
            account = self._rehash(account, new_hash)
        self._forget_failures(keys[:1])
        return self._lifecycle(account, attempt, now, stamp)

    def _lifecycle(self, account: Account, attempt: LoginAttempt, now: datetime, stamp: bool) -> LoginResult:
        """The account's state decides, the password being right (CT25-5.2, CT25-6.x, CT15-5.4)."""
        disabled = self._disabled(account)
        if disabled is not None:
            return LoginResult(LoginStatus.DISABLED, disabled, account.address, self.userdb(account),
                               account=account)
        pstate = password_state_for(self.cfg, account.mailbox_type, account.password_changed_at,
                                    account.must_change or account.state is AccountState.MUST_CHANGE_PASSWORD,
                                    now)
        if pstate.state is ExpiryState.MUST_CHANGE:
            return LoginResult(LoginStatus.MUST_CHANGE, pstate.reasons[0], account.address, self.userdb(account),
                               account=account)
        if pstate.state is ExpiryState.EXPIRED or account.state is AccountState.PASSWORD_EXPIRED:
            decision = pstate.reasons[0] if pstate.reasons else Decision(
                Verdict.REJECT, self.cfg.origins[f"password.expiry_{account.mailbox_type}"].rule_id,
                "Mật khẩu đã hết hạn; hãy đổi mật khẩu mới.", "The password has expired; set a new one.")
            return LoginResult(LoginStatus.EXPIRED, decision, account.address, self.userdb(account),
                               account=account)
        warning = pstate.reasons[0] if pstate.state is ExpiryState.WARN else None
        if warning is not None:
            self._remind(account, warning, now)
        if stamp:
            try:
                self.counters.stamp_login(account.address, now.timestamp(), attempt.service, attempt.remote_ip)
            except StateUnavailable as e:
                log.warn("login of {user} not stamped, state store unavailable ({err}) [CT25-6.5]",
                         user=account.address, err=str(e))
        return LoginResult(LoginStatus.OK, Decision(Verdict.PERMIT, "CT25-3.2", "", ""), account.address,
                           self.userdb(account), warning, account=account)

    def _disabled(self, account: Account) -> Decision | None:
        st = account.state
        if st is AccountState.LOCKED:
            return Decision(Verdict.REJECT, "CT25-6.4a", "Hộp thư đang bị tạm khóa; liên hệ quản trị hệ thống.",
                      "The mailbox is temporarily locked; contact the administrator.")
        if st is AccountState.SUSPENDED:
            return Decision(Verdict.REJECT, "CT15-5.4",
                      "Hộp thư bị tạm ngưng do lâu không đăng nhập; liên hệ quản trị hệ thống.",
                      "The mailbox is suspended after a long time without login; contact the administrator.")
        if st is AccountState.RECLAIMED:
            return Decision(Verdict.REJECT, "CT25-6.5", "Hộp thư đã bị thu hồi.", "The mailbox has been reclaimed.")
        if st is AccountState.CANCELLED:
            return Decision(Verdict.REJECT, "CT25-6.3", "Hộp thư đã bị hủy.", "The mailbox has been cancelled.")
        return None

    def _refuse_input(self, password: str) -> Decision | None:
        """Refuse before hashing what no stored password can be: empty, or over max_length."""
        n = self.cfg.password.max_length
        if not password:
            return Decision(Verdict.REJECT, "CT25-3.2", "Mật khẩu trống.", "Empty password.")
        if len(password) > 4 * n or len(normalize_password(password)) > n:
            return Decision(Verdict.REJECT, "CT25-5.3", f"Mật khẩu dài quá {n} ký tự.",
                      f"The password is longer than {n} characters.")
        return None

    def _unavailable(self, why: str) -> Decision:
        return Decision(Verdict.DEFER, "SUITE", "Tạm thời không xác thực được; thử lại sau.",
                  f"Authentication temporarily unavailable ({why}); try again later.")

    def _rehash(self, account: Account, new_hash: str) -> Account:
        try:
            updated = self.accounts.update(account.address, password_hash=new_hash)
            log.info("rehashed the password of {user} to the current scheme", user=account.address)
            return updated
        except (DirectoryUnavailable, AccountNotFound) as e:
            log.warn("rehash of {user} not stored ({err})", user=account.address, err=str(e))
            return account

    def _remind(self, account: Account, warning: Decision, now: datetime) -> None:
        """Record the expiry reminder once a day (the login itself succeeds)."""
        try:
            first = not self.counters.seen(f"pwwarn:{account.address}", self.cfg.authhooks.reminder_every,
                                           now.timestamp())
        except StateUnavailable:
            first = True
        if first:
            log.info("password reminder for {user}: {text}", user=account.address, text=warning.text("en"),
                     rule_id=warning.rule_id)

    # ------------------------------------------------------------------ lockout

    def _fingerprint(self, name: str, password: str) -> str:
        """A keyed hash of (name, password): repeats of one wrong password match, the password stays unknown."""
        return hmac.new(self._secret, f"{name}\0{password}".encode("utf-8", "surrogatepass"),
                        hashlib.sha256).hexdigest()[:32]

    def _failure_keys(self, name: str, ip: str) -> list[tuple[str, int]]:
        s = self.cfg.authhooks
        keys = [(f"authfail:user:{name}", s.lockout_failures)]
        if ip and s.lockout_ip_failures > 0 and not self._exempt_ip(ip):
            keys.append((f"authfail:ip:{ip}", s.lockout_ip_failures))
        return keys

    def _exempt_ip(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self._exempt)

    def _locked(self, keys: list[tuple[str, int]], t: float) -> Decision | None:
        for key, _limit in keys:
            info = self.counters.lock_info(key, t)
            if info is not None:
                return lockout_decision(info, account=":user:" in key)
        return None

    def _count_failure(self, keys: list[tuple[str, int]], fp: str, t: float, attempt: LoginAttempt) -> None:
        s = self.cfg.authhooks
        if s.lockout_failures <= 0:
            return
        try:
            for key, limit in keys:
                n = self.counters.record_failure(key, fp, s.lockout_window, t)
                if limit > 0 and n >= limit:
                    why = (f"{n} distinct wrong passwords within {format_duration(s.lockout_window)}, the last "
                           f"from {attempt.remote_ip or 'an unknown address'} ({attempt.service or '?'})")
                    self.counters.lock(key, t + s.lockout_duration.total_seconds(), t, why)
                    log.warn("lockout: {key} after {n} distinct failures, for {dur} [CT25-3.2]",
                             key=key, n=n, dur=str(s.lockout_duration), rule_id="CT25-3.2")
        except StateUnavailable as e:
            log.warn("login failure not counted, state store unavailable ({err}) [CT25-3.2]", err=str(e))

    def _forget_failures(self, keys: list[tuple[str, int]]) -> None:
        """A right password clears the account's failures (not the IP's: one good login proves little)."""
        try:
            for key, _ in keys:
                self.counters.clear_failures(key)
        except StateUnavailable:
            pass

    # ------------------------------------------------------------------ userdb

    def userdb(self, account: Account) -> UserdbFields:
        """USER, HOME, uid/gid and the quota rule for the mailbox type (CT25-5.1, CT15-4.1, TH13-9)."""
        s = self.cfg.authhooks
        kind = account.mailbox_type
        check = effective_quota(self.cfg.mailbox, kind, account.quota_override,
                                self.cfg.origins[f"mailbox.quota_{kind}"].rule_id)
        quota = check.quota
        if check.refusal is not None:
            log.warn("quota override of {user} refused ({why}); using the {kind} default",
                     user=account.address, why=check.refusal.text("en"), kind=kind)
            quota = self.cfg.mailbox.quota(kind)
        home = s.home.format(domain=account.domain, local_part=account.local_part, address=account.address)
        return UserdbFields(account.address, home, s.uid, s.gid, dovecot_quota_rule(quota),
                            message_size_limit(self.cfg.mailbox))

    def lookup(self, username: str) -> LoginResult:
        """A userdb lookup (delivery, doveadm): no password; cancelled and reclaimed mailboxes do not exist."""
        address = self.canonical(username)
        if address is None:
            return LoginResult(LoginStatus.UNKNOWN_USER, Decision(Verdict.REJECT, "SUITE", "", "no such user"))
        try:
            account = self.accounts.get(address)
        except DirectoryUnavailable as e:
            return LoginResult(LoginStatus.UNAVAILABLE, self._unavailable(f"directory: {e}"), address)
        if account is None or account.state in (AccountState.CANCELLED, AccountState.RECLAIMED):
            return LoginResult(LoginStatus.UNKNOWN_USER, Decision(Verdict.REJECT, "CT25-6.3", "", "no such mailbox"),
                               address)
        return LoginResult(LoginStatus.OK, Decision(Verdict.PERMIT, "SUITE", "", ""), account.address,
                           self.userdb(account), account=account)

    # ------------------------------------------------------------------ password change

    def policy(self) -> PasswordPolicy:
        if self._policy is None:
            self._policy = PasswordPolicy.from_config(self.cfg)
        return self._policy

    def change_password(self, address: str, new_password: str, *, remote_ip: str = "") -> ChangeResult:
        """Set a new password for an account whose current password the caller has verified.

        Enforces the policy (CT25-5.3 & co), refuses the current and the last ``history``
        passwords, stores the hash, clears must_change, sets password_changed_at and
        lifts the lockout, so the next IMAP login succeeds at once.
        """
        try:
            account = self.accounts.get(address)
        except DirectoryUnavailable as e:
            return ChangeResult(False, (self._unavailable(f"directory: {e}"),), ("unavailable",))
        if account is None:
            return ChangeResult(False, (Decision(Verdict.REJECT, "SUITE", "Không có hộp thư này.",
                                                 "No such mailbox."),), ("unknown_user",))
        check: PasswordCheck = self.policy().check(new_password, local_part=account.local_part,
                                                   full_name=account.full_name, agency=account.agency)
        if not check.accepted:
            return ChangeResult(False, check.reasons, check.codes, check.score)
        keep = self.cfg.password.history
        previous = (account.password_hash, *account.password_history[:keep])
        if self.hasher.matches_any(new_password, previous):
            return ChangeResult(False, (Decision(
                Verdict.REJECT, self.policy().rule("history"),
                f"Mật khẩu mới không được trùng mật khẩu hiện tại hoặc {keep} mật khẩu gần nhất.",
                f"The new password must differ from the current one and the last {keep}."),),
                ("reused",), check.score)
        now = self.clock()
        changes = password_changes(account, self.hasher.hash(new_password), history=keep, must_change=False,
                                   now=now)
        if account.state in (AccountState.MUST_CHANGE_PASSWORD, AccountState.PASSWORD_EXPIRED):
            changes["state"] = AccountState.ACTIVE
        try:
            self.accounts.update(account.address, **changes)
        except (DirectoryUnavailable, AccountNotFound) as e:
            return ChangeResult(False, (self._unavailable(f"directory: {e}"),), ("unavailable",))
        t = now.timestamp()
        try:
            self.counters.unlock(f"authfail:user:{account.address}")
            self.counters.clear_failures(f"authfail:user:{account.address}")
        except StateUnavailable:
            pass
        log.info("password changed for {user} from {ip} [CT25-5.2: must_change cleared]",
                 user=account.address, ip=remote_ip or "-", t=t)
        return ChangeResult(True, score=check.score)

    # ------------------------------------------------------------------ auth policy server

    def policy_allow(self, login: str, remote_ip: str, protocol: str, authed: bool) -> PolicyAnswer:
        """``command=allow``: before authentication only the lockout; after it (``authed``) the lifecycle too."""
        now = self.clock()
        address = self.canonical(login)
        key_name = address or login.strip().lower()[:wire.MAX_LOGIN]
        try:
            locked = self._locked(self._failure_keys(key_name, remote_ip), now.timestamp())
        except StateUnavailable:
            locked = None
        if locked is not None:
            log.info("policy allow: {user} locked out [CT25-3.2]", user=key_name)
            return PolicyAnswer(-1)
        if not authed or address is None:
            return PolicyAnswer(0)
        try:
            account = self.accounts.get(address)
        except DirectoryUnavailable as e:
            log.warn("policy allow: directory unavailable ({err}); not refusing", err=str(e))
            return PolicyAnswer(0)
        if account is None:
            return PolicyAnswer(0)  # the passdb knows a user we do not: not ours to judge
        result = self._lifecycle(account, LoginAttempt(login, "", protocol, remote_ip), now, stamp=False)
        self._log(LoginAttempt(login, "", protocol, remote_ip), result, via="policy")
        if result.status is LoginStatus.OK:
            return PolicyAnswer(0)
        return PolicyAnswer(-1, self.client_reason(result))

    def policy_report(self, login: str, remote_ip: str, protocol: str, pwhash: str, success: bool,
                      policy_reject: bool) -> None:
        """``command=report``: count a wrong password (by Dovecot's keyed pwhash), or stamp a success."""
        now = self.clock()
        t = now.timestamp()
        address = self.canonical(login)
        try:
            account = self.accounts.get(address) if address else None
        except DirectoryUnavailable:
            account = None  # counted under the name as typed: a guess still costs
        key_name = account.address if account is not None else (address or login.strip().lower()[:wire.MAX_LOGIN])
        keys = self._failure_keys(key_name, remote_ip)
        if success:
            self._forget_failures(keys[:1])
            if account is not None:
                with contextlib.suppress(StateUnavailable):
                    self.counters.stamp_login(account.address, t, protocol, remote_ip)
        elif not policy_reject:
            self._count_failure(keys, self._fingerprint(key_name, f"policy:{pwhash}"), t,
                                LoginAttempt(login, "", protocol, remote_ip))

    # ------------------------------------------------------------------ presentation

    def refusal(self, result: LoginResult) -> Refusal | None:
        """Why a login is refused, for the user to read; None when there is nothing to tell.

        A wrong password or an unknown name is a plain failure (telling them apart would
        reveal which accounts exist); an outage is a temporary failure, never a refusal.
        A lockout is told whatever password was typed: unknown names are locked too.
        """
        st = result.status
        text = result.decision.text(self.cfg.language)
        if st in (LoginStatus.MUST_CHANGE, LoginStatus.EXPIRED):
            return Refusal("pass_expired", self._one_line(f"{self.cfg.change_url} - {text}"))
        if st is LoginStatus.DISABLED:
            return Refusal("user_disabled", self._one_line(text))
        if st is LoginStatus.LOCKED_OUT:
            return Refusal("", self._one_line(text))
        return None

    @staticmethod
    def _one_line(text: str) -> str:
        """No TAB, CR or LF can reach Dovecot's or Postfix's protocol line."""
        return " ".join(text.split())

    def client_reason(self, result: LoginResult) -> str:
        """The auth policy server's refusal text: an RFC 5530 code in front, which IMAP shows verbatim."""
        refusal = self.refusal(result)
        text = refusal.reason if refusal is not None else self._one_line(result.decision.text(self.cfg.language))
        code = "[EXPIRED]" if refusal is not None and refusal.code == "pass_expired" else "[CONTACTADMIN]"
        return f"{code} {text}"

    def _log(self, attempt: LoginAttempt, result: LoginResult, via: str = "checkpassword") -> None:
        """One line per decision, with its rule; an outage says what is down (the client only hears "later")."""
        d = result.decision
        why = f" ({d.text_en})" if result.status is LoginStatus.UNAVAILABLE else ""
        log.info("login {status} user={user} service={service} rip={rip} via={via}{why} [{rule_id}: {cite}]",
                 status=result.status.value, user=result.address or attempt.username[:64],
                 service=attempt.service or "-", rip=attempt.remote_ip or "-", via=via, why=why,
                 rule_id=d.rule_id, cite=d.citation)


def checkpassword_reply(service: AuthService, result: LoginResult, lookup: bool) -> wire.AuthReply:
    """A LoginResult in checkpassword's terms (exit code and exported fields), for the hook.

    A refusal with a reason is the same on IMAP, POP3 and anything else Dovecot serves:
    ``nologin`` is not used, because Postfix would ignore it and IMAP would put
    ``[CONTACTADMIN]`` in front of any code (conf/dovecot/congvu-checkpassword.conf.ext).
    """
    st = result.status
    if st is LoginStatus.UNAVAILABLE:
        return wire.AuthReply(wire.TEMPFAIL, message=result.decision.text("en"))
    if st is LoginStatus.UNKNOWN_USER:
        return wire.AuthReply(wire.UNKNOWN)
    if st is LoginStatus.OK or lookup:
        exports = _userdb_exports(result.userdb) if result.userdb is not None else (("USER", result.address),)
        return wire.AuthReply(wire.OK, exports)
    refusal = service.refusal(result)
    if refusal is None:
        return wire.AuthReply(wire.FAIL)
    fields = (("reason", refusal.reason), *((("code", refusal.code),) if refusal.code else ()))
    return wire.AuthReply(wire.REFUSE, fields)


def _userdb_exports(u: UserdbFields) -> tuple[tuple[str, str], ...]:
    return (("USER", u.user), ("HOME", u.home), ("userdb_uid", u.uid), ("userdb_gid", u.gid),
            ("userdb_quota_rule", u.quota_rule), ("userdb_quota_max_mail_size", str(u.max_mail_size)))


def answer(service: AuthService, request: wire.AuthRequest) -> wire.AuthReply:
    """One hook request → its reply (what authd runs in its thread pool)."""
    if request.op == wire.OP_LOOKUP:
        return checkpassword_reply(service, service.lookup(request.username), True)
    attempt = LoginAttempt(request.username, request.password, request.service, request.remote_ip,
                           request.local_ip)
    return checkpassword_reply(service, service.login(attempt), False)
