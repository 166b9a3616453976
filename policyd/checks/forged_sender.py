"""Refuse unauthenticated mail from outside mynetworks whose sender claims one of the site's domains."""

from __future__ import annotations

from congvu.policyd.checks.base import Check, Context, Result, passed
from congvu.policyd.protocol import PolicyRequest
from congvu.rules.decision import Decision, Verdict

_OUTSIDE = passed("sender domain is not one of the site's")


class ForgedSenderCheck(Check):
    """Unauthenticated clients outside mynetworks may not use a sender in the site's own domains."""

    name = "forged_sender"
    rule_id = "CT25-3.2"
    states = frozenset({"MAIL", "RCPT", "DATA", "END-OF-MESSAGE"})

    def skip_reason(self, req: PolicyRequest, ctx: Context) -> str | None:
        if req.authenticated:
            return "client authenticated (sender_login checks it)"
        if not req.sender:
            return "null sender"
        return None

    def run(self, req: PolicyRequest, ctx: Context) -> Result:
        if not ctx.is_local_domain(req.sender):
            return _OUTSIDE
        if ctx.in_mynetworks(req.client_address):
            return passed(f"client {req.client_address} is in mynetworks")
        domain = ctx.address(req.sender).rpartition("@")[2]
        return Result(Decision(
            Verdict.REJECT, self.rule_id,
            text_vi=f"Thư mang địa chỉ gửi thuộc {domain} phải được gửi qua máy chủ thư sau khi đăng nhập",
            text_en=f"Mail from a {domain} address must be sent through the mail server after logging in",
            smtp_code=553, enhanced="5.7.1"), "local-domain sender from an unauthenticated outside client")
