"""Password policy: composition, strength, personal words and expiry.

What the regulations say (ids from REQUIREMENTS.md):

* CT25-5.3 / CT15-10.3: at least 8 characters with upper case, lower case, a digit and a
  special character.  Classes are counted over Unicode (``str.isupper()`` per character),
  so a Vietnamese user typing "Đ" or "Ă" gets credit for an upper-case letter; a special
  is anything that is neither a letter nor a digit, space included.
* CT15-10.3 and CT15-11.4 print an example, ``MatKhaus7894``: every reader of the
  regulation knows it, so it (and its obvious variants) is refused in every profile.
* CT25-5.2 / CT15-10.3: change at first login; CT25-6.4b / CT15-10.3: expire after 3
  months; CT15-11.4: shared (unit and agency) mailboxes after 2 months.

What the suite adds because the regulations are silent (cited ``SUITE`` unless a
profile sets an id): a zxcvbn score of at least ``min_score`` (the class rule alone
lets ``Password1!`` through), no name, mailbox name, agency abbreviation, city or
site word inside the password, no bare common Vietnamese word dressed up with digits,
and a maximum length checked before any expensive work.

Everything here is pure: no I/O except reading the shipped word list once, clocks are
passed in, and the password never appears in a reason, a repr, a log line or an error.
"""

from __future__ import annotations

import enum
import math
import threading
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from types import MappingProxyType

import zxcvbn

from congvu.rules.common_passwords import WORDS
from congvu.rules.config import MailboxType, PasswordSettings, RulesConfig
from congvu.rules.decision import Decision, Verdict
from congvu.rules.names import strip_marks

#: zxcvbn's matchers are quadratic or worse in the length (measured on 2 cores: a random
#: 100-character password ~0.25 s, 200 characters ~0.9 s, 400 characters ~5 s), and its
#: own default cap is 72.  Only the first this-many characters are scored: a prefix that
#: long is already far beyond any guessing attack, so the cut cannot turn a weak password
#: into a strong one, while a user pasting a 128-character passphrase costs at most ~0.3 s.
ZXCVBN_MAX_CHARS = 100

#: Before NFC, anything longer than this many times ``max_length`` is refused without
#: even normalising it: NFC composes at most a few code points into one, so such input
#: can never come back within the limit, and a 10 MB paste costs nothing.
RAW_LENGTH_FACTOR = 4

#: Passwords printed in the regulations themselves (CT15-10.3 and CT15-11.4, "Ví dụ:
#: MatKhaus7894").  The other two seeds publish none.
PUBLISHED_EXAMPLES: tuple[str, ...] = ("MatKhaus7894",)
PUBLISHED_EXAMPLE_RULE = "CT15-10.3"

#: Personal words shorter than this are too common as substrings to refuse ("an", "le").
MIN_TOKEN = 3

#: Symbols people type for letters, undone before looking for the published example
#: (digits stay digits: they are part of the example).
_AS_LETTERS = str.maketrans({"$": "s", "@": "a"})

#: Codes carried next to each reason, for callers (web page, JSON) that branch on them.
REASON_CODES = ("too_long", "invalid_char", "too_short", "missing_upper", "missing_lower",
                "missing_digit", "missing_special", "published_example", "contains_name",
                "banned_word", "common_word", "weak")

_zxcvbn_lock = threading.Lock()


# --------------------------------------------------------------------------- text helpers


def normalize_password(password: str) -> str:
    """NFC: "Đ" typed as one code point or as D + combining stroke is one password.

    Apply it before checking *and* before hashing, so the check judges exactly what
    is stored and a user on a different keyboard layout can still log in.
    """
    return unicodedata.normalize("NFC", password)


def _letters(plain: str) -> str:
    return "".join(c for c in plain if c.isalpha())


def _alnum(plain: str) -> str:
    return "".join(c for c in plain if c.isalnum())


@lru_cache(maxsize=1)
def common_words() -> tuple[str, ...]:
    """The shipped list (:mod:`congvu.rules.common_passwords`) plain, in its order (most telling first)."""
    seen: dict[str, None] = {}
    for word in WORDS:
        seen.setdefault(strip_marks(word), None)
    return tuple(seen)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class PasswordCheck:
    """The verdict on one candidate password.  Holds no trace of the password itself.

    ``reasons`` are REJECT decisions with bilingual text; ``codes`` names each one
    (see :data:`REASON_CODES`) for callers that branch on the kind of refusal.
    ``score`` is zxcvbn's 0–4 (0 when the password was refused before scoring).
    """

    accepted: bool
    score: int
    reasons: tuple[Decision, ...] = ()
    codes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Reason:
    code: str
    decision: Decision


# --------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class PasswordPolicy:
    """The site's password rules, built once from the RulesConfig and shared by every caller.

    ``rule_ids`` maps each ``password.*`` key to the requirement id its value came
    from, so a refusal under cantho-2015 cites CT15-10.3 and under cantho-2025 CT25-5.3.
    ``site_words`` feed zxcvbn (domain, its labels, the city with and without
    diacritics); ``banned`` are refused as substrings (the city, ``extra_banned_words``).
    """

    settings: PasswordSettings
    rule_ids: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    site_words: tuple[str, ...] = ()
    banned: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: RulesConfig) -> PasswordPolicy:
        pw = cfg.password
        ids = {key.removeprefix("password."): o.rule_id for key, o in cfg.origins.items()
               if key.startswith("password.")}
        site: list[str] = [cfg.domain, *cfg.domain.split(".")]
        banned: list[str] = []
        if cfg.city:
            site += [cfg.city, strip_marks(cfg.city), strip_marks(cfg.city).replace(" ", "")]
            banned.append(strip_marks(cfg.city).replace(" ", ""))
        banned += [strip_marks(w).replace(" ", "") for w in pw.extra_banned_words]
        site += list(pw.extra_banned_words)
        return cls(settings=pw, rule_ids=MappingProxyType(ids), site_words=tuple(dict.fromkeys(site)),
                   banned=tuple(w for w in dict.fromkeys(banned) if w))

    def rule(self, key: str) -> str:
        """The requirement id behind ``password.<key>`` (``SUITE`` if the config is silent)."""
        return self.rule_ids.get(key, "SUITE")

    # ------------------------------------------------------------------ checking

    def too_long(self) -> PasswordCheck:
        """The refusal for input longer than ``max_length`` (also used by readers that stop early)."""
        n = self.settings.max_length
        return _result([_Reason("too_long", _reject(
            self.rule("max_length"),
            f"Mật khẩu dài quá {n} ký tự.",
            f"The password is longer than {n} characters."))], score=0)

    def check(self, password: str, *, local_part: str = "", full_name: str = "",
              agency: str = "") -> PasswordCheck:
        """Judge a candidate password for the account ``local_part`` (CT25-5.3, CT15-10.3).

        Every failed rule is reported, so the user can fix them all at once, except
        for over-long input, which is refused before any other work.
        """
        s = self.settings
        if len(password) > RAW_LENGTH_FACTOR * s.max_length:
            return self.too_long()
        pw = normalize_password(password)
        if len(pw) > s.max_length:
            return self.too_long()

        reasons: list[_Reason] = []
        if any(unicodedata.category(c) in ("Cc", "Cs") for c in pw):
            # NUL, CR, LF or TAB cannot cross IMAP LOGIN or Dovecot's auth protocol intact,
            # and a lone surrogate cannot be encoded to UTF-8 for hashing.
            reasons.append(_Reason("invalid_char", _reject(
                self.rule("max_length"),
                "Mật khẩu chứa ký tự điều khiển hoặc ký tự không hợp lệ.",
                "The password contains a control character or invalid text.")))
        reasons += self._composition(pw)

        plain = strip_marks(pw)
        personal = personal_words(local_part=local_part, full_name=full_name, agency=agency)
        if _is_published_example(plain):
            reasons.append(_Reason("published_example", _reject(
                PUBLISHED_EXAMPLE_RULE,
                "Đây là mật khẩu ví dụ được in trong quy định, ai cũng biết; hãy chọn mật khẩu khác.",
                "This is the example password printed in the regulation, known to everyone; "
                "choose another.")))
        if any(w in plain for w in personal):
            reasons.append(_Reason("contains_name", _reject(
                self.rule("min_score"),
                "Mật khẩu không được chứa họ tên, tên hộp thư hoặc tên viết tắt của cơ quan.",
                "The password must not contain your name, your mailbox name or your agency's "
                "abbreviation.")))
        if any(w in plain.replace(" ", "") for w in self.banned):
            reasons.append(_Reason("banned_word", _reject(
                self.rule("extra_banned_words"),
                "Mật khẩu không được chứa tên địa phương hoặc từ bị cấm do quản trị hệ thống quy định.",
                "The password must not contain the city's name or a word the administrator banned.")))
        letters = _letters(plain)
        if letters and letters in _common_set():
            reasons.append(_Reason("common_word", _reject(
                self.rule("min_score"),
                "Mật khẩu chỉ là một từ thông dụng thêm chữ số hoặc ký hiệu, rất dễ bị đoán.",
                "The password is only a common word with digits or symbols added, and is easy "
                "to guess.")))

        score = self._score(pw, personal)
        if score < s.min_score:
            reasons.append(_Reason("weak", _reject(
                self.rule("min_score"),
                f"Mật khẩu quá dễ đoán (độ mạnh {score}/4, cần tối thiểu {s.min_score}/4). "
                "Hãy dùng một cụm từ dài hơn, ít gặp hơn.",
                f"The password is too easy to guess (strength {score}/4, at least {s.min_score}/4 "
                "needed). Use a longer, less common phrase.")))
        return _result(reasons, score)

    def _composition(self, pw: str) -> list[_Reason]:
        """Length and the four classes of CT25-5.3 / CT15-10.3, counted over Unicode."""
        s, out = self.settings, []
        if len(pw) < s.min_length:
            out.append(_Reason("too_short", _reject(
                self.rule("min_length"),
                f"Mật khẩu phải có ít nhất {s.min_length} ký tự.",
                f"The password must be at least {s.min_length} characters long.")))
        checks = (
            ("upper", s.require_upper, str.isupper, "một chữ in hoa", "one upper-case letter"),
            ("lower", s.require_lower, str.islower, "một chữ in thường", "one lower-case letter"),
            ("digit", s.require_digit, str.isdigit, "một chữ số", "one digit"),
            ("special", s.require_special, _is_special,
             "một ký tự đặc biệt (không phải chữ cái hoặc chữ số, ví dụ @ # ! hoặc dấu cách)",
             "one special character (anything but a letter or digit, such as @ # ! or a space)"),
        )
        for name, required, test, vi, en in checks:
            if required and not any(test(c) for c in pw):
                out.append(_Reason(f"missing_{name}", _reject(
                    self.rule(f"require_{name}"),
                    f"Mật khẩu phải có ít nhất {vi}.",
                    f"The password must contain at least {en}.")))
        return out

    def _score(self, pw: str, personal: Iterable[str]) -> int:
        """zxcvbn on the first ZXCVBN_MAX_CHARS characters, with the account's and site's words."""
        if not pw:
            return 0  # zxcvbn 4.5 raises IndexError on the empty string (found by the hypothesis test)
        inputs = [*personal, *self.site_words, *(strip_marks(e) for e in PUBLISHED_EXAMPLES), *common_words()]
        # zxcvbn stores user_inputs in a module-level dict while it runs, so two threads
        # (the web page's pool) must not score at the same time.
        with _zxcvbn_lock:
            result = zxcvbn.zxcvbn(pw[:ZXCVBN_MAX_CHARS], user_inputs=inputs, max_length=ZXCVBN_MAX_CHARS)
        return int(result["score"])


def personal_words(*, local_part: str = "", full_name: str = "", agency: str = "") -> tuple[str, ...]:
    """The plain words of an account that must not appear in its password.

    Given name and family name (from "Nguyễn Văn Minh": "minh", "nguyen"), the local part
    with and without its clash digits and split at dots (TH13 "tuanna.sttt"), and the
    agency abbreviation; each at least MIN_TOKEN characters.  Middle names are left out:
    "Văn", "Thị" are inside too many ordinary words.
    """
    words: list[str] = []
    names = strip_marks(full_name).split()
    if names:
        words += [names[-1], names[0]]
    for raw in (local_part, agency):
        f = strip_marks(raw).strip()
        for part in (f, *f.split(".")):
            words += [part, part.rstrip("0123456789")]
    return tuple(w for w in dict.fromkeys(words) if len(w) >= MIN_TOKEN)


def check_password(password: str, cfg: RulesConfig, *, local_part: str = "", full_name: str = "",
                   agency: str = "") -> PasswordCheck:
    """One-shot :meth:`PasswordPolicy.check`; build the policy once if you check often."""
    return PasswordPolicy.from_config(cfg).check(password, local_part=local_part,
                                                 full_name=full_name, agency=agency)


def _is_special(c: str) -> bool:
    return not (c.isalpha() or c.isdigit())


@lru_cache(maxsize=1)
def _common_set() -> frozenset[str]:
    return frozenset(common_words())


@lru_cache(maxsize=1)
def _examples_plain() -> tuple[tuple[str, str, str], ...]:
    out = []
    for ex in PUBLISHED_EXAMPLES:
        f = strip_marks(ex).translate(_AS_LETTERS)
        out.append((_alnum(f), _letters(f), "".join(c for c in f if c.isdigit())))
    return tuple(out)


def _is_published_example(plain: str) -> bool:
    """The example itself, with symbols added, "$"/"@" for letters, or its parts reordered."""
    f = plain.translate(_AS_LETTERS)  # "MatKhau$7894" reads as "matkhaus7894"
    alnum, letters = _alnum(f), _letters(f)
    digits = "".join(c for c in f if c.isdigit())
    return any(ex_alnum in alnum or (letters == ex_letters and ex_digits in digits)
               for ex_alnum, ex_letters, ex_digits in _examples_plain())


def _reject(rule_id: str, vi: str, en: str) -> Decision:
    return Decision(Verdict.REJECT, rule_id, text_vi=vi, text_en=en)


def _result(reasons: list[_Reason], score: int) -> PasswordCheck:
    return PasswordCheck(accepted=not reasons, score=score,
                         reasons=tuple(r.decision for r in reasons),
                         codes=tuple(r.code for r in reasons))


# --------------------------------------------------------------------------- expiry


class ExpiryState(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    EXPIRED = "expired"
    MUST_CHANGE = "must_change"


@dataclass(frozen=True, slots=True)
class PasswordState:
    """Where a password stands on its clock.  ``expires_at`` None: it never expires."""

    state: ExpiryState
    expires_at: datetime | None
    reasons: tuple[Decision, ...] = ()

    @property
    def blocks(self) -> bool:
        """True when the user must set a new password before using the mailbox."""
        return self.state in (ExpiryState.EXPIRED, ExpiryState.MUST_CHANGE)


def password_state(mailbox_type: MailboxType, changed_at: datetime | None, must_change: bool,
                   settings: PasswordSettings, now: datetime, *,
                   expiry_rule_id: str = "CT25-6.4b", must_change_rule_id: str = "CT25-5.2") -> PasswordState:
    """The password's state at ``now`` (CT25-5.2, CT25-6.4b, CT15-10.3, CT15-11.4).

    The lifetime is ``settings.expiry(mailbox_type)``; the password is expired from the
    instant ``changed_at + lifetime`` (so at exactly 90 days of a 3-month lifetime), and
    in the warning window from ``warn_before`` earlier.  ``must_change`` (a new or reset
    password) wins over everything, and so does a missing ``changed_at`` when the
    password can expire: with no record of a change the user still holds the issued
    password.  Pass ``changed_at`` and ``now`` both aware (UTC) or both naive.
    :func:`password_state_for` takes the rule ids from the RulesConfig.
    """
    lifetime = settings.expiry(mailbox_type)
    expires_at = changed_at + lifetime if changed_at is not None and lifetime is not None else None
    if must_change or (changed_at is None and lifetime is not None):
        why_vi = ("Mật khẩu được cấp mới hoặc đặt lại phải được đổi trước khi sử dụng hộp thư."
                  if must_change else "Không có ghi nhận lần đổi mật khẩu gần nhất; hãy đổi mật khẩu.")
        why_en = ("A new or reset password must be changed before the mailbox can be used."
                  if must_change else "There is no record of the last password change; please change it.")
        return PasswordState(ExpiryState.MUST_CHANGE, expires_at,
                             (Decision(Verdict.REJECT, must_change_rule_id, text_vi=why_vi, text_en=why_en),))
    if expires_at is None or lifetime is None:
        return PasswordState(ExpiryState.OK, None)
    days = lifetime.days
    if now >= expires_at:
        return PasswordState(ExpiryState.EXPIRED, expires_at, (Decision(
            Verdict.REJECT, expiry_rule_id,
            text_vi=f"Mật khẩu đã quá hạn {days} ngày kể từ lần đổi gần nhất (hết hạn "
                    f"{expires_at:%d/%m/%Y}); hãy đổi mật khẩu mới.",
            text_en=f"The password has passed its {days}-day lifetime (expired {expires_at:%Y-%m-%d}); "
                    "set a new one."),))
    if now >= expires_at - settings.warn_before:
        left = max(1, math.ceil((expires_at - now) / timedelta(days=1)))
        return PasswordState(ExpiryState.WARN, expires_at, (Decision(
            Verdict.WARN, expiry_rule_id,
            text_vi=f"Mật khẩu sẽ hết hạn sau {left} ngày ({expires_at:%d/%m/%Y}); hãy đổi mật khẩu.",
            text_en=f"The password expires in {left} day(s) ({expires_at:%Y-%m-%d}); please change it."),))
    return PasswordState(ExpiryState.OK, expires_at)


def password_state_for(cfg: RulesConfig, mailbox_type: MailboxType, changed_at: datetime | None,
                       must_change: bool, now: datetime) -> PasswordState:
    """:func:`password_state` citing the ids the RulesConfig's values came from (CT15-11.4 for a
    shared mailbox under cantho-2015, CT25-6.4b under cantho-2025)."""
    return password_state(mailbox_type, changed_at, must_change, cfg.password, now,
                          expiry_rule_id=cfg.origins[f"password.expiry_{mailbox_type}"].rule_id,
                          must_change_rule_id=cfg.origins["password.must_change_on_create"].rule_id)
