"""Mailbox addresses as the regulations spell them (CT25-4, CT15-4.2, TH13-3).

Everything here is pure: names, ranks and the set of local parts already taken go in,
frozen :class:`AddressSuggestion` values come out.  Where a regulation hands the choice
to the administrator (a 4th clash, an urgent case, any clash under TH13, a name that
cannot be written in ``a-z``) the result is an explicit *manual* suggestion with the
reason in Vietnamese and English; this module never invents a form the text does not give.

Decisions about names that the regulations leave open, made here once:

* A name is ``Họ [Tên đệm…] Tên``: the first word is the family name, the last word the
  given name, the words between are middle names.  Compound family names (Tôn Nữ, Âu
  Dương, Tôn Thất…) cannot be told apart from a middle name by looking, so the caller
  says so: ``family_words=2`` or a ``|`` after the family name (``"Tôn Nữ | Thị Hà"``).
  Abbreviating a compound family name takes the initial of each of its words, as for
  middle names, so the split only changes CT15's second form and nothing else.
* A single word ("Minh") has no family name; every scheme needs one, so it is manual.
* Apostrophes inside a word are dropped (Ê Đê/Jrai names such as ``H'Hen``); any
  character that does not fold to ``a-z`` (digits, hyphens, other scripts) makes the
  result manual rather than silently losing part of the name.
* ``max_clash`` counts the *later* registrants of one name that get an automatic form:
  CT25 appends 1..max_clash (3: ``nvminh1``–``nvminh3``, the 4th clashing person goes to
  the operator); CT15 has exactly two longer forms (``nvanminh``, ``nguyenvanminh``) and
  uses at most ``max_clash`` of them; TH13 settles every clash by hand (TH13-3.3b) and
  never consults it.  A site reading CT25's "người trùng tên theo thứ tự thứ tư" as the
  4th person overall sets ``max_clash = 2``.
* Same-day requests (CT25-4.3b): the higher numeric rank keeps the plain form.  When the
  plain form is free and the highest rank is shared, the regulation does not say who
  keeps it, so those requests are manual and the plain form plus one numbered form per
  extra tied request are held back for the operator to hand out; the others take the
  next numbers by rank, then in the order the requests were given.  Requests on
  different days are first come, first served.  CT15 orders by registration only (CT15-4.2d);
  TH13 sends every request in a clashing group to the operator.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date

from congvu.rules.config import RulesConfig
from congvu.rules.decision import Language
from congvu.rules.errors import InvalidInput
from congvu.rules.requirements import citation

#: RFC 5321 §4.5.3.1.1: the longest local part a server must accept.
MAX_LOCAL_PART = 64

_APOSTROPHES = frozenset("'’ʼ`´‘")
# đ is a letter of its own, not d plus a mark, so NFD leaves it alone; ð/Ð are the
# look-alikes legacy TCVN3/VNI converters produce for it.
_EXTRA_FOLD = {"đ": "d", "ð": "d"}
_ABBR = re.compile(r"[a-z][a-z0-9]*")
_LOCAL_ALLOWED = re.compile(r"[a-z0-9.]+")


#: Rule ids per scheme: base personal form, clash handling, agency, unit, display, folding.
#: CT15-4.2 lists its points a, b, c, d, đ: display names are point đ, not d (the clash rule).
_RULES: dict[str, dict[str, str]] = {
    "ct25": {"base": "CT25-4.3a", "clash": "CT25-4.3b", "agency": "CT25-4.1",
             "unit": "CT25-4.2", "display": "CT25-4.4", "fold": "CT25-4.3a"},
    "ct15": {"base": "CT15-4.2c", "clash": "CT15-4.2d", "agency": "CT15-4.2a",
             "unit": "CT15-4.2b", "display": "CT15-4.2đ", "fold": "CT15-4.2c"},
    "th13": {"base": "TH13-3.3", "clash": "TH13-3.3", "agency": "TH13-3.2",
             "unit": "TH13-3.2", "display": "SUITE", "fold": "TH13-3.1"},
}


def naming_rule(cfg: RulesConfig, what: str) -> str:
    """The id the site's scheme cites for ``what``: base, clash, agency, unit, display or fold."""
    return _RULES[cfg.naming.scheme][what]


def _in_language(vi: str, en: str, language: Language) -> str:
    return vi if language == "vi" else en if language == "en" else f"{vi} / {en}"


class NamingError(InvalidInput):
    """An input the caller must fix (empty name, malformed abbreviation), bilingual."""

    def __init__(self, rule_id: str, reason_vi: str, reason_en: str) -> None:
        super().__init__(f"{reason_en} ({rule_id})")
        self.rule_id, self.reason_vi, self.reason_en = rule_id, reason_vi, reason_en

    def reason(self, language: Language = "both") -> str:
        """The reason in the configured language(s)."""
        return _in_language(self.reason_vi, self.reason_en, language)


# --------------------------------------------------------------------------- folding


def fold(text: str) -> str:
    """Vietnamese text → lowercase ASCII the TH13-3.1 way, dropping what cannot fold.

    ``đ→d``; ``ă â→a``, ``ê→e``, ``ô ơ→o``, ``ư→u`` and the five tone marks go with
    the combining marks of NFD.  NFC or NFD input, any case.  Characters with no ASCII
    letter or digit underneath (spaces, punctuation, other scripts) are dropped, so the
    result matches ``[a-z0-9]*``; use :func:`fold_word` to refuse them instead.
    """
    return "".join(c for c in strip_marks(text) if c.isascii() and c.isalnum())


def strip_marks(text: str) -> str:
    """Lower case without diacritics, everything else kept: ``"Nguyễn Đức"`` → ``"nguyen duc"``.

    NFKD also maps compatibility forms (full-width Ａ, ligatures) to plain letters;
    casefold after decomposition, then decompose again (casefold can compose: İ).
    """
    s = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
    return "".join(_EXTRA_FOLD.get(c, c) for c in s if not unicodedata.combining(c))


def fold_word(word: str) -> str | None:
    """One word of a name folded to ``[a-z]+``, or None when it holds anything else.

    Apostrophes are dropped (``H'Hen`` → ``hhen``); digits, hyphens and letters with
    no ASCII base make it None, so the caller can hand the name to the operator.
    """
    out = []
    for c in strip_marks(word):
        if c in _APOSTROPHES:
            continue
        if not ("a" <= c <= "z"):
            return None
        out.append(c)
    return "".join(out) or None


def clean_text(text: str) -> str:
    """NFC with runs of whitespace collapsed: how names are stored and displayed."""
    return " ".join(unicodedata.normalize("NFC", text).split())


# --------------------------------------------------------------------------- names


@dataclass(frozen=True, slots=True)
class PersonName:
    """A full name split into family, middle and given words (NFC, as written)."""

    family: tuple[str, ...]
    middle: tuple[str, ...]
    given: str

    @property
    def full(self) -> str:
        return " ".join((*self.family, *self.middle, self.given))


def parse_name(text: str, family_words: int = 1) -> PersonName:
    """Split ``Họ [Tên đệm…] Tên``; a ``|`` marks the end of a compound family name.

    Raises :class:`NamingError` for an empty name, a misplaced ``|`` or a
    ``family_words`` that leaves no given name.  A single word is returned with an
    empty family so the caller can answer *manual* (see :func:`suggest_personal`).
    """
    rule = "CT25-4.3a"
    if family_words < 1:
        raise NamingError(rule, "Số từ của họ phải từ 1 trở lên.", "family_words must be at least 1.")
    if "|" in text:
        head, _, tail = text.partition("|")
        if "|" in tail or not head.split() or not tail.split():
            raise NamingError(rule, "Dấu | chỉ dùng một lần, giữa họ và phần còn lại của tên.",
                              "Use one | between the family name and the rest of the name.")
        if family_words != 1:
            raise NamingError(rule, "Chỉ dùng một cách tách họ: dấu | hoặc số từ của họ.",
                              "Split the family name one way only: | or family_words.")
        family, rest = clean_text(head).split(), clean_text(tail).split()
        return PersonName(tuple(family), tuple(rest[:-1]), rest[-1])
    words = clean_text(text).split()
    if not words:
        raise NamingError(rule, "Họ tên trống.", "The name is empty.")
    if len(words) == 1:
        return PersonName((), (), words[0])
    if family_words >= len(words):
        raise NamingError(rule, f"Họ {family_words} từ không để lại tên trong “{' '.join(words)}”.",
                          f"A {family_words}-word family name leaves no given name in {' '.join(words)!r}.")
    return PersonName(tuple(words[:family_words]), tuple(words[family_words:-1]), words[-1])


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class AddressSuggestion:
    """An address to create, or the reason the administrator must name it by hand.

    ``rule`` is the requirement id the result follows; ``local_part``/``address`` are
    None exactly when ``manual`` is true.
    """

    local_part: str | None
    address: str | None
    rule: str
    manual: bool
    reason_vi: str
    reason_en: str

    def __post_init__(self) -> None:
        citation(self.rule)  # an unknown id is a programming error; fail where it is made
        if self.manual != (self.local_part is None) or (self.local_part is None) != (self.address is None):
            raise ValueError("manual suggestions carry no address; others carry one")
        if self.local_part is not None and not _LOCAL_ALLOWED.fullmatch(self.local_part):
            raise ValueError(f"local part {self.local_part!r} is not [a-z0-9.]+")

    @property
    def citation(self) -> str:
        return citation(self.rule)

    def reason(self, language: Language = "both") -> str:
        """The reason in the configured language(s)."""
        return _in_language(self.reason_vi, self.reason_en, language)


def _chosen(local: str, cfg: RulesConfig, rule: str, vi: str, en: str) -> AddressSuggestion:
    if len(local) > MAX_LOCAL_PART:
        return _manual(rule, f"“{local}” dài hơn {MAX_LOCAL_PART} ký tự; cán bộ quản trị đặt tên ngắn hơn.",
                       f"{local!r} is longer than {MAX_LOCAL_PART} characters; the administrator picks a shorter one.")
    return AddressSuggestion(local, f"{local}@{cfg.domain}", rule, False, vi, en)


def _manual(rule: str, vi: str, en: str) -> AddressSuggestion:
    return AddressSuggestion(None, None, rule, True, vi, en)


def _norm_taken(taken: Iterable[str]) -> set[str]:
    """Local parts compared case-insensitively; a full address counts by its local part."""
    return {t.strip().lower().partition("@")[0] for t in taken if t.strip()}


# --------------------------------------------------------------------------- abbreviations


def validate_abbreviation(text: str, cfg: RulesConfig, *, what: str = "agency") -> str:
    """An operator-chosen abbreviation (CT25-4.1/4.2, TH13-3.2), lower-cased, or NamingError.

    ASCII letters and digits, starting with a letter; dots between such parts only when
    ``naming.allow_dots_in_abbreviation`` is set.  Diacritics are refused with the
    folded spelling as a hint: the operator chooses, the suite does not respell.
    """
    rule = _RULES[cfg.naming.scheme]["agency" if what == "agency" else "unit"]
    s = text.strip().lower()
    parts = s.split(".")
    if s and all(_ABBR.fullmatch(p) for p in parts):
        if len(parts) > 1 and not cfg.naming.allow_dots_in_abbreviation:
            raise NamingError(rule, f"Tên viết tắt “{text}” không được chứa dấu chấm "
                              "(naming.allow_dots_in_abbreviation = false).",
                              f"The abbreviation {text!r} may not contain dots "
                              "(naming.allow_dots_in_abbreviation = false).")
        if len(s) > MAX_LOCAL_PART:
            raise NamingError(rule, f"Tên viết tắt dài hơn {MAX_LOCAL_PART} ký tự.",
                              f"The abbreviation is longer than {MAX_LOCAL_PART} characters.")
        return s
    hint = fold(text)
    vi_hint = f" (ví dụ “{hint}”)" if hint and _ABBR.fullmatch(hint) else ""
    en_hint = f" (for example {hint!r})" if vi_hint else ""
    raise NamingError(rule, f"Tên viết tắt “{text}” chỉ gồm chữ thường không dấu a-z và số, bắt đầu bằng chữ"
                      f"{vi_hint}.",
                      f"The abbreviation {text!r} must be ASCII letters and digits, starting with a letter"
                      f"{en_hint}.")


def validate_agency_ref(text: str, cfg: RulesConfig) -> str:
    """An agency already on the system, as its local part: ``sonv`` or ``pvhtt.yendinh``.

    Dots between parts are always fine here: TH13-3.2b names a subordinate agency
    ``own.parent``, and CT25-4.2 builds on "tên viết tắt đã được thiết lập".
    """
    rule = _RULES[cfg.naming.scheme]["agency"]
    s = text.strip().lower()
    if s and all(_ABBR.fullmatch(p) for p in s.split(".")) and len(s) <= MAX_LOCAL_PART:
        return s
    raise NamingError(rule, f"Cơ quan “{text}” phải là tên viết tắt đã có, như sonv hoặc pvhtt.yendinh.",
                      f"The agency {text!r} must be an existing abbreviation such as sonv or pvhtt.yendinh.")


def agency_address(abbreviation: str, cfg: RulesConfig, taken: Collection[str] = ()) -> AddressSuggestion:
    """``[abbr]@domain`` (CT25-4.1, TH13-3.2a); a taken abbreviation goes back to the operator.

    The regulation's remedy is a longer form (Sở Ngoại vụ ``songoaivu`` beside Sở Nội vụ
    ``sonv``), chosen by the operator, so a clash is manual.  Raises NamingError on a
    malformed abbreviation.
    """
    rule = _RULES[cfg.naming.scheme]["agency"]
    abbr = validate_abbreviation(abbreviation, cfg)
    if abbr in _norm_taken(taken):
        return _manual(
            rule, f"“{abbr}” đã được dùng; chọn tên viết tắt dài hơn (ví dụ Sở Ngoại vụ: songoaivu).",
            f"{abbr!r} is taken; choose a longer abbreviation (e.g. Sở Ngoại vụ: songoaivu).")
    return _chosen(abbr, cfg, rule, "Tên viết tắt của cơ quan, chưa trùng.",
                   "The agency's abbreviation, not yet taken.")


def unit_address(unit: str, agency: str, cfg: RulesConfig, taken: Collection[str] = ()) -> AddressSuggestion:
    """``[unit].[agency]@domain`` (CT25-4.2; TH13-3.2b ``pvhtt.yendinh``); clash → manual."""
    rule = _RULES[cfg.naming.scheme]["unit"]
    u = validate_abbreviation(unit, cfg, what="unit")
    a = validate_agency_ref(agency, cfg)
    local = f"{u}.{a}"
    if local in _norm_taken(taken):
        return _manual(rule, f"“{local}” đã được dùng; cán bộ quản trị chọn tên khác cho đơn vị.",
                       f"{local!r} is taken; the administrator picks another name for the unit.")
    return _chosen(local, cfg, rule, "Tên viết tắt của đơn vị, dấu chấm, tên viết tắt của cơ quan.",
                   "The unit's abbreviation, a dot, the agency's abbreviation.")


# --------------------------------------------------------------------------- display names


@dataclass(frozen=True, slots=True)
class DisplayName:
    """The name mail clients show, and the article that asks for it."""

    text: str
    rule: str


def display_name(full_name: str, agency_name: str, cfg: RulesConfig) -> DisplayName:
    """``Họ Tên đệm Tên - Tên cơ quan`` (CT25-4.4, CT15-4.2đ), NFC, single spaces.

    The name keeps its diacritics and spelling; only the ``|`` family marker is removed.
    """
    name = clean_text(full_name.replace("|", " "))
    agency = clean_text(agency_name)
    if not name:
        raise NamingError("CT25-4.4", "Họ tên trống.", "The name is empty.")
    return DisplayName(f"{name} - {agency}" if agency else name, _RULES[cfg.naming.scheme]["display"])


# --------------------------------------------------------------------------- ranks

#: Leadership titles (chức vụ), folded, and their rank: higher = more senior.  A number
#: given by the caller always wins; the table is a convenience for common titles.
TITLE_RANKS: tuple[tuple[str, int], ...] = (
    ("chu tich", 100),
    ("pho chu tich", 90),
    ("giam doc", 80),
    ("truong ban", 80),
    ("pho giam doc", 70),
    ("pho truong ban", 70),
    ("truong phong", 60),
    ("pho truong phong", 50),
    ("chuyen vien cao cap", 40),
    ("chuyen vien chinh", 30),
    ("chuyen vien", 20),
    ("can su", 10),
    ("nhan vien", 10),
)
#: Rank of a request with no title: below every title in the table.
NO_RANK = 0


def rank_of(title: str) -> int:
    """A rank from a whole number (``"80"``) or a title (``"Phó Giám đốc Sở"`` → 70).

    The longest title in :data:`TITLE_RANKS` that starts the folded title wins, word
    by word.  Raises NamingError for a title it does not know.
    """
    s = title.strip()
    if re.fullmatch(r"-?\d+", s):
        return int(s)
    words = [fold(w) for w in clean_text(s).split()]
    words = [w for w in words if w]
    best: tuple[int, int] | None = None
    for known, rank in TITLE_RANKS:
        k = known.split()
        if words[: len(k)] == k and (best is None or len(k) > best[0]):
            best = (len(k), rank)
    if best is None:
        known_list = ", ".join(t for t, _ in TITLE_RANKS)
        raise NamingError("CT25-4.3b", f"Không biết chức vụ “{title}”; cho một số (cao hơn = cấp cao hơn).",
                          f"Unknown title {title!r}; give a number instead (higher = more senior). "
                          f"Known titles: {known_list}.")
    return best[1]


# --------------------------------------------------------------------------- personal


@dataclass(frozen=True, slots=True)
class Request:
    """One person asking for a mailbox: the name, rank (higher = senior) and day asked."""

    name: str
    rank: int = NO_RANK
    day: date | None = None
    urgent: bool = False
    family_words: int = 1


def _forms(p: PersonName, scheme: str, agency: str | None) -> list[str] | None:
    """The automatic forms for ``p`` in order of preference, or None if a word cannot fold."""
    fam = [fold_word(w) for w in p.family]
    mid = [fold_word(w) for w in p.middle]
    given = fold_word(p.given)
    if given is None or any(w is None for w in (*fam, *mid)):
        return None
    f = [w for w in fam if w]
    m = [w for w in mid if w]
    initials = "".join(w[0] for w in f) + "".join(w[0] for w in m)
    if scheme == "th13":
        return [f"{given}{initials}.{agency}"]
    base = f"{initials}{given}"
    if scheme == "ct25":
        return [base]  # suffixes are added by the clash rule
    forms = [base, "".join(w[0] for w in f) + "".join(m) + given, "".join(f) + "".join(m) + given]
    return list(dict.fromkeys(forms))  # a name without middle names has one form fewer


def _unfoldable(p: PersonName, rule: str) -> AddressSuggestion:
    bad = [w for w in (*p.family, *p.middle, p.given) if fold_word(w) is None]
    return _manual(rule, f"Không viết được {', '.join(bad)} bằng chữ a-z không dấu; cán bộ quản trị đặt tên.",
                   f"{', '.join(bad)} cannot be written in plain a-z; the administrator names the mailbox.")


def suggest_personal(name: str, cfg: RulesConfig, *, agency: str | None = None, taken: Collection[str] = (),
                     rank: int = NO_RANK, urgent: bool = False, family_words: int = 1,
                     same_day: Sequence[Request] = ()) -> AddressSuggestion:
    """The address for one person (CT25-4.3, CT15-4.2c/d, TH13-3.3).

    ``agency`` is the agency's local part (TH13 puts it in the address; the others only
    check it); ``same_day`` lists the others asking on the same day, for CT25-4.3b's
    rank rule.  Raises NamingError for input the caller must fix.
    """
    me = Request(name, rank, None, urgent, family_words)
    return suggest_batch([me, *(replace(r, day=None) for r in same_day)], cfg, agency=agency, taken=taken)[0]


def suggest_batch(requests: Sequence[Request], cfg: RulesConfig, *, agency: str | None = None,
                  taken: Collection[str] = ()) -> tuple[AddressSuggestion, ...]:
    """One suggestion per request, in the order given, settling clashes among them too.

    Requests are served day by day (no day = before every dated one).  Within a day
    CT25 serves the higher rank first (CT25-4.3b); CT15 serves in the order given, its
    registration order (CT15-4.2d); TH13 refers every request of a clashing group to
    the operator (TH13-3.3b).  The module docstring covers equal ranks.
    """
    scheme = cfg.naming.scheme
    rules = _RULES[scheme]
    agency_ref = validate_agency_ref(agency, cfg) if agency is not None else None
    if scheme == "th13" and agency_ref is None:
        raise NamingError("TH13-3.3", "Cần tên viết tắt của cơ quan.", "The agency's abbreviation is needed.")
    used = _norm_taken(taken)
    out: dict[int, AddressSuggestion] = {}
    chains: dict[int, list[str]] = {}
    for i, r in enumerate(requests):
        p = parse_name(r.name, r.family_words)
        if not p.family:
            out[i] = _manual(rules["base"], f"“{p.given}” chỉ có một từ, không rõ đâu là họ, đâu là tên; "
                             "cán bộ quản trị đặt tên.",
                             f"{p.given!r} is a single word, so neither family nor given name is certain; "
                             "the administrator names the mailbox.")
        elif (forms := _forms(p, scheme, agency_ref)) is None:
            out[i] = _unfoldable(p, rules["fold"])
        elif r.urgent and scheme == "ct25":
            out[i] = _manual("CT25-4.3b", "Trường hợp khẩn cấp: cơ quan quản lý hệ thống chủ động đặt tên.",
                             "Urgent case: the system's administrator names the mailbox.")
        else:
            chains[i] = forms
    order = sorted(chains, key=lambda i: (requests[i].day or date.min, i))
    if scheme == "ct15":
        for i in order:  # CT15-4.2d: registration order; each person walks their own forms
            out[i] = _serve_ct15(chains[i], cfg, used)
    else:
        groups: dict[tuple[date, str], list[int]] = {}
        for i in order:
            groups.setdefault((requests[i].day or date.min, chains[i][0]), []).append(i)
        for (_, first), members in groups.items():
            serve = _serve_ct25 if scheme == "ct25" else _serve_th13
            out.update(serve(first, members, requests, cfg, used))
    return tuple(out[i] for i in range(len(requests)))


def _serve_ct15(chain: list[str], cfg: RulesConfig, used: set[str]) -> AddressSuggestion:
    """First free form of ``nvminh``, ``nvanminh``, ``nguyenvanminh`` (at most max_clash past the first)."""
    slots = chain[: 1 + cfg.naming.max_clash]
    for n, local in enumerate(slots, start=1):
        if local in used:
            continue
        used.add(local)
        if n == 1:
            return _chosen(local, cfg, "CT15-4.2c", "Chữ đầu của họ và tên lót, rồi tên; chưa trùng.",
                           "Initials of family and middle names, then the given name; not taken.")
        vi = {2: "họ viết tắt, tên lót viết đầy đủ, rồi tên", 3: "họ, tên lót và tên viết đầy đủ"}[n]
        en = {2: "family initial, full middle name, given name", 3: "full family, middle and given names"}[n]
        return _chosen(local, cfg, "CT15-4.2d", f"{', '.join(chain[: n - 1])} đã có người dùng: người trùng tên thứ "
                       f"{n} nhận dạng {vi}.",
                       f"{', '.join(chain[: n - 1])} taken: clashing person number {n} gets the form {en}.")
    return _manual("CT15-4.2d", f"Đã dùng hết các dạng {', '.join(slots)}: từ người trùng tên thứ tư trở đi, cơ quan "
                   "quản lý hệ thống chủ động đặt tên.",
                   f"{', '.join(slots)} are all taken: from the 4th person with this name on, the system's "
                   "administrator names the mailbox.")


def _serve_th13(first: str, members: list[int], requests: Sequence[Request], cfg: RulesConfig,
                used: set[str]) -> dict[int, AddressSuggestion]:
    """TH13-3.3b: a free form goes to a lone request; any clash goes to the provincial office."""
    if first not in used and len(members) == 1:
        used.add(first)
        return {members[0]: _chosen(first, cfg, "TH13-3.3", "Tên, chữ đầu của họ và tên lót, dấu chấm, cơ quan.",
                                    "Given name, initials of family and middle names, a dot, the agency.")}
    why_vi = "đã được dùng" if first in used else f"trùng giữa {len(members)} đề nghị cùng ngày"
    why_en = "is taken" if first in used else f"is wanted by {len(members)} requests on the same day"
    used.add(first)
    return {i: _manual("TH13-3.3", f"“{first}” {why_vi}: Văn phòng UBND tỉnh thống nhất cách đặt tên với cơ quan "
                       "đề nghị.",
                       f"{first!r} {why_en}: the provincial People's Committee office agrees a name with the "
                       "requesting agency.") for i in members}


def _serve_ct25(first: str, members: list[int], requests: Sequence[Request], cfg: RulesConfig,
                used: set[str]) -> dict[int, AddressSuggestion]:
    """CT25-4.3b for one day's requests sharing ``first``: rank order, then 1, 2, 3 appended."""
    max_clash = cfg.naming.max_clash
    order = sorted(members, key=lambda i: -requests[i].rank)  # stable: equal ranks keep request order
    free = [s for s in (first, *(f"{first}{n}" for n in range(1, max_clash + 1))) if s not in used]
    done: dict[int, AddressSuggestion] = {}
    # The plain form goes to someone in this group: the others were outranked, not late.
    outranked = {first} if len(order) > 1 and free and free[0] == first else set()
    if outranked:
        top = requests[order[0]].rank
        tied = [i for i in order if requests[i].rank == top]
        if len(tied) > 1:
            for i in tied:
                done[i] = _manual(
                    "CT25-4.3b", f"{len(tied)} người trùng tên đề nghị cùng ngày, cùng cấp bậc {top}: quy định không "
                    f"nói ai giữ “{first}”; cán bộ quản trị quyết định.",
                    f"{len(tied)} people with this name asked on the same day at the same rank {top}: the "
                    f"regulation does not say who keeps {first!r}; the administrator decides.")
            used.update(free[: len(tied)])  # held for the tied requests; the operator hands them out
            free = free[len(tied):]
            order = order[len(tied):]
    for i in order:
        if not free:
            done[i] = _manual("CT25-4.3b", f"“{first}” và các dạng thêm số 1 đến {max_clash} đã được cấp: từ người "
                              "trùng tên thứ tư trở đi, cơ quan quản lý hệ thống chủ động đặt tên.",
                              f"{first!r} and its forms numbered 1 to {max_clash} are given out: from the 4th "
                              "clashing person on, the system's administrator names the mailbox.")
            continue
        local = free.pop(0)
        used.add(local)
        if local != first and first in outranked:
            n = local[len(first):]
            done[i] = _chosen(local, cfg, "CT25-4.3b", f"Người trùng tên có cấp bậc, chức vụ cao hơn đề nghị cùng ngày "
                              f"giữ “{first}”: thêm số {n}.",
                              f"A higher-ranked person with this name asking on the same day keeps {first!r}: "
                              f"the number {n} is appended.")
        elif local != first:
            n = local[len(first):]
            done[i] = _chosen(local, cfg, "CT25-4.3b", f"“{first}” đã có người dùng: người đăng ký sau được thêm "
                              f"số {n}.", f"{first!r} is taken: a later registrant gets the number {n} appended.")
        elif len(members) > 1:
            done[i] = _chosen(local, cfg, "CT25-4.3b", "Trùng tên với người đề nghị cùng ngày: người có cấp bậc, "
                              "chức vụ cao hơn giữ dạng gốc.",
                              "Same name requested on the same day: the higher rank keeps the plain form.")
        else:
            done[i] = _chosen(local, cfg, "CT25-4.3a", "Chữ đầu của họ và tên đệm, rồi tên đầy đủ; chưa trùng.",
                              "Initials of family and middle names, then the full given name; not taken.")
    return done
