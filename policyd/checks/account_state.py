"""Refuse mail from an authenticated account that may not send now (locked, suspended, password to change)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from congvu.directory.model import Account
from congvu.policyd.checks.base import MESSAGE_STATES, Check, Context, Result, passed
from congvu.policyd.protocol import PolicyRequest, clip
from congvu.rules.decision import Decision, Verdict
from congvu.rules.lifecycle import AccountState
from congvu.rules.passwords import password_state_for

#: Account states that stop sending, with the article and the bilingual reason.
BLOCKED: dict[AccountState, tuple[str, str, str]] = {
    AccountState.LOCKED: ("CT25-6.4a", "Hộp thư đang bị tạm khóa", "The mailbox is temporarily locked"),
    AccountState.SUSPENDED: ("CT15-5.4", "Hộp thư đang bị tạm ngưng do lâu không sử dụng",
                             "The mailbox is suspended after a long time without use"),
    AccountState.RECLAIMED: ("CT25-6.5", "Hộp thư đã bị thu hồi", "The mailbox has been reclaimed"),
    AccountState.CANCELLED: ("CT25-6.3", "Hộp thư đã bị hủy", "The mailbox has been cancelled"),
}


class AccountStateCheck(Check):
    """An authenticated sender whose account is locked, suspended, reclaimed, cancelled or must change its password cannot send."""  # noqa: E501

    name = "account_state"
    rule_id = "CT25-6.4a"
    states = MESSAGE_STATES

    def skip_reason(self, req: PolicyRequest, ctx: Context) -> str | None:
        if not req.authenticated:
            return "client did not authenticate (no sasl_username)"
        return None

    def needs_io(self, req: PolicyRequest, ctx: Context) -> bool:
        return not ctx.accounts.cached(ctx.login(req))

    def run(self, req: PolicyRequest, ctx: Context) -> Result:
        login = ctx.login(req)
        account = ctx.accounts.get(login)
        if account is None:
            # Dovecot has just authenticated this login, so a directory without it is an
            # inconsistency (a wrong base_dn, a half-done migration), not a verdict: defer,
            # so no mail is bounced while the operator fixes it.
            return Result(Decision(
                Verdict.DEFER, "CT25-3.2",
                text_vi=f"Tài khoản {login} không có trong danh bạ thư điện tử công vụ, thử lại sau",
                text_en=f"The account {login} is not in the official mail directory, try again later",
                smtp_code=450, enhanced="4.7.1"), "authenticated login unknown to the directory")
        blocked = BLOCKED.get(account.state)
        if blocked is not None:
            rid, vi, en = blocked
            why = f" ({clip(account.state_reason)})" if account.state_reason else ""  # MAX_REASON chars
            return Result(Decision(Verdict.REJECT, rid, text_vi=f"{vi}{why}; không thể gửi thư",
                                   text_en=f"{en}{why}; it cannot send mail",
                                   smtp_code=550, enhanced="5.7.1"), f"account state {account.state.value}")
        now = ctx.clock()
        memo = self._memo.get(account.address)
        if memo is not None and memo[0] is account and now < memo[1]:
            return memo[2]
        result, valid_until = self._password(account, ctx, now)
        if len(self._memo) > 50_000:
            self._memo.clear()
        self._memo[account.address] = (account, valid_until, result)
        return result

    def __init__(self) -> None:
        #: address → (the Account object it was computed for, valid until, result): the
        #: password verdict only changes at expiry or when the directory returns a new record.
        self._memo: dict[str, tuple[Account, float, Result]] = {}

    def _password(self, account: Account, ctx: Context, now: float) -> tuple[Result, float]:
        must_change = account.must_change or account.state is AccountState.MUST_CHANGE_PASSWORD
        at = datetime.fromtimestamp(now, UTC)
        pw = password_state_for(ctx.cfg, account.mailbox_type, account.password_changed_at, must_change, at)
        if account.state is AccountState.PASSWORD_EXPIRED and not pw.blocks:
            pw = password_state_for(ctx.cfg, account.mailbox_type, None, True, at)
        if pw.blocks and pw.reasons:
            d = pw.reasons[0]
            url = ctx.cfg.change_url
            return Result(Decision(
                Verdict.REJECT, d.rule_id,
                text_vi=f"{d.text_vi} Đổi mật khẩu tại {url}",
                text_en=f"{d.text_en} Change it at {url}",
                smtp_code=550, enhanced="5.7.1"), f"password {pw.state.value}"), math.inf
        expires = pw.expires_at.timestamp() if pw.expires_at is not None else math.inf
        return passed(f"account {account.address} is {account.state.value}, password {pw.state.value}"), expires
