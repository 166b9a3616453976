"""Requirement ids (../shared/REQUIREMENTS.md) and the citation text each one expands to.

Ids look like ``CT25-5.1`` or ``CT15-4.2c``: profile, article, clause and optional
point letter (Vietnamese letters, so ``đ`` follows ``d``).  Users and auditors read the
citation ("QĐ 21/2025/QĐ-UBND TP Cần Thơ, Điều 5 khoản 1"), operators grep for the id,
so every decision carries both.
"""

from __future__ import annotations

import re

DOCUMENTS: dict[str, str] = {
    "CT25": "QĐ 21/2025/QĐ-UBND TP Cần Thơ",
    "CT15": "QĐ 33/2015/QĐ-UBND TP Cần Thơ",
    "TH13": "QĐ 3380/2013/QĐ-UBND tỉnh Thanh Hóa",
}

#: Ids that are not an article of one of the three decisions.
SPECIAL: dict[str, str] = {
    "ND91-2020": "Nghị định 91/2020/NĐ-CP về chống tin nhắn rác, thư điện tử rác",
    "SUITE": "congvu suite default (the regulations are silent)",
}

#: Every id of the digest; citing an id outside this set is a programming error.
KNOWN_IDS: frozenset[str] = frozenset(
    {
        "CT25-2", "CT25-3.1", "CT25-3.2", "CT25-3.3", "CT25-4.1", "CT25-4.2", "CT25-4.3a",
        "CT25-4.3b", "CT25-4.4", "CT25-5.1", "CT25-5.2", "CT25-5.3", "CT25-6.1", "CT25-6.2",
        "CT25-6.3", "CT25-6.4a", "CT25-6.4b", "CT25-6.5", "CT25-6.6", "CT25-7", "CT25-9.2",
        "CT25-9.3", "CT25-9.7", "CT25-11.4",
        "CT15-3.2", "CT15-4.1", "CT15-4.2a", "CT15-4.2b", "CT15-4.2c", "CT15-4.2d", "CT15-4.2đ",
        "CT15-5.4", "CT15-8.1", "CT15-8.2",
        "CT15-8.3", "CT15-10.3", "CT15-11.3", "CT15-11.4", "CT15-15",
        "TH13-3.1", "TH13-3.2", "TH13-3.3", "TH13-4", "TH13-6.1", "TH13-6.2", "TH13-7",
        "TH13-9", "TH13-10.1", "TH13-15.3", "TH13-16.2b", "TH13-17.5",
    }
) | frozenset(SPECIAL)

# Points run a, b, c, d, đ, e… in Vietnamese legal text: CT15-4.2đ (display names) is not 4.2d.
_ID = re.compile(r"^(CT25|CT15|TH13)-(\d+)(?:\.(\d+)([a-zđ])?)?$")


def citation(rule_id: str) -> str:
    """Expand a requirement id into the article citation shown to users.

    >>> citation("CT25-5.1")
    'QĐ 21/2025/QĐ-UBND TP Cần Thơ, Điều 5 khoản 1'
    """
    if rule_id in SPECIAL:
        return SPECIAL[rule_id]
    m = _ID.match(rule_id)
    if m is None or rule_id not in KNOWN_IDS:
        raise ValueError(f"unknown requirement id {rule_id!r}")
    doc, article, clause, point = m.groups()
    text = f"{DOCUMENTS[doc]}, Điều {article}"
    if clause:
        text += f" khoản {clause}"
    if point:
        text += f" điểm {point}"
    return text
