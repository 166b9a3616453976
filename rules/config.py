"""congvu.toml → frozen dataclasses, loaded once and passed in explicitly.

Each value comes from one of three places, in rising priority: the suite default
declared on the field below, the selected profile (``rules/profiles``), or the file.
The loader remembers which, so ``congvu config show`` can print every effective value
with its requirement id and mark what an operator changed.  Every error names the
file, the key and the reason: a broken config must stop start-up with one sentence,
never a traceback.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from rules.profiles import DEFAULT_PROFILE, PROFILES, Profile, Sourced, get_profile
from rules.units import UnitError, format_size, parse_duration, parse_size

DEFAULT_CONFIG_PATH = Path("/etc/congvu/congvu.toml")
ENV_CONFIG = "CONGVU_CONFIG"

MailboxType = Literal["personal", "unit", "agency"]
MAILBOX_TYPES: tuple[MailboxType, ...] = ("personal", "unit", "agency")


class ConfigError(Exception):
    """The one error the loader raises: ``file: key: reason``."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        super().__init__(f"{file}: {key}: {reason}" if key else f"{file}: {reason}")
        self.file, self.key, self.reason = file, key, reason


# --------------------------------------------------------------------------- parsers
# Each parser takes the raw TOML value and returns the typed one, or raises ValueError
# with a reason the operator can act on.

Parser = Callable[[Any], Any]


def _int(lo: int = 0, hi: int | None = None) -> Parser:
    def parse(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected a whole number, got {type(v).__name__}")
        if v < lo or (hi is not None and v > hi):
            raise ValueError(f"must be between {lo} and {hi}" if hi is not None
                             else f"must be at least {lo}")
        return v
    return parse


def _float(lo: float, hi: float) -> Parser:
    def parse(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"expected a number, got {type(v).__name__}")
        if not lo <= float(v) <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return float(v)
    return parse


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {type(v).__name__}")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return v


def _choice(*options: str) -> Parser:
    def parse(v: Any) -> str:
        if v not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {v!r}")
        return str(v)
    return parse


def _size(v: Any) -> int:
    try:
        return parse_size(v)
    except UnitError as e:
        raise ValueError(str(e)) from None


def _size_or_unlimited(v: Any) -> int | None:
    """``None`` means unlimited."""
    if v in ("unlimited", 0):
        return None
    return _size(v)


def _duration(v: Any) -> timedelta:
    try:
        return parse_duration(v)
    except UnitError as e:
        raise ValueError(str(e)) from None


def _duration_or_never(v: Any) -> timedelta | None:
    """``None`` means the clock never runs out ("never" or 0)."""
    if v in ("never", 0, "0"):
        return None
    d = _duration(v)
    return d or None


def _list(item: Parser) -> Parser:
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


def _date(v: Any) -> date:
    if isinstance(v, date) and not isinstance(v, datetime):  # a datetime never equals a date
        return v
    if isinstance(v, str):
        try:
            return date.fromisoformat(v)
        except ValueError:
            pass
    raise ValueError(f"expected a date such as 2026-09-02, got {v!r}")


def _network(v: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(_str(v), strict=False)
    except ValueError:
        raise ValueError(f"expected a network such as 127.0.0.0/8, got {v!r}") from None


_ENDPOINT = re.compile(r"^(unix|tcp|tcp6|ssl):\S+$")


def _endpoint(v: Any) -> str:
    """A Twisted server endpoint string; checked for shape here, parsed by Twisted later."""
    s = _str(v)
    if not _ENDPOINT.match(s):
        raise ValueError(
            f"expected a Twisted endpoint such as \"unix:/run/congvu/policy.sock:mode=660\" "
            f"or \"tcp:10040:interface=127.0.0.1\", got {s!r}")
    return s


def _str_map(v: Any) -> Mapping[str, str]:
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise ValueError("expected a table of strings")
    return MappingProxyType(dict(v))


def _domain(v: Any) -> str:
    s = _str(v).strip().lower()
    if not re.fullmatch(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}", s):
        raise ValueError(f"expected a domain such as cantho.gov.vn, got {v!r}")
    return s


def setting(raw_default: Any, parse: Parser, rule_id: str = "SUITE", doc: str = "", *,
            secret: bool = False) -> Any:
    """Declare a config key: its suite default (as written in TOML), parser, id and help.

    ``secret``: the value may carry a credential (a URL with a password), so it stays out
    of the section's repr.
    """
    return field(repr=not secret, metadata={"default": raw_default, "parse": parse, "rule_id": rule_id,
                                            "doc": doc})


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*):[^@/\s]*@")


def redact(value: Any) -> Any:
    """``value`` fit to print: the password of any ``scheme://user:password@host`` becomes ``***``."""
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1:***@", value)
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class MailboxSettings:
    """Quotas by mailbox type and the attachment limit (CT25-5.1, CT15-4.1, TH13-9)."""

    quota_personal: int | None = setting("5GB", _size_or_unlimited, doc="quota granted to a personal mailbox")
    quota_unit: int | None = setting("10GB", _size_or_unlimited, doc="quota granted to a unit mailbox")
    quota_agency: int | None = setting("10GB", _size_or_unlimited, doc="quota granted to an agency mailbox")
    min_quota_personal: int = setting(0, _size, doc="regulation floor for a personal quota")
    min_quota_unit: int = setting(0, _size, doc="regulation floor for a unit quota")
    min_quota_agency: int = setting(0, _size, doc="regulation floor for an agency quota")
    max_quota_personal: int | None = setting("unlimited", _size_or_unlimited,
        doc="regulation ceiling for a personal quota")
    max_quota_unit: int | None = setting("unlimited", _size_or_unlimited, doc="regulation ceiling for a unit quota")
    max_quota_agency: int | None = setting("unlimited", _size_or_unlimited,
        doc="regulation ceiling for an agency quota")
    personal_not_above_shared: bool = setting(False, _bool, doc="refuse a personal quota above a unit or agency quota")
    attachment_max: int = setting("20MB", _size, doc="largest attachment per message")
    mime_factor: float = setting(1.37, _float(1.0, 3.0), doc="base64 4/3 plus CRLF every 76 chars (78/76): encoded/raw")
    header_allowance: int = setting("256KB", _size,
        doc="headers and MIME parts allowed on top of the encoded attachment")
    warn_percent: tuple[int, ...] = setting([85, 95], _list(_int(1, 100)), "CT25-5.1",
        doc="warn the user at these fill levels")

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

    min_length: int = setting(8, _int(1, 1024), doc="shortest password")
    max_length: int = setting(128, _int(8, 4096), doc="longest password, refused before hashing")
    require_upper: bool = setting(True, _bool, doc="needs an upper-case letter (Unicode, so Đ counts)")
    require_lower: bool = setting(True, _bool, doc="needs a lower-case letter")
    require_digit: bool = setting(True, _bool, doc="needs a digit")
    require_special: bool = setting(True, _bool, doc="needs a character that is not a letter or digit")
    min_score: int = setting(3, _int(0, 4), doc="lowest zxcvbn score accepted")
    expiry_personal: timedelta | None = setting("never", _duration_or_never, doc="password lifetime, personal mailbox")
    expiry_unit: timedelta | None = setting("never", _duration_or_never, doc="password lifetime, unit mailbox")
    expiry_agency: timedelta | None = setting("never", _duration_or_never, doc="password lifetime, agency mailbox")
    warn_before: timedelta = setting("14d", _duration, doc="remind the user this long before expiry")
    must_change_on_create: bool = setting(True, _bool, doc="a new or reset password must be changed at first login")
    history: int = setting(5, _int(0, 50), doc="refuse the last N passwords")
    change_url: str = setting("https://mail.{domain}/doimatkhau", _str, doc="self-service page shown in refusals")
    extra_banned_words: tuple[str, ...] = setting([], _list(_str), doc="site words refused inside passwords")

    def expiry(self, kind: MailboxType) -> timedelta | None:
        return {"personal": self.expiry_personal, "unit": self.expiry_unit,
                "agency": self.expiry_agency}[kind]


@dataclass(frozen=True)
class LifecycleSettings:
    """Inactivity clocks and the working-day calendar (CT25-6.5, CT15-5.4)."""

    reclaim_after: timedelta | None = setting("never", _duration_or_never, doc="reclaim after this long without access")
    suspend_after: timedelta | None = setting("never", _duration_or_never, doc="suspend after this long without login")
    reclaim_after_suspend_working_days: int = setting(15, _int(0, 365), doc="working days from suspension to reclaim")
    holidays: tuple[date, ...] = setting([], _list(_date), doc="public holidays that are not working days")
    weekend: tuple[int, ...] = setting([5, 6], _list(_int(0, 6)), doc="weekdays off (Monday = 0)")


@dataclass(frozen=True)
class NamingSettings:
    """How addresses are built and clashes settled (CT25-4, CT15-4.2, TH13-3)."""

    scheme: str = setting("ct25", _choice("ct25", "ct15", "th13"), doc="address scheme")
    max_clash: int = setting(3, _int(0, 99), doc="automatic clash resolutions before the operator names it by hand")
    allow_dots_in_abbreviation: bool = setting(False, _bool, doc="agency abbreviations may contain dots")


@dataclass(frozen=True)
class DirectorySettings:
    """Where accounts live (CT15-3.2: the city's LDAP directory, or embedded SQLite)."""

    backend: str = setting("sqlite", _choice("sqlite", "ldap"), doc="account store")
    path: str = setting("", _str, doc="SQLite file; empty = STATE_DIR/directory.sqlite3")
    url: str = setting("ldap://127.0.0.1:389", _str, "CT15-3.2",
        doc="LDAP server URL (ldap:// or ldaps://); several separated by spaces are tried in order")
    base_dn: str = setting("", _str, "CT15-3.2", doc="subtree holding the mail accounts")
    bind_dn: str = setting("", _str, doc="service account DN")
    bind_password_file: str = setting("", _str, doc="file holding the service account password")
    start_tls: bool = setting(False, _bool, doc="StartTLS on ldap:// URLs")
    ca_file: str = setting("", _str, doc="CA bundle for ldaps/StartTLS")
    timeout: timedelta = setting("5s", _duration, doc="timeout on every directory call")
    pool_size: int = setting(4, _int(1, 64), doc="LDAP connections kept open")
    cache_ttl: timedelta = setting("30s", _duration, doc="how long hot-path reads are cached")
    cache_size: int = setting(10000, _int(0), doc="accounts kept in the read cache")
    hash_cost: str = setting("normal", _choice("normal", "test"), "SUITE",
        doc="argon2 cost: normal = 64 MiB, 3 passes; test = 1 MiB, 1 pass (tests/benchmarks only, never production)")
    attributes: Mapping[str, str] = setting({}, _str_map, doc="LDAP attribute names to use instead of congvu's")
    object_classes: tuple[str, ...] = setting(["inetOrgPerson", "congvuAccount"], _list(_str), "CT15-3.2",
        doc="object classes of the LDAP entries congvu creates (add the class of any mapped attribute)")


@dataclass(frozen=True)
class StateSettings:
    """Counters and volatile state shared by MX and IMAP hosts."""

    backend: str = setting("sqlite", _choice("sqlite", "redis"), doc="counter store")
    path: str = setting("", _str, doc="SQLite file; empty = STATE_DIR/state.sqlite3")
    url: str = setting("redis://127.0.0.1:6379/0", _str,
        doc="redis://, rediss:// (TLS; CA via ?ssl_ca_certs=/path) or unix:// URL; "
            "prefer password_file to a password in the URL", secret=True)
    sentinels: tuple[str, ...] = setting([], _list(_str), doc="host:port of Redis Sentinels; empty = no Sentinel")
    sentinel_service: str = setting("mymaster", _str, doc="Sentinel service name")
    password_file: str = setting("", _str, doc="file holding the Redis password")
    prefix: str = setting("congvu:", _str, doc="key prefix, so several sites can share one Redis")
    timeout: timedelta = setting("1s", _duration,
        doc="connect and read timeout on every counter call, no retries; then StateUnavailable")
    last_login_flush: timedelta = setting("10m", _duration,
        doc="write last-login stamps to the directory at most this often")


_RATE_KEYS = ("messages_per_hour", "recipients_per_day")


def _rate_overrides(v: Any) -> Mapping[str, Mapping[str, int]]:
    """``{"addr@domain" = {messages_per_hour = N, recipients_per_day = N}}``; 0 = unlimited."""
    if not isinstance(v, dict):
        raise ValueError("expected a table of address = { messages_per_hour = N, recipients_per_day = N }")
    out: dict[str, Mapping[str, int]] = {}
    for addr, limits in v.items():
        if not isinstance(limits, dict) or not limits:
            raise ValueError(f"{addr}: expected {{ messages_per_hour = N, recipients_per_day = N }}")
        parsed: dict[str, int] = {}
        for k, n in limits.items():
            if k not in _RATE_KEYS:
                raise ValueError(f"{addr}: unknown key {k!r} (known: {', '.join(_RATE_KEYS)})")
            try:
                parsed[k] = _int(0)(n)
            except ValueError as e:
                raise ValueError(f"{addr}.{k}: {e}") from None
        out[str(addr).strip().lower()] = MappingProxyType(parsed)
    return MappingProxyType(out)


def _optional_size(v: Any) -> int | None:
    """``""`` means "not set here, use the general value"."""
    return None if v == "" else _size(v)


_FAILURE = _choice("defer", "dunno")


def _workers(v: Any) -> int:
    """policyd processes: 1..64, or "auto" = one per CPU core (os.cpu_count(), at most 64)."""
    if v == "auto":
        return max(1, min(64, os.cpu_count() or 1))
    if isinstance(v, str):
        raise ValueError(f"expected a whole number from 1 to 64 or \"auto\", got {v!r}")
    return int(_int(1, 64)(v))


@dataclass(frozen=True)
class PolicydSettings:
    """The Postfix policy server (CT25-3, CT25-5.1, TH13-9, CT15-8)."""

    listen: tuple[str, ...] = setting(["tcp:10040:interface=127.0.0.1"], _list(_endpoint),
        doc="endpoints Postfix connects to: a unix socket, or TCP on a loopback interface "
            "(anything else needs allow_remote)")
    allow_remote: bool = setting(False, _bool, "CT25-3.2",
        doc="allow a TCP listen endpoint on a non-loopback interface (or on all interfaces): anyone who "
            "can connect can then spend users' sending budgets and probe account states; firewall it")
    mynetworks: tuple[Any, ...] = setting(["127.0.0.0/8", "::1/128"], _list(_network), "CT25-3.2",
        doc="clients trusted to relay with local senders")
    idle_timeout: timedelta = setting("300s", _duration, doc="close idle connections (Postfix reconnects)")
    request_timeout: timedelta = setting("10s", _duration,
        doc="a request must be complete this long after its first byte (slow writers are cut off)")
    max_request_bytes: int = setting(65536, _int(1024, 16 * 1024 * 1024),
        doc="largest request; a bigger one closes the connection without a reply")
    max_line_bytes: int = setting(8192, _int(256, 16 * 1024 * 1024), doc="longest name=value line")
    max_attributes: int = setting(256, _int(8, 100000), doc="most name=value lines in one request")
    max_connections: int = setting(2000, _int(1), doc="connections served at once; more are closed at once")
    threads: int = setting(8, _int(1, 256), doc="threads for directory and counter calls")
    disabled_checks: tuple[str, ...] = setting([], _list(_choice(
        "account_state", "sender_login", "forged_sender", "size", "recipients", "rates")),
        doc="checks to skip (policyd/checks/__init__.py has the order)")
    local_domains: tuple[str, ...] = setting([], _list(_domain), "CT25-3.2",
        doc="site domains besides `domain` that unauthenticated outsiders may not use as sender")
    attachment_max_personal: int | None = setting("", _optional_size, "CT25-5.1",
        doc="attachment limit for mail from/to personal mailboxes; empty = mailbox.attachment_max")
    attachment_max_unit: int | None = setting("", _optional_size, "CT25-5.1",
        doc="attachment limit for mail from/to unit mailboxes; empty = mailbox.attachment_max")
    attachment_max_agency: int | None = setting("", _optional_size, "CT25-5.1",
        doc="attachment limit for mail from/to agency mailboxes; empty = mailbox.attachment_max")
    max_recipients: int = setting(100, _int(0), "CT25-3.1", doc="recipients per message; 0 = unlimited")
    messages_per_hour_personal: int = setting(100, _int(0), "CT25-3.1",
        doc="messages an authenticated personal mailbox sends per sliding hour; 0 = unlimited")
    messages_per_hour_unit: int = setting(200, _int(0), "CT25-3.1", doc="same, unit mailbox")
    messages_per_hour_agency: int = setting(200, _int(0), "CT25-3.1", doc="same, agency mailbox")
    recipients_per_day_personal: int = setting(1000, _int(0), "CT25-3.1",
        doc="recipients a personal mailbox reaches per sliding day; 0 = unlimited")
    recipients_per_day_unit: int = setting(2000, _int(0), "CT25-3.1", doc="same, unit mailbox")
    recipients_per_day_agency: int = setting(2000, _int(0), "CT25-3.1", doc="same, agency mailbox")
    rate_overrides: Mapping[str, Mapping[str, int]] = setting({}, _rate_overrides, "CT25-3.1",
        doc="per-account limits: \"addr\" = { messages_per_hour = N, recipients_per_day = N }")
    ip_messages_per_hour: int = setting(0, _int(0), "CT25-3.1",
        doc="unauthenticated messages per client IP (IPv6: per ipv6_prefix network) per sliding hour; "
            "0 = off, the default: on an MX the national gateway and the big providers send thousands "
            "an hour from a few addresses, and forged local senders are forged_sender's job. Turn it on "
            "only where every legitimate unauthenticated client is known and small: an MX that receives "
            "only from a known set of relays (set it above their peak), or a submission-only instance")
    ipv6_prefix: int = setting(64, _int(32, 128), doc="IPv6 clients are counted per network of this length")
    ip_rate_skip_mynetworks: bool = setting(True, _bool, doc="no per-IP limit for clients in mynetworks")
    fail_account_state: str = setting("defer", _FAILURE, "CT25-6.4a",
        doc="directory down: defer (DEFER_IF_PERMIT 4.3.0) or dunno")
    fail_sender_login: str = setting("defer", _FAILURE, "CT25-3.2", doc="directory down: defer or dunno")
    fail_forged_sender: str = setting("defer", _FAILURE, "CT25-3.2", doc="internal error: defer or dunno")
    fail_size: str = setting("defer", _FAILURE, "CT25-5.1", doc="internal error: defer or dunno")
    fail_recipients: str = setting("defer", _FAILURE, "CT25-3.1", doc="internal error: defer or dunno")
    fail_rates: str = setting("dunno", _FAILURE, "CT25-3.1", doc="counter store down: dunno (log) or defer")
    stats_listen: tuple[str, ...] = setting(["tcp:10049:interface=127.0.0.1"], _list(_endpoint),
        doc="Prometheus text endpoint (/metrics) and `congvu policyd stats`; [] = off")
    log_decisions: str = setting("all", _choice("all", "blocks"),
        doc="one log line per decision (all), or only for refusals and defers (blocks)")
    workers: int = setting(1, _workers,
        doc="policy server processes sharing the listen sockets, 1 to 64 or \"auto\" (one per CPU core): one "
            "process is one reactor on one core; Postfix keeps its connections open, so they are spread "
            "over the processes as they are accepted. Worth it only with cores to spare: on 2 cores shared "
            "with Postfix and Redis, 2 gained nothing (docs/benchmarks.md). Needs a restart to change")

    def attachment_max_for(self, kind: MailboxType) -> int | None:
        return {"personal": self.attachment_max_personal, "unit": self.attachment_max_unit,
                "agency": self.attachment_max_agency}[kind]

    def messages_per_hour(self, kind: MailboxType) -> int:
        return {"personal": self.messages_per_hour_personal, "unit": self.messages_per_hour_unit,
                "agency": self.messages_per_hour_agency}[kind]

    def recipients_per_day(self, kind: MailboxType) -> int:
        return {"personal": self.recipients_per_day_personal, "unit": self.recipients_per_day_unit,
                "agency": self.recipients_per_day_agency}[kind]

    def failure(self, check: str) -> str:
        return str(getattr(self, f"fail_{check}"))


@dataclass(frozen=True)
class AuthhooksSettings:
    """Dovecot authentication and the self-service password page (CT25-5.2, CT25-3.2)."""

    socket: str = setting("", _str, doc="auth service unix socket; empty = STATE_DIR/authd.sock")
    socket_group: str = setting("", _str,
        doc="group owning the socket (mode 0660): the user Dovecot's auth process runs as, e.g. dovecot")
    web_listen: tuple[str, ...] = setting(["tcp:8080:interface=127.0.0.1"], _list(_endpoint),
        doc="password page and API")
    web_rate_user: int = setting(10, _int(0, 10000), "CT25-3.2",
        doc="password change attempts per account within web_rate_window (page and API); 0 = no limit")
    web_rate_ip: int = setting(30, _int(0, 100000), "CT25-3.2",
        doc="password change attempts per client IP within web_rate_window (lockout_exempt networks are not "
            "limited per IP); 0 = no limit")
    web_rate_window: timedelta = setting("15m", _duration, "CT25-3.2",
        doc="window of web_rate_user and web_rate_ip")
    web_strength_rate: int = setting(120, _int(0, 100000), "SUITE",
        doc="strength checks (the page's feedback while typing) per client IP per minute; 0 = no limit")
    web_origins: tuple[str, ...] = setting([], _list(_str), "SUITE",
        doc="public origins of the page (e.g. https://mail.cantho.gov.vn) accepted in Origin besides the Host")
    web_trusted_proxies: tuple[Any, ...] = setting(["127.0.0.1/32", "::1/128"], _list(_network), "SUITE",
        doc="reverse proxies whose X-Forwarded-For names the client (rate limits and lockout use it)")
    policy_listen: tuple[str, ...] = setting([], _list(_endpoint), "CT25-3.2",
        doc="Dovecot auth policy server (auth_policy_server_url) endpoints; empty = off")
    lockout_failures: int = setting(10, _int(0, 1000), "CT25-3.2",
        doc="distinct wrong passwords for one account within lockout_window that lock it; 0 = no lockout")
    lockout_ip_failures: int = setting(30, _int(0, 100000), "CT25-3.2",
        doc="distinct wrong logins from one client IP within lockout_window that lock the IP; 0 = off")
    lockout_window: timedelta = setting("15m", _duration, "CT25-3.2", doc="window in which failures count")
    lockout_duration: timedelta = setting("15m", _duration, "CT25-3.2", doc="how long a lockout lasts")
    lockout_exempt: tuple[Any, ...] = setting([], _list(_network), "CT25-3.2",
        doc="client networks never locked per IP (the webmail host, which logs everyone in)")
    uid: str = setting("vmail", _str, doc="userdb_uid of every mailbox (name or number)")
    gid: str = setting("vmail", _str, doc="userdb_gid of every mailbox (name or number)")
    home: str = setting("/var/vmail/{domain}/{local_part}", _str,
        doc="home directory template: {domain}, {local_part}, {address}")
    nologin_services: tuple[str, ...] = setting(["imap", "pop3"], _list(_str), "CT25-5.2",
        doc="services told [EXPIRED] via nologin; others (smtp, submission) simply fail")
    hook_timeout: timedelta = setting("10s", _duration, doc="how long congvu-checkpassword waits for authd")
    threads: int = setting(4, _int(1, 64), doc="authd worker threads (password hashing, directory)")
    secret_file: str = setting("", _str, doc="key for wrong-password fingerprints; empty = STATE_DIR/authd.key")
    reminder_every: timedelta = setting("1d", _duration, "CT25-6.4b",
        doc="record the expiry reminder at most this often per account")


@dataclass(frozen=True)
class QuotaSettings:
    """Quota warnings and refusing mail to full mailboxes (CT25-5.1)."""

    listen: tuple[str, ...] = setting(["tcp:10041:interface=127.0.0.1"], _list(_endpoint), "CT25-5.1",
        doc="quota-status endpoints for Postfix")


SECTIONS: dict[str, type[Any]] = {
    "mailbox": MailboxSettings,
    "password": PasswordSettings,
    "lifecycle": LifecycleSettings,
    "naming": NamingSettings,
    "directory": DirectorySettings,
    "state": StateSettings,
    "policyd": PolicydSettings,
    "authhooks": AuthhooksSettings,
    "quota": QuotaSettings,
}

#: Top-level keys: raw default, parser, rule id, doc.
TOP_LEVEL: dict[str, tuple[Any, Parser, str, str]] = {
    "profile": (DEFAULT_PROFILE, _choice(*PROFILES), "SUITE", "built-in regulation profile"),
    "domain": ("cantho.gov.vn", _domain, "CT25-2", "mail domain of the site"),
    "organisation": ("", _str, "CT25-4.4", "organisation name shown in display names"),
    "city": ("", _str, "SUITE", "city or province, refused inside passwords"),
    "language": ("both", _choice("vi", "en", "both"), "SUITE", "language of user-facing text"),
    "state_dir": ("./var", _str, "SUITE", "where embedded databases and sockets live"),
}


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one effective value came from, for ``congvu config show``."""

    source: Literal["suite", "profile", "file"]
    rule_id: str
    raw: Any
    profile_raw: Any  # what the profile (or suite) would have given, for overrides
    doc: str


@dataclass(frozen=True)
class Config:
    """The whole effective configuration.  Build it with :func:`load_config`."""

    path: str
    profile: Profile
    domain: str
    organisation: str
    city: str
    language: Literal["vi", "en", "both"]
    state_dir: Path
    mailbox: MailboxSettings
    password: PasswordSettings
    lifecycle: LifecycleSettings
    naming: NamingSettings
    directory: DirectorySettings
    state: StateSettings
    policyd: PolicydSettings
    authhooks: AuthhooksSettings
    quota: QuotaSettings
    origins: Mapping[str, Origin] = field(compare=False, hash=False, repr=False)

    def state_file(self, configured: str, default_name: str) -> Path:
        """A path from the config, or ``state_dir/default_name`` when left empty."""
        return Path(configured) if configured else self.state_dir / default_name

    @property
    def change_url(self) -> str:
        return self.password.change_url.replace("{domain}", self.domain)


# --------------------------------------------------------------------------- loading


def resolve_path(explicit: str | None) -> Path | None:
    """``--config`` wins, then ``$CONGVU_CONFIG``, then /etc/congvu/congvu.toml if present."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get(ENV_CONFIG):
        return Path(env)
    if DEFAULT_CONFIG_PATH.exists():
        return DEFAULT_CONFIG_PATH
    return None


def load_config(path: str | Path | None = None, *, profile: str | None = None) -> Config:
    """Read ``path`` (None = built-in defaults only) into a :class:`Config`.

    ``profile`` selects the profile when no file is given or the file names none.
    Raises :class:`ConfigError` and nothing else.
    """
    fname = str(path) if path is not None else "<defaults>"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            raw = Path(path).read_bytes()
        except OSError as e:
            raise ConfigError(fname, "", f"cannot read: {e.strerror or e}") from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(fname, "", "not UTF-8 text") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(fname, "", f"not valid TOML: {e}") from None
    try:
        return _build(fname, data, profile)
    except ConfigError:
        raise
    except Exception as e:  # a parser bug must still come out as one sentence
        raise ConfigError(fname, "", f"cannot load: {e}") from None


def config_from_mapping(data: Mapping[str, Any], *, profile: str | None = None,
                        name: str = "<mapping>") -> Config:
    """Build a Config from an already-parsed TOML mapping (tests, ``explain``)."""
    return _build(name, dict(data), profile)


def _resolve(fname: str, key: str, parse: Parser, suite_raw: Any, suite_id: str,
             prof: Sourced | None, given: tuple[bool, Any], doc: str,
             origins: dict[str, Origin]) -> Any:
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


def _build(fname: str, data: dict[str, Any], profile_arg: str | None) -> Config:
    origins: dict[str, Origin] = {}
    allowed = set(TOP_LEVEL) | set(SECTIONS)
    for key, value in data.items():
        if key not in allowed:
            raise ConfigError(fname, key, f"unknown key (known: {', '.join(sorted(allowed))})")
        if key in SECTIONS and not isinstance(value, dict):
            raise ConfigError(fname, key, "expected a [section] table")

    prof_name = data.get("profile", profile_arg or DEFAULT_PROFILE)
    if not isinstance(prof_name, str) or prof_name not in PROFILES:
        raise ConfigError(fname, "profile",
                          f"unknown profile {prof_name!r} (known: {', '.join(sorted(PROFILES))})")
    prof = get_profile(prof_name)

    top: dict[str, Any] = {}
    for key, (raw_default, parse, rid, doc) in TOP_LEVEL.items():
        if key == "profile":
            raw_default = prof_name  # --profile (or the default) is what the file's absence means
        top[key] = _resolve(fname, key, parse, raw_default, rid, prof.get("", key),
                            (key in data, data.get(key)), doc, origins)

    sections: dict[str, Any] = {}
    for sname, cls in SECTIONS.items():
        given: dict[str, Any] = data.get(sname, {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in given:
            if key not in fields:
                raise ConfigError(fname, f"{sname}.{key}",
                                  f"unknown key (known: {', '.join(sorted(fields))})")
        kwargs = {}
        for name, f in fields.items():
            md = f.metadata
            kwargs[name] = _resolve(fname, f"{sname}.{name}", md["parse"], md["default"],
                                    md["rule_id"], prof.get(sname, name),
                                    (name in given, given.get(name)), md["doc"], origins)
        sections[sname] = cls(**kwargs)

    cfg = Config(path=fname, profile=prof, domain=top["domain"],
                 organisation=top["organisation"], city=top["city"] or "",
                 language=top["language"], state_dir=Path(top["state_dir"]),
                 origins=MappingProxyType(origins), **sections)
    _validate(fname, cfg)
    return cfg


def remote_interface(endpoint: str) -> str | None:
    """The interface a TCP/SSL endpoint listens on if it is not loopback ("" = all interfaces), else None.

    Twisted's default ``interface`` is every address ("" for tcp/ssl, ``::`` for tcp6).
    """
    kind, _, rest = endpoint.partition(":")
    if kind not in ("tcp", "tcp6", "ssl"):
        return None  # unix sockets are guarded by their mode and Postfix's chroot
    iface = "::" if kind == "tcp6" else ""
    for part in re.split(r"(?<!\\):", rest):
        if part.startswith("interface="):
            iface = part[len("interface="):].replace("\\:", ":")
    if iface == "localhost":
        return None
    try:
        return None if ipaddress.ip_address(iface).is_loopback else iface
    except ValueError:
        return iface or ""


def check_listen(cfg: Config) -> None:
    """Refuse a policy endpoint reachable from other hosts unless ``[policyd] allow_remote = true``.

    Whoever can connect can spend users' sending budgets (CT25-3.1) and learn which accounts
    are locked (CT25-3.2); Postfix on the same host needs nothing but loopback or a socket.
    """
    if cfg.policyd.allow_remote:
        return
    for endpoint in cfg.policyd.listen:
        iface = remote_interface(endpoint)
        if iface is not None:
            where = f"interface {iface}" if iface not in ("", "::", "0.0.0.0") else "all interfaces"
            raise ConfigError(cfg.path, "policyd.listen",
                              f"{endpoint!r} listens on {where}, not loopback: any host that can connect could "
                              f"spend users' sending budgets and probe account states; use interface=127.0.0.1 "
                              f"or ::1 or a unix socket, or set [policyd] allow_remote = true behind a firewall")


def _validate(fname: str, cfg: Config) -> None:
    """Cross-key checks: values that parse but cannot hold together."""
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
    check_listen(cfg)
    if cfg.directory.backend == "ldap" and not cfg.directory.base_dn:
        raise ConfigError(fname, "directory.base_dn", "required when directory.backend = \"ldap\"")
