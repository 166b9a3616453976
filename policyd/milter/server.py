"""The Twisted glue of the content milter: one thin protocol per Postfix connection, the service.

Postfix opens one milter connection per SMTP session and sends, per message, MAIL, the
headers, the body in chunks and end-of-body; negotiation (:func:`protocol.negotiate`)
spares the replies to everything but end-of-body.  Headers and body chunks go into the
message's :class:`~congvu.policyd.milter.mime.MimeWalker` as they arrive (bounded memory,
in the reactor: a chunk costs a few C calls); at end-of-body the rules run, in the
reactor when every account they need is cached, else in the thread pool, and the answer
(``y`` with the reply, or ``h`` headers then ``a``) goes back.

Trouble never loses mail: a malformed packet closes the connection (Postfix applies
``milter_default_action = tempfail``), and an internal error at end-of-body answers
tempfail.  One log line per message: queue id, login, the deciding rule, its id and
citation, the action.
"""

from __future__ import annotations

import socket
import time
from collections import Counter, deque
from collections.abc import Callable
from functools import partial
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

from congvu.directory.cache import CachedAccountStore
from congvu.directory.model import AccountStore, DirectoryUnavailable, UnavailableStore
from congvu.policyd.milter import protocol as mp
from congvu.policyd.milter.checks import Envelope
from congvu.policyd.milter.engine import Engine, Outcome
from congvu.policyd.milter.mime import Limits, MessageFacts, MimeWalker
from congvu.policyd.milter.settings import MilterConfig, check_milter_listen
from congvu.policyd.sendnow import Sender
from congvu.policyd.server import describe

log = Logger()

#: ``listen(endpoint, factory, what=…, setting=…)`` → Deferred firing with the port (congvu.endpoints.Listener).
Listen = Callable[..., "defer.Deferred[Any]"]


def limits(cfg: MilterConfig) -> Limits:
    m = cfg.milter
    return Limits(m.max_parts, m.max_depth, m.max_line, m.text_sample, m.zip_directory)


def open_accounts(cfg: MilterConfig) -> AccountStore:
    """The directory, uncached (the engine's lookups go through a CachedAccountStore); an outage is a store
    whose every call raises, so the service starts and the From rule applies its failure policy."""
    try:
        from congvu.directory.accounts import open_store
        return open_store(cfg)
    except Exception as e:
        store = UnavailableStore(f"directory ({cfg.directory.backend}) not opened: {e}")
        log.error("milter: {reason}; the header From rule applies its failure policy until a reload",
                  reason=store.reason)
        return store


def client_address(underscore: str) -> str:
    """The address in Postfix's ``_`` macro: ``"pc1.example [192.0.2.7]"`` → ``"192.0.2.7"`` (IPv6 unprefixed)."""
    _, bracket, rest = underscore.rpartition("[")
    return rest.split("]", 1)[0].removeprefix("IPv6:") if bracket else ""


def reply_bytes(outcome: Outcome) -> bytes:
    """The end-of-body answer: added headers, then accept; or the reply code (4xx/5xx with the text)."""
    if outcome.action == "accept":
        return b"".join(mp.add_header(n, v) for n, v in outcome.headers) + mp.ACCEPT
    return mp.reply_code(outcome.reply)


class MilterProtocol(Protocol):
    """One Postfix connection: negotiate, read each message into a walker, answer at end of body."""

    def __init__(self, service: MilterService) -> None:
        self.service = service
        self.parser = mp.MilterParser(service.cfg.milter.max_packet)
        self.agreed = 0
        #: The answer to MAIL, a header, a body chunk and end of headers under the agreed flags
        #: (nothing when the MTA granted no-reply); before negotiation, every command gets one.
        self.replies: dict[type, bytes] = dict.fromkeys((mp.Body, mp.Header, mp.Mail), mp.CONTINUE)
        self.eoh_reply = mp.CONTINUE
        self.macros: dict[str, str] = {}
        #: The SMTP client's address, from the connect macros (sent even though CONNECT is skipped).
        self.client = ""
        self.sender = ""
        self.walker: MimeWalker | None = None
        #: Commands that arrived while end-of-body was being decided in a thread: handled after it.
        self.queue: deque[mp.Command] = deque()
        self.busy = False
        self.closing = False
        self.last_active = 0.0
        self.peer = "?"
        self.t: Any = None
        #: Answers go through it: straight to the socket when nothing is queued (policyd.sendnow).
        self.out: Any = None
        #: On TCP, re-arms immediate ACKs after each read (see connectionMade).
        self.quickack: Callable[[], None] | None = None

    def connectionMade(self) -> None:
        svc = self.service
        self.t = self.transport
        self.out = Sender(self.t)
        # Postfix writes each milter packet separately; on TCP its Nagle waits for our ACK of the
        # previous one, which Linux delays up to 40 ms: a message took 3-4x longer on loopback TCP
        # than on the unix socket (docs/benchmarks.md) until the ACKs were made immediate.
        sock = getattr(self.t, "socket", None)
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6) and hasattr(socket, "TCP_QUICKACK"):
            self.quickack = partial(sock.setsockopt, socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        self.peer = describe(self.t.getPeer())
        svc.stats["connections_total"] += 1
        if len(svc.connections) >= svc.cfg.milter.max_connections:
            svc.stats["refused_connections"] += 1
            log.warn("milter: refusing connection from {peer}: max_connections = {n} reached",
                     peer=self.peer, n=svc.cfg.milter.max_connections)
            self.closing = True
            self.t.loseConnection()
            return
        svc.connections.add(self)
        self.last_active = svc.reactor.seconds()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closing = True
        self.queue.clear()
        self.walker = None
        self.service.connections.discard(self)

    def close(self, why: str) -> None:
        if self.closing:
            return
        self.closing = True
        self.queue.clear()
        log.warn("milter: closing connection from {peer}: {why}", peer=self.peer, why=why)
        self.t.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_active = self.service.reactor.seconds()
        if self.quickack is not None:
            self.quickack()
        try:
            commands = self.parser.feed(data)
        except mp.MilterProtocolError as e:
            self.service.stats["protocol_errors"] += 1
            self.close(str(e))
            return
        if self.busy:
            self.queue.extend(commands)
            return
        self._handle_all(commands)

    def _handle_all(self, commands: Any) -> None:
        out: list[bytes] = []
        try:
            for i, cmd in enumerate(commands):
                if self.closing:
                    return
                if self.busy:  # end of body went to a thread: the rest waits for its answer
                    self.queue.extend(list(commands)[i:])
                    break
                answer = self._handle(cmd)
                if answer:
                    out.append(answer)
        except mp.MilterProtocolError as e:
            self.service.stats["protocol_errors"] += 1
            if out:
                self.out.write(b"".join(out))
            self.close(str(e))
            return
        except Exception:
            log.failure("milter: internal error; closing the connection from {peer} (Postfix tempfails)",
                        Failure(), peer=self.peer)  # type: ignore[no-untyped-call]
            self.close("internal error")
            return
        if out:
            self.out.write(b"".join(out))

    def _handle(self, cmd: mp.Command) -> bytes:
        """One command; the bytes of its answer (b"" when the MTA waits for none).

        Most frequent first: Postfix sends ~30 packets a message, half of them macros.
        """
        match cmd:
            case mp.Macros():
                # Read: the client (connect), the login (MAIL), the queue id (end of body). The
                # macros Postfix sends before every header are left undecoded.
                stage = cmd.stage
                if stage in ("M", "E"):
                    for name in (b"i", b"{auth_authen}"):
                        value = cmd.get(name)
                        if value is not None:
                            self.macros[name.decode()] = value
                elif stage == "C":
                    self.client = client_address(cmd.get(b"_") or "")
                return b""
            case mp.Header():
                if self.walker is None:
                    self.walker = self._new_message("")
                self.walker.header(cmd.name, cmd.value)
                return self.replies[mp.Header]
            case mp.Body():
                if self.walker is not None:
                    self.walker.body(cmd.chunk)
                return self.replies[mp.Body]
            case mp.Mail():
                self.walker = self._new_message(cmd.sender)
                return self.replies[mp.Mail]
            case mp.EndOfBody():
                if self.walker is not None and cmd.chunk:
                    self.walker.body(cmd.chunk)
                return self._end_of_body()
            case mp.OptNeg():
                answer, self.agreed = mp.negotiate(cmd)
                self.replies = {t: mp.CONTINUE if mp.needs_reply(sample, self.agreed) else b""
                                for t, sample in ((mp.Body, mp.Body(b"")), (mp.Header, mp.Header(b"x", b"")),
                                                  (mp.Mail, mp.Mail("", ())))}
                self.eoh_reply = mp.CONTINUE if mp.needs_reply(mp.Event(b"N"), self.agreed) else b""
                return answer
            case mp.Event(b"N"):
                return self.eoh_reply
            case mp.Event(b"A"):  # abort the message
                self.walker = None
                return b""
            case mp.Event(b"K"):  # abort, and a new session follows on this connection
                self.walker = None
                self.macros.clear()
                self.client = ""
                return b""
            case mp.Event(b"Q"):
                self.closing = True
                self.t.loseConnection()
                return b""
        return mp.CONTINUE  # an event we asked the MTA to skip, sent anyway: it waits for an answer

    def _new_message(self, sender: str) -> MimeWalker:
        """A new message from ``sender``: its walker."""
        self.sender = sender.strip().removeprefix("<").removesuffix(">")
        return MimeWalker(self.service.limits)

    def _end_of_body(self) -> bytes:
        svc = self.service
        walker, self.walker = self.walker, None
        env = Envelope(queue_id=self.macros.get("i", ""), sender=self.sender,
                       login=self.macros.get("{auth_authen}", ""), client=self.client)
        try:
            facts = (walker or MimeWalker(svc.limits)).finish()
            engine = svc.engine
            accounts = svc.accounts
            need = engine.lookups(env, facts)
            if all(accounts.cached(a) for a in need):
                outcome = engine.evaluate(env, facts, accounts.get)
                return self._answer(env, facts, outcome)
        except Exception:
            return self._internal_error(env, Failure())  # type: ignore[no-untyped-call]
        self.busy = True
        svc.stats["threaded"] += 1
        d: Any = deferToThreadPool(svc.reactor, svc.pool, engine.evaluate, env, facts, accounts.get)
        d.addCallbacks(lambda outcome: self._answer(env, facts, outcome), lambda f: self._internal_error(env, f))
        d.addCallback(self._threaded_done)
        return b""

    def _threaded_done(self, answer: bytes) -> None:
        self.busy = False
        if self.closing:
            return
        self.out.write(answer)
        queued, self.queue = list(self.queue), deque()
        self._handle_all(queued)

    def _answer(self, env: Envelope, facts: MessageFacts, outcome: Outcome) -> bytes:
        self.service.record(env, facts, outcome)
        return reply_bytes(outcome)

    def _internal_error(self, env: Envelope, failure: Failure) -> bytes:
        """A bug outside the rules' own failure handling: tempfail this message, keep the connection."""
        self.service.stats["internal_errors"] += 1
        log.failure("milter: internal error on queue_id={qid}; answering tempfail", failure, qid=env.queue_id or "-")
        return mp.TEMPFAIL


class MilterFactory(Factory):
    noisy = False

    def __init__(self, service: MilterService) -> None:
        self.service = service

    def buildProtocol(self, addr: IAddress | None) -> MilterProtocol:
        return MilterProtocol(self.service)


class MilterService(Service):
    """The running content milter: its config, engine, account cache, thread pool, ports and connections.

    A Twisted ``Service`` like :class:`~congvu.policyd.server.PolicyService`: ``congvu serve``
    starts it with the others; :attr:`ready` fires once it listens; ``reload(cfg)`` on SIGHUP.
    """

    name = "milter"

    def __init__(self, cfg: MilterConfig, reactor: Any, *, listen: Listen | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.reactor = reactor
        self.listen = listen
        self.monotonic = monotonic
        self.ready: defer.Deferred[MilterService] | None = None
        self.ports: list[IListeningPort] = []
        self.listening: list[str] = []
        self.connections: set[MilterProtocol] = set()
        self.stats: Counter[str] = Counter()
        self.pool = ThreadPool(minthreads=1, maxthreads=cfg.milter.threads, name="congvu-milter")
        self.accounts = self._cache(cfg, open_accounts(cfg))
        self.engine = Engine(cfg)
        self.limits = limits(cfg)
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = reactor
        self._stopped = False

    def _cache(self, cfg: MilterConfig, store: AccountStore) -> CachedAccountStore:
        return CachedAccountStore(store, size=cfg.directory.cache_size, ttl=cfg.directory.cache_ttl.total_seconds(),
                                  clock=self.monotonic)

    def record(self, env: Envelope, facts: MessageFacts, outcome: Outcome) -> None:
        """Count and log one message's answer (reactor thread only)."""
        st = self.stats
        st["messages"] += 1
        st[f"decision:{outcome.rule or 'none'}:{outcome.action}"] += 1
        m = self.cfg.milter
        for rule, failure in outcome.failures:
            st[f"failure:{rule}:{m.failure(rule)}"] += 1
            if failure.check(DirectoryUnavailable):  # type: ignore[no-untyped-call]
                log.warn("milter: rule {rule} unavailable ({err}); fail_{rule} = {policy}",
                         rule=rule, err=failure.getErrorMessage(), policy=m.failure(rule))
            else:
                log.warn("milter: rule {rule} could not decide ({err}); fail_{rule} = {policy}",
                         rule=rule, err=failure.getErrorMessage(), policy=m.failure(rule))
        if outcome.action == "accept" and not outcome.headers and m.log_decisions == "blocks":
            return
        what = outcome.reply if outcome.action != "accept" else \
            "accept" + "".join(f" +{n}: {v}" for n, v in outcome.headers)
        # Formatted here with one f-string and handed to the observer as Logger.info would: Twisted's
        # format-string path costs more than the rules (as in policyd.server.record).
        line = (f"milter: queue_id={env.queue_id or '-'} login={env.login or '-'} client={env.client or '-'} "
                f"sender=<{env.sender}> "
                f"attachments={facts.attachments_count}/{facts.attachments_total}B rule={outcome.rule or '-'} "
                f"id={outcome.rule_id or '-'}{f' ({outcome.citation})' if outcome.citation else ''} "
                f"action={outcome.action}: {what}")
        observer: Any = log.observer
        observer({"log_logger": log, "log_level": LogLevel.info, "log_namespace": log.namespace,
                  "log_source": log.source, "log_format": "{congvu_line}", "log_time": time.time(),
                  "congvu_line": line, "queue_id": env.queue_id, "login": env.login, "rule": outcome.rule,
                  "rule_id": outcome.rule_id, "citation": outcome.citation, "action": outcome.action})

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
        """Listen on every ``[milter] listen`` endpoint; fires with self, or fails having closed what it opened."""
        if self.listen is None:
            raise RuntimeError("MilterService.start needs listen= (congvu.endpoints.Listener)")
        check_milter_listen(self.cfg)
        self.pool.start()
        try:
            for endpoint in self.cfg.milter.listen:
                port = yield self.listen(endpoint, MilterFactory(self), group=self.cfg.policyd.socket_group,
                                         group_setting="policyd.socket_group", what="content milter",
                                         setting="milter.listen")
                self.ports.append(port)
                self.listening.append(f"{endpoint} ({describe(port.getHost())})")
        except Exception:
            yield self.stop()
            raise
        self._sweeper.start(min(30.0, max(0.05, self.cfg.milter.idle_timeout.total_seconds() / 4)), now=False)
        log.info("milter: rules in order: {rules}{off}", rules=", ".join(r.name for r in self.engine.rules),
                 off=f" (off: {', '.join(self.engine.off)})" if self.engine.off else "")
        return self

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Close ports, connections, the pool and the store; a second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        if self._sweeper.running:
            self._sweeper.stop()
        ports: list[Any] = self.ports
        self.ports = []
        yield defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports], consumeErrors=True)
        for conn in list(self.connections):
            if conn.t is not None:
                conn.t.loseConnection()
        if self.pool.started:
            self.pool.stop()
        self.accounts.close()

    def reload(self, cfg: MilterConfig) -> None:
        """Switch to a new, already validated config; listen changes need a restart."""
        old = self.accounts
        same_store = cfg.directory == self.cfg.directory and cfg.state_dir == self.cfg.state_dir \
            and not isinstance(old.inner, UnavailableStore)
        accounts = self._cache(cfg, old.inner if same_store else open_accounts(cfg))
        if cfg.milter.listen != self.cfg.milter.listen:
            log.warn("milter: listen changed; it takes effect at the next restart")
        self.cfg, self.accounts, self.engine, self.limits = cfg, accounts, Engine(cfg), limits(cfg)
        if not same_store:  # threads may still be using it: close a little later
            self.reactor.callLater(30, old.inner.close)
        log.info("milter: configuration reloaded from {path} (profile {profile}); rules: {rules}",
                 path=cfg.path, profile=cfg.profile.name, rules=", ".join(r.name for r in self.engine.rules))

    def _sweep(self) -> None:
        now = self.reactor.seconds()
        idle = self.cfg.milter.idle_timeout.total_seconds()
        for conn in list(self.connections):
            if not conn.closing and not conn.busy and now - conn.last_active > idle:
                self.stats["timeouts"] += 1
                conn.close(f"idle for {idle:g}s (idle_timeout)")
