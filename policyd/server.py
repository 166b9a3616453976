"""The Twisted glue: endpoints, one thin protocol per connection, the thread pool, reload, /metrics.

Per SMTPD_POLICY_README the server answers every request on a connection, in order,
and keeps it open; on trouble (malformed or oversized input) it logs and closes without
a reply, and Postfix retries.  A request whose checks need no I/O is answered inside the
reactor; one that needs the directory goes to a thread pool, and the rate check's counter
calls go to Redis from the reactor (:mod:`policyd.redis_native`, batched per tick), and
later requests on that connection wait for it so answers stay in order.  Timeouts are
checked by one sweep a second over all connections rather than a timer per request.

Per request the hot path is: parse, the checks, one log event, one write (sent at once
when the socket has room, :mod:`policyd.sendnow`); see docs/benchmarks.md for the costs.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from congvu.directory.cache import CachedAccountStore
from congvu.directory.model import (
    AccountStore,
    CounterStore,
    DirectoryUnavailable,
    RateDecision,
    StateMisconfigured,
    StateUnavailable,
    UnavailableStore,
)
from congvu.directory.redis_target import Health, RedisTarget
from congvu.policyd.checks.base import Context, CountedInstances, Result
from congvu.policyd.checks.rates import RatesCheck
from congvu.policyd.engine import Engine, Evaluation, Pending
from congvu.policyd.protocol import DUNNO_REPLY, PolicyParser, PolicyProtocolError, PolicyRequest, format_reply
from congvu.policyd.redis_native import NativeCounters
from congvu.policyd.sendnow import Sender
from congvu.policyd.settings import PolicydConfig, check_listen
from congvu.policyd.stats import Stats
from congvu.policyd.workers import WorkerPool, adopt_ports
from congvu.rules.errors import ConfigError

log = Logger()
_INFO = LogLevel.info
_now = time.time


def _observe(event: dict[str, Any]) -> None:
    """Hand one event to the decision logger's observer (the global publisher, or a test's)."""
    observer: Any = log.observer
    observer(event)

#: Requests queued on one connection before we stop reading from it (pipelining clients).
MAX_QUEUED = 64


def open_stores(cfg: PolicydConfig) -> tuple[AccountStore, CounterStore | None, str]:
    """The directory (uncached: the engine's CachedAccountStore caches) and the counter store.

    A directory that cannot be opened is an :class:`UnavailableStore`, a counter store None
    with the reason: the server still starts, size checks keep working, and the checks that
    need a store apply their failure policy until a reload opens it.
    """
    accounts: AccountStore
    counters: CounterStore | None = None
    c_reason = ""
    try:
        from congvu.directory.accounts import open_store
        accounts = open_store(cfg)
    except Exception as e:
        accounts = UnavailableStore(f"directory ({cfg.directory.backend}) not opened: {e}")
        log.error("policyd: {reason}; account checks apply their failure policy until a reload",
                  reason=accounts.reason)
    try:
        from congvu.directory.counters import open_counters
        counters = open_counters(cfg)
    except Exception as e:
        c_reason = f"counter store ({cfg.state.backend}) not opened: {e}"
        log.error("policyd: {reason}; rate limits apply their failure policy until a reload", reason=c_reason)
    return accounts, counters, c_reason


def _state_target(cfg: PolicydConfig) -> RedisTarget | None:
    """The Redis of ``[state]``, or None: not Redis, or settings the counter store refuses too (and reports)."""
    if cfg.state.backend != "redis":
        return None
    try:
        return RedisTarget.from_config(cfg)
    except ConfigError:
        return None


def describe(addr: IAddress) -> str:
    host, port, name = getattr(addr, "host", None), getattr(addr, "port", None), getattr(addr, "name", None)
    if host is not None:
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if name is not None:
        return name.decode() if isinstance(name, bytes) else str(name)
    return str(addr)


class PolicyProtocol(Protocol):
    """One Postfix connection: parse, answer in order, close on trouble."""

    def __init__(self, service: PolicyService) -> None:
        self.service = service
        p = service.cfg.policyd
        self.parser = PolicyParser(p.max_request_bytes, p.max_line_bytes, p.max_attributes)
        self.queue: deque[PolicyRequest] = deque()
        self.busy = False
        self.closing = False
        self.paused = False
        self.last_active = 0.0
        self.partial_since: float | None = None
        self.peer = "?"
        #: ``self.transport`` as Any: zope interfaces do not type-check under mypy --strict.
        self.t: Any = None
        #: Replies go through it: straight to the socket when nothing is queued (policyd.sendnow).
        self.out: Sender | None = None

    def connectionMade(self) -> None:
        svc = self.service
        svc.stats.connections_total += 1
        self.t = self.transport
        self.out = Sender(self.t)
        self.peer = describe(self.t.getPeer())
        if len(svc.connections) >= svc.cfg.policyd.max_connections:
            svc.stats.refused_connections += 1
            log.warn("policyd: refusing connection from {peer}: max_connections = {n} reached",
                     peer=self.peer, n=svc.cfg.policyd.max_connections)
            self.closing = True
            self.t.loseConnection()
            return
        svc.connections.add(self)
        svc.stats.connections_open = len(svc.connections)
        self.last_active = svc.reactor.seconds()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closing = True
        self.queue.clear()
        self.service.connections.discard(self)
        self.service.stats.connections_open = len(self.service.connections)

    def close(self, why: str) -> None:
        """Close without replying to what is pending (SMTPD_POLICY_README: trouble → no reply)."""
        if self.closing:
            return
        self.closing = True
        self.queue.clear()
        log.warn("policyd: closing connection from {peer} without reply: {why}", peer=self.peer, why=why)
        self.t.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        now = self.service.reactor.seconds()
        self.last_active = now
        try:
            requests = self.parser.feed(data)
        except PolicyProtocolError as e:
            self.service.stats.protocol_errors += 1
            self.close(str(e))
            return
        if not self.parser.pending:
            self.partial_since = None
        elif requests or self.partial_since is None:
            self.partial_since = now
        if requests:
            self.queue.extend(requests)
            self._drain()

    def _drain(self) -> None:
        """Answer queued requests in order; the replies of one pass leave in one write."""
        svc = self.service
        replies: list[bytes] = []
        while self.queue and not self.busy and not self.closing:
            req = self.queue.popleft()
            engine = svc.engine
            try:
                evaluation = engine.first_pass(req)
                if isinstance(evaluation, Pending):
                    self.busy = True
                    if replies:  # before anything _pending answers, even at once
                        self._write(b"".join(replies))
                        replies = []
                    self._pending(req, engine, evaluation)
                    break
                replies.append(self._answer(req, evaluation, engine))
            except Exception:
                if replies:
                    self._write(b"".join(replies))
                self._crashed(Failure())  # type: ignore[no-untyped-call]
                return
        if replies:
            self._write(b"".join(replies) if len(replies) > 1 else replies[0])
            self.last_active = svc.reactor.seconds()
        if not self.paused and len(self.queue) > MAX_QUEUED:
            self.paused = True
            self.t.pauseProducing()
        elif self.paused and not self.queue and not self.closing:
            self.paused = False
            self.t.resumeProducing()

    def _pending(self, req: PolicyRequest, engine: Engine, pending: Pending) -> None:
        """Finish a request that needs I/O: the rate check natively if it can, else in a thread."""
        svc = self.service
        check = pending.checks[0]
        native = svc.native
        if native is not None and isinstance(check, RatesCheck) and not check.needs_directory(req, engine.ctx):
            svc.stats.native += 1
            self._native(req, engine, pending, check, native)
            return
        svc.stats.threaded += 1
        d = deferToThreadPool(svc.reactor, svc.pool, engine.finish, req, pending)
        d.addCallbacks(self._threaded, self._crashed, callbackArgs=(req, engine))

    def _native(self, req: PolicyRequest, engine: Engine, pending: Pending, check: RatesCheck,
                native: NativeCounters) -> None:
        """The rate check in the reactor: one script call for all its windows, a plain callback back."""
        ctx = engine.ctx
        try:
            plan = check.plan(req, ctx)
        except Exception:
            self._settle(req, engine, pending, Failure())  # type: ignore[no-untyped-call]
            return

        def done(answers: list[RateDecision] | StateUnavailable) -> None:
            outcome: Result | Failure
            if isinstance(answers, StateUnavailable):
                outcome = Failure(answers)  # type: ignore[no-untyped-call]
            else:
                try:
                    outcome = check.conclude(ctx, plan, answers)
                except Exception:
                    outcome = Failure()  # type: ignore[no-untyped-call]
            self._settle(req, engine, pending, outcome)

        native.count(plan.counted, done)

    def _settle(self, req: PolicyRequest, engine: Engine, pending: Pending, outcome: Result | Failure) -> None:
        """Finish a natively counted request (called back by the counter client, in the reactor)."""
        try:
            self._threaded(engine.settle(req, pending, outcome), req, engine)
        except Exception:  # a bug here must not leave the connection waiting for ever
            self._crashed(Failure())  # type: ignore[no-untyped-call]

    def _threaded(self, evaluation: Evaluation | Pending, req: PolicyRequest, engine: Engine) -> None:
        if isinstance(evaluation, Pending):  # settled natively, and a later check needs I/O too
            self._pending(req, engine, evaluation)
            return
        self.busy = False
        self._reply(req, evaluation, engine)
        self._drain()

    def _crashed(self, failure: Failure) -> None:
        """A bug outside the checks' own error handling: no reply, Postfix retries (never a 5xx)."""
        self.busy = False
        log.failure("policyd: internal error; closing connection from {peer} without reply",
                    failure, peer=self.peer)
        self.close("internal error")

    def _answer(self, req: PolicyRequest, ev: Evaluation, engine: Engine) -> bytes:
        """Count and log the answer; its bytes on the wire."""
        self.service.record(req, ev, engine)
        return DUNNO_REPLY if ev.action == "DUNNO" else format_reply(ev.action)

    def _write(self, data: bytes) -> None:
        if self.out is not None:
            self.out.write(data)
        else:
            self.t.write(data)

    def _reply(self, req: PolicyRequest, ev: Evaluation, engine: Engine) -> None:
        if self.closing:
            return
        self._write(self._answer(req, ev, engine))
        self.last_active = self.service.reactor.seconds()


class PolicyFactory(Factory):
    noisy = False  # no "starting on"/"stopping" lines; policyd logs what it listens on itself

    def __init__(self, service: PolicyService) -> None:
        self.service = service

    def buildProtocol(self, addr: IAddress | None) -> PolicyProtocol:
        return PolicyProtocol(self.service)


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, service: PolicyService) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.service = service

    def render_GET(self, request: Request) -> bytes:
        ctype = b"text/plain; version=0.0.4; charset=utf-8"
        request.setHeader(b"content-type", ctype)  # type: ignore[no-untyped-call]
        svc = self.service
        stats = svc.snapshot()
        if svc.workers is not None:  # the sum over every worker process ([policyd] workers)
            return svc.workers.render(c.name for c in svc.engine.checks).encode()
        return stats.render(c.name for c in svc.engine.checks).encode()


class _QuietSite(Site):
    """The metrics site without an access log line per Prometheus scrape."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


#: ``listen(endpoint, factory, what=…, setting=…)`` → Deferred firing with the port (congvu.endpoints.Listener).
Listen = Callable[..., "defer.Deferred[Any]"]
#: ``worker_argv(index, socket_fds)`` → the command line of worker ``index`` (the composition root knows it).
WorkerArgv = Callable[[int, Sequence[int]], list[str]]


class PolicyService(Service):
    """The running policy server: its config, engine, ports, connections and counters.

    A Twisted ``Service``: ``congvu serve`` starts it with the others; :attr:`ready` fires
    once it listens (or fails, having closed what it opened).  ``listen`` opens endpoints
    (required to start); ``worker_argv`` starts ``[policyd] workers`` > 1 processes;
    ``adopt``: listening socket descriptors inherited from the master, served instead of
    ``[policyd] listen`` (a worker process, :mod:`policyd.workers`; no stats port either).
    """

    name = "policyd"

    def __init__(self, cfg: PolicydConfig, reactor: Any, *, listen: Listen | None = None,
                 worker_argv: WorkerArgv | None = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, adopt: Sequence[int] = ()) -> None:
        self.cfg = cfg
        self.listen = listen
        self.worker_argv = worker_argv
        #: The workers' environment (None: this process's).
        self.worker_env: dict[str, str] | None = None
        self.ready: defer.Deferred[PolicyService] | None = None
        self.adopt = tuple(adopt)
        #: The listening ports of ``[policyd] listen`` (without stats_listen): what workers share.
        self.policy_ports: list[tuple[str, IListeningPort]] = []
        #: The worker processes this master started ([policyd] workers > 1), else None.
        self.workers: WorkerPool | None = None
        self.reactor = reactor
        self.clock, self.monotonic = clock, monotonic
        self.stats = Stats()
        self.counted = CountedInstances()
        self.connections: set[PolicyProtocol] = set()
        self.ports: list[IListeningPort] = []
        #: "endpoint string → actual address" lines, for the operator and tests.
        self.listening: list[str] = []
        self.pool = ThreadPool(minthreads=1, maxthreads=cfg.policyd.threads, name="congvu-policyd")
        #: Rate-limit counters from the reactor (Redis only); None = the blocking store in a thread.
        self.native: NativeCounters | None = None
        #: The Redis the counter stores were opened for (None: not Redis, or settings they refuse).
        self.state_target: RedisTarget | None = None
        self._started = False
        self.engine = self._build(cfg, None)
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = reactor
        self._stopped = False

    # ------------------------------------------------------------------ engine

    def _build(self, cfg: PolicydConfig, old: Engine | None) -> Engine:
        octx = old.ctx if old is not None else None
        target = _state_target(cfg)  # reads the password file: a reload picks up a new password
        if octx is not None and octx.cfg.directory == cfg.directory and octx.cfg.state == cfg.state \
                and octx.cfg.state_dir == cfg.state_dir and target == self.state_target:
            store = octx.accounts.inner
            counters, c_reason = octx.counters, octx.counters_reason
            if isinstance(store, UnavailableStore) or counters is None:  # a reload retries what failed to open
                s2, c2, cr2 = open_stores(cfg)
                if isinstance(store, UnavailableStore):
                    store = s2
                else:
                    s2.close()
                if counters is None:
                    counters, c_reason = c2, cr2
                elif c2 is not None:
                    c2.close()
        else:
            store, counters, c_reason = open_stores(cfg)
        if octx is None or octx.cfg.state != cfg.state or target != self.state_target or self.native is None:
            if self.native is not None:
                self.native.close()
            self.native = (NativeCounters(cfg, self.reactor, target)
                           if target is not None and NativeCounters.supported(target) else None)
            if self.native is not None and self._started:
                self.native.probe()
        self.state_target = target
        lookup = CachedAccountStore(store, size=cfg.directory.cache_size, ttl=cfg.directory.cache_ttl.total_seconds(),
                                    clock=self.monotonic)
        ctx = Context(cfg=cfg, accounts=lookup, counters=counters, clock=self.clock, counted=self.counted,
                      counters_reason=c_reason)
        return Engine(ctx, cfg.policyd.disabled_checks)

    def state_store_up(self) -> bool:
        """Whether the counter store answers: the native client's health (probed at start), else the store's."""
        if self.native is not None:
            return self.native.health.up
        counters = self.engine.ctx.counters
        health = getattr(counters, "health", None)  # RedisCounters (Sentinel, TLS) has one
        return counters is not None and (not isinstance(health, Health) or health.up)

    def snapshot(self) -> Stats:
        """This process's stats, the state store's health included (for /metrics and the master)."""
        self.stats.state_store_down = 0 if self.state_store_up() else 1
        return self.stats

    def record(self, req: PolicyRequest, ev: Evaluation, engine: Engine) -> None:
        """Count and log one answer (reactor thread only)."""
        st = self.stats
        st.requests += 1
        st.decisions[(ev.check, ev.verdict)] += 1
        p = engine.ctx.cfg.policyd
        for check, failure in ev.failures:
            policy = p.failure(check)
            st.failures[(check, policy)] += 1
            if failure.check(StateMisconfigured):  # type: ignore[no-untyped-call]
                pass  # its client logged it once, as an error naming the setting to fix: not once per message
            elif failure.check(DirectoryUnavailable, StateUnavailable):  # type: ignore[no-untyped-call]
                log.warn("policyd: check {check} unavailable ({err}); fail_{check} = {policy}",
                         check=check, err=failure.getErrorMessage(), policy=policy)
            else:
                log.failure("policyd: check {check} failed; fail_{check} = {policy}", failure,
                            check=check, policy=policy)
        if ev.verdict == "dunno" and p.log_decisions == "blocks":
            return
        # Formatted here with one f-string: Twisted's format-string path costs more than the check.
        line = (f"policyd: queue_id={req.queue_id or '-'} instance={req.instance or '-'} "
                f"sasl_username={req.sasl_username or '-'} sender=<{req.sender}> "
                f"client={req.client_address or '-'} state={req.protocol_state} check={ev.check or '-'} "
                f"id={ev.rule_id or '-'} action={ev.action!r}")
        # The event Logger.info would build, handed straight to the logger's observer: Logger.emit's
        # level validation and keyword handling cost as much as the rest of the request's logging.
        _observe({
            "log_logger": log, "log_level": _INFO, "log_namespace": log.namespace, "log_source": log.source,
            "log_format": "{congvu_line}", "log_time": _now(), "congvu_line": line, "check": ev.check,
            "rule_id": ev.rule_id, "citation": ev.citation, "action": ev.action, "queue_id": req.queue_id,
            "instance": req.instance, "sasl_username": req.sasl_username, "sender": req.sender,
            "client": req.client_address})

    # ------------------------------------------------------------------ lifecycle

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.ready = self.start()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        d: defer.Deferred[None] = self.stop()
        return d

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Listen on every endpoint; fires with self, or fails (having closed what it opened)."""
        if self.listen is None and not self.adopt:
            raise RuntimeError("PolicyService.start needs listen= (congvu.endpoints.Listener)")
        check_listen(self.cfg)
        self.pool.start()
        self._started = True
        if self.native is not None:  # wrong credentials show now, not at the first counted message
            self.native.probe()
        p = self.cfg.policyd
        try:
            if self.adopt:
                for adopted in adopt_ports(self.reactor, self.adopt, PolicyFactory(self)):
                    self.ports.append(adopted)
                    self.listening.append(describe(adopted.getHost()))
            for endpoint in () if self.adopt else p.listen:
                port = yield self._listen(endpoint, PolicyFactory(self), "policy server", "policyd.listen")
                self.policy_ports.append((endpoint, port))
                self.listening.append(f"{endpoint} ({describe(port.getHost())})")
            for endpoint in () if self.adopt else p.stats_listen:
                site: Any = _QuietSite(_Metrics(self))  # type: ignore[no-untyped-call]
                port = yield self._listen(endpoint, site, "policy stats", "policyd.stats_listen")
                self.listening.append(f"{endpoint} ({describe(port.getHost())}, /metrics)")
            if p.workers > 1 and not self.adopt:
                if self.worker_argv is None:
                    raise RuntimeError("[policyd] workers > 1 needs worker_argv= from the composition root")
                self.workers = WorkerPool(self.reactor, p.workers, self.policy_ports, PolicyFactory(self),
                                          self.stats, self.worker_argv, self.worker_env)
                self.ports.extend(self.workers.start())
        except Exception:
            yield self.stop()
            raise
        interval = max(0.05, min(1.0, p.request_timeout.total_seconds() / 4, p.idle_timeout.total_seconds() / 4))
        self._sweeper.start(interval, now=False)
        log.info("policyd: checks in order: {checks}", checks=", ".join(c.name for c in self.engine.checks))
        return self

    @defer.inlineCallbacks
    def _listen(self, endpoint: str, factory: Factory, what: str, setting: str) -> Any:
        assert self.listen is not None
        port = yield self.listen(endpoint, factory, what=what, setting=setting, group=self.cfg.policyd.socket_group,
                                 group_setting="policyd.socket_group")
        self.ports.append(port)
        return port

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Close ports, connections, workers and stores; a second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        if self._sweeper.running:
            self._sweeper.stop()
        ports: list[Any] = self.ports
        self.ports = []
        workers = [self.workers.stop()] if self.workers is not None else []
        yield defer.gatherResults([*workers, *(defer.maybeDeferred(p.stopListening) for p in ports)],
                                  consumeErrors=True)
        for conn in list(self.connections):
            if conn.t is not None:
                conn.t.loseConnection()
        if self.pool.started:
            self.pool.stop()
        self.engine.ctx.accounts.close()
        if self.native is not None:
            self.native.close()
        if self.engine.ctx.counters is not None:
            self.engine.ctx.counters.close()

    def reload(self, cfg: PolicydConfig) -> None:
        """Switch to a new, already validated config; listen changes need a restart."""
        if self.workers is not None:  # each worker rereads the same file itself (SIGHUP)
            self.workers.reload()
        old = self.engine
        try:
            engine = self._build(cfg, old)
        except Exception as e:
            self.stats.reloads_failed += 1
            log.error("policyd: reload refused ({err}); keeping the running configuration", err=str(e))
            return
        try:
            check_listen(cfg)
        except ConfigError as e:  # not listened on until a restart, but that restart would fail
            log.warn("policyd: {err}", err=str(e))
        if (cfg.policyd.listen, cfg.policyd.stats_listen, cfg.policyd.workers) != \
                (self.cfg.policyd.listen, self.cfg.policyd.stats_listen, self.cfg.policyd.workers):
            log.warn("policyd: listen/stats_listen/workers changed; they take effect at the next restart")
        self.cfg, self.engine = cfg, engine
        self.stats.reloads_ok += 1
        octx, nctx = old.ctx, engine.ctx
        stale: list[Any] = []
        if octx.accounts.inner is not nctx.accounts.inner:
            stale.append(octx.accounts.inner)
        if octx.counters is not None and octx.counters is not nctx.counters:
            stale.append(octx.counters)
        if stale:  # threads may still be using them: close a little later
            self.reactor.callLater(30, lambda: [s.close() for s in stale])
        log.info("policyd: configuration reloaded from {path} (profile {profile}); checks: {checks}",
                 path=cfg.path, profile=cfg.profile.name, checks=", ".join(c.name for c in engine.checks))

    def _sweep(self) -> None:
        now = self.reactor.seconds()
        p = self.cfg.policyd
        req_t, idle_t = p.request_timeout.total_seconds(), p.idle_timeout.total_seconds()
        for conn in list(self.connections):
            if conn.closing:
                continue
            if conn.partial_since is not None and now - conn.partial_since > req_t:
                self.stats.timeouts += 1
                conn.close(f"request unfinished after {req_t:g}s (request_timeout)")
            elif not conn.busy and not conn.queue and conn.partial_since is None and now - conn.last_active > idle_t:
                self.stats.timeouts += 1
                conn.close(f"idle for {idle_t:g}s (idle_timeout)")

