"""``congvu policyd``: run the policy server, read its counters, explain a decision.

* ``congvu policyd [--config FILE]`` runs the server in the foreground (logs on stderr).
* ``congvu policyd stats`` reads the running server's ``/metrics`` (``[policyd] stats_listen``).
* ``congvu policyd explain < request.txt`` runs the checks on requests written as Postfix
  sends them and prints which checks ran and why, without counting anything.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from directory.cli import EXIT_OK, EXIT_REFUSED, UsageError, add_config_args, config_for
from directory.output import Output


def register(sub: Any) -> None:
    p = sub.add_parser("policyd", help="the Postfix policy server (runs in the foreground without a subcommand)")
    add_config_args(p)
    # A worker process the master starts itself ([policyd] workers, policyd/workers.py): not for operators.
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-fds", help=argparse.SUPPRESS)
    p.set_defaults(func=_run)
    psub = p.add_subparsers(dest="policyd_command")
    stats = psub.add_parser("stats", help="decision counters of the running server")
    add_config_args(stats)
    stats.add_argument("--url", help="metrics URL (default: from [policyd] stats_listen)")
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.set_defaults(func=_stats)
    explain = psub.add_parser("explain", help="which checks run on the request(s) on stdin, and why")
    add_config_args(explain)
    explain.add_argument("--json", action="store_true", help="machine-readable output")
    explain.set_defaults(func=_explain)


def _run(args: argparse.Namespace, out: Output) -> int:
    if getattr(args, "worker", None) is not None:
        from policyd.workers import run_worker
        return run_worker(args, out)
    from directory.cmd_serve import run_services
    return run_services(["policyd"], args, out)


def metrics_url(stats_listen: tuple[str, ...]) -> str | None:
    """``http://host:port/metrics`` from the first TCP endpoint in ``stats_listen``."""
    for ep in stats_listen:
        kind, _, rest = ep.partition(":")
        if kind not in ("tcp", "tcp6"):
            continue
        parts = rest.split(":")
        port = parts[0]
        host = "127.0.0.1" if kind == "tcp" else "::1"
        for opt in parts[1:]:
            if opt.startswith("interface="):
                host = opt.partition("=")[2].replace("\\", "") or host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"
    return None


def _stats(args: argparse.Namespace, out: Output) -> int:
    from policyd.stats import parse_metrics
    url = args.url
    if not url:
        cfg = config_for(args)
        url = metrics_url(cfg.policyd.stats_listen)
        if url is None:
            raise UsageError("no TCP endpoint in [policyd] stats_listen; pass --url")
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except (OSError, urllib.error.URLError) as e:
        out.error(f"congvu policyd stats: cannot read {url}: {getattr(e, 'reason', e)} (is policyd running?)")
        return EXIT_REFUSED
    rows = parse_metrics(text)
    if args.json:
        out.json([{"metric": n, "labels": lab, "value": v} for n, lab, v in rows])
        return EXIT_OK
    out.line(f"# {url}")
    out.table(["check", "verdict", "answers"],
              [[lab.get("check", ""), lab.get("verdict", ""), int(v)] for n, lab, v in rows
               if n == "congvu_policyd_decisions_total"])
    out.line()
    out.table(["counter", "value"],
              [[n.removeprefix("congvu_policyd_") + ("{" + ",".join(f"{k}={v}" for k, v in lab.items()) + "}"
                                                     if lab else ""), int(v)]
               for n, lab, v in rows if n not in ("congvu_policyd_decisions_total", "congvu_policyd_check_enabled")])
    return EXIT_OK


def _explain(args: argparse.Namespace, out: Output) -> int:
    from policyd.checks.base import Context, CountedInstances
    from policyd.engine import Engine
    from policyd.lookup import AccountLookup
    from policyd.protocol import PolicyParser, PolicyProtocolError
    from policyd.server import open_stores
    cfg = config_for(args)
    data = sys.stdin.buffer.read()
    if data and not data.endswith(b"\n\n"):
        data = data.rstrip(b"\r\n") + b"\n\n"  # a file without the final blank line is still one request
    p = cfg.policyd
    try:
        requests = PolicyParser(p.max_request_bytes, p.max_line_bytes, p.max_attributes).feed(data)
    except PolicyProtocolError as e:
        out.error(f"congvu policyd explain: the server would close the connection without reply: {e}")
        return EXIT_REFUSED
    if not requests:
        raise UsageError("no request on stdin (name=value lines, as Postfix sends them)")
    store, a_reason, counters, c_reason = open_stores(cfg)
    ctx = Context(cfg=cfg, accounts=AccountLookup(store, ttl=0, size=0, clock=time.monotonic,
                                                  unavailable_reason=a_reason),
                  counters=counters, clock=time.time, counted=CountedInstances(), counters_reason=c_reason,
                  dry_run=True)
    engine = Engine(ctx, p.disabled_checks)
    results = []
    try:
        for req in requests:
            ev = engine.evaluate(req, explain=True)
            results.append((req, ev))
    finally:
        ctx.accounts.close()
        if counters is not None:
            counters.close()
    if args.json:
        out.json([{"protocol_state": r.protocol_state, "action": ev.action, "check": ev.check,
                   "rule_id": ev.rule_id, "citation": ev.citation,
                   "steps": [{"check": s.check, "outcome": s.outcome, "note": s.note} for s in ev.steps]}
                  for r, ev in results])
        return EXIT_OK
    for n, (req, ev) in enumerate(results, 1):
        who = req.sasl_username or f"unauthenticated {req.client_address or '?'}"
        out.line(f"# request {n}: {req.protocol_state or '?'} from {who}, sender <{req.sender}>"
                 + (f", recipient <{req.recipient}>" if req.recipient else ""))
        if engine.disabled:
            out.line(f"# disabled by [policyd] disabled_checks: {', '.join(engine.disabled)}")
        out.table(["check", "outcome", "why"], [[s.check, s.outcome, s.note] for s in ev.steps])
        out.line(f"action={ev.action}")
        if ev.rule_id:
            out.line(f"# {ev.rule_id}: {ev.citation}")
        out.line()
    return EXIT_OK
