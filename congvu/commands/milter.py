"""``congvu milter``: run the content milter, or explain what it would do with a message.

* ``congvu milter [--config FILE]`` runs it in the foreground (logs on stderr), like
  ``congvu policyd``; ``congvu serve`` runs it with the other services.
* ``congvu milter explain [--login USER] [--sender ADDR] < message.eml`` reads a message as
  it would arrive (headers, blank line, body), walks it with the same MIME walker and runs
  the same rules, and prints which rules ran and why, and the answer Postfix would get.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from congvu.commands.common import EXIT_OK, UsageError, add_config_args, config_for
from congvu.output import Output


def register(sub: Any) -> None:
    p = sub.add_parser("milter", help="the content milter (runs in the foreground without a subcommand)")
    add_config_args(p)
    p.set_defaults(func=_run)
    msub = p.add_subparsers(dest="milter_command")
    explain = msub.add_parser("explain", help="which content rules run on the message on stdin, and why")
    # SUPPRESS: `congvu milter --config X explain` keeps X when explain is given no --config of its own.
    explain.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="config file")
    explain.add_argument("--profile", metavar="P", default=argparse.SUPPRESS, help="profile")
    explain.add_argument("--login", default="", help="the SASL login the message was submitted with")
    explain.add_argument("--sender", default="", help="the envelope sender (MAIL FROM)")
    explain.add_argument("--client", default="127.0.0.1",
                         help="the SMTP client's address (default 127.0.0.1: a host of the site)")
    explain.add_argument("--json", action="store_true", help="machine-readable output")
    explain.set_defaults(func=_explain)


def _run(args: argparse.Namespace, out: Output) -> int:
    from congvu.serve import build_services, run
    return run(args, out, lambda cfg, reactor, listen: build_services(cfg, reactor, listen, ["milter"]))


def split_message(data: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """A message file as the milter receives it: (name, value) headers, unfolded as Postfix sends them, and the body.

    Line ends become CRLF, as Postfix sends the body.
    """
    data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, body = data, b""
    headers: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + b"\r\n" + line)
        elif b":" in line:
            name, _, value = line.partition(b":")
            headers.append((name.strip(), value.lstrip(b" ")))
    return headers, body


def _explain(args: argparse.Namespace, out: Output) -> int:
    from congvu.policyd.milter.checks import Envelope
    from congvu.policyd.milter.engine import Engine
    from congvu.policyd.milter.mime import MimeWalker
    from congvu.policyd.milter.server import limits, open_accounts
    cfg = config_for(args)
    data = sys.stdin.buffer.read()
    if not data.strip():
        raise UsageError("no message on stdin (headers, a blank line, the body)")
    headers, body = split_message(data)
    walker = MimeWalker(limits(cfg))
    for name, value in headers:
        walker.header(name, value)
    walker.body(body)
    facts = walker.finish()
    env = Envelope(sender=args.sender, login=args.login, client=args.client)
    engine = Engine(cfg)
    store = open_accounts(cfg)
    try:
        outcome = engine.evaluate(env, facts, store.get)
    finally:
        store.close()
    if args.json:
        out.json({"action": outcome.action, "reply": outcome.reply, "headers": [list(h) for h in outcome.headers],
                  "rule": outcome.rule, "rule_id": outcome.rule_id, "citation": outcome.citation,
                  "steps": [{"rule": s.rule, "outcome": s.outcome, "note": s.note} for s in outcome.steps],
                  "attachments": [{"name": p.filename, "type": p.content_type, "size": p.size,
                                   "damaged": p.damaged} for p in facts.attachments],
                  "incomplete": list(facts.incomplete)})
        return EXIT_OK
    who = f"login {args.login}" if args.login else f"unauthenticated, client {args.client}"
    out.line(f"# message: {who}, {len(facts.parts)} part(s), {facts.attachments_count} attachment(s) "
             f"({facts.attachments_total} bytes decoded), subject {facts.subject!r} (profile {cfg.profile.name})")
    if facts.incomplete:
        out.line(f"# not seen whole: {'; '.join(facts.incomplete)}")
    if engine.off:
        out.line(f"# off in [milter]: {', '.join(engine.off)}")
    out.table(["rule", "outcome", "why"], [[s.rule, s.outcome, s.note] for s in outcome.steps])
    out.line(f"action={outcome.action}" + (f" {outcome.reply}" if outcome.reply else ""))
    for header, text in outcome.headers:
        out.line(f"# adds {header}: {text}")
    if outcome.rule_id:
        out.line(f"# {outcome.rule_id}: {outcome.citation}")
    return EXIT_OK
