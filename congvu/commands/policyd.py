"""``congvu policyd``: run the policy server, read its counters, explain a decision.

* ``congvu policyd [--config FILE]`` runs the server in the foreground (logs on stderr).
* ``congvu policyd stats`` reads the running server's ``/metrics`` (``[policyd] stats_listen``).
* ``congvu policyd explain < request.txt`` runs the checks on requests written as Postfix
  sends them and prints which checks ran and why, without counting anything.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import congvu
from congvu.commands.common import EXIT_OK, EXIT_REFUSED, UsageError, add_config_args, config_for
from congvu.output import Output
from congvu.rules.profiles import DEFAULT_PROFILE

if TYPE_CHECKING:
    from congvu.config import Config
    from congvu.endpoints import Listener
    from congvu.policyd.server import PolicyService

#: How a worker process starts the command line: the same interpreter, without a console script.
CLI = "import sys; from congvu.cli import main; sys.exit(main())"
#: A worker's first inherited listening socket (policyd.workers: 0 control, 1-2 logs, 3 stats).
FIRST_SOCKET_FD = 4


def register(sub: Any) -> None:
    p = sub.add_parser("policyd", help="the Postfix policy server (runs in the foreground without a subcommand)")
    add_config_args(p)
    # A worker process the master starts itself ([policyd] workers, policyd/workers.py): not for operators.
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-fds", help=argparse.SUPPRESS)
    p.set_defaults(func=_run)
    psub = p.add_subparsers(dest="policyd_command")
    stats = psub.add_parser("stats", help="decision counters of the running server")
    stats.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="config file")
    stats.add_argument("--profile", metavar="P", default=argparse.SUPPRESS, help="profile")
    stats.add_argument("--url", help="metrics URL (default: from [policyd] stats_listen)")
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.set_defaults(func=_stats)
    explain = psub.add_parser("explain", help="which checks run on the request(s) on stdin, and why")
    # SUPPRESS: `congvu policyd --config X explain` keeps X when explain is given no --config of its own.
    explain.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="config file")
    explain.add_argument("--profile", metavar="P", default=argparse.SUPPRESS, help="profile")
    explain.add_argument("--json", action="store_true", help="machine-readable output")
    explain.set_defaults(func=_explain)


def _run(args: argparse.Namespace, out: Output) -> int:
    from congvu.serve import build_services, run
    if getattr(args, "worker", None) is not None:
        return _run_worker(args, out)
    return run(args, out, lambda cfg, reactor, listen: build_services(cfg, reactor, listen, ["policyd"]))


def worker_argv(service: PolicyService, executable: str = sys.executable) -> Callable[[int, Sequence[int]], list[str]]:
    """How the master starts worker ``index`` on the sockets ``fds``: this interpreter, this config.

    Read at each spawn, so a restarted child resolves the profile as the master's next
    reload would: a profile line in the file wins anyway; otherwise only a --profile other
    than the default changed it.
    """
    def argv(index: int, fds: Sequence[int]) -> list[str]:
        cfg = service.cfg
        out = [executable, "-c", CLI, "policyd", "--worker", str(index), "--worker-fds", ",".join(map(str, fds))]
        if cfg.origins["profile"].source != "file" and cfg.profile.name != DEFAULT_PROFILE:
            out += ["--profile", cfg.profile.name]
        if cfg.path != "<defaults>":
            out += ["--config", cfg.path]
        return out
    return argv


def worker_env() -> dict[str, str]:
    """The children's environment: this one, with the directory holding ``congvu`` first on PYTHONPATH."""
    env = dict(os.environ)
    root = str(Path(congvu.__file__).absolute().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def parse_fds(text: str) -> tuple[int, ...]:
    try:
        fds = tuple(int(x) for x in text.split(",") if x)
    except ValueError:
        raise UsageError(f"--worker-fds: expected descriptors such as 4,5, got {text!r}") from None
    if not fds or min(fds) < FIRST_SOCKET_FD:
        raise UsageError(f"--worker-fds: expected descriptors from {FIRST_SOCKET_FD} up, got {text!r}")
    return fds


def _run_worker(args: argparse.Namespace, out: Output) -> int:
    """``congvu policyd --worker N --worker-fds 4,5``: serve the inherited sockets until told to stop."""
    from congvu.policyd.server import PolicyService
    from congvu.policyd.workers import WorkerControl
    from congvu.serve import run

    index, fds = int(args.worker), parse_fds(args.worker_fds or "")

    def build(cfg: Config, reactor: Any, listen: Listener) -> list[Any]:
        policy = PolicyService(cfg, reactor, adopt=fds)
        return [policy, WorkerControl(reactor, index, policy.snapshot, lambda: policy.listening)]

    def signals() -> None:
        # Ctrl-C in a terminal reaches the whole process group: the master decides when workers stop.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # A SIGTERM to the process group and the master's own both arrive: stop once.
        stop = signal.getsignal(signal.SIGTERM)

        def once(signum: int, frame: Any) -> None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if callable(stop):
                stop(signum, frame)

        signal.signal(signal.SIGTERM, once)

    return run(args, out, build, tag=f"w{index}", announce=False, when_running=signals)


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
    from congvu.policyd.stats import parse_metrics
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
    from congvu.directory.cache import CachedAccountStore
    from congvu.policyd.checks.base import Context, CountedInstances
    from congvu.policyd.engine import Engine
    from congvu.policyd.protocol import PolicyParser, PolicyProtocolError
    from congvu.policyd.server import open_stores
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
    store, counters, c_reason = open_stores(cfg)
    ctx = Context(cfg=cfg, accounts=CachedAccountStore(store, size=0, ttl=0),
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
