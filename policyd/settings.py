"""The ``[policyd]`` section: the Postfix policy server's listeners, limits and failure policies.

:class:`PolicydConfig` is what the policy server reads of the whole configuration.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import MappingProxyType
from typing import Any, Protocol

from congvu.directory.settings import StoreConfig
from congvu.rules.config import (
    MailboxType,
    boolean,
    choice,
    domain_name,
    duration,
    endpoint,
    list_of,
    network,
    setting,
    size,
    text,
    whole,
)
from congvu.rules.errors import ConfigError

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
                parsed[k] = whole(0)(n)
            except ValueError as e:
                raise ValueError(f"{addr}.{k}: {e}") from None
        out[str(addr).strip().lower()] = MappingProxyType(parsed)
    return MappingProxyType(out)


def optional_size(v: Any) -> int | None:
    """``""`` means "not set here, use the general value"."""
    return None if v == "" else size(v)


_FAILURE = choice("defer", "dunno")


def _workers(v: Any) -> int:
    """policyd processes: 1..64, or "auto" = one per CPU core (os.cpu_count(), at most 64)."""
    if v == "auto":
        return max(1, min(64, os.cpu_count() or 1))
    if isinstance(v, str):
        raise ValueError(f"expected a whole number from 1 to 64 or \"auto\", got {v!r}")
    return int(whole(1, 64)(v))


@dataclass(frozen=True)
class PolicydSettings:
    """The Postfix policy server (CT25-3, CT25-5.1, TH13-9, CT15-8)."""

    listen: tuple[str, ...] = setting(["unix:/var/spool/postfix/congvu/policy:mode=660"], list_of(endpoint),
        path=True, doc="endpoints Postfix connects to: a unix socket inside Postfix's queue directory (smtpd runs "
                       "chrooted there; main.cf names it unix:congvu/policy), or TCP on a loopback interface "
                       "(anything else needs allow_remote)")
    socket_group: str = setting("postfix", text,
        doc="group given the unix sockets of listen (their mode, e.g. mode=660, lets the group in): postfix, "
            "whose smtpd connects; \"\" = the service's own group")
    allow_remote: bool = setting(False, boolean, "CT25-3.2",
        doc="allow a TCP listen endpoint on a non-loopback interface (or on all interfaces): anyone who "
            "can connect can then spend users' sending budgets and probe account states; firewall it")
    mynetworks: tuple[Any, ...] = setting(["127.0.0.0/8", "::1/128"], list_of(network), "CT25-3.2",
        doc="clients trusted to relay with local senders")
    idle_timeout: timedelta = setting("300s", duration, doc="close idle connections (Postfix reconnects)")
    request_timeout: timedelta = setting("10s", duration,
        doc="a request must be complete this long after its first byte (slow writers are cut off)")
    max_request_bytes: int = setting(65536, whole(1024, 16 * 1024 * 1024),
        doc="largest request; a bigger one closes the connection without a reply")
    max_line_bytes: int = setting(8192, whole(256, 16 * 1024 * 1024), doc="longest name=value line")
    max_attributes: int = setting(256, whole(8, 100000), doc="most name=value lines in one request")
    max_connections: int = setting(2000, whole(1), doc="connections served at once; more are closed at once")
    threads: int = setting(8, whole(1, 256), doc="threads for directory and counter calls")
    disabled_checks: tuple[str, ...] = setting([], list_of(choice(
        "account_state", "sender_login", "forged_sender", "size", "recipients", "rates")),
        doc="checks to skip (policyd/checks/__init__.py has the order)")
    local_domains: tuple[str, ...] = setting([], list_of(domain_name), "CT25-3.2",
        doc="site domains besides `domain` that unauthenticated outsiders may not use as sender")
    attachment_max_personal: int | None = setting("", optional_size, "CT25-5.1",
        doc="attachment limit for mail from/to personal mailboxes; empty = mailbox.attachment_max")
    attachment_max_unit: int | None = setting("", optional_size, "CT25-5.1",
        doc="attachment limit for mail from/to unit mailboxes; empty = mailbox.attachment_max")
    attachment_max_agency: int | None = setting("", optional_size, "CT25-5.1",
        doc="attachment limit for mail from/to agency mailboxes; empty = mailbox.attachment_max")
    max_recipients: int = setting(100, whole(0), "CT25-3.1", doc="recipients per message; 0 = unlimited")
    messages_per_hour_personal: int = setting(100, whole(0), "CT25-3.1",
        doc="messages an authenticated personal mailbox sends per sliding hour; 0 = unlimited")
    messages_per_hour_unit: int = setting(200, whole(0), "CT25-3.1", doc="same, unit mailbox")
    messages_per_hour_agency: int = setting(200, whole(0), "CT25-3.1", doc="same, agency mailbox")
    recipients_per_day_personal: int = setting(1000, whole(0), "CT25-3.1",
        doc="recipients a personal mailbox reaches per sliding day; 0 = unlimited")
    recipients_per_day_unit: int = setting(2000, whole(0), "CT25-3.1", doc="same, unit mailbox")
    recipients_per_day_agency: int = setting(2000, whole(0), "CT25-3.1", doc="same, agency mailbox")
    rate_overrides: Mapping[str, Mapping[str, int]] = setting({}, _rate_overrides, "CT25-3.1",
        doc="per-account limits: \"addr\" = { messages_per_hour = N, recipients_per_day = N }")
    ip_messages_per_hour: int = setting(0, whole(0), "CT25-3.1",
        doc="unauthenticated messages per client IP (IPv6: per ipv6_prefix network) per sliding hour; "
            "0 = off, the default: on an MX the national gateway and the big providers send thousands "
            "an hour from a few addresses, and forged local senders are forged_sender's job. Turn it on "
            "only where every legitimate unauthenticated client is known and small: an MX that receives "
            "only from a known set of relays (set it above their peak), or a submission-only instance")
    ipv6_prefix: int = setting(64, whole(32, 128), doc="IPv6 clients are counted per network of this length")
    ip_rate_skip_mynetworks: bool = setting(True, boolean, doc="no per-IP limit for clients in mynetworks")
    fail_account_state: str = setting("defer", _FAILURE, "CT25-6.4a",
        doc="directory down: defer (DEFER_IF_PERMIT 4.3.0) or dunno")
    fail_sender_login: str = setting("defer", _FAILURE, "CT25-3.2", doc="directory down: defer or dunno")
    fail_forged_sender: str = setting("defer", _FAILURE, "CT25-3.2", doc="internal error: defer or dunno")
    fail_size: str = setting("defer", _FAILURE, "CT25-5.1", doc="internal error: defer or dunno")
    fail_recipients: str = setting("defer", _FAILURE, "CT25-3.1", doc="internal error: defer or dunno")
    fail_rates: str = setting("dunno", _FAILURE, "CT25-3.1", doc="counter store down: dunno (log) or defer")
    stats_listen: tuple[str, ...] = setting(["tcp:10049:interface=127.0.0.1"], list_of(endpoint), path=True,
        doc="Prometheus text endpoint (/metrics) and `congvu policyd stats`; [] = off")
    log_decisions: str = setting("all", choice("all", "blocks"),
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



class PolicydConfig(StoreConfig, Protocol):
    """What the policy server reads: the stores' view plus ``[policyd]``."""

    @property
    def policyd(self) -> PolicydSettings: ...


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


def check_listen(cfg: PolicydConfig) -> None:
    """Refuse a policy endpoint reachable from other hosts unless ``[policyd] allow_remote = true``.

    Whoever can connect can spend users' sending budgets (CT25-3.1) and learn which accounts
    are locked (CT25-3.2); Postfix on the same host needs nothing but loopback or a socket.
    """
    if cfg.policyd.allow_remote:
        return
    for listen in cfg.policyd.listen:
        iface = remote_interface(listen)
        if iface is not None:
            where = f"interface {iface}" if iface not in ("", "::", "0.0.0.0") else "all interfaces"
            raise ConfigError(cfg.path, "policyd.listen",
                              f"{listen!r} listens on {where}, not loopback: any host that can connect could "
                              f"spend users' sending budgets and probe account states; use interface=127.0.0.1 "
                              f"or ::1 or a unix socket, or set [policyd] allow_remote = true behind a firewall")


