"""The content rules, in the one order they run, each a small pure unit.

A rule reads the message's envelope (:class:`Envelope`), what the MIME walker learnt
(:class:`~congvu.policyd.milter.mime.MessageFacts`), the accounts it asked for and the
configuration, and returns a :class:`Result`: a :class:`~congvu.rules.decision.Decision`
citing the article in force (TH13-9 under thanhhoa-2013, CT25-5.1 under cantho-2025:
the profile's own id for the value, ``cfg.origins``), or None with a note saying why it
let the message pass.  What a violation *does* (reject, tempfail, tag, off) and what
happens when a rule cannot decide are ``[milter] <rule>`` and ``fail_<rule>``, applied
by the engine.  A rule raises :class:`Incomplete` when it cannot decide on what it saw.

Order: the cheap structural rules first (size, type), then text, subject, and the
header sender last, the only one that may need the directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import getaddresses
from typing import ClassVar, NamedTuple

from congvu.directory.model import Account
from congvu.policyd.checks.account_state import BLOCKED
from congvu.policyd.milter.mime import MessageFacts, Part
from congvu.policyd.milter.settings import MilterConfig
from congvu.rules.addresses import canonical
from congvu.rules.content import (
    UNICODE_CHARSETS,
    extension,
    legacy_encoding,
    member_problem,
    sniff,
    subject_problem,
    type_problem,
    unicode_problem,
)
from congvu.rules.decision import Decision, Verdict
from congvu.rules.errors import CongvuError
from congvu.rules.units import MB


class Incomplete(CongvuError):
    """The rule cannot decide: the message's structure was not seen whole (the walker's bounds)."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """What Postfix said about the message besides its content."""

    queue_id: str = ""
    sender: str = ""  # MAIL FROM, without angle brackets ("" = the null sender)
    login: str = ""  # the SASL login ({auth_authen}); "" = not authenticated
    client: str = ""  # the SMTP client's IP address (Postfix's "_" macro); "" = unknown


class Result(NamedTuple):
    decision: Decision | None
    note: str


def passed(note: str) -> Result:
    return Result(None, note)


def _mb(n: int) -> str:
    return f"{n / MB:.1f}".rstrip("0").rstrip(".")


class Rule:
    """Base of every rule: a name (its ``[milter]`` keys), the config key whose id it cites, and ``run``."""

    name: ClassVar[str]
    #: The setting whose requirement id (as the profile in force gives it) the rule cites.
    cites: ClassVar[str]

    @property
    def summary(self) -> str:
        return (type(self).__doc__ or "").strip().splitlines()[0]

    def rule_id(self, cfg: MilterConfig) -> str:
        return cfg.origins[self.cites].rule_id

    def skip_reason(self, env: Envelope, facts: MessageFacts, cfg: MilterConfig) -> str | None:
        """Why the rule does not apply to this message, or None."""
        return None

    def lookups(self, env: Envelope, facts: MessageFacts, cfg: MilterConfig) -> tuple[str, ...]:
        """Addresses whose accounts ``run`` reads (the engine fetches them, from a thread if not cached)."""
        return ()

    def run(self, env: Envelope, facts: MessageFacts, accounts: Mapping[str, Account | None],
            cfg: MilterConfig) -> Result:
        raise NotImplementedError


class AttachmentSize(Rule):
    """All attachments of one message together within the profile's limit "per sending" (TH13-9, CT25-5.1)."""

    name = "attachment_size"
    cites = "mailbox.attachment_max"

    def skip_reason(self, env: Envelope, facts: MessageFacts, cfg: MilterConfig) -> str | None:
        return "no attachments" if not facts.attachments_count else None

    def run(self, env: Envelope, facts: MessageFacts, accounts: Mapping[str, Account | None],
            cfg: MilterConfig) -> Result:
        limit, total, n = cfg.mailbox.attachment_max, facts.attachments_total, facts.attachments_count
        what = f"{n} attachment(s), {total} bytes decoded, largest {facts.attachments_largest}"
        if total <= limit:
            return passed(f"{what} ≤ {limit} bytes")
        return Result(Decision(
            Verdict.REJECT, self.rule_id(cfg),
            text_vi=f"Tập tin đính kèm {_mb(total)} MB ({n} tệp, lớn nhất {_mb(facts.attachments_largest)} MB) "
                    f"vượt giới hạn {_mb(limit)} MB mỗi lần gửi",
            text_en=f"Attachments of {_mb(total)} MB ({n} file(s), largest {_mb(facts.attachments_largest)} MB) "
                    f"exceed the limit of {_mb(limit)} MB per message",
            smtp_code=552, enhanced="5.3.4"), f"{what} > {limit} bytes")


def _is_file(part: Part) -> bool:
    """A document the sender attached: named or disposed as attachment (unnamed inline images are not)."""
    return bool(part.filename) or part.disposition == "attachment"


class AttachmentType(Rule):
    """Attached files in the allowed formats, by name and by content; zips looked into one level (TH13-6.1)."""

    name = "attachment_type"
    cites = "content.allowed_types"

    def skip_reason(self, env: Envelope, facts: MessageFacts, cfg: MilterConfig) -> str | None:
        if not cfg.content.allowed:
            return "no allow-list in force ([content] allowed_types = [])"
        if not facts.attachments_count:
            return "no attachments"
        return None

    def run(self, env: Envelope, facts: MessageFacts, accounts: Mapping[str, Account | None],
            cfg: MilterConfig) -> Result:
        if facts.incomplete:
            raise Incomplete("; ".join(facts.incomplete))
        allowed = cfg.content.allowed
        checked = 0
        for part in facts.parts:
            if not part.is_attachment:
                continue
            kind = sniff(part.head, part.members)
            if not _is_file(part) and kind not in ("exe", "elf", "macho", "script"):
                continue
            checked += 1
            problem = type_problem(part.filename, kind, allowed)
            if not problem and kind == "zip" and extension(part.filename) == "zip":
                if part.members is None:
                    raise Incomplete(f"{part.filename}: {part.archive_error}")
                problem = next((p for p in (member_problem(m, allowed) for m in part.members) if p), "")
            if problem:
                return Result(self._refuse(cfg, part.filename or f"({part.content_type})", problem), problem)
        return passed(f"{checked} attached file(s) in allowed formats ({', '.join(sorted(allowed))})")

    def _refuse(self, cfg: MilterConfig, name: str, problem: str) -> Decision:
        formats = ", ".join(sorted(cfg.content.allowed))
        return Decision(
            Verdict.REJECT, self.rule_id(cfg),
            text_vi=f"Tệp đính kèm {name} không thuộc định dạng được phép ({formats})",
            text_en=f"Attachment refused: {problem}; allowed formats: {formats}",
            smtp_code=550, enhanced="5.7.1")


class Unicode(Rule):
    """Text of the message in Unicode (TCVN 6909:2001, UTF-8), not TCVN3 or VNI (TH13-6.2)."""

    name = "unicode"
    cites = "content.require_unicode"

    def skip_reason(self, env: Envelope, facts: MessageFacts, cfg: MilterConfig) -> str | None:
        return None if cfg.content.require_unicode else "Unicode not required ([content] require_unicode = false)"

    def run(self, env: Envelope, facts: MessageFacts, accounts: Mapping[str, Account | None],
            cfg: MilterConfig) -> Result:
        problem = next((f"Subject: encoded in {cs}" for cs in facts.subject_charsets if cs not in UNICODE_CHARSETS),
                       "")
        if not problem and facts.subject:
            kind, hits = legacy_encoding(facts.subject)
            problem = f"Subject: {kind.upper()} text ({hits} telltales)" if kind else ""
        texts = [p for p in facts.parts if not p.is_attachment and p.content_type in ("text/plain", "text/html")]
        for part in texts:
            if problem:
                break
            why = unicode_problem(part.charset, part.sample)
            problem = f"part {part.path} ({part.content_type}): {why}" if why else ""
        if not problem:
            return passed(f"subject and {len(texts)} text part(s) are Unicode")
        return Result(Decision(
            Verdict.REJECT, self.rule_id(cfg),
            text_vi="Nội dung thư phải dùng bảng mã Unicode (TCVN 6909:2001, UTF-8), không dùng TCVN3 hay VNI",
            text_en=f"Message text must be Unicode (TCVN 6909:2001, UTF-8): {problem}",
            smtp_code=550, enhanced="5.6.0"), problem)


class Subject(Rule):
    """A subject stating the matter of the message, never empty (TH13-7)."""

    name = "subject"
    cites = "content.require_subject"

    def skip_reason(self, env: Envelope, facts: MessageFacts, cfg: MilterConfig) -> str | None:
        return None if cfg.content.require_subject else "no subject rule ([content] require_subject = false)"

    def run(self, env: Envelope, facts: MessageFacts, accounts: Mapping[str, Account | None],
            cfg: MilterConfig) -> Result:
        problem = subject_problem(facts.subject)
        if not problem:
            return passed("the subject states something")
        return Result(Decision(
            Verdict.REJECT, self.rule_id(cfg),
            text_vi="Thư phải có tiêu đề bằng tiếng Việt nêu nội dung cần trao đổi",
            text_en="A message needs a subject stating its matter",
            smtp_code=550, enhanced="5.7.1"), problem)


def header_addresses(facts: MessageFacts) -> list[str]:
    """Every address of From: and Sender:, canonical ("" for a mailbox that is not an address)."""
    values = [v for v in (facts.from_header, facts.sender_header) if v]
    return [canonical(addr) or "" for _, addr in getaddresses(values)] if values else []


class HeaderFrom(Rule):
    """The From:/Sender: of authenticated mail belongs to the login: own address, alias or delegation (CT25-3.2)."""

    name = "header_from"
    cites = "milter.header_from"

    def _login(self, env: Envelope, cfg: MilterConfig) -> str:
        return canonical(env.login, cfg.domain) or ""

    def skip_reason(self, env: Envelope, facts: MessageFacts, cfg: MilterConfig) -> str | None:
        if not env.login:
            return "client did not authenticate (no {auth_authen})"
        if facts.from_header is None and facts.sender_header is None:
            return "no From: or Sender: header"
        return None

    def lookups(self, env: Envelope, facts: MessageFacts, cfg: MilterConfig) -> tuple[str, ...]:
        login = self._login(env, cfg)
        others = [a for a in header_addresses(facts) if a and a != login]
        return (login, *dict.fromkeys(others)) if others else ()

    def run(self, env: Envelope, facts: MessageFacts, accounts: Mapping[str, Account | None],
            cfg: MilterConfig) -> Result:
        login = self._login(env, cfg)
        addresses = header_addresses(facts)
        if not addresses:
            return Result(self._refuse(cfg, facts.from_header or "", login), "From: names no address")
        account = accounts.get(login)
        for addr in dict.fromkeys(addresses):
            if addr == login:
                continue
            if account is None:
                # Dovecot has just authenticated this login: a directory without it is an inconsistency
                # to fix, not a verdict on the mail (as policyd's account_state check).
                return Result(Decision(
                    Verdict.DEFER, self.rule_id(cfg),
                    text_vi=f"Tài khoản {login} không có trong danh bạ thư điện tử công vụ, thử lại sau",
                    text_en=f"The account {login} is not in the official mail directory, try again later",
                    smtp_code=451, enhanced="4.7.1"), "authenticated login unknown to the directory")
            if addr and (addr == account.address or addr in account.aliases):
                continue
            owner = accounts.get(addr) if addr else None
            if owner is not None and account.address in owner.delegates:
                blocked = BLOCKED.get(owner.state)
                if blocked is None:
                    continue
                rid, vi, en = blocked
                return Result(Decision(
                    Verdict.REJECT, rid, text_vi=f"{vi} ({owner.address}); không thể gửi thư thay",
                    text_en=f"{en} ({owner.address}); nobody can send as it",
                    smtp_code=550, enhanced="5.7.1"), f"shared mailbox {owner.address} is {owner.state.value}")
            why = f"{addr or 'an invalid address'} is not an address of {login}"
            return Result(self._refuse(cfg, addr, login), why)
        return passed(f"From:/Sender: belong to {login} (own address, alias or delegation)")

    def _refuse(self, cfg: MilterConfig, addr: str, login: str) -> Decision:
        return Decision(
            Verdict.REJECT, self.rule_id(cfg),
            text_vi=f"Địa chỉ người gửi trong thư (From: {addr}) không thuộc tài khoản đăng nhập {login}",
            text_en=f"The From: address {addr} is not owned by the login {login}",
            smtp_code=550, enhanced="5.7.1")


#: THE order.  Each rule's action is ``[milter] <name>``, its failure policy ``[milter] fail_<name>``.
RULES: tuple[type[Rule], ...] = (AttachmentSize, AttachmentType, Unicode, Subject, HeaderFrom)

RULE_NAMES: tuple[str, ...] = tuple(r.name for r in RULES)
