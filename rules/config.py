"""The configuration's pure core: value parsers, the declaration of a setting, the regulation's sections.

Each value comes from one of three places, in rising priority: the suite default
declared on the field, the selected profile (``rules/profiles``), or the file.  The
resolver remembers which, so ``congvu config show`` can print every effective value
with its requirement id and mark what an operator changed.  Every error names the
file, the key and the reason.

Only the regulation's own sections live here (mailbox, password, lifecycle, naming).
Each layer declares the sections it reads with the same :func:`setting` (directory and
state in :mod:`congvu.directory.settings`, the policy server in
:mod:`congvu.policyd.settings`, authentication in :mod:`congvu.authhooks.settings`), and
describes what it needs of the whole configuration as a Protocol (:class:`RulesConfig`
and its extensions).  Reading the file and assembling the one ``Config`` is the
composition root's job (:mod:`congvu.config`): no file is read here.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal, Protocol

from congvu.rules.errors import ConfigError
from congvu.rules.profiles import Profile, Sourced
from congvu.rules.units import UnitError, format_size, parse_duration, parse_size

MailboxType = Literal["personal", "unit", "agency"]
MAILBOX_TYPES: tuple[MailboxType, ...] = ("personal", "unit", "agency")
Language = Literal["vi", "en", "both"]


# --------------------------------------------------------------------------- parsers
# Each parser takes the raw TOML value and returns the typed one, or raises ValueError
# with a reason the operator can act on.

Parser = Callable[[Any], Any]


def whole(lo: int = 0, hi: int | None = None) -> Parser:
    def parse(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected a whole number, got {type(v).__name__}")
        if v < lo or (hi is not None and v > hi):
            raise ValueError(f"must be between {lo} and {hi}" if hi is not None
                             else f"must be at least {lo}")
        return v
    return parse


def number(lo: float, hi: float) -> Parser:
    def parse(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"expected a number, got {type(v).__name__}")
        if not lo <= float(v) <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return float(v)
    return parse


def boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {type(v).__name__}")
    return v


def text(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return v


def choice(*options: str) -> Parser:
    def parse(v: Any) -> str:
        if v not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {v!r}")
        return str(v)
    return parse


def size(v: Any) -> int:
    try:
        return parse_size(v)
    except UnitError as e:
        raise ValueError(str(e)) from None


def size_or_unlimited(v: Any) -> int | None:
    """``None`` means unlimited."""
    if v in ("unlimited", 0):
        return None
    return size(v)


def duration(v: Any) -> timedelta:
    try:
        return parse_duration(v)
    except UnitError as e:
        raise ValueError(str(e)) from None


def duration_or_never(v: Any) -> timedelta | None:
    """``None`` means the clock never runs out ("never" or 0)."""
    if v in ("never", 0, "0"):
        return None
    d = duration(v)
    return d or None


def list_of(item: Parser) -> Parser:
    def parse(v: Any) -> tuple[Any, ...]:
        if not isinstance(v, list):
            raise ValueError(f"expected a list, got {type(v).__name__}")
        out = []
        for i, x in enumerate(v):
            try:
                out.append(item(x))
            except ValueError as e:
                raise ValueError(f"item {i + 1}: {e}") from None
        return tuple(out)
    return parse


def day(v: Any) -> date:
    if isinstance(v, date) and not isinstance(v, datetime):  # a datetime never equals a date
        return v
    if isinstance(v, str):
        try:
            return date.fromisoformat(v)
        except ValueError:
            pass
    raise ValueError(f"expected a date such as 2026-09-02, got {v!r}")


def network(v: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text(v), strict=False)
    except ValueError:
        raise ValueError(f"expected a network such as 127.0.0.0/8, got {v!r}") from None


_ENDPOINT = re.compile(r"^(unix|tcp|tcp6|ssl):\S+$")


def endpoint(v: Any) -> str:
    """A Twisted server endpoint string; checked for shape here, parsed by Twisted later."""
    s = text(v)
    if not _ENDPOINT.match(s):
        raise ValueError(
            f"expected a Twisted endpoint such as \"unix:/run/congvu/policy.sock:mode=660\" "
            f"or \"tcp:10040:interface=127.0.0.1\", got {s!r}")
    return s


def text_map(v: Any) -> Mapping[str, str]:
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise ValueError("expected a table of strings")
    return MappingProxyType(dict(v))


def domain_name(v: Any) -> str:
    s = text(v).strip().lower()
    if not re.fullmatch(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}", s):
        raise ValueError(f"expected a domain such as cantho.gov.vn, got {v!r}")
    return s


def setting(raw_default: Any, parse: Parser, rule_id: str = "SUITE", doc: str = "", *,
            secret: bool = False, path: bool = False) -> Any:
    """Declare a config key: its suite default (as written in TOML), parser, id and help.

    ``secret``: the value may carry a credential (a URL with a password), so it stays out
    of the section's repr.  ``path``: a file path (or endpoints, whose ``unix:`` paths
    count): a relative one is resolved against the config file's directory when loaded.
    """
    return field(repr=not secret, metadata={"default": raw_default, "parse": parse, "rule_id": rule_id,
                                            "doc": doc, "path": path})


#: ``scheme://user:password@``: up to the authority's last ``@`` (a password may hold one), never past a ``/``.
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*):[^/\s]*@")
#: ``?password=…`` or ``&password=…`` (redis-py reads a password there too).
_QUERY_PASSWORD = re.compile(r"([?&;]password=)[^&#\s]*", re.IGNORECASE)


def redact(value: Any) -> Any:
    """``value`` fit to print: the password of any ``scheme://user:password@host`` or ``?password=`` becomes ``***``."""
    if isinstance(value, str):
        return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", value))
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value

# --------------------------------------------------------------------------- resolving


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one effective value came from, for ``congvu config show``."""

    source: Literal["suite", "profile", "file"]
    rule_id: str
    raw: Any
    profile_raw: Any  # what the profile (or suite) would have given, for overrides
    doc: str



def resolve(fname: str, key: str, parse: Parser, suite_raw: Any, suite_id: str,
            prof: Sourced | None, given: tuple[bool, Any], doc: str,
            origins: dict[str, Origin]) -> Any:
    """One value: the file's if ``given`` says it is present, else the profile's, else the suite's."""
    base_raw, base_id, base_src = ((prof.raw, prof.rule_id, "profile") if prof is not None
                                   else (suite_raw, suite_id, "suite"))
    present, value = given
    raw = value if present else base_raw
    try:
        parsed = parse(raw)
    except ValueError as e:
        where = fname if present else f"{fname} (profile value)"
        raise ConfigError(where, key, str(e)) from None
    origins[key] = Origin("file" if present else base_src,  # type: ignore[arg-type]
                          base_id, raw, base_raw, doc)
    return parsed


def build_section(fname: str, sname: str, cls: type[Any], given: Mapping[str, Any], prof: Profile,
                  origins: dict[str, Origin]) -> Any:
    """The ``[sname]`` table as an instance of ``cls``, every field resolved; unknown keys refused."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in given:
        if key not in fields:
            raise ConfigError(fname, f"{sname}.{key}", f"unknown key (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        md = f.metadata
        kwargs[name] = resolve(fname, f"{sname}.{name}", md["parse"], md["default"], md["rule_id"],
                               prof.get(sname, name), (name in given, given.get(name)), md["doc"], origins)
    return cls(**kwargs)


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class MailboxSettings:
    """Quotas by mailbox type and the attachment limit (CT25-5.1, CT15-4.1, TH13-9)."""

    quota_personal: int | None = setting("5GB", size_or_unlimited, doc="quota granted to a personal mailbox")
    quota_unit: int | None = setting("10GB", size_or_unlimited, doc="quota granted to a unit mailbox")
    quota_agency: int | None = setting("10GB", size_or_unlimited, doc="quota granted to an agency mailbox")
    min_quota_personal: int = setting(0, size, doc="regulation floor for a personal quota")
    min_quota_unit: int = setting(0, size, doc="regulation floor for a unit quota")
    min_quota_agency: int = setting(0, size, doc="regulation floor for an agency quota")
    max_quota_personal: int | None = setting("unlimited", size_or_unlimited,
        doc="regulation ceiling for a personal quota")
    max_quota_unit: int | None = setting("unlimited", size_or_unlimited, doc="regulation ceiling for a unit quota")
    max_quota_agency: int | None = setting("unlimited", size_or_unlimited,
        doc="regulation ceiling for an agency quota")
    personal_not_above_shared: bool = setting(False, boolean,
        doc="refuse a personal quota above a unit or agency quota")
    attachment_max: int = setting("20MB", size, doc="largest attachment per message")
    mime_factor: float = setting(1.37, number(1.0, 3.0), doc="base64 4/3 plus CRLF every 76 chars (78/76): encoded/raw")
    header_allowance: int = setting("256KB", size,
        doc="headers and MIME parts allowed on top of the encoded attachment")

    def quota(self, kind: MailboxType) -> int | None:
        return {"personal": self.quota_personal, "unit": self.quota_unit,
                "agency": self.quota_agency}[kind]

    def min_quota(self, kind: MailboxType) -> int:
        return {"personal": self.min_quota_personal, "unit": self.min_quota_unit,
                "agency": self.min_quota_agency}[kind]

    def max_quota(self, kind: MailboxType) -> int | None:
        return {"personal": self.max_quota_personal, "unit": self.max_quota_unit,
                "agency": self.max_quota_agency}[kind]


@dataclass(frozen=True)
class PasswordSettings:
    """Composition, strength and expiry of passwords (CT25-5.2/5.3, CT25-6.4b, CT15-10.3, CT15-11.4)."""

    min_length: int = setting(8, whole(1, 1024), doc="shortest password")
    max_length: int = setting(128, whole(8, 4096), doc="longest password, refused before hashing")
    require_upper: bool = setting(True, boolean, doc="needs an upper-case letter (Unicode, so Đ counts)")
    require_lower: bool = setting(True, boolean, doc="needs a lower-case letter")
    require_digit: bool = setting(True, boolean, doc="needs a digit")
    require_special: bool = setting(True, boolean, doc="needs a character that is not a letter or digit")
    min_score: int = setting(3, whole(0, 4), doc="lowest zxcvbn score accepted")
    expiry_personal: timedelta | None = setting("never", duration_or_never, doc="password lifetime, personal mailbox")
    expiry_unit: timedelta | None = setting("never", duration_or_never, doc="password lifetime, unit mailbox")
    expiry_agency: timedelta | None = setting("never", duration_or_never, doc="password lifetime, agency mailbox")
    warn_before: timedelta = setting("14d", duration, doc="remind the user this long before expiry")
    must_change_on_create: bool = setting(True, boolean, doc="a new or reset password must be changed at first login")
    history: int = setting(5, whole(0, 50), doc="refuse the last N passwords")
    change_url: str = setting("https://mail.{domain}/doimatkhau", text, doc="self-service page shown in refusals")
    extra_banned_words: tuple[str, ...] = setting([], list_of(text), doc="site words refused inside passwords")

    def expiry(self, kind: MailboxType) -> timedelta | None:
        return {"personal": self.expiry_personal, "unit": self.expiry_unit,
                "agency": self.expiry_agency}[kind]


@dataclass(frozen=True)
class LifecycleSettings:
    """Inactivity clocks and the working-day calendar (CT25-6.5, CT15-5.4)."""

    reclaim_after: timedelta | None = setting("never", duration_or_never, doc="reclaim after this long without access")
    suspend_after: timedelta | None = setting("never", duration_or_never, doc="suspend after this long without login")
    reclaim_after_suspend_working_days: int = setting(15, whole(0, 365), doc="working days from suspension to reclaim")
    holidays: tuple[date, ...] = setting([], list_of(day), doc="public holidays that are not working days")
    weekend: tuple[int, ...] = setting([5, 6], list_of(whole(0, 6)), doc="weekdays off (Monday = 0)")


@dataclass(frozen=True)
class NamingSettings:
    """How addresses are built and clashes settled (CT25-4, CT15-4.2, TH13-3)."""

    scheme: str = setting("ct25", choice("ct25", "ct15", "th13"), doc="address scheme")
    max_clash: int = setting(3, whole(0, 99), doc="automatic clash resolutions before the operator names it by hand")
    allow_dots_in_abbreviation: bool = setting(False, boolean, doc="agency abbreviations may contain dots")



def extensions(v: Any) -> tuple[str, ...]:
    """File extensions, without the dot, lower case: ``["pdf", ".ODT"]`` → ``("pdf", "odt")``."""
    out = []
    for i, x in enumerate(list_of(text)(v)):
        ext = x.strip().lstrip(".").lower()
        if not re.fullmatch(r"[a-z0-9][a-z0-9_+-]{0,15}", ext):
            raise ValueError(f"item {i + 1}: expected a file extension such as \"pdf\", got {x!r}")
        out.append(ext)
    return tuple(out)


@dataclass(frozen=True)
class ContentSettings:
    """What a message may contain: formats, Unicode text, a subject (TH13-6.1, TH13-6.2, TH13-7).

    The attachment size limit is ``[mailbox] attachment_max`` (TH13-9, CT25-5.1); how the milter
    acts on each rule (reject, tempfail, tag, off) is ``[milter]``'s.
    """

    allowed_types: tuple[str, ...] = setting([], extensions,
        doc="formats attachments may have (extensions; content is checked too); [] = any format")
    extra_types: tuple[str, ...] = setting([], extensions, "TH13-6.1",
        doc="formats the administrator allows besides allowed_types (\"other formats allowed\"), e.g. "
            "docx, xlsx, pptx, zip (a zip's members must be allowed formats)")
    require_unicode: bool = setting(False, boolean, doc="text parts must be Unicode (UTF-8), not TCVN3/VNI")
    require_subject: bool = setting(False, boolean, doc="a message must have a subject stating its matter")

    @property
    def allowed(self) -> frozenset[str]:
        """Every allowed extension; empty = no allow-list in force."""
        return frozenset(self.allowed_types) | frozenset(self.extra_types) if self.allowed_types else frozenset()


class RulesConfig(Protocol):
    """What the regulation's code reads of the configuration (``congvu.config.Config`` provides it)."""

    @property
    def path(self) -> str: ...
    @property
    def profile(self) -> Profile: ...
    @property
    def domain(self) -> str: ...
    @property
    def organisation(self) -> str: ...
    @property
    def city(self) -> str: ...
    @property
    def language(self) -> Language: ...
    @property
    def mailbox(self) -> MailboxSettings: ...
    @property
    def password(self) -> PasswordSettings: ...
    @property
    def lifecycle(self) -> LifecycleSettings: ...
    @property
    def naming(self) -> NamingSettings: ...
    @property
    def content(self) -> ContentSettings: ...
    @property
    def origins(self) -> Mapping[str, Origin]: ...
    @property
    def change_url(self) -> str: ...


def validate_rules(fname: str, cfg: RulesConfig) -> None:
    """Cross-key checks of the regulation's sections: values that parse but cannot hold together."""
    mb = cfg.mailbox
    for kind in MAILBOX_TYPES:
        q, lo, hi = mb.quota(kind), mb.min_quota(kind), mb.max_quota(kind)
        rid = cfg.origins[f"mailbox.quota_{kind}"].rule_id
        if q is not None and q < lo:
            raise ConfigError(fname, f"mailbox.quota_{kind}",
                              f"{format_size(q)} is below the floor min_quota_{kind} = {format_size(lo)} ({rid})")
        if hi is not None and (q is None or q > hi):
            raise ConfigError(fname, f"mailbox.quota_{kind}",
                              f"{'unlimited' if q is None else format_size(q)} is above the ceiling "
                              f"max_quota_{kind} = {format_size(hi)} ({rid}); "
                              f"raise max_quota_{kind} too if the site decided so")
    if mb.personal_not_above_shared and mb.quota_personal is not None:
        for kind in ("unit", "agency"):
            shared = mb.quota(kind)
            if shared is not None and mb.quota_personal > shared:
                rid = cfg.origins["mailbox.personal_not_above_shared"].rule_id
                raise ConfigError(fname, "mailbox.quota_personal",
                                  f"larger than mailbox.quota_{kind}, which {rid} forbids")
    if cfg.password.max_length < cfg.password.min_length:
        raise ConfigError(fname, "password.max_length", "smaller than password.min_length")
