"""The checks, in the one order they run: the first refusal wins.

Security checks come first so a locked or impersonating sender is refused before any
counting; the rate check comes last so a message refused for another reason is not
counted against its sender.
"""

from __future__ import annotations

from congvu.policyd.checks.account_state import AccountStateCheck
from congvu.policyd.checks.base import Check, Context, Result
from congvu.policyd.checks.forged_sender import ForgedSenderCheck
from congvu.policyd.checks.rates import RatesCheck
from congvu.policyd.checks.recipients import RecipientsCheck
from congvu.policyd.checks.sender_login import SenderLoginCheck
from congvu.policyd.checks.size import SizeCheck

#: THE order.  Each entry's failure policy is ``[policyd] fail_<name>``.
CHECKS: tuple[type[Check], ...] = (
    AccountStateCheck,
    SenderLoginCheck,
    ForgedSenderCheck,
    SizeCheck,
    RecipientsCheck,
    RatesCheck,
)

CHECK_NAMES: tuple[str, ...] = tuple(c.name for c in CHECKS)

__all__ = ["CHECKS", "CHECK_NAMES", "Check", "Context", "Result"]
