"""Address naming (CT25-4, CT15-4.2, TH13-3): every example of the three regulations, and the edges."""

from __future__ import annotations

import unicodedata

import pytest

from congvu.config import Config, config_from_mapping, load_config
from congvu.rules.names import (
    MAX_LOCAL_PART,
    AddressSuggestion,
    NamingError,
    Request,
    agency_address,
    display_name,
    fold,
    fold_word,
    parse_name,
    rank_of,
    suggest_batch,
    suggest_personal,
    unit_address,
    validate_abbreviation,
    validate_agency_ref,
)
from congvu.rules.requirements import citation

CT25 = load_config(None, profile="cantho-2025")
CT15 = load_config(None, profile="cantho-2015")
TH13 = load_config(None, profile="thanhhoa-2013")
PROFILES = {"ct25": CT25, "ct15": CT15, "th13": TH13}


def _cfg(profile: str, **naming: object) -> Config:
    return config_from_mapping({"naming": naming}, profile=profile)


# --------------------------------------------------------------------------- folding


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("Đặng", "dang"), ("đỗ", "do"), ("Ơn", "on"), ("Ưng", "ung"), ("Ăn", "an"), ("Ân", "an"),
        ("Ê", "e"), ("Ô", "o"), ("Nguyễn", "nguyen"), ("Trịnh", "trinh"), ("Huỳnh", "huynh"),
        ("Phạm Ngọc Thạch", "phamngocthach"), ("Quỳnh Hương", "quynhhuong"), ("TUẤN", "tuan"),
        ("Sở Ngoại vụ", "songoaivu"), ("Ｔｕấｎ", "tuan"), ("Ðặng", "dang"),
    ],
)
def test_fold_follows_th13_3_1(text: str, folded: str) -> None:
    """ă â→a, đ→d, ê→e, ô ơ→o, ư→u, tone marks dropped, any case, NFC or NFD (TH13-3.1)."""
    assert fold(text) == folded
    assert fold(unicodedata.normalize("NFD", text)) == folded


@pytest.mark.parametrize(("word", "folded"), [("H'Hen", "hhen"), ("Niê", "nie"), ("Y-Moan", None),
                                              ("Minh2", None), ("明", None), ("Ø", None)])
def test_fold_word_refuses_what_cannot_be_written(word: str, folded: str | None) -> None:
    """Apostrophes drop out; hyphens, digits and other scripts make the word unwritable."""
    assert fold_word(word) == folded


# --------------------------------------------------------------------------- personal: the regulations' examples


@pytest.mark.parametrize(
    ("scheme", "name", "agency", "taken", "local", "rule"),
    [
        # CT25-4.3a / 4.3b examples
        ("ct25", "Nguyễn Văn Minh", "sonv", [], "nvminh", "CT25-4.3a"),
        ("ct25", "Nguyễn Võ Minh", "sonv", ["nvminh"], "nvminh1", "CT25-4.3b"),
        ("ct25", "Nguyễn Văn Minh", "sonv", ["nvminh"], "nvminh1", "CT25-4.3b"),
        ("ct25", "Nguyễn Văn Minh", "sonv", ["nvminh", "nvminh1"], "nvminh2", "CT25-4.3b"),
        ("ct25", "Nguyễn Văn Minh", "sonv", ["nvminh", "nvminh1", "nvminh2"], "nvminh3", "CT25-4.3b"),
        ("ct25", "Nguyễn Văn Minh", "sonv", ["nvminh", "nvminh2"], "nvminh1", "CT25-4.3b"),
        ("ct25", "Trần Thị Thu Hà", "sonv", [], "tttha", "CT25-4.3a"),
        ("ct25", "Lê Minh", "sonv", [], "lminh", "CT25-4.3a"),
        # CT15-4.2c / 4.2d examples
        ("ct15", "Nguyễn Văn Minh", None, [], "nvminh", "CT15-4.2c"),
        ("ct15", "Nguyễn Văn Minh", None, ["nvminh"], "nvanminh", "CT15-4.2d"),
        ("ct15", "Nguyễn Văn Minh", None, ["nvminh", "nvanminh"], "nguyenvanminh", "CT15-4.2d"),
        ("ct15", "Nguyễn Võ Minh", None, ["nvminh"], "nvominh", "CT15-4.2d"),
        ("ct15", "Trần Thị Thu Hà", None, ["tttha"], "tthithuha", "CT15-4.2d"),
        ("ct15", "Lê Minh", None, ["lminh"], "leminh", "CT15-4.2d"),
        # TH13-3.3 example
        ("th13", "Nguyễn Anh Tuấn", "sttt", [], "tuanna.sttt", "TH13-3.3"),
        ("th13", "Lê Thị Thu Hương", "pvhtt.yendinh", [], "huongltt.pvhtt.yendinh", "TH13-3.3"),
        ("th13", "Lê Hương", "sttt", [], "huongl.sttt", "TH13-3.3"),
    ],
)
def test_personal_addresses(scheme: str, name: str, agency: str | None, taken: list[str], local: str,
                            rule: str) -> None:
    """Each profile builds its own form and settles clashes by its own article."""
    cfg = PROFILES[scheme]
    s = suggest_personal(name, cfg, agency=agency, taken=taken)
    assert (s.local_part, s.address, s.rule, s.manual) == (local, f"{local}@{cfg.domain}", rule, False)
    assert s.reason_vi and s.reason_en


@pytest.mark.parametrize(
    ("scheme", "taken", "rule"),
    [
        ("ct25", ["nvminh", "nvminh1", "nvminh2", "nvminh3"], "CT25-4.3b"),
        ("ct15", ["nvminh", "nvanminh", "nguyenvanminh"], "CT15-4.2d"),
        ("th13", ["minhnv.sonv"], "TH13-3.3"),
    ],
)
def test_clash_chain_ends_with_the_administrator(scheme: str, taken: list[str], rule: str) -> None:
    """Past the forms the regulation gives, the result is manual with a reason, never a guess."""
    s = suggest_personal("Nguyễn Văn Minh", PROFILES[scheme], agency="sonv", taken=taken)
    assert s.manual and s.local_part is None and s.address is None
    assert s.rule == rule
    assert "quản" in s.reason_vi or "Văn phòng" in s.reason_vi
    assert "administrator" in s.reason_en or "office" in s.reason_en


def test_ct25_whole_clash_chain() -> None:
    """Registering the same name five times: plain, 1, 2, 3, then manual (CT25-4.3b)."""
    taken: list[str] = []
    got = []
    for _ in range(5):
        s = suggest_personal("Nguyễn Văn Minh", CT25, agency="sonv", taken=taken)
        got.append(s.local_part)
        if s.local_part:
            taken.append(s.local_part)
    assert got == ["nvminh", "nvminh1", "nvminh2", "nvminh3", None]


def test_ct15_whole_clash_chain() -> None:
    """Four people named Nguyễn Văn Minh: nvminh, nvanminh, nguyenvanminh, then by hand (CT15-4.2d)."""
    got = suggest_batch([Request("Nguyễn Văn Minh")] * 4, CT15)
    assert [s.local_part for s in got] == ["nvminh", "nvanminh", "nguyenvanminh", None]
    assert got[3].manual and got[3].rule == "CT15-4.2d"


def test_ct15_short_chain_without_middle_name() -> None:
    """No middle name: the 'full middle name' form equals the first, so the 3rd person is manual."""
    got = suggest_batch([Request("Lê Minh")] * 3, CT15)
    assert [s.local_part for s in got] == ["lminh", "leminh", None]


@pytest.mark.parametrize(("max_clash", "expected"), [(0, [None]), (2, ["nvminh1", "nvminh2", None])])
def test_ct25_max_clash_is_configurable(max_clash: int, expected: list[str | None]) -> None:
    """naming.max_clash sets how many later registrants get a number before the operator steps in."""
    cfg = _cfg("cantho-2025", max_clash=max_clash)
    got = suggest_batch([Request("Nguyễn Văn Minh")] * len(expected), cfg, taken=["nvminh"])
    assert [s.local_part for s in got] == expected


def test_ct15_max_clash_caps_its_forms() -> None:
    """max_clash = 1 under CT15 keeps nvanminh and sends the 3rd person to the operator."""
    got = suggest_batch([Request("Nguyễn Văn Minh")] * 3, _cfg("cantho-2015", max_clash=1))
    assert [s.local_part for s in got] == ["nvminh", "nvanminh", None]


def test_th13_ignores_max_clash() -> None:
    """TH13-3.3b settles every clash by hand, whatever max_clash says."""
    s = suggest_personal("Nguyễn Anh Tuấn", _cfg("thanhhoa-2013", max_clash=5), agency="sttt",
                         taken=["tuanna.sttt"])
    assert s.manual and s.rule == "TH13-3.3"


def test_taken_is_case_insensitive_and_accepts_addresses() -> None:
    """A taken 'NVMinh@cantho.gov.vn' blocks nvminh."""
    s = suggest_personal("Nguyễn Văn Minh", CT25, taken=[" NVMinh@cantho.gov.vn "])
    assert s.local_part == "nvminh1"


def test_urgent_case_is_manual_under_ct25_only() -> None:
    """CT25-4.3b hands urgent cases to the administrator; CT15 has no such clause."""
    s = suggest_personal("Nguyễn Văn Minh", CT25, urgent=True)
    assert s.manual and s.rule == "CT25-4.3b" and "khẩn cấp" in s.reason_vi
    assert suggest_personal("Nguyễn Văn Minh", CT15, urgent=True).local_part == "nvminh"


# --------------------------------------------------------------------------- input shapes


@pytest.mark.parametrize(
    "name",
    ["Nguyễn Văn Minh", "NGUYỄN VĂN MINH", "nguyễn văn minh", "  Nguyễn \t Văn\u00a0  Minh  ",
     unicodedata.normalize("NFD", "Nguyễn Văn Minh"), unicodedata.normalize("NFD", "NGUYỄN VĂN MINH")],
)
def test_case_spacing_and_normal_form_do_not_matter(name: str) -> None:
    """Upper case, NFD and stray whitespace all give nvminh."""
    assert suggest_personal(name, CT25).local_part == "nvminh"


@pytest.mark.parametrize("scheme", ["ct25", "ct15", "th13"])
def test_single_word_name_is_manual(scheme: str) -> None:
    """'Minh' alone has no family name: the administrator decides."""
    s = suggest_personal("Minh", PROFILES[scheme], agency="sonv")
    assert s.manual and s.rule in {"CT25-4.3a", "CT15-4.2c", "TH13-3.3"}
    assert "Minh" in s.reason_vi


def test_unwritable_name_is_manual() -> None:
    """A word with a hyphen or another script cannot be folded, so it is not silently cut."""
    s = suggest_personal("Nguyễn Y-Moan", CT25)
    assert s.manual and "Y-Moan" in s.reason_en
    assert suggest_personal("Lê 明", TH13, agency="sttt").rule == "TH13-3.1"


def test_apostrophe_name() -> None:
    """The apostrophe of an Ê Đê name drops out; the first word still counts as the family name."""
    assert suggest_personal("H'Hen Niê", CT25).local_part == "hnie"
    assert suggest_personal("Niê H'Hen", CT25).local_part == "nhhen"


def test_too_long_local_part_is_manual() -> None:
    """A form over 64 characters (RFC 5321) goes to the administrator."""
    long_given = "a" * MAX_LOCAL_PART
    s = suggest_personal(f"Lê {long_given}", CT25)
    assert s.manual and "64" in s.reason_en


@pytest.mark.parametrize(
    ("name", "family_words", "expected"),
    [
        ("Tôn Nữ Thị Hà", 1, ("tntha", "tnuthiha", "tonnuthiha")),
        ("Tôn Nữ Thị Hà", 2, ("tntha", "tnthiha", "tonnuthiha")),
        ("Tôn Nữ | Thị Hà", 1, ("tntha", "tnthiha", "tonnuthiha")),
        ("Âu Dương Phong", 2, ("adphong", "adphong", "auduongphong")),
    ],
)
def test_compound_family_names(name: str, family_words: int, expected: tuple[str, str, str]) -> None:
    """The split only changes CT15's 2nd form; CT25 takes an initial from every family word."""
    assert suggest_personal(name, CT25, family_words=family_words).local_part == expected[0]
    got = suggest_batch([Request(name, family_words=family_words)] * 3, CT15)
    forms = list(dict.fromkeys(expected))
    assert [s.local_part for s in got][: len(forms)] == forms


def test_compound_family_name_under_th13() -> None:
    """TH13: given name, then the initial of each family word and middle word."""
    s = suggest_personal("Tôn Nữ | Thị Hà", TH13, agency="sttt")
    assert s.local_part == "hatnt.sttt"


@pytest.mark.parametrize(("text", "family_words"), [("", 1), ("   ", 1), ("A | B | C", 1), ("| Minh", 1),
                                                   ("Tôn | Nữ Hà", 2), ("Nguyễn Minh", 2), ("Lê Minh", 0)])
def test_malformed_names_raise(text: str, family_words: int) -> None:
    """Empty names and contradictory splits are the caller's error, not a manual case."""
    with pytest.raises(NamingError):
        parse_name(text, family_words)


def test_parse_name_keeps_diacritics() -> None:
    """The parsed words are NFC as written, for display names."""
    p = parse_name(unicodedata.normalize("NFD", "Nguyễn  Thị Thu   Hà"))
    assert (p.family, p.middle, p.given) == (("Nguyễn",), ("Thị", "Thu"), "Hà")
    assert p.full == "Nguyễn Thị Thu Hà"


def test_th13_needs_an_agency() -> None:
    """TH13-3.3 puts the agency in the address, so it must be given."""
    with pytest.raises(NamingError):
        suggest_personal("Nguyễn Anh Tuấn", TH13)


@pytest.mark.parametrize("agency", ["", "Sở NV", "so_nv", "1so", "so..nv", ".sonv"])
def test_bad_agency_reference(agency: str) -> None:
    """An agency reference must be an abbreviation already on the system."""
    with pytest.raises(NamingError):
        validate_agency_ref(agency, CT25)


# --------------------------------------------------------------------------- same day, ranks


@pytest.mark.parametrize(
    ("title", "rank"),
    [("Chủ tịch UBND", 100), ("Phó Chủ tịch", 90), ("Giám đốc Sở Nội vụ", 80), ("GIÁM ĐỐC", 80),
     ("Phó Giám đốc", 70), ("Trưởng phòng Quản lý CNTT", 60), ("Phó Trưởng phòng", 50),
     ("Chuyên viên chính", 30), ("Chuyên viên", 20), ("Nhân viên", 10), ("75", 75), (" 0 ", 0)],
)
def test_rank_of_titles(title: str, rank: int) -> None:
    """Titles map to the documented scale; numbers pass through."""
    assert rank_of(title) == rank


def test_rank_order_is_senior_first() -> None:
    """Giám đốc > Phó Giám đốc > Trưởng phòng > Phó Trưởng phòng > Chuyên viên."""
    titles = ["Giám đốc", "Phó Giám đốc", "Trưởng phòng", "Phó Trưởng phòng", "Chuyên viên"]
    ranks = [rank_of(t) for t in titles]
    assert ranks == sorted(ranks, reverse=True) and len(set(ranks)) == len(ranks)


def test_unknown_title_raises() -> None:
    """A title outside the table must be given as a number."""
    with pytest.raises(NamingError):
        rank_of("Thủ quỹ")


def test_same_day_higher_rank_keeps_plain_form() -> None:
    """CT25-4.3b: the Giám đốc asking the same day keeps nvminh whatever the order of requests."""
    reqs = [Request("Nguyễn Văn Minh", rank_of("Chuyên viên")), Request("Nguyễn Võ Minh", rank_of("Trưởng phòng")),
            Request("Nguyễn Văn Minh", rank_of("Giám đốc"))]
    got = suggest_batch(reqs, CT25)
    assert [s.local_part for s in got] == ["nvminh2", "nvminh1", "nvminh"]
    assert all(s.rule == "CT25-4.3b" for s in got)
    assert "cấp bậc" in got[2].reason_vi and "higher-ranked" in got[0].reason_en


def test_same_day_api_on_suggest_personal() -> None:
    """suggest_personal's same_day list lets a senior competitor take the plain form."""
    s = suggest_personal("Nguyễn Văn Minh", CT25, rank=20, same_day=[Request("Nguyễn Văn Minh", 80)])
    assert s.local_part == "nvminh1"
    s = suggest_personal("Nguyễn Văn Minh", CT25, rank=80, same_day=[Request("Nguyễn Văn Minh", 20)])
    assert s.local_part == "nvminh"


def test_same_day_equal_top_ranks_are_manual() -> None:
    """Two equal top ranks for a free plain form: the regulation is silent, so the operator decides."""
    got = suggest_batch([Request("Nguyễn Văn Minh", 60), Request("Nguyễn Văn Minh", 60),
                         Request("Nguyễn Văn Minh", 20)], CT25)
    assert [s.manual for s in got] == [True, True, False]
    assert got[2].local_part == "nvminh2"  # nvminh and nvminh1 are held for the tied pair


def test_same_day_equal_ranks_when_plain_form_is_taken() -> None:
    """When nvminh is already given out, equal ranks just take numbers in request order."""
    got = suggest_batch([Request("Nguyễn Văn Minh", 60), Request("Nguyễn Văn Minh", 60)], CT25, taken=["nvminh"])
    assert [s.local_part for s in got] == ["nvminh1", "nvminh2"]


def test_same_day_overflow_goes_manual() -> None:
    """Five same-day requests: plain, 1, 2, 3 by rank; the lowest rank is the 4th clash → manual."""
    got = suggest_batch([Request("Nguyễn Văn Minh", r) for r in (10, 50, 40, 30, 20)], CT25)
    assert [s.local_part for s in got] == [None, "nvminh", "nvminh1", "nvminh2", "nvminh3"]


def test_earlier_day_wins_over_rank() -> None:
    """Requests on different days are first come, first served; rank only breaks same-day ties."""
    from datetime import date

    got = suggest_batch([Request("Nguyễn Văn Minh", 100, date(2026, 1, 2)),
                         Request("Nguyễn Văn Minh", 10, date(2026, 1, 1))], CT25)
    assert [s.local_part for s in got] == ["nvminh1", "nvminh"]


def test_ct15_ignores_rank() -> None:
    """CT15-4.2d orders by registration time only."""
    got = suggest_batch([Request("Nguyễn Văn Minh", 10), Request("Nguyễn Văn Minh", 100)], CT15)
    assert [s.local_part for s in got] == ["nvminh", "nvanminh"]


def test_th13_same_day_clash_is_manual_for_all() -> None:
    """TH13-3.3b: two requests wanting tuanna.sttt both go to the provincial office."""
    got = suggest_batch([Request("Nguyễn Anh Tuấn", 80), Request("Ngô An Tuấn", 10),
                         Request("Lê Văn Hải")], TH13, agency="sttt")
    assert [s.manual for s in got] == [True, True, False]
    assert got[2].local_part == "hailv.sttt"


def test_batch_reports_unnamable_requests_in_place() -> None:
    """Manual results keep their position among the others."""
    got = suggest_batch([Request("Minh"), Request("Nguyễn Văn Minh")], CT25)
    assert got[0].manual and got[1].local_part == "nvminh"


# --------------------------------------------------------------------------- agencies and units


@pytest.mark.parametrize(
    ("scheme", "abbr", "taken", "local", "manual"),
    [
        ("ct25", "sonv", [], "sonv", False),
        ("ct25", "sonv", ["sonv"], None, True),
        ("ct25", "songoaivu", ["sonv"], "songoaivu", False),
        ("ct15", "sonv", [], "sonv", False),
        ("ct15", "songoaivu", ["sonv"], "songoaivu", False),
        ("ct15", "vpubndninhkieu", [], "vpubndninhkieu", False),
        ("th13", "sttt", [], "sttt", False),
        ("th13", "yendinh", [], "yendinh", False),
        ("th13", "SonV", [], "sonv", False),
    ],
)
def test_agency_addresses(scheme: str, abbr: str, taken: list[str], local: str | None, manual: bool) -> None:
    """[abbr]@domain; a clashing abbreviation is sent back for a longer one (CT25-4.1, TH13-3.2a)."""
    cfg = PROFILES[scheme]
    s = agency_address(abbr, cfg, taken)
    assert (s.local_part, s.manual) == (local, manual)
    assert s.rule == {"ct25": "CT25-4.1", "ct15": "CT15-4.2a", "th13": "TH13-3.2"}[scheme]
    if manual:
        assert "songoaivu" in s.reason_en


@pytest.mark.parametrize(
    ("scheme", "unit", "agency", "local", "rule"),
    [("ct25", "vanphong", "sonv", "vanphong.sonv", "CT25-4.2"),
     ("ct15", "vanphong", "sokhdt", "vanphong.sokhdt", "CT15-4.2b"),
     ("th13", "pvhtt", "yendinh", "pvhtt.yendinh", "TH13-3.2")],
)
def test_unit_addresses(scheme: str, unit: str, agency: str, local: str, rule: str) -> None:
    """[unit].[agency]@domain (CT25-4.2, CT15-4.2b, TH13-3.2b)."""
    cfg = PROFILES[scheme]
    s = unit_address(unit, agency, cfg)
    assert (s.local_part, s.address) == (local, f"{local}@{cfg.domain}")
    assert s.rule == rule
    assert unit_address(unit, agency, cfg, taken=[local]).manual


@pytest.mark.parametrize("abbr", ["", "Sở NV", "so-nv", "so_nv", "1sonv", "sở", "so nv", "a" * 65])
def test_invalid_abbreviations(abbr: str) -> None:
    """Abbreviations are ASCII letters and digits starting with a letter."""
    with pytest.raises(NamingError):
        validate_abbreviation(abbr, CT25)


def test_abbreviation_with_diacritics_gets_a_hint() -> None:
    """The refusal shows the folded spelling for the operator to confirm."""
    with pytest.raises(NamingError) as e:
        validate_abbreviation("sởnv", CT25)
    assert "sonv" in e.value.reason_en and e.value.rule_id == "CT25-4.1"


def test_dots_in_abbreviation_follow_the_profile() -> None:
    """Dots need naming.allow_dots_in_abbreviation, and never at the ends or doubled."""
    with pytest.raises(NamingError):
        validate_abbreviation("so.nv", CT25)
    dotted = _cfg("cantho-2025", allow_dots_in_abbreviation=True)
    assert validate_abbreviation("so.nv", dotted) == "so.nv"
    for bad in ("so..nv", ".sonv", "sonv."):
        with pytest.raises(NamingError):
            validate_abbreviation(bad, dotted)


# --------------------------------------------------------------------------- display names, values


@pytest.mark.parametrize(("scheme", "rule"), [("ct25", "CT25-4.4"), ("ct15", "CT15-4.2đ"), ("th13", "SUITE")])
def test_display_name(scheme: str, rule: str) -> None:
    """Full name with diacritics, a dash, the agency's name (CT25-4.4; CT15-4.2 point đ, after d)."""
    d = display_name(unicodedata.normalize("NFD", " Nguyễn  Văn Minh "), "Sở  Nội vụ", PROFILES[scheme])
    assert (d.text, d.rule) == ("Nguyễn Văn Minh - Sở Nội vụ", rule)
    if scheme == "ct15":
        assert citation(d.rule) == "QĐ 33/2015/QĐ-UBND TP Cần Thơ, Điều 4 khoản 2 điểm đ"
    assert display_name("Tôn Nữ | Thị Hà", "", CT25).text == "Tôn Nữ Thị Hà"


def test_suggestion_invariants() -> None:
    """A manual suggestion has no address, a chosen one has a clean local part, ids are known."""
    with pytest.raises(ValueError):
        AddressSuggestion("nvminh", None, "CT25-4.3a", False, "", "")
    with pytest.raises(ValueError):
        AddressSuggestion("nvminh", "nvminh@x.vn", "CT25-4.3a", True, "", "")
    with pytest.raises(ValueError):
        AddressSuggestion("NVminh", "NVminh@x.vn", "CT25-4.3a", False, "", "")
    with pytest.raises(ValueError):
        AddressSuggestion(None, None, "CT99-1", True, "", "")
    s = suggest_personal("Nguyễn Văn Minh", CT25)
    with pytest.raises(AttributeError):
        s.local_part = "x"  # type: ignore[misc]
    assert s.citation == "QĐ 21/2025/QĐ-UBND TP Cần Thơ, Điều 4 khoản 3 điểm a"
    assert s.reason("vi") == s.reason_vi and s.reason("en") == s.reason_en
    assert s.reason("both") == f"{s.reason_vi} / {s.reason_en}"

