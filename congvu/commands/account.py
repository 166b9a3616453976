"""``congvu account add|show|list|set|passwd``: the operator's hands on mailboxes (CT25-6, CT25-7).

Other tools script these, so names, flags and exit codes are stable: 0 ok, 1 refused
(the reason, its rule id and article are printed), 2 usage, 4 not found.  ``--json``
prints the account's fields; the password hash and its history never leave the store.
A temporary password is printed exactly once, by ``add`` and ``passwd``.
"""

from __future__ import annotations

import argparse
import getpass
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from congvu.commands.common import EXIT_OK, EXIT_REFUSED, UsageError, add_config_args, config_for
from congvu.config import Config
from congvu.directory.model import Account, AccountExists, AccountNotFound, AccountStore, DirectoryError
from congvu.output import Output
from congvu.rules.addresses import canonical
from congvu.rules.config import MAILBOX_TYPES, MailboxType
from congvu.rules.errors import CongvuError
from congvu.rules.lifecycle import AccountState, Event, InvalidTransition, Transition, apply, initial_state
from congvu.rules.limits import effective_quota
from congvu.rules.requirements import citation
from congvu.rules.units import UnitError, format_size, parse_size

if TYPE_CHECKING:
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
    st.add_argument("--reason", help="why the state changes (required with --state)")
    st.add_argument("--by", help="who decided (default: the operator's login name)")
    _common(st)
    st.set_defaults(func=_guard(_set))

    pw = asub.add_parser("passwd", help="set a temporary password (printed once); must change at next login")
    pw.add_argument("address")
    _common(pw)
    pw.set_defaults(func=_guard(_passwd))


def _common(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _guard(fn: Callable[[argparse.Namespace, Output, Config, AccountStore], int]
           ) -> Callable[[argparse.Namespace, Output], int]:
    """Open the store, run the command, close the store; a refusal or a clash is exit 1 with one line.

    Outages and AccountNotFound (exit 4) reach congvu.cli.main, which prints the one line.
    """

    def run(args: argparse.Namespace, out: Output) -> int:
        from congvu.directory.accounts import open_store

        cfg = config_for(args)
        store = open_store(cfg)  # DirectoryError, AccountNotFound: one line from congvu.cli.main
        try:
            return fn(args, out, cfg, store)
        except Refused as e:
            out.error(f"refused: {e}")
            return EXIT_REFUSED
        except AccountExists as e:
            from congvu.rules.names import naming_rule

            rid = naming_rule(cfg, "clash")
            out.error(f"refused: {e} is already an address or alias ({rid}: {citation(rid)})")
            return EXIT_REFUSED
        finally:
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
                  temporary: str | None = None) -> None:
    data = account_fields(cfg, a, hasher)
    if as_json:
        if temporary is not None:
            data["temporary_password"] = temporary
        out.json(data)
        return
    rows = []
    for k, v in data.items():
        if isinstance(v, list):
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


def _add(args: argparse.Namespace, out: Output, cfg: Config, store: AccountStore) -> int:
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
    _show_account(out, cfg, created, hasher, args.json, temporary=temp)
    return EXIT_OK


def _get(cfg: Config, store: AccountStore, text: str) -> Account:
    """The account the operator named, or AccountNotFound (exit 4) naming the full address."""
    key = canonical(text, cfg.domain) or text
    a = store.get(key)
    if a is None:
        raise AccountNotFound(key)
    return a


def _show(args: argparse.Namespace, out: Output, cfg: Config, store: AccountStore) -> int:
    from congvu.directory.accounts import hasher_for

    a = _get(cfg, store, args.address)
    _show_account(out, cfg, a, hasher_for(cfg), args.json)
    return EXIT_OK


def _list(args: argparse.Namespace, out: Output, cfg: Config, store: AccountStore) -> int:
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


def _set(args: argparse.Namespace, out: Output, cfg: Config, store: AccountStore) -> int:
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
    elif args.reason is not None or args.by is not None:
        raise UsageError("--reason and --by go with --state")
    if not changes:
        raise UsageError("nothing to change; see congvu account set --help")
    updated = store.update(a.address, **changes)
    _show_account(out, cfg, updated, hasher_for(cfg), args.json)
    if transition is not None and not args.json:
        _say_transition(out, transition)
    return EXIT_OK


def _passwd(args: argparse.Namespace, out: Output, cfg: Config, store: AccountStore) -> int:
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
    _show_account(out, cfg, updated, hasher, args.json, temporary=temp)
    if not args.json:
        _say_transition(out, transition)
    return EXIT_OK
