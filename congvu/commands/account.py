"""``congvu account add|show|list|set|passwd|unlock``: the operator's hands on mailboxes (CT25-6, CT25-7).

Other tools script these, so names, flags and exit codes are stable: 0 ok, 1 refused
(the reason, its rule id and article are printed), 2 usage, 4 not found.  ``--json``
prints the account's fields; the password hash and its history never leave the store.
A temporary password is printed exactly once, by ``add`` and ``passwd``.  Every change
appends a record to the audit log (who, when, before → after, why: ``--reason``, ``--ref``).

A lockout (too many wrong passwords, CT25-3.2) is part of what ``show`` says about an
account: since when, until when and why; ``unlock`` lifts it, and so does ``passwd``.
"""

from __future__ import annotations

import argparse
import getpass
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from congvu.commands.common import EXIT_OK, EXIT_REFUSED, UsageError, add_config_args, config_for, operator
from congvu.config import Config
from congvu.directory.model import (
    Account,
    AccountExists,
    AccountNotFound,
    AccountStore,
    DirectoryError,
    LockInfo,
    StateUnavailable,
)
from congvu.output import Output
from congvu.rules.addresses import canonical
from congvu.rules.config import MAILBOX_TYPES, MailboxType
from congvu.rules.errors import CongvuError
from congvu.rules.lifecycle import AccountState, Event, InvalidTransition, Transition, apply, initial_state
from congvu.rules.limits import effective_quota
from congvu.rules.requirements import citation
from congvu.rules.units import VIETNAM_TIME, UnitError, format_size, parse_size

if TYPE_CHECKING:
    from congvu.directory.audit import AuditLog
    from congvu.directory.hashing import Hasher

# passlib, zxcvbn, Twisted (rules.names) and the stores load inside the commands, so `congvu config check` stays fast.

_LOCAL = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")


class Refused(CongvuError):
    """The command is understood but the rules say no; exits 1 with the reason and its article."""

    def __init__(self, rule_id: str, reason: str) -> None:
        super().__init__(f"{reason} ({rule_id}: {citation(rule_id)})")
        self.rule_id = rule_id


def register(sub: Any) -> None:
    p = sub.add_parser("account", help="create, show, list and change mailboxes")
    asub = p.add_subparsers(dest="account_command", required=True)

    add = asub.add_parser("add", help="create a mailbox and print its temporary password once")
    add.add_argument("address", help="full address, e.g. nvminh@cantho.gov.vn")
    add.add_argument("--name", required=True, help="full name (họ, tên đệm, tên)")
    add.add_argument("--agency", required=True, help="agency abbreviation, e.g. sonv")
    add.add_argument("--type", required=True, choices=MAILBOX_TYPES, dest="mailbox_type")
    add.add_argument("--title", default="", help='rank or position (chức vụ), e.g. "Chuyên viên"')
    add.add_argument("--unit", default="", help="unit (phòng, ban) inside the agency")
    add.add_argument("--agency-name", default="", help='agency name for the display name, e.g. "Sở Nội vụ"')
    add.add_argument("--display-name", default="", help='default "Full Name - Agency" (CT25-4.4)')
    add.add_argument("--quota", help="quota override, e.g. 12GB")
    _why(add)
    _common(add)
    add.set_defaults(func=_guard(_add))

    show = asub.add_parser("show", help="every field of one mailbox (never the hash)")
    show.add_argument("address")
    _common(show)
    show.set_defaults(func=_guard(_show))

    ls = asub.add_parser("list", help="mailboxes, optionally of one agency")
    ls.add_argument("--agency", help="only this agency")
    ls.add_argument("--state", choices=[s.value for s in AccountState], help="only this lifecycle state")
    _common(ls)
    ls.set_defaults(func=_guard(_list))

    st = asub.add_parser("set", help="change fields of a mailbox")
    st.add_argument("address")
    st.add_argument("--name", help="full name")
    st.add_argument("--display-name")
    st.add_argument("--agency")
    st.add_argument("--unit")
    st.add_argument("--title")
    st.add_argument("--type", choices=MAILBOX_TYPES, dest="mailbox_type")
    st.add_argument("--must-change", choices=("yes", "no"))
    st.add_argument("--quota", help='quota override such as 12GB, or "default"')
    st.add_argument("--alias", action="append", default=[], help="add an alias (repeatable)")
    st.add_argument("--remove-alias", action="append", default=[], help="remove an alias (repeatable)")
    st.add_argument("--delegate", action="append", default=[],
                    help="allow this account to send as the shared mailbox (repeatable)")
    st.add_argument("--remove-delegate", action="append", default=[])
    st.add_argument("--state", choices=[s.value for s in AccountState], help="lifecycle state (CT25-6)")
    st.add_argument("--reason", help="why (kept in the audit log; required with --state)")
    st.add_argument("--ref", default="", help="the agency's request letter or ticket, for the audit log")
    st.add_argument("--by", help="who decided (default: the operator's login name)")
    _common(st)
    st.set_defaults(func=_guard(_set))

    pw = asub.add_parser("passwd", help="set a temporary password (printed once); must change at next login; "
                                        "lifts a lockout")
    pw.add_argument("address")
    _why(pw, required=True)
    _common(pw)
    pw.set_defaults(func=_guard(_passwd))

    un = asub.add_parser("unlock", help="lift a lockout after too many wrong passwords (CT25-3.2)")
    un.add_argument("address")
    _why(un, required=True)
    _common(un)
    un.set_defaults(func=_guard(_unlock))


def _why(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument("--reason", required=required, default="", help="why (kept in the audit log)")
    p.add_argument("--ref", default="", help="the agency's request letter or ticket, for the audit log")


def _common(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


class Audit:
    """The audit log of one command run, opened at its first record."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._log: AuditLog | None = None
        self.actor = operator()

    def record(self, action: str, subject: str, before: dict[str, Any], after: dict[str, Any], *,
               reason: str = "", ref: str = "", rule_id: str = "") -> None:
        from congvu.directory.audit import AuditRecord, open_audit

        if self._log is None:
            self._log = open_audit(self.cfg)
        self._log.append(AuditRecord(_now(), self.actor, action, subject, before, after, reason, ref, rule_id))

    def close(self) -> None:
        if self._log is not None:
            self._log.close()


def _diff(old: Account, changes: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fields that really change, before and after (what the audit log keeps)."""
    before = {k: getattr(old, k) for k in changes if getattr(old, k) != changes[k]}
    return before, {k: changes[k] for k in before}


Command = Callable[[argparse.Namespace, Output, Config, AccountStore, Audit], int]


def _guard(fn: Command) -> Callable[[argparse.Namespace, Output], int]:
    """Open the store, run the command, close the store; a refusal or a clash is exit 1 with one line.

    Outages and AccountNotFound (exit 4) reach congvu.cli.main, which prints the one line.
    """

    def run(args: argparse.Namespace, out: Output) -> int:
        from congvu.directory.accounts import open_store

        cfg = config_for(args)
        store = open_store(cfg)  # DirectoryError, AccountNotFound: one line from congvu.cli.main
        audit = Audit(cfg)
        try:
            return fn(args, out, cfg, store, audit)
        except Refused as e:
            out.error(f"refused: {e}")
            return EXIT_REFUSED
        except AccountExists as e:
            from congvu.rules.names import naming_rule

            rid = naming_rule(cfg, "clash")
            out.error(f"refused: {e} is already an address or alias ({rid}: {citation(rid)})")
            return EXIT_REFUSED
        finally:
            audit.close()
            store.close()

    return run


# --------------------------------------------------------------------------- helpers


def _rid(cfg: Config, key: str) -> str:
    return cfg.origins[key].rule_id


def full_address(cfg: Config, text: str) -> str:
    """``nvminh`` → ``nvminh@<site domain>``; checks syntax and the domain (CT25-2)."""
    text = text.strip().lower()
    if "@" not in text:
        text = f"{text}@{cfg.domain}"
    local, _, domain = text.rpartition("@")
    if not local or not _LOCAL.match(local) or not local.isascii():
        raise UsageError(f"{text!r}: the local part must be lower-case ASCII letters, digits, "
                         f"dots, - or _ (no diacritics, TH13-3.1)")
    if domain != cfg.domain:
        raise Refused(_rid(cfg, "domain"), f"{text}: the domain must be {cfg.domain}")
    return text


def _check_shape(cfg: Config, local: str, kind: MailboxType, agency: str, unit: str) -> None:
    """The address must have the form the scheme gives its mailbox type (CT25-4.1, CT25-4.2, TH13-3).

    CT15-4.2b lets a unit mailbox be named on request (``vpubndninhkieu``), so only CT25
    and TH13 insist on ``[unit].[agency]``.
    """
    from congvu.rules.names import naming_rule

    agency = agency.lower()
    scheme = cfg.naming.scheme
    if kind == "agency" and local != agency:
        raise Refused(naming_rule(cfg, "agency"), f"an agency mailbox is named after the agency's abbreviation: "
                                                  f"expected {agency}, got {local}")
    if kind == "unit" and scheme in ("ct25", "th13") and not local.endswith(f".{agency}"):
        raise Refused(naming_rule(cfg, "unit"), f"a unit mailbox is [unit].[agency]: expected "
                                                f"{unit or 'unit'}.{agency}, got {local}")
    if kind == "personal" and scheme == "th13" and not local.endswith(f".{agency}"):
        raise Refused(naming_rule(cfg, "base"), f"a personal mailbox ends with .{agency}: got {local}")


def _quota(cfg: Config, kind: MailboxType, text: str | None) -> int | None:
    """A quota override checked against the floor and ceiling of the mailbox type (CT25-5.1)."""
    if text is None or text.lower() == "default":
        return None
    try:
        q = parse_size(text)
    except UnitError as e:
        raise UsageError(f"--quota: {e}") from None
    check = effective_quota(cfg.mailbox, kind, q, _rid(cfg, f"mailbox.quota_{kind}"))
    if check.refusal is not None:
        raise Refused(check.refusal.rule_id, check.refusal.text_en)
    return q


def _full_name(text: str) -> str:
    """NFC, single spaces, without the ``|`` that marks a compound family name for ``address suggest``."""
    from congvu.rules.names import clean_text

    name = clean_text(text.replace("|", " "))
    if not name:
        raise UsageError("--name must not be empty")
    return name


def _dt(v: datetime | None) -> str | None:
    return v.isoformat() if v else None


def account_fields(cfg: Config, a: Account, hasher: Hasher) -> dict[str, Any]:
    """What ``--json`` shows: every field of the account, never the hash or its history."""
    quota = a.quota_override if a.quota_override is not None else cfg.mailbox.quota(a.mailbox_type)
    return {
        "address": a.address, "local_part": a.local_part, "domain": a.domain,
        "full_name": a.full_name, "display_name": a.display_name, "agency": a.agency, "unit": a.unit,
        "title": a.title, "mailbox_type": a.mailbox_type, "state": AccountState(a.state).value,
        "state_reason": a.state_reason, "state_by": a.state_by, "state_changed_at": _dt(a.state_changed_at),
        "created_at": _dt(a.created_at), "password_changed_at": _dt(a.password_changed_at),
        "must_change": a.must_change, "last_login_at": _dt(a.last_login_at),
        "quota_override": a.quota_override, "quota": quota,
        "aliases": list(a.aliases), "delegates": list(a.delegates),
        "password_set": bool(a.password_hash), "rehash_due": hasher.needs_update(a.password_hash),
        "password_history_kept": len(a.password_history),
    }


def _show_account(out: Output, cfg: Config, a: Account, hasher: Hasher, as_json: bool,
                  temporary: str | None = None, lockout: LockInfo | str | None = None) -> None:
    data = account_fields(cfg, a, hasher)
    data["lockout"] = lockout if isinstance(lockout, str) or lockout is None else _lock_fields(lockout)
    if as_json:
        if temporary is not None:
            data["temporary_password"] = temporary
        out.json(data)
        return
    rows = []
    for k, v in data.items():
        if k == "lockout":
            v = ("no" if v is None else v if isinstance(v, str)
                 else f"locked out since {_local(v['since'])} until {_local(v['until'])}: {v['reason']} (CT25-3.2; "
                      f"`congvu account unlock` lifts it)")
        elif isinstance(v, list):
            v = ", ".join(v)
        elif isinstance(v, bool):
            v = "yes" if v else "no"
        elif k in ("quota", "quota_override") and v is not None:
            v = format_size(v)
        elif k == "quota" and v is None:
            v = "unlimited"
        rows.append([k, v])
    out.table(["field", "value"], rows)
    if temporary is not None:
        out.line("")
        out.line(f"temporary password (shown once, must be changed at first login, CT25-5.2): {temporary}")


def _public(a: Account) -> dict[str, Any]:
    """The account's fields for the audit log (no hash: AuditLog drops those too)."""
    return {f: getattr(a, f) for f in ("full_name", "display_name", "agency", "unit", "title", "mailbox_type",
                                       "state", "quota_override", "aliases", "delegates")}


def _failure_key(a: Account) -> str:
    """The counter key authd locks an account under (authhooks.service: the canonical address)."""
    return f"authfail:user:{a.address}"


def _lockout(cfg: Config, a: Account) -> LockInfo | str | None:
    """The account's lockout, or a sentence when the state store cannot say."""
    from congvu.directory.counters import open_counters

    try:
        counters = open_counters(cfg)
    except StateUnavailable as e:
        return f"unknown: state store unavailable ({e})"
    try:
        return counters.lock_info(_failure_key(a), _now().timestamp())
    except StateUnavailable as e:
        return f"unknown: state store unavailable ({e})"
    finally:
        counters.close()


def _lift_lockout(cfg: Config, a: Account) -> LockInfo | None:
    """Lift the account's lockout and forget its failures; the lock that was lifted, if any."""
    from congvu.directory.counters import open_counters

    counters = open_counters(cfg)  # StateUnavailable: one line from congvu.cli.main
    try:
        key, now = _failure_key(a), _now().timestamp()
        info = counters.lock_info(key, now)
        counters.unlock(key)
        counters.clear_failures(key)
        return info
    finally:
        counters.close()


def _lock_fields(info: LockInfo) -> dict[str, Any]:
    return {"since": datetime.fromtimestamp(info.since, UTC).isoformat(),
            "until": datetime.fromtimestamp(info.until, UTC).isoformat(), "reason": info.reason}


def _local(iso: str | float) -> str:
    """A time as operators read it: Vietnam's time (UTC+7)."""
    t = datetime.fromisoformat(iso) if isinstance(iso, str) else datetime.fromtimestamp(iso, UTC)
    return f"{t.astimezone(VIETNAM_TIME):%Y-%m-%d %H:%M} (UTC+7)"


#: Events an operator's ``set --state`` may stand for, in the order they are tried.
_OPERATOR_EVENTS = (Event.OPERATOR_LOCK, Event.OPERATOR_RESTORE, Event.OPERATOR_CANCEL, Event.AGENCY_CONFIRMED,
                    Event.PASSWORD_RESET, Event.PASSWORD_EXPIRED, Event.INACTIVITY_SUSPEND,
                    Event.INACTIVITY_RECLAIM)


def _transition(current: AccountState, target: AccountState) -> Transition:
    """The lifecycle event that takes ``current`` to ``target`` (rules/lifecycle.py), or Refused."""
    for event in _OPERATOR_EVENTS:
        try:
            t = apply(current, event)
        except InvalidTransition:
            continue
        if t.new is target:
            return t
    raise Refused("CT25-6.2", f"a {current.value} mailbox cannot become {target.value} "
                              f"(see the transition table in rules/lifecycle.py)")


def _say_transition(out: Output, t: Transition) -> None:
    out.line("")
    out.line(f"state: {t.old.value} → {t.new.value} ({t.event.value}; {t.rule_id}: {citation(t.rule_id)})")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# --------------------------------------------------------------------------- commands


def _add(args: argparse.Namespace, out: Output, cfg: Config, store: AccountStore, audit: Audit) -> int:
    from congvu.directory.accounts import hasher_for, temporary_password
    from congvu.rules.names import display_name

    address = full_address(cfg, args.address)
    local, _, domain = address.rpartition("@")
    kind: MailboxType = args.mailbox_type
    name = _full_name(args.name)
    _check_shape(cfg, local, kind, args.agency, args.unit)
    quota = _quota(cfg, kind, args.quota)
    hasher = hasher_for(cfg)
    temp = temporary_password(cfg.password)
    now = _now()
    account = Account(
        local_part=local, domain=domain, full_name=name, mailbox_type=kind, agency=args.agency.lower(),
        unit=args.unit, title=args.title,
        display_name=args.display_name or display_name(name, args.agency_name or args.agency, cfg).text,
        password_hash=hasher.hash(temp), state=initial_state(cfg.password.must_change_on_create).new,
        created_at=now,
        password_changed_at=now, must_change=cfg.password.must_change_on_create, quota_override=quota)
    store.add(account)
    created = store.get(address)
    if created is None:
        raise DirectoryError(f"{address} vanished right after it was added")
    audit.record("account.add", address, {}, _public(created), reason=args.reason, ref=args.ref,
                 rule_id=initial_state(cfg.password.must_change_on_create).rule_id)
    _show_account(out, cfg, created, hasher, args.json, temporary=temp)
    return EXIT_OK


def _get(cfg: Config, store: AccountStore, text: str) -> Account:
    """The account the operator named, or AccountNotFound (exit 4) naming the full address."""
    key = canonical(text, cfg.domain) or text
    a = store.get(key)
    if a is None:
        raise AccountNotFound(key)
    return a


def _show(args: argparse.Namespace, out: Output, cfg: Config, store: AccountStore, audit: Audit) -> int:
    from congvu.directory.accounts import hasher_for

    a = _get(cfg, store, args.address)
    _show_account(out, cfg, a, hasher_for(cfg), args.json, lockout=_lockout(cfg, a))
    return EXIT_OK


def _list(args: argparse.Namespace, out: Output, cfg: Config, store: AccountStore, audit: Audit) -> int:
    from congvu.directory.accounts import hasher_for

    accounts = [a for a in store.list(args.agency)
                if args.state is None or AccountState(a.state).value == args.state]
    hasher = hasher_for(cfg)
    if args.json:
        out.json([account_fields(cfg, a, hasher) for a in accounts])
        return EXIT_OK
    out.table(["address", "name", "type", "agency", "state", "must change"],
              [[a.address, a.full_name, a.mailbox_type, a.agency, AccountState(a.state).value,
                "yes" if a.must_change else "no"] for a in accounts])
    return EXIT_OK


def _set(args: argparse.Namespace, out: Output, cfg: Config, store: AccountStore, audit: Audit) -> int:
    from congvu.directory.accounts import hasher_for

    a = _get(cfg, store, args.address)
    changes: dict[str, Any] = {}
    if args.name is not None:
        changes["full_name"] = _full_name(args.name)
    for opt, fld in (("display_name", "display_name"), ("agency", "agency"), ("unit", "unit"),
                     ("title", "title")):
        if getattr(args, opt) is not None:
            changes[fld] = getattr(args, opt)
    kind: MailboxType = args.mailbox_type or a.mailbox_type
    if args.mailbox_type is not None:
        changes["mailbox_type"] = kind
    if args.must_change is not None:
        changes["must_change"] = args.must_change == "yes"
    if args.quota is not None:
        changes["quota_override"] = _quota(cfg, kind, args.quota)
    elif "mailbox_type" in changes and a.quota_override is not None:
        _quota(cfg, kind, str(a.quota_override))  # the override must still fit the new type
    if args.alias or args.remove_alias:
        aliases = set(a.aliases) - {full_address(cfg, x) for x in args.remove_alias}
        aliases |= {full_address(cfg, x) for x in args.alias}
        changes["aliases"] = tuple(sorted(aliases))
    delegates = set(a.delegates)
    if args.delegate or args.remove_delegate:
        delegates -= {full_address(cfg, x) for x in args.remove_delegate}
        for d in args.delegate:
            target = store.get(full_address(cfg, d))
            if target is None:
                raise AccountNotFound(f"delegate {d}")
            delegates.add(target.address)
        changes["delegates"] = tuple(sorted(delegates))
    if delegates and kind == "personal":
        raise Refused("CT25-3.2", "only shared agency and unit mailboxes have delegates; "
                                  "no one sends as another person's mailbox")
    transition: Transition | None = None
    if args.state is not None:
        if not args.reason:
            raise UsageError("--state needs --reason")
        wanted = AccountState(args.state)
        changes.update(state_reason=args.reason, state_by=args.by or getpass.getuser())
        if wanted is not a.state:
            transition = _transition(AccountState(a.state), wanted)
            changes.update(state=wanted, state_changed_at=_now())
    elif args.by is not None:
        raise UsageError("--by goes with --state")
    if not changes:
        raise UsageError("nothing to change; see congvu account set --help")
    updated = store.update(a.address, **changes)
    before, after = _diff(a, changes)
    if before:
        audit.record("account.set", a.address, before, after, reason=args.reason or "", ref=args.ref,
                     rule_id=transition.rule_id if transition is not None else "")
    _show_account(out, cfg, updated, hasher_for(cfg), args.json)
    if transition is not None and not args.json:
        _say_transition(out, transition)
    return EXIT_OK


def _passwd(args: argparse.Namespace, out: Output, cfg: Config, store: AccountStore, audit: Audit) -> int:
    from congvu.directory.accounts import hasher_for, password_changes, temporary_password

    a = _get(cfg, store, args.address)
    try:
        transition = apply(AccountState(a.state), Event.PASSWORD_RESET)
    except InvalidTransition as e:
        raise Refused("CT25-7", f"{a.address}: {e}; restore the mailbox first") from None
    hasher = hasher_for(cfg)
    temp = temporary_password(cfg.password)
    now = _now()
    changes = password_changes(a, hasher.hash(temp), history=cfg.password.history, must_change=True, now=now)
    if transition.new is not a.state:
        changes.update(state=transition.new, state_changed_at=now)
    updated = store.update(a.address, **changes)
    lifted = _lift_lockout(cfg, updated)
    before, after = _diff(a, {k: v for k, v in changes.items() if k != "password_history"})
    if lifted is not None:
        before["lockout"], after["lockout"] = _lock_fields(lifted), None
    audit.record("account.passwd", a.address, before, after, reason=args.reason, ref=args.ref,
                 rule_id=transition.rule_id)
    _show_account(out, cfg, updated, hasher, args.json, temporary=temp)
    if not args.json:
        _say_transition(out, transition)
        if lifted is not None:
            out.line("lockout lifted (CT25-3.2): the new password can be used at once")
    return EXIT_OK


def _unlock(args: argparse.Namespace, out: Output, cfg: Config, store: AccountStore, audit: Audit) -> int:
    a = _get(cfg, store, args.address)
    lifted = _lift_lockout(cfg, a)
    if lifted is None:
        out.line(f"{a.address} is not locked out; nothing to do")
        return EXIT_OK
    audit.record("account.unlock", a.address, {"lockout": _lock_fields(lifted)}, {"lockout": None},
                 reason=args.reason, ref=args.ref, rule_id="CT25-3.2")
    if args.json:
        out.json({"address": a.address, "unlocked": True, "was": _lock_fields(lifted)})
    else:
        out.line(f"{a.address}: lockout lifted (it ran until {_local(lifted.until)}; {lifted.reason}) "
                 f"(CT25-3.2: {citation('CT25-3.2')})")
    return EXIT_OK
