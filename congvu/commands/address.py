"""``congvu address suggest|agency|unit``: the address a regulation gives, or why the operator must choose.

Other tools script these commands, so names, flags, JSON keys and exit codes are
stable: 0 an address was chosen, 3 the administrator must name it by hand (CT25-4.3b,
CT15-4.2d, TH13-3.3b), 2 usage errors, 1 a refused abbreviation or a config error.
"""

from __future__ import annotations

import argparse
from datetime import date
from typing import TYPE_CHECKING, Any

from congvu.commands.common import EXIT_MANUAL, EXIT_OK, EXIT_REFUSED, UsageError, add_config_args, config_for
from congvu.config import Config
from congvu.output import Output

if TYPE_CHECKING:
    from congvu.rules.names import AddressSuggestion, NamingError

_SUGGEST_EPILOG = """\
ranks (CT25-4.3b: on the same day the higher rank keeps the plain form):
  a whole number, higher = more senior, or a title: Chủ tịch 100, Phó Chủ tịch 90,
  Giám đốc / Trưởng ban 80, Phó Giám đốc / Phó Trưởng ban 70, Trưởng phòng 60,
  Phó Trưởng phòng 50, Chuyên viên cao cấp 40, Chuyên viên chính 30, Chuyên viên 20,
  Cán sự / Nhân viên 10; no rank = 0.  Titles match by their first words
  ("Phó Giám đốc Sở Nội vụ" = 70).  Equal top ranks for a free plain form: manual.

same-day requests: --same-day "NAME:RANK", once per other person asking the same day
  (--date), e.g. --same-day "Nguyễn Văn Minh:Giám đốc" --same-day "Nguyễn Võ Minh:60".
  CT15 ignores ranks (registration order); TH13 sends every clashing request to the operator.

compound family names: the first word is the family name unless told otherwise:
  --family-words 2, or a | after the family name: "Tôn Nữ | Thị Hà".

exit codes: 0 address chosen, 3 the administrator names it by hand, 2 usage error,
  1 config error.  --json prints {"address", "local_part", "rule", "manual", "reason",
  ...}; address and local_part are null when manual is true.
"""


def register(sub: Any) -> None:
    p = sub.add_parser("address", help="suggest personal, agency and unit addresses (CT25-4, CT15-4.2, TH13-3)")
    asub = p.add_subparsers(dest="address_command", required=True)

    s = asub.add_parser("suggest", help="the personal address for a full name",
                        epilog=_SUGGEST_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("name", help='full name, family name first: "Nguyễn Văn Minh"')
    s.add_argument("--agency", required=True, metavar="ABBR",
                   help="the agency's abbreviation as on the system (sonv, sttt, pvhtt.yendinh)")
    _taken_arg(s)
    add_config_args(s)
    s.add_argument("--date", metavar="YYYY-MM-DD", help="day of the request (default: today)")
    s.add_argument("--rank", metavar="RANK", default="0", help="rank of this person: number or title (see below)")
    s.add_argument("--same-day", action="append", default=[], metavar="NAME:RANK",
                   help="another person asking on the same day (repeatable)")
    s.add_argument("--family-words", type=int, default=1, metavar="N",
                   help="words in the family name (default 1)")
    s.add_argument("--urgent", action="store_true",
                   help="urgent case: CT25-4.3b leaves the name to the administrator")
    s.add_argument("--agency-name", metavar="TEXT",
                   help='agency\'s full name, to show the display name (CT25-4.4): "Sở Nội vụ"')
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=_suggest)

    a = asub.add_parser("agency", help="check an operator-chosen agency abbreviation (CT25-4.1, TH13-3.2a)")
    a.add_argument("abbreviation")
    _taken_arg(a)
    add_config_args(a)
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.set_defaults(func=_agency)

    u = asub.add_parser("unit", help="unit or subordinate agency address (CT25-4.2, TH13-3.2b)")
    u.add_argument("unit", help="the unit's abbreviation (vanphong, pvhtt)")
    u.add_argument("--agency", required=True, metavar="ABBR", help="the parent agency's abbreviation")
    _taken_arg(u)
    add_config_args(u)
    u.add_argument("--json", action="store_true", help="machine-readable output")
    u.set_defaults(func=_unit)


def _taken_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--taken", action="append", default=[], metavar="LIST",
                   help="local parts (or addresses) already in use, comma-separated; repeatable")


def _taken(args: argparse.Namespace) -> list[str]:
    return [t.strip() for item in args.taken for t in item.split(",") if t.strip()]


def _usage(e: NamingError, cfg: Config) -> UsageError:
    return UsageError(f"{e.reason(cfg.language)} ({e.rule_id})")


def _result(s: AddressSuggestion, cfg: Config) -> dict[str, Any]:
    return {"address": s.address, "local_part": s.local_part, "rule": s.rule, "manual": s.manual,
            "reason": s.reason(cfg.language), "citation": s.citation,
            "reason_vi": s.reason_vi, "reason_en": s.reason_en}


def _print(out: Output, s: AddressSuggestion, cfg: Config) -> None:
    out.line(s.address or "manual: the administrator names this mailbox by hand")
    out.line(f"  rule: {s.rule} ({s.citation})")
    out.line(f"  reason: {s.reason(cfg.language)}")


def _suggest(args: argparse.Namespace, out: Output) -> int:
    from congvu.rules.names import NamingError, Request, display_name, parse_name, rank_of, suggest_batch

    cfg = config_for(args)
    try:
        day = date.fromisoformat(args.date) if args.date else date.today()
    except ValueError:
        raise UsageError(f"--date: expected YYYY-MM-DD, got {args.date!r}") from None
    try:
        others = []
        for spec in args.same_day:
            name, sep, rank = spec.rpartition(":")
            if not sep or not name.strip() or not rank.strip():
                raise UsageError(f"--same-day: expected NAME:RANK, got {spec!r}")
            parse_name(name)  # refuse an empty or malformed name here, naming the flag
            others.append(Request(name.strip(), rank_of(rank), day))
        me = Request(args.name, rank_of(args.rank), day, args.urgent, args.family_words)
        s, *results = suggest_batch([me, *others], cfg, agency=args.agency, taken=_taken(args))
        rest = list(zip(others, results, strict=True))
        shown = display_name(args.name, args.agency_name, cfg) if args.agency_name else None
    except NamingError as e:
        raise _usage(e, cfg) from None
    if args.json:
        doc = _result(s, cfg) | {"date": day.isoformat()}
        if shown is not None:
            doc["display_name"] = shown.text
        if rest:
            doc["same_day"] = [{"name": r.name, "rank": r.rank} | _result(o, cfg) for r, o in rest]
        out.json(doc)
    else:
        _print(out, s, cfg)
        if shown is not None:
            out.line(f"  display name: {shown.text} ({shown.rule})")
        if rest:
            out.line(f"same-day requests ({day.isoformat()}):")
            out.table(["name", "rank", "address", "rule"],
                      [[r.name, r.rank, o.address or "manual", o.rule] for r, o in rest])
    return EXIT_MANUAL if s.manual else EXIT_OK


def _agency(args: argparse.Namespace, out: Output) -> int:
    from congvu.rules.names import NamingError, agency_address

    cfg = config_for(args)
    try:
        s = agency_address(args.abbreviation, cfg, _taken(args))
    except NamingError as e:
        return _refused(out, e, cfg, args.json)
    _emit(out, s, cfg, args.json)
    return EXIT_MANUAL if s.manual else EXIT_OK


def _unit(args: argparse.Namespace, out: Output) -> int:
    from congvu.rules.names import NamingError, unit_address

    cfg = config_for(args)
    try:
        s = unit_address(args.unit, args.agency, cfg, _taken(args))
    except NamingError as e:
        return _refused(out, e, cfg, args.json)
    _emit(out, s, cfg, args.json)
    return EXIT_MANUAL if s.manual else EXIT_OK


def _emit(out: Output, s: AddressSuggestion, cfg: Config, as_json: bool) -> None:
    if as_json:
        out.json(_result(s, cfg))
    else:
        _print(out, s, cfg)


def _refused(out: Output, e: NamingError, cfg: Config, as_json: bool) -> int:
    """An abbreviation the regulation does not allow: exit 1 with the reason."""
    from congvu.rules.requirements import citation

    text = e.reason(cfg.language)
    if as_json:
        out.json({"address": None, "local_part": None, "rule": e.rule_id, "manual": False, "refused": True,
                  "reason": text, "citation": citation(e.rule_id)})
    else:
        out.error(f"refused: {text} ({e.rule_id}: {citation(e.rule_id)})")
    return EXIT_REFUSED
