"""Refuse a message too large for the attachment limit: declared SIZE at MAIL/RCPT, actual at END-OF-MESSAGE."""

from __future__ import annotations

from congvu.policyd.checks.base import PASSED, Check, Context, Result, passed
from congvu.policyd.protocol import PolicyRequest
from congvu.rules.config import MailboxType
from congvu.rules.decision import Decision, Verdict
from congvu.rules.limits import message_size_limit
from congvu.rules.units import MB


def _mb(n: int) -> str:
    return f"{n / MB:.1f}".rstrip("0").rstrip(".")


class SizeCheck(Check):
    """Whole-message size against the limit derived from the attachment limit (CT25-5.1, TH13-9)."""

    name = "size"
    rule_id = "CT25-5.1"
    states = frozenset({"MAIL", "RCPT", "DATA", "END-OF-MESSAGE"})

    def skip_reason(self, req: PolicyRequest, ctx: Context) -> str | None:
        if req.size <= 0:
            return "no size known yet (client declared no SIZE)"
        return None

    def _subjects(self, req: PolicyRequest, ctx: Context) -> list[str]:
        """Whose mailbox type sets the limit: the authenticated sender, else the one recipient."""
        if req.authenticated:
            return [ctx.login(req)]
        return [req.recipient] if req.recipient else []

    def needs_io(self, req: PolicyRequest, ctx: Context) -> bool:
        if not ctx.size_per_type:
            return False
        return any(not ctx.accounts.cached(a) for a in self._subjects(req, ctx))

    def limit(self, req: PolicyRequest, ctx: Context) -> tuple[int, int, str]:
        """(message limit, attachment limit, what chose it)."""
        mb = ctx.cfg.mailbox
        if ctx.size_per_type:
            for address in self._subjects(req, ctx):
                account = ctx.accounts.get(address)
                kind: MailboxType | None = account.mailbox_type if account is not None else None
                att = ctx.cfg.policyd.attachment_max_for(kind) if kind is not None else None
                if att is not None:
                    return message_size_limit(mb, att), att, f"{kind} mailbox {address}"
        return ctx.size_limit, mb.attachment_max, "mailbox.attachment_max"

    def run(self, req: PolicyRequest, ctx: Context) -> Result:
        if req.size <= ctx.size_limit and not ctx.size_per_type and not ctx.dry_run:
            return PASSED  # the usual answer, without formatting a note nobody reads
        limit, att, source = self.limit(req, ctx)
        actual = req.state == "END-OF-MESSAGE"
        what = "actual" if actual else "declared"
        if req.size <= limit:
            return passed(f"{what} size {req.size} ≤ {limit} bytes ({_mb(att)} MB attachment, {source})")
        rid = ctx.cfg.origins["mailbox.attachment_max"].rule_id
        return Result(Decision(
            Verdict.REJECT, rid,
            text_vi=f"Thư {_mb(req.size)} MB vượt giới hạn: tập tin đính kèm tối đa {_mb(att)} MB",
            text_en=f"Message of {_mb(req.size)} MB is too large: attachments are limited to {_mb(att)} MB",
            smtp_code=552, enhanced="5.3.4"), f"{what} size {req.size} > {limit} bytes ({source})")
