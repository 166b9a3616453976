"""Password policy: composition, strength, names, published example, expiry (CT25-5.2/5.3, CT15-10.3/11.4)."""

from __future__ import annotations

import time
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import zxcvbn
from hypothesis import example, given, settings
from hypothesis import strategies as st

from congvu.config import Config, config_from_mapping
from congvu.rules.decision import Verdict
from congvu.rules.names import strip_marks
from congvu.rules.passwords import (
    PUBLISHED_EXAMPLES,
    ZXCVBN_MAX_CHARS,
    ExpiryState,
    PasswordCheck,
    PasswordPolicy,
    check_password,
    common_words,
    normalize_password,
    password_state,
    password_state_for,
    personal_words,
)

MINH = {"local_part": "nvminh", "full_name": "Nguyễn Văn Minh", "agency": "sonv"}
STRONG = "Qu@nLyThu3!"


@pytest.fixture(scope="module")
def cfg() -> Config:
    return config_from_mapping({}, profile="cantho-2025")


@pytest.fixture(scope="module")
def policy(cfg: Config) -> PasswordPolicy:
    return PasswordPolicy.from_config(cfg)


def check(policy: PasswordPolicy, pw: str, **account: str) -> PasswordCheck:
    return policy.check(pw, **(account or MINH))


# --------------------------------------------------------------------------- composition


@pytest.mark.parametrize(("password", "code"), [
    ("qu@nlythu3!", "missing_upper"),
    ("QU@NLYTHU3!", "missing_lower"),
    ("Qu@nLyThuBa!", "missing_digit"),
    ("QuanLyThu3x", "missing_special"),
    ("Qu@n3!x", "too_short"),
])
def test_each_missing_class_is_refused_with_ct25_5_3(policy: PasswordPolicy, password: str, code: str) -> None:
    """Every class of CT25-5.3 and the 8-character minimum is checked on its own and cited."""
    r = check(policy, password)
    assert not r.accepted
    assert code in r.codes
    d = r.reasons[r.codes.index(code)]
    assert d.verdict is Verdict.REJECT and d.rule_id == "CT25-5.3"
    assert d.text_vi and d.text_en and "Điều 5 khoản 3" in d.citation


def test_all_failures_are_reported_at_once(policy: PasswordPolicy) -> None:
    """A user fixes everything in one go: every failed class is listed, not just the first."""
    r = check(policy, "abc")
    assert {"too_short", "missing_upper", "missing_digit", "missing_special"} <= set(r.codes)
    assert len(r.codes) == len(r.reasons)


def test_a_strong_password_is_accepted(policy: PasswordPolicy) -> None:
    """A password meeting every class with a high zxcvbn score is accepted with no reasons."""
    for pw in (STRONG, "Sóng Gió 2024 Tím!", "Tr4ng-Vo1-Bien!", "Gấu-Trúc 9 Lá"):
        r = check(policy, pw)
        assert r.accepted, (pw, r.codes)
        assert r.reasons == () and r.score >= 3


@pytest.mark.parametrize("password", ["Đường#biên7x", "Ăn-cơm#chưa9", "Ơi!ời ơi 42z"])
def test_vietnamese_capitals_count_as_upper_case(policy: PasswordPolicy, password: str) -> None:
    """Đ, Ă, Ơ are upper-case letters (str.isupper per character), so no ASCII capital is needed."""
    assert not any("A" <= c <= "Z" for c in password)
    r = check(policy, password)
    assert "missing_upper" not in r.codes
    assert "missing_upper" in check(policy, password.lower()).codes


def test_vietnamese_lower_case_counts_as_lower(policy: PasswordPolicy) -> None:
    """ư, ờ, ê are lower-case letters too."""
    assert "missing_lower" not in check(policy, "ĐƯỜNG#BIÊN7ư").codes


def test_a_space_counts_as_special(policy: PasswordPolicy) -> None:
    """Anything that is neither letter nor digit is special, a space included (CT25-5.3)."""
    assert "missing_special" not in check(policy, "Gau Truc9xyzK").codes
    assert "missing_special" in check(policy, "GauTruc9xyzK").codes


# --------------------------------------------------------------------------- length and NFC


def test_nfd_and_nfc_are_the_same_password(policy: PasswordPolicy) -> None:
    """"Đường" typed decomposed or composed gets the same verdict and normalises the same."""
    nfc = "Đường#biên7x"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc
    assert normalize_password(nfd) == nfc
    assert check(policy, nfd) == check(policy, nfc)


def test_length_is_counted_after_nfc(policy: PasswordPolicy) -> None:
    """Seven composed letters are seven characters even when typed as fourteen code points."""
    short = "Ế7#ữỜấb"
    nfd = unicodedata.normalize("NFD", short)
    assert len(short) == 7 and len(nfd) > 8
    assert "too_short" in check(policy, nfd).codes


def test_ten_thousand_characters_are_refused_cheaply(policy: PasswordPolicy, monkeypatch: Any) -> None:
    """Over max_length: refused as too long, before zxcvbn or any other expensive work."""
    def boom(*a: Any, **k: Any) -> dict[str, Any]:
        raise AssertionError("zxcvbn must not run on over-long input")
    monkeypatch.setattr(zxcvbn, "zxcvbn", boom)
    for pw in ("Aa1!" * 2500, "Ă" * 10_000, unicodedata.normalize("NFD", "Ế") * 10_000):
        t0 = time.perf_counter()
        r = check(policy, pw)
        assert time.perf_counter() - t0 < 0.5  # generous: 8 developers share 2 cores
        assert r.codes == ("too_long",) and r.score == 0
        assert r.reasons[0].rule_id == "SUITE"


def test_max_length_boundary(policy: PasswordPolicy) -> None:
    """128 characters (the default max_length) pass the length rule; 129 do not."""
    base = "Tr4ng-Vo1-Bien!"
    at = (base * 10)[:128]
    assert "too_long" not in check(policy, at).codes
    assert check(policy, at + "x").codes == ("too_long",)


def test_zxcvbn_sees_at_most_100_characters(policy: PasswordPolicy, monkeypatch: Any) -> None:
    """zxcvbn's cost grows faster than the length, so only the first 100 characters are scored."""
    seen: list[int] = []
    real = zxcvbn.zxcvbn

    def spy(pw: str, **kw: Any) -> Any:
        seen.append(len(pw))
        return real(pw, **kw)
    monkeypatch.setattr(zxcvbn, "zxcvbn", spy)
    check(policy, ("Tr4ng-Vo1-Bien!" * 9)[:120])
    check(policy, STRONG)
    assert seen == [ZXCVBN_MAX_CHARS, len(STRONG)]


def test_control_characters_and_lone_surrogates_are_refused(policy: PasswordPolicy) -> None:
    """NUL/LF/TAB cannot cross IMAP or Dovecot's auth protocol; a lone surrogate cannot be hashed."""
    for pw in ("Qu@nLy\x00Thu3!", "Qu@nLy\tThu3!", "Qu@nLy\ud800Thu3!"):
        assert "invalid_char" in check(policy, pw).codes


# --------------------------------------------------------------------------- words


@pytest.mark.parametrize(("password", "account"), [
    ("Minh@2025Abc", MINH),                                        # given name; zxcvbn alone scores 4
    ("MÍNH#Kx72pq", MINH),                                         # case and diacritics do not hide it
    ("Mính!Kx72pq", MINH),
    ("Nguyen#Tr4ng!x", MINH),                                      # family name
    ("Nvminh!Tx92kq", MINH),                                       # local part
    ("SONV@Tx92!kq", MINH),                                        # agency abbreviation
    ("Tuanna.2025!Kq", {"local_part": "tuanna.sttt", "full_name": "Nguyễn Anh Tuấn", "agency": "sttt"}),
    ("Xq!Tuấn9zKw", {"local_part": "tuanna.sttt", "full_name": "Nguyễn Anh Tuấn", "agency": "sttt"}),
    ("Kp7!nvminh", {"local_part": "nvminh1", "full_name": "Nguyễn Võ Minh", "agency": ""}),
])
def test_names_inside_passwords_are_refused(policy: PasswordPolicy, password: str,
                                            account: dict[str, str]) -> None:
    """Given or family name (≥3 letters), local part and agency abbreviation are refused inside."""
    r = policy.check(password, **account)
    assert "contains_name" in r.codes
    d = r.reasons[r.codes.index("contains_name")]
    assert "tên" in d.text_vi and "name" in d.text_en


def test_short_given_names_are_not_refused(policy: PasswordPolicy) -> None:
    """A two-letter given name ("An") is inside too many words to refuse it."""
    r = policy.check("Anh#Tx92!kqZ", local_part="lvan", full_name="Lê Văn An", agency="sonv")
    assert r.accepted, r.codes


def test_personal_words() -> None:
    """Folded given and family name, local part with and without clash digits, agency parts."""
    words = personal_words(local_part="nvminh1", full_name="Nguyễn Văn Minh", agency="pvhtt.yendinh")
    assert set(words) == {"minh", "nguyen", "nvminh1", "nvminh", "pvhtt.yendinh", "pvhtt", "yendinh"}
    assert strip_marks("Đặng Thị Ánh") == "dang thi anh"


@pytest.mark.parametrize("password", [
    "MatKhaus7894",       # as printed
    "MatKhaus7894!",      # with the special the regulation forgot: passes composition
    "Mat-Khau$-7894",     # $ for s
    "matkhaus7894@A",
    "7894#MatKhaus",      # parts swapped
])
def test_the_published_example_is_refused(policy: PasswordPolicy, password: str) -> None:
    """CT15-10.3 prints MatKhaus7894: it and its obvious variants are refused in every profile."""
    for prof in ("cantho-2025", "cantho-2015", "thanhhoa-2013"):
        pol = PasswordPolicy.from_config(config_from_mapping({}, profile=prof))
        r = pol.check(password, **MINH)
        assert not r.accepted
        d = r.reasons[r.codes.index("published_example")]
        assert d.rule_id == "CT15-10.3" and "Điều 10 khoản 3" in d.citation


def test_the_published_example_passes_composition_once_a_special_is_added(policy: PasswordPolicy) -> None:
    """The refusal is not a side effect of the class rule: with "!" every class is present."""
    assert PUBLISHED_EXAMPLES == ("MatKhaus7894",)
    r = check(policy, "MatKhaus7894!")
    assert not {"too_short", "missing_upper", "missing_lower", "missing_digit", "missing_special"} & set(r.codes)
    assert "published_example" in r.codes


@pytest.mark.parametrize("password", [
    "Anhyeuem@123", "Emyeuanh#2024", "Matkhau@2025", "Vietnam@2025", "Hanoi@2024!",
    "Saigon#1975", "Iloveyou!99", "Yeuemmaimai@1", "Thanhhoa@2013",
])
def test_common_vietnamese_words_are_refused(policy: PasswordPolicy, password: str) -> None:
    """A common Vietnamese password word dressed up with digits and symbols is refused."""
    r = check(policy, password)
    assert not r.accepted
    assert {"common_word", "weak"} & set(r.codes)


def test_the_shipped_word_list() -> None:
    """The list ships with the package, holds a few hundred unmarked words and the ones the brief names."""
    words = common_words()
    assert len(words) >= 300
    assert len(set(words)) == len(words)
    for w in ("matkhau", "anhyeuem", "emyeuanh", "iloveyou", "123456", "vietnam", "hanoi", "saigon",
              "cantho", "thanhhoa"):
        assert w in words
    assert all(w == strip_marks(w) and w.strip() == w for w in words)


def test_the_city_and_site_words_are_refused(cfg: Config) -> None:
    """The site's city (cfg.city) and extra_banned_words are refused as substrings."""
    r = PasswordPolicy.from_config(cfg).check("CanTho@2025!x", **MINH)
    assert "banned_word" in r.codes
    custom = config_from_mapping({"password": {"extra_banned_words": ["Ninh Kiều"]}})
    assert "banned_word" in PasswordPolicy.from_config(custom).check("Zq8#ninhkieu!", **MINH).codes
    assert "banned_word" not in PasswordPolicy.from_config(cfg).check("Zq8#ninhkieu!", **MINH).codes


def test_min_score_is_configurable() -> None:
    """min_score = 0 lets a weak but well-formed password through; the default 3 does not."""
    pw = "Qx7vLrtz!"
    weak_ok = config_from_mapping({"password": {"min_score": 0}})
    strict = config_from_mapping({"password": {"min_score": 4}})
    assert PasswordPolicy.from_config(weak_ok).check(pw, **MINH).accepted
    r = PasswordPolicy.from_config(strict).check(pw, **MINH)
    assert r.codes == ("weak",) and r.score < 4


def test_rule_ids_follow_the_profile() -> None:
    """Under cantho-2015 the class rule cites CT15-10.3; under thanhhoa-2013 (silent) SUITE."""
    for prof, rid in (("cantho-2015", "CT15-10.3"), ("thanhhoa-2013", "SUITE"), ("cantho-2025", "CT25-5.3")):
        r = check_password("QuanLyThu3x", config_from_mapping({}, profile=prof), **MINH)
        assert r.reasons[r.codes.index("missing_special")].rule_id == rid


def test_the_password_never_appears_in_reasons_or_repr(policy: PasswordPolicy) -> None:
    """Refusals explain without echoing the password."""
    for pw in ("Minh@2025Abc", "MatKhaus7894!", "Anhyeuem@123", "zzzzzzzzzzzzzq", "Aa1!" * 40):
        r = check(policy, pw)
        assert not r.accepted
        blob = repr(r) + "".join(d.text("both") for d in r.reasons)
        assert pw not in blob and pw.lower() not in blob.lower()


@settings(max_examples=150, deadline=None)
@given(password=st.text(max_size=150), name=st.text(max_size=40), local=st.text(max_size=20))
@example(password="", name="", local="")  # zxcvbn itself raises IndexError on ""
@example(password="\ud800\x00" * 3, name="Đ\u0301", local=".")
def test_arbitrary_text_never_crashes(password: str, name: str, local: str) -> None:
    """Whatever the user types and whatever the directory holds, the checker answers."""
    pol = PasswordPolicy.from_config(config_from_mapping({}))
    r = pol.check(password, local_part=local, full_name=name, agency=local[:5])
    assert isinstance(r.accepted, bool) and 0 <= r.score <= 4
    assert r.accepted == (r.reasons == ())
    assert all(d.verdict is Verdict.REJECT for d in r.reasons)


# --------------------------------------------------------------------------- expiry

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


def at(days: float) -> datetime:
    return T0 + timedelta(days=days)


@pytest.mark.parametrize(("day", "state"), [
    (0, ExpiryState.OK), (76 - 1e-6, ExpiryState.OK), (76, ExpiryState.WARN), (89, ExpiryState.WARN),
    (90, ExpiryState.EXPIRED), (91, ExpiryState.EXPIRED),
])
def test_personal_timeline_under_cantho_2025(cfg: Config, day: float, state: ExpiryState) -> None:
    """3 months = 90 days: warned from day 76 (14 days before), expired at exactly day 90."""
    s = password_state_for(cfg, "personal", T0, False, at(day))
    assert s.state is state
    assert s.expires_at == at(90)
    if state is ExpiryState.OK:
        assert s.reasons == () and not s.blocks
    else:
        (d,) = s.reasons
        assert d.rule_id == "CT25-6.4b"
        assert d.verdict is (Verdict.WARN if state is ExpiryState.WARN else Verdict.REJECT)
        assert s.blocks == (state is ExpiryState.EXPIRED)
        assert "2026" in d.text_vi and "2026" in d.text_en


def test_the_warning_says_how_many_days_are_left(cfg: Config) -> None:
    """On day 89 the user has one day left."""
    (d,) = password_state_for(cfg, "personal", T0, False, at(89)).reasons
    assert "1 ngày" in d.text_vi and "1 day" in d.text_en


def test_must_change_wins(cfg: Config) -> None:
    """A new or reset password must be changed at first login (CT25-5.2), whatever its age."""
    s = password_state_for(cfg, "personal", T0, True, at(0))
    assert s.state is ExpiryState.MUST_CHANGE and s.blocks
    assert s.reasons[0].rule_id == "CT25-5.2" and s.reasons[0].verdict is Verdict.REJECT


def test_no_recorded_change_means_must_change(cfg: Config) -> None:
    """With no changed_at the user still holds the issued password."""
    s = password_state_for(cfg, "personal", None, False, at(0))
    assert s.state is ExpiryState.MUST_CHANGE and s.expires_at is None


@pytest.mark.parametrize(("kind", "days", "rid"), [
    ("unit", 60, "CT15-11.4"), ("agency", 60, "CT15-11.4"), ("personal", 90, "CT15-10.3"),
])
def test_shared_mailboxes_expire_after_60_days_under_cantho_2015(kind: Any, days: int, rid: str) -> None:
    """CT15-11.4: shared agency and unit mailboxes every 2 months; personal every 3 (CT15-10.3)."""
    cfg15 = config_from_mapping({}, profile="cantho-2015")
    assert password_state_for(cfg15, kind, T0, False, at(days - 1)).state is ExpiryState.WARN
    s = password_state_for(cfg15, kind, T0, False, at(days))
    assert s.state is ExpiryState.EXPIRED and s.expires_at == at(days)
    assert s.reasons[0].rule_id == rid


@pytest.mark.parametrize("kind", ["personal", "unit", "agency"])
def test_thanhhoa_2013_passwords_never_expire(kind: Any) -> None:
    """TH13 sets no lifetime, so the suite default "never" applies."""
    cfg13 = config_from_mapping({}, profile="thanhhoa-2013")
    s = password_state_for(cfg13, kind, T0, False, at(10_000))
    assert s.state is ExpiryState.OK and s.expires_at is None and s.reasons == ()
    assert password_state_for(cfg13, kind, None, False, at(0)).state is ExpiryState.OK


def test_password_state_takes_rule_ids_as_parameters(cfg: Config) -> None:
    """Without a Config the caller names the ids; the defaults are CT25's."""
    s = password_state("unit", T0, False, cfg.password, at(90), expiry_rule_id="CT15-11.4")
    assert s.reasons[0].rule_id == "CT15-11.4"
    assert password_state("unit", T0, False, cfg.password, at(90)).reasons[0].rule_id == "CT25-6.4b"


def test_operator_overrides_lifetime_and_warning() -> None:
    """expiry_personal and warn_before come from the file when set there."""
    c = config_from_mapping({"password": {"expiry_personal": "30d", "warn_before": "3d"}})
    assert password_state_for(c, "personal", T0, False, at(26)).state is ExpiryState.OK
    assert password_state_for(c, "personal", T0, False, at(27)).state is ExpiryState.WARN
    assert password_state_for(c, "personal", T0, False, at(30)).state is ExpiryState.EXPIRED
