"""``congvu serve``: every long-running service of the suite, in one process, one reactor, one MultiService.

This is the composition root of the daemons: it loads the config, builds each service
with what it needs (the stores, the shared AuthService, a :class:`~congvu.endpoints.Listener`)
and runs them under one ``twisted.application.service.MultiService``.  The reactor is
started here and only here: ``congvu policyd``, ``congvu authd`` and a policyd worker
process run the same :func:`run` with fewer services.

Start-up: every service starts listening; once all are (their ``ready`` Deferreds), the
listening lines are printed, SIGHUP is handled, and services that want to know
(``serving()``) are told.  If one fails, what did start is stopped and the command exits 1
with the reason in one line.  SIGHUP re-reads the config file: a valid one is handed to
every service's ``reload``; an invalid one is logged and the running config kept.
SIGTERM and SIGINT stop the services in reverse order and exit 0.  Under systemd
(``Type=notify``, ``conf/systemd/congvu.service``) the runner says READY once every
service listens, RELOADING/READY around a SIGHUP and STOPPING at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from congvu.commands.common import EXIT_OK, EXIT_REFUSED, add_config_args, config_for
from congvu.config import Config, load_config, resolve_path
from congvu.output import Output
from congvu.rules.errors import ConfigError

if TYPE_CHECKING:
    from congvu.endpoints import Listener

#: The services ``congvu serve`` runs, in start order (stopped in reverse).
SERVICE_NAMES: tuple[str, ...] = ("policyd", "milter", "authd", "web")

#: ``build(cfg, reactor, listen)`` → the services to run (not started yet).
Build = Callable[[Config, Any, "Listener"], list[Any]]


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run every long-running service (what scripts/run.sh starts)")
    add_config_args(p)
    p.add_argument("--only", action="append", choices=SERVICE_NAMES, metavar="SERVICE",
                   help=f"run only this service (repeatable; known: {', '.join(SERVICE_NAMES)}; authd includes "
                        "its password page; web alone is a password page on a host without the auth socket)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace, out: Output) -> int:
    names = list(args.only or SERVICE_NAMES)
    if "authd" in names and "web" not in names:
        names.append("web")  # the auth service serves its page too (none if [authhooks] web_listen = [])
    return run(args, out, lambda cfg, reactor, listen: build_services(cfg, reactor, listen, names))


def build_services(cfg: Config, reactor: Any, listen: Listener, names: Sequence[str]) -> list[Any]:
    """The named services, wired: the policy server, the content milter, the auth service, the password page.

    The page shares the auth service's AuthService and thread pool when both run, so a
    password changed on the page decides the very next login (CT25-5.2).
    """
    services: list[Any] = []
    if "policyd" in names:
        from congvu.commands.policyd import worker_argv, worker_env
        from congvu.policyd.server import PolicyService
        policy = PolicyService(cfg, reactor, listen=listen)
        policy.worker_argv, policy.worker_env = worker_argv(policy), worker_env()
        services.append(policy)
    if "milter" in names:
        from congvu.policyd.milter.server import MilterService
        services.append(MilterService(cfg, reactor, listen=listen))
    if "authd" in names or "web" in names:
        from congvu.authhooks.authd import Authd, build_service
        from congvu.authhooks.web import PasswordWebService
        auth = build_service(cfg)
        authd = None
        if "authd" in names:
            authd = Authd(cfg, auth, reactor, listen=listen)
            services.append(authd)
        if "web" in names:
            services.append(PasswordWebService(cfg, auth, reactor, authd.pool if authd is not None else None,
                                               listen=listen, owns_service=authd is None))
    return services


def sd_notify(state: str) -> bool:
    """Tell systemd ``state`` (``READY=1``…) when it started us with Type=notify; False when it did not.

    The protocol is one datagram to ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract
    namespace); failing to send is not worth stopping a mail service for.
    """
    where = os.environ.get("NOTIFY_SOCKET", "")
    if not where:
        return False
    address = "\0" + where[1:] if where.startswith("@") else where
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), address)
    except OSError:
        return False
    return True


def reread(path: str | Path | None, profile: str | None, log: Any) -> Config | None:
    """The config file again, for a SIGHUP; None (and one error line) if it is refused: keep the running one."""
    try:
        return load_config(path, profile=profile)
    except ConfigError as e:
        log.error("reload refused, keeping the running configuration: {err}", err=str(e))
        return None


def run(args: argparse.Namespace, out: Output, build: Build, *, tag: str = "", announce: bool = True,
        when_running: Callable[[], None] | None = None) -> int:
    """Build the services, run them in the reactor until SIGTERM/SIGINT; the exit code.

    ``tag`` marks log lines (a policyd worker's ``w2``); ``announce`` prints where each
    service listens on stdout; ``when_running`` runs once the reactor does (signal set-up).
    """
    cfg = config_for(args)  # a ConfigError stops here with one sentence (cli.main)
    path = resolve_path(getattr(args, "config", None))
    profile = getattr(args, "profile", None)
    from twisted.application.service import MultiService
    from twisted.internet import defer
    from twisted.internet import reactor as _reactor
    from twisted.logger import Logger

    from congvu.endpoints import Listener
    from congvu.logging import start_logging
    reactor: Any = _reactor
    log = Logger()
    logbuf = start_logging(reactor=reactor, tag=tag)
    services = build(cfg, reactor, Listener(reactor))  # stores open here: an outage is one line from cli.main
    root: Any = MultiService()  # type: ignore[no-untyped-call]
    for svc in services:
        svc.setServiceParent(root)
    exit_code = [EXIT_OK]

    def reload() -> None:
        sd_notify("RELOADING=1")
        new = reread(path, profile, log)
        if new is not None:
            for svc in services:
                if hasattr(svc, "reload"):
                    svc.reload(new)
        sd_notify("READY=1")

    def started(_: Any) -> None:
        for svc in services:
            for line in getattr(svc, "listening", ()):
                if announce:
                    out.line(f"{svc.name}: listening on {line}")
                else:
                    log.info("{name}: listening on {line}", name=svc.name, line=line)
        if announce:
            out.line(f"congvu serve: {len(services)} service(s) running with {cfg.path} "
                     f"(profile {cfg.profile.name}); SIGHUP reloads, SIGTERM stops")
            out.out.flush()
        signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(reload))
        for svc in services:
            if hasattr(svc, "serving"):
                svc.serving()
        if not tag:  # a policyd worker is not the unit's main process
            sd_notify(f"READY=1\nSTATUS={len(services)} service(s) running, profile {cfg.profile.name}")

    def failed(f: Any) -> None:
        err = f.value.subFailure.value if isinstance(f.value, defer.FirstError) else f.value
        out.error(f"congvu: cannot start: {err}")
        exit_code[0] = EXIT_REFUSED
        stopping = stop()
        stopping.addBoth(lambda _: reactor.stop())

    def stop() -> defer.Deferred[Any]:
        if not root.running:
            return defer.succeed(None)
        if not tag:
            sd_notify("STOPPING=1")
        return defer.maybeDeferred(root.stopService)

    def go() -> None:
        if when_running is not None:
            when_running()
        try:
            root.startService()
        except Exception:
            failed(defer.fail())
            return
        readies = [svc.ready for svc in services if getattr(svc, "ready", None) is not None]
        defer.gatherResults(readies, consumeErrors=True).addCallbacks(started, failed)

    reactor.callWhenRunning(go)
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()
    logbuf.close()
    return exit_code[0]
