"""An authenticated user may send only as their own address, an alias, or a shared mailbox delegated to them."""

from __future__ import annotations

from congvu.policyd.checks.account_state import BLOCKED
from congvu.policyd.checks.base import Check, Context, Result, passed
from congvu.policyd.protocol import PolicyRequest
from congvu.rules.decision import Decision, Verdict

_OWN = passed("sender is the login address")


class SenderLoginCheck(Check):
    """The envelope sender of authenticated mail must belong to the login (own address, alias, delegation)."""

    name = "sender_login"
    rule_id = "CT25-3.2"
    states = frozenset({"MAIL", "RCPT", "DATA", "END-OF-MESSAGE"})

    def skip_reason(self, req: PolicyRequest, ctx: Context) -> str | None:
        if not req.authenticated:
            return "client did not authenticate (no sasl_username)"
        if not req.sender:
            return "null sender (a bounce): nothing to impersonate"
        return None

    def needs_io(self, req: PolicyRequest, ctx: Context) -> bool:
        login = ctx.login(req)
        sender = ctx.address(req.sender)
        return not ctx.accounts.cached(login) or (sender != login and not ctx.accounts.cached(sender))

    def run(self, req: PolicyRequest, ctx: Context) -> Result:
        login = ctx.login(req)
        sender = ctx.address(req.sender)
        if sender == login:
            return _OWN
        account = ctx.accounts.get(login)
        if account is not None:
            if sender == account.address or sender in account.aliases:
                return passed(f"sender is an address of {account.address}")
            owner = ctx.accounts.get(sender)
            if owner is not None and account.address in owner.delegates:
                blocked = BLOCKED.get(owner.state)
                if blocked is not None:
                    rid, vi, en = blocked
                    return Result(Decision(
                        Verdict.REJECT, rid, text_vi=f"{vi} ({owner.address}); không thể gửi thư thay",
                        text_en=f"{en} ({owner.address}); nobody can send as it",
                        smtp_code=550, enhanced="5.7.1"), f"shared mailbox is {owner.state.value}")
                return passed(f"{owner.address} delegates sending to {account.address}")
        return Result(Decision(
            Verdict.REJECT, self.rule_id,
            text_vi=f"Địa chỉ người gửi {sender} không thuộc tài khoản đăng nhập {login}",
            text_en=f"Sender address {sender} is not owned by the login {login}",
            smtp_code=553, enhanced="5.7.1"), "sender is not an address of the login")
