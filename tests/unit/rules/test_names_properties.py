"""Properties of address naming: any input folds to [a-z0-9] or ends as a manual result, never a crash."""

from __future__ import annotations

import re
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from congvu.config import Config, load_config
from congvu.rules.names import NamingError, Request, fold, suggest_batch, suggest_personal

CONFIGS = [load_config(None, profile=p) for p in ("cantho-2025", "cantho-2015", "thanhhoa-2013")]

# An oracle written out by hand, independent of Unicode decomposition: every Vietnamese
# letter with its base letter (TH13-3.1).
_VI = {
    "a": "aàáảãạăằắẳẵặâầấẩẫậ", "e": "eèéẻẽẹêềếểễệ", "i": "iìíỉĩị", "o": "oòóỏõọôồốổỗộơờớởỡợ",
    "u": "uùúủũụưừứửữự", "y": "yỳýỷỹỵ", "d": "dđ",
}
_BASE = {c: b for b, cs in _VI.items() for c in cs} | {c: c for c in "bcghklmnpqrstvx"}
_LETTERS = "".join(_BASE)

vi_word = st.text(alphabet=_LETTERS, min_size=1, max_size=7)


@st.composite
def vi_names(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A Vietnamese-looking name in random case, NFC or NFD, with its words folded by the oracle."""
    words = draw(st.lists(vi_word, min_size=2, max_size=5))
    folded = ["".join(_BASE[c] for c in w) for w in words]
    text = " ".join(w.upper() if draw(st.booleans()) else w for w in words)
    nfd = draw(st.booleans())
    return unicodedata.normalize("NFD" if nfd else "NFC", text), folded


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_fold_never_crashes_and_is_ascii(text: str) -> None:
    """fold gives only [a-z0-9], whatever the input."""
    assert re.fullmatch(r"[a-z0-9]*", fold(text))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.sampled_from(CONFIGS), st.lists(st.text(max_size=12), max_size=4))
def test_any_name_gives_clean_local_part_or_manual(text: str, cfg: Config, taken: list[str]) -> None:
    """A suggestion is manual, or its local part matches [a-z0-9.]+; only an empty name raises."""
    try:
        s = suggest_personal(text, cfg, agency="sonv", taken=taken)
    except NamingError:
        assert "|" in text or not text.split()
        return
    if s.manual:
        assert s.local_part is None and s.address is None and s.reason_vi and s.reason_en
    else:
        assert s.local_part is not None and re.fullmatch(r"[a-z0-9.]+", s.local_part)
        assert s.address == f"{s.local_part}@{cfg.domain}"
        assert s.local_part not in {t.strip().lower().partition("@")[0] for t in taken}


@settings(max_examples=300, deadline=None)
@given(vi_names())
def test_vietnamese_names_follow_the_forms(name: tuple[str, list[str]]) -> None:
    """For any Vietnamese name, each scheme's first form matches the hand-written oracle."""
    text, words = name
    ct25, ct15, th13 = CONFIGS
    initials = "".join(w[0] for w in words[:-1])
    assert suggest_personal(text, ct25).local_part == initials + words[-1]
    assert suggest_personal(text, ct15).local_part == initials + words[-1]
    assert suggest_personal(text, th13, agency="sttt").local_part == f"{words[-1]}{initials}.sttt"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["Nguyễn Văn Minh", "Nguyễn Võ Minh", "Lê Minh", "Lê Văn Minh"]),
                          st.integers(0, 3)), min_size=1, max_size=8),
       st.sampled_from(CONFIGS))
def test_batch_never_hands_out_one_address_twice(reqs: list[tuple[str, int]], cfg: Config) -> None:
    """Within a batch no two requests get the same address."""
    got = suggest_batch([Request(n, r) for n, r in reqs], cfg, agency="sonv")
    chosen = [s.local_part for s in got if not s.manual]
    assert len(chosen) == len(set(chosen))
    assert len(got) == len(reqs)
