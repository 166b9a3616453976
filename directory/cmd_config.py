"""``congvu config check|show``: validate the file, and show every effective value."""

from __future__ import annotations

import argparse
from typing import Any

from directory.cli import EXIT_OK, add_config_args, config_for
from directory.output import Output


def register(sub: Any) -> None:
    p = sub.add_parser("config", help="validate or show the configuration")
    csub = p.add_subparsers(dest="config_command", required=True)
    check = csub.add_parser("check", help="validate; exit 0 if valid, 1 if not")
    add_config_args(check)
    check.set_defaults(func=_check)
    show = csub.add_parser("show", help="every effective value, its id, and what you changed")
    add_config_args(show)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=_show)


def _check(args: argparse.Namespace, out: Output) -> int:
    cfg = config_for(args)
    out.line(f"{cfg.path}: valid (profile {cfg.profile.name}, domain {cfg.domain})")
    return EXIT_OK


def _show(args: argparse.Namespace, out: Output) -> int:
    cfg = config_for(args)
    rows = []
    for key, o in cfg.origins.items():
        changed = o.source == "file" and o.raw != o.profile_raw
        rows.append({"key": key, "value": o.raw, "rule": o.rule_id, "source": o.source,
                     "changed": changed, "profile_value": o.profile_raw if changed else None,
                     "doc": o.doc})
    if args.json:
        out.json({"file": cfg.path, "profile": cfg.profile.name, "values": rows})
        return EXIT_OK
    out.line(f"# {cfg.path}, profile {cfg.profile.name} ({cfg.profile.title})")
    out.line("# * = changed by the operator; the profile's value follows in brackets")
    out.table(["key", "value", "rule", "from"],
              [[("* " if r["changed"] else "  ") + r["key"], _fmt(r["value"]), r["rule"],
                f"{r['source']} [{_fmt(r['profile_value'])}]" if r["changed"] else r["source"]]
               for r in rows])
    return EXIT_OK


def _fmt(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return str(v)
