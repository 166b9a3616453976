"""The one decision value every component returns: verdict, SMTP codes, text, citation.

policyd turns it into ``action=…``, authhooks into an exit code or ``[EXPIRED]``
reason, the CLI into a line on screen; all of them show the same bilingual text
and the same rule id, so an operator can trace any refusal back to its article.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

from congvu.rules.requirements import citation

Language = Literal["vi", "en", "both"]


class Verdict(enum.Enum):
    PERMIT = "permit"
    DUNNO = "dunno"
    REJECT = "reject"
    DEFER = "defer"
    WARN = "warn"


@dataclass(frozen=True, slots=True)
class Decision:
    """A rule's verdict with the codes, bilingual text and article that justify it."""

    verdict: Verdict
    rule_id: str
    text_vi: str = ""
    text_en: str = ""
    smtp_code: int | None = None
    enhanced: str | None = None
    citation: str = field(default="")

    def __post_init__(self) -> None:
        if not self.citation:
            object.__setattr__(self, "citation", citation(self.rule_id))
        code = self.smtp_code
        if code is not None and self.verdict is Verdict.REJECT and not 500 <= code <= 599:
            raise ValueError(f"reject needs a 5xx code, got {code}")
        if code is not None and self.verdict is Verdict.DEFER and not 400 <= code <= 499:
            raise ValueError(f"defer needs a 4xx code, got {code}")

    def text(self, language: Language = "both") -> str:
        """The user-facing sentence in the configured language, ending in the citation."""
        if language == "vi":
            body = self.text_vi or self.text_en
        elif language == "en":
            body = self.text_en or self.text_vi
        else:
            parts = [p for p in (self.text_vi, self.text_en) if p]
            body = " / ".join(parts)
        return f"{body} ({self.rule_id}: {self.citation})" if body else f"({self.rule_id})"

    @property
    def blocks(self) -> bool:
        """True for verdicts that stop the mail or the login."""
        return self.verdict in (Verdict.REJECT, Verdict.DEFER)


def permit(rule_id: str = "SUITE") -> Decision:
    return Decision(Verdict.PERMIT, rule_id)


def dunno(rule_id: str = "SUITE") -> Decision:
    return Decision(Verdict.DUNNO, rule_id)
