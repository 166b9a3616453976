"""``congvu serve``: every long-running service of the suite, in one process and one reactor.

Services are a registry of starters.  A starter is ``start(cfg, reactor)`` returning a
Deferred that fires with a :class:`RunningService` once it listens; adding a service
(the auth daemon, the quota service) is one line in :data:`SERVICES`.  SIGHUP re-reads
the config file: a valid one is handed to every service's ``reload``; an invalid one is
logged and the running config kept.  ``congvu policyd`` uses the same runner with one
service.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from directory.cli import EXIT_OK, EXIT_REFUSED, add_config_args, config_for
from directory.output import Output
from rules.config import Config, ConfigError, load_config, resolve_path


class RunningService(Protocol):
    name: str
    #: What it listens on, one line each, printed at start-up.
    listening: list[str]

    def reload(self, cfg: Config) -> None: ...

    def stop(self) -> Any: ...


#: Service name → "module:function" of its starter, in start order.
SERVICES: dict[str, str] = {
    "policyd": "policyd.server:start",
    "authd": "authhooks.authd:start",
}


def starter(name: str) -> Callable[[Config, Any], Any]:
    module, _, func = SERVICES[name].partition(":")
    fn: Callable[[Config, Any], Any] = getattr(importlib.import_module(module), func)
    return fn


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run every long-running service (what scripts/run.sh starts)")
    add_config_args(p)
    p.add_argument("--only", action="append", choices=sorted(SERVICES), metavar="SERVICE",
                   help=f"run only this service (repeatable; known: {', '.join(SERVICES)})")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace, out: Output) -> int:
    return run_services(args.only or list(SERVICES), args, out)


def start_logging(stream: Any = None) -> None:
    """Log to stderr, one line per event at info and above, as the foreground commands do.

    Twisted's stock text observer formats the time with strftime on every event; the
    policy server logs one line per decision, so the timestamp is formatted once a second.
    """
    from twisted.logger import (
        FileLogObserver,
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        formatEvent,
        globalLogBeginner,
    )
    stamp: list[Any] = [None, ""]

    def fmt(event: dict[str, Any]) -> str:
        t = event.get("log_time") or time.time()
        sec = int(t)
        if stamp[0] != sec:
            stamp[0], stamp[1] = sec, time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(sec))
        text = event.get("congvu_line") or formatEvent(event)  # pre-formatted hot-path lines
        failure = event.get("log_failure")
        if failure is not None:
            text += "\n" + failure.getTraceback()
        level = event.get("log_level")
        return f"{stamp[1]} [{event.get('log_namespace', '-')}#{level.name if level else '-'}] {text}\n"

    predicate: Any = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    text_observer: Any = FileLogObserver(stream or sys.stderr, fmt)
    observer: Any = FilteringLogObserver(text_observer, [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def run_services(names: Sequence[str], args: argparse.Namespace, out: Output) -> int:
    """Start ``names`` in one reactor, print where they listen, run until SIGTERM/SIGINT."""
    cfg = config_for(args)  # a ConfigError stops here with one sentence (cli.main)
    path = resolve_path(getattr(args, "config", None))
    profile = getattr(args, "profile", None)
    from twisted.internet import defer
    from twisted.internet import reactor as _reactor
    reactor: Any = _reactor
    from twisted.logger import Logger
    log = Logger(namespace="congvu.serve")
    start_logging()
    running: list[RunningService] = []
    exit_code = [EXIT_OK]

    def reload() -> None:
        try:
            new = load_config(path, profile=profile)
        except ConfigError as e:
            log.error("reload refused, keeping the running configuration: {err}", err=str(e))
            return
        for svc in running:
            svc.reload(new)

    def started(services: list[RunningService]) -> None:
        running.extend(services)
        for svc in services:
            for line in svc.listening:
                out.line(f"{svc.name}: listening on {line}")
        out.line(f"congvu serve: {len(services)} service(s) running with {cfg.path} "
                 f"(profile {cfg.profile.name}); SIGHUP reloads, SIGTERM stops")
        out.out.flush()
        signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(reload))

    def failed(f: Any) -> None:
        err = f.value.subFailure.value if isinstance(f.value, defer.FirstError) else f.value
        out.error(f"congvu: cannot start: {err}")
        exit_code[0] = EXIT_REFUSED
        reactor.stop()

    def go() -> None:
        ds = [defer.maybeDeferred(starter(n), cfg, reactor) for n in names]
        defer.gatherResults(ds, consumeErrors=True).addCallbacks(started, failed)

    def shutdown() -> Any:
        return defer.gatherResults([defer.maybeDeferred(s.stop) for s in running], consumeErrors=True)

    reactor.callWhenRunning(go)
    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    reactor.run()
    return exit_code[0]
