"""Decisions carry codes, bilingual text and the article they enforce."""

from __future__ import annotations

import pytest

from congvu.rules.decision import Decision, Verdict
from congvu.rules.requirements import KNOWN_IDS, citation


@pytest.mark.parametrize(("rid", "text"), [
    ("CT25-5.1", "QĐ 21/2025/QĐ-UBND TP Cần Thơ, Điều 5 khoản 1"),
    ("CT25-4.3b", "QĐ 21/2025/QĐ-UBND TP Cần Thơ, Điều 4 khoản 3 điểm b"),
    ("CT15-11.4", "QĐ 33/2015/QĐ-UBND TP Cần Thơ, Điều 11 khoản 4"),
    ("TH13-9", "QĐ 3380/2013/QĐ-UBND tỉnh Thanh Hóa, Điều 9"),
])
def test_citations(rid: str, text: str) -> None:
    """Ids expand to the document, article, clause and point."""
    assert citation(rid) == text


def test_every_known_id_has_a_citation() -> None:
    """No id in the digest table fails to expand."""
    for rid in KNOWN_IDS:
        assert citation(rid)


def test_unknown_id_is_a_programming_error() -> None:
    """Citing an id outside the digest raises at once."""
    with pytest.raises(ValueError):
        citation("CT25-99.9")
    with pytest.raises(ValueError):
        Decision(Verdict.REJECT, "XX-1")


def test_text_by_language() -> None:
    """The configured language picks the text; both joins them; the citation always follows."""
    d = Decision(Verdict.REJECT, "CT25-5.1", "Tệp quá lớn", "Attachment too large", 552, "5.3.4")
    assert d.text("vi").startswith("Tệp quá lớn (CT25-5.1: QĐ 21/2025")
    assert d.text("en").startswith("Attachment too large (CT25-5.1")
    assert d.text("both").startswith("Tệp quá lớn / Attachment too large (CT25-5.1")
    assert d.blocks


def test_codes_must_match_verdict() -> None:
    """A reject with a 4xx code or a defer with a 5xx code is refused."""
    with pytest.raises(ValueError):
        Decision(Verdict.REJECT, "CT25-5.1", smtp_code=451)
    with pytest.raises(ValueError):
        Decision(Verdict.DEFER, "CT25-5.1", smtp_code=552)
