"""Refuse a message with more recipients than one message may have, counted at DATA."""

from __future__ import annotations

from congvu.policyd.checks.base import PASSED, Check, Context, Result, passed
from congvu.policyd.protocol import PolicyRequest
from congvu.rules.decision import Decision, Verdict


class RecipientsCheck(Check):
    """Recipients per message (``recipient_count`` at DATA/END-OF-MESSAGE) against ``max_recipients``."""

    name = "recipients"
    rule_id = "CT25-3.1"
    states = frozenset({"DATA", "END-OF-MESSAGE"})

    def skip_reason(self, req: PolicyRequest, ctx: Context) -> str | None:
        if ctx.cfg.policyd.max_recipients == 0:
            return "max_recipients = 0 (unlimited)"
        return None

    def run(self, req: PolicyRequest, ctx: Context) -> Result:
        limit = ctx.cfg.policyd.max_recipients
        if req.recipient_count <= limit:
            return passed(f"{req.recipient_count} recipients ≤ {limit}") if ctx.dry_run else PASSED
        return Result(Decision(
            Verdict.REJECT, ctx.cfg.origins["policyd.max_recipients"].rule_id,
            text_vi=f"Thư có {req.recipient_count} người nhận, vượt mức {limit} người nhận mỗi thư",
            text_en=f"{req.recipient_count} recipients exceed the limit of {limit} per message",
            smtp_code=550, enhanced="5.5.3"), f"{req.recipient_count} recipients > {limit}")
