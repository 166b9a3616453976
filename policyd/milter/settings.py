"""The ``[milter]`` section: where the content milter listens, what each rule does, and its bounds.

What a message may contain is the regulation's (``[content]``, ``[mailbox] attachment_max``,
in :mod:`congvu.rules.config`); this section says how the milter acts on it, per site:
each rule's action when it finds a violation (``reject`` 5xx, ``tempfail`` 4xx, ``tag``
adds ``X-Congvu-Check``, ``off``) and its failure policy when it cannot decide (directory
down, a structure too large to see whole, an internal error): ``tempfail`` (fail closed,
never a 5xx) or ``accept``.  :class:`MilterConfig` is what the milter reads of the whole
configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from congvu.policyd.settings import PolicydConfig, remote_interface
from congvu.rules.config import boolean, choice, duration, endpoint, list_of, setting, text, whole
from congvu.rules.errors import ConfigError

_ACTION = choice("reject", "tempfail", "tag", "off")
_FAILURE = choice("tempfail", "accept")


@dataclass(frozen=True)
class MilterSettings:
    """The content milter (TH13-9, CT25-5.1, TH13-6.1, TH13-6.2, TH13-7, CT25-3.2)."""

    listen: tuple[str, ...] = setting(["unix:/var/spool/postfix/congvu/milter:mode=660"], list_of(endpoint),
        path=True, doc="endpoints Postfix's smtpd_milters connects to: a unix socket in congvu's directory of "
                       "Postfix's queue (the shipped main.cf's unix:congvu/milter, fastest; group "
                       "[policyd] socket_group), or TCP on a loopback interface")
    apply_to: str = setting("senders", choice("senders", "all"), "TH13-6.1",
        doc="senders: the content rules apply to mail the site's users send (authenticated, or from a client in "
            "[policyd] mynetworks such as the webmail host), the regulations being rules for senders; all: to "
            "mail received from outside too")
    allow_remote: bool = setting(False, boolean, "CT25-3.2",
        doc="allow a TCP listen endpoint on a non-loopback interface: anyone who can connect learns which "
            "addresses delegate to whom; firewall it")
    attachment_size: str = setting("reject", _ACTION, "CT25-5.1",
        doc="attachments together above [mailbox] attachment_max: reject (552 5.3.4), tempfail, tag or off")
    attachment_type: str = setting("reject", _ACTION, "TH13-6.1",
        doc="an attachment outside [content] allowed_types (by name or by content), or a program: "
            "reject (550 5.7.1), tempfail, tag or off; applies where an allow-list is in force")
    unicode: str = setting("tag", _ACTION, "TH13-6.2",
        doc="a text part not in Unicode, or TCVN3/VNI text inside UTF-8: tag (the detection is a heuristic), "
            "reject, tempfail or off; applies where [content] require_unicode")
    subject: str = setting("reject", _ACTION, "TH13-7",
        doc="a missing or empty subject: reject, tempfail, tag or off; applies where [content] require_subject")
    header_from: str = setting("reject", _ACTION, "CT25-3.2",
        doc="an authenticated message whose From:/Sender: is not the login's own address, alias or a mailbox "
            "delegated to it: reject (550 5.7.1), tempfail, tag or off")
    fail_attachment_size: str = setting("tempfail", _FAILURE, "CT25-5.1",
        doc="the rule cannot decide (internal error): tempfail (451 4.3.0) or accept")
    fail_attachment_type: str = setting("tempfail", _FAILURE, "TH13-6.1",
        doc="the structure was not seen whole (more parts or deeper nesting than the bounds below, an "
            "unreadable zip directory) or an internal error: tempfail or accept")
    fail_unicode: str = setting("accept", _FAILURE, "TH13-6.2", doc="internal error: accept or tempfail")
    fail_subject: str = setting("tempfail", _FAILURE, "TH13-7", doc="internal error: tempfail or accept")
    fail_header_from: str = setting("tempfail", _FAILURE, "CT25-3.2",
        doc="directory down or an internal error: tempfail (451 4.3.0) or accept")
    tag_header: str = setting("X-Congvu-Check", text, doc="header added by rules whose action is tag")
    max_parts: int = setting(1000, whole(1, 100_000), doc="MIME parts recorded per message (sizes count past it)")
    max_depth: int = setting(10, whole(1, 100), doc="multipart / message/rfc822 nesting read into")
    max_line: int = setting(65536, whole(1024, 16 * 1024 * 1024), doc="longest MIME header line kept (bytes)")
    text_sample: int = setting(65536, whole(0, 16 * 1024 * 1024),
        doc="decoded bytes of each body text part kept for the Unicode check")
    zip_directory: int = setting(1024 * 1024, whole(4096, 64 * 1024 * 1024),
        doc="end of a zip kept to read its member names (its central directory must fit)")
    max_packet: int = setting(1024 * 1024, whole(65536 + 5, 64 * 1024 * 1024),
        doc="largest milter packet (Postfix sends body chunks of 64 KB, headers up to header_size_limit)")
    max_connections: int = setting(2000, whole(1), doc="connections served at once; more are closed at once")
    idle_timeout: timedelta = setting("900s", duration, doc="close a connection silent this long")
    threads: int = setting(4, whole(1, 256), doc="threads for directory lookups")
    log_decisions: str = setting("all", choice("all", "blocks"),
        doc="one log line per message (all), or only for refusals, defers and tags (blocks)")

    def action(self, rule: str) -> str:
        return str(getattr(self, rule))

    def failure(self, rule: str) -> str:
        return str(getattr(self, f"fail_{rule}"))


class MilterConfig(PolicydConfig, Protocol):
    """What the milter reads: the stores' view (accounts, ``[content]``, ``[mailbox]``), ``[policyd] mynetworks``
    (which clients are the site's own), and ``[milter]``."""

    @property
    def milter(self) -> MilterSettings: ...


def check_milter_listen(cfg: MilterConfig) -> None:
    """Refuse a milter endpoint reachable from other hosts unless ``[milter] allow_remote = true``."""
    if cfg.milter.allow_remote:
        return
    for listen in cfg.milter.listen:
        iface = remote_interface(listen)
        if iface is not None:
            where = f"interface {iface}" if iface not in ("", "::", "0.0.0.0") else "all interfaces"
            raise ConfigError(cfg.path, "milter.listen",
                              f"{listen!r} listens on {where}, not loopback: use interface=127.0.0.1 or a unix "
                              f"socket, or set [milter] allow_remote = true behind a firewall")
