"""Mailbox types and their limits (CT25-5.1, CT15-4.1, TH13-9).

The regulations limit the *attachment* ("tập tin đính kèm ... tối đa 20MB"), but a
Postfix policy server only sees the whole message size (``size=`` at MAIL/RCPT from the
client's SIZE, and the real size at END-OF-MESSAGE).  An attachment travels base64
encoded: 4 bytes per 3, plus CRLF every 76 characters, so 4/3 × 78/76 ≈ 1.37 — that is
``mime_factor``.  ``header_allowance`` covers headers, the text body and MIME part
headers.  Both are configurable; the defaults let a 20 MB attachment through and refuse
a 21 MB one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from congvu.rules.config import MAILBOX_TYPES, MailboxSettings, MailboxType
from congvu.rules.decision import Decision, Verdict
from congvu.rules.units import format_size


def message_size_limit(mailbox: MailboxSettings, attachment_max: int | None = None) -> int:
    """Largest whole message (bytes, as Postfix counts it) that carries an allowed attachment."""
    raw = mailbox.attachment_max if attachment_max is None else attachment_max
    return math.ceil(raw * mailbox.mime_factor) + mailbox.header_allowance


def attachment_equivalent(mailbox: MailboxSettings, message_size: int) -> int:
    """The attachment size a message of ``message_size`` bytes can carry (for messages to users)."""
    return max(0, math.floor((message_size - mailbox.header_allowance) / mailbox.mime_factor))


@dataclass(frozen=True, slots=True)
class QuotaCheck:
    """An effective quota (None = unlimited) and, if refused, why."""

    quota: int | None
    refusal: Decision | None


def effective_quota(mailbox: MailboxSettings, kind: MailboxType, override: int | None,
                    rule_id: str) -> QuotaCheck:
    """The quota for an account: its override if within the profile's bounds, else the type's.

    ``rule_id`` is the id the profile cites for quotas (``cfg.origins[...].rule_id``).
    An override outside the floor/ceiling is refused with the article, not silently clamped.
    """
    if kind not in MAILBOX_TYPES:
        raise ValueError(f"unknown mailbox type {kind!r}")
    if override is None:
        return QuotaCheck(mailbox.quota(kind), None)
    lo, hi = mailbox.min_quota(kind), mailbox.max_quota(kind)
    if override < lo:
        return QuotaCheck(None, Decision(
            Verdict.REJECT, rule_id,
            text_vi=f"Dung lượng hộp thư {kind} tối thiểu là {format_size(lo)}, không được {format_size(override)}.",
            text_en=f"A {kind} mailbox quota must be at least {format_size(lo)}, not {format_size(override)}."))
    if hi is not None and override > hi:
        return QuotaCheck(None, Decision(
            Verdict.REJECT, rule_id,
            text_vi=f"Dung lượng hộp thư {kind} tối đa là {format_size(hi)}, không được {format_size(override)}.",
            text_en=f"A {kind} mailbox quota may be at most {format_size(hi)}, not {format_size(override)}."))
    return QuotaCheck(override, None)


def dovecot_quota_rule(quota: int | None) -> str:
    """The ``userdb_quota_rule`` value: ``*:bytes=N``, or ``*:ignore``-free unlimited ``*:bytes=0``.

    Dovecot treats a limit of 0 as unlimited, which is what CT15-4.1 gives agency mailboxes.
    """
    return f"*:bytes={0 if quota is None else quota}"
