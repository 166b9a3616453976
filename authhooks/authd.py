"""The auth service behind ``congvu-checkpassword``, Postfix's SMTP AUTH and the Dovecot auth policy server.

A Twisted unix-socket server speaking :mod:`congvu.authhooks.wire` (the protocol class
only buffers; framing is wire's, decisions are :class:`congvu.authhooks.service.AuthService`'s),
Postfix's SASL sockets on ``[authhooks] sasl_listen`` (:mod:`congvu.authhooks.sasl_server`),
the auth policy HTTP server on ``[authhooks] policy_listen``, and a periodic flush of login
stamps to the directory (``last_login_at``, CT25-6.5).  Password hashing and directory
calls run in a dedicated thread pool of ``[authhooks] threads`` threads, which the
password page (:mod:`congvu.authhooks.web`) shares when ``congvu serve`` runs both: a
change there decides the very next login (CT25-5.2).  Endpoints are opened by the
``listen`` the composition root passes in (one line naming the setting on failure).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Site

from congvu.authhooks import wire
from congvu.authhooks.policy_server import PolicyResource
from congvu.authhooks.sasl_server import SaslFactory
from congvu.authhooks.service import AuthService, answer, load_secret
from congvu.authhooks.settings import AuthConfig
from congvu.directory.accounts import hasher_for, open_store
from congvu.directory.counters import LoginStampFlusher, open_counters
from congvu.rules.errors import ProtocolError

log = Logger()

IDLE_TIMEOUT = 30  # seconds a hook connection may sit idle


class AuthdProtocol(Protocol):
    """One hook connection: frames in, one reply frame per request, in order."""

    def __init__(self, factory: AuthdFactory) -> None:
        self.factory = factory
        self.decoder = wire.FrameDecoder()
        self.busy = False
        self.queue: list[bytes] = []
        self._idle: Any = None

    def connectionMade(self) -> None:
        self._idle = self.factory.reactor.callLater(IDLE_TIMEOUT, self._drop)

    def _drop(self) -> None:
        self._idle = None
        transport: Any = self.transport
        if transport is not None:
            transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(IDLE_TIMEOUT)
        try:
            self.queue.extend(self.decoder.feed(data))
        except ProtocolError as e:
            log.warn("authd: dropping a connection that sent a bad frame ({err})", err=str(e))
            self._drop()
            return
        self._next()

    def _next(self) -> None:
        if self.busy or not self.queue:
            return
        payload = self.queue.pop(0)
        try:
            request = wire.AuthRequest.decode(payload)
        except ProtocolError as e:
            self._send(wire.AuthReply(wire.TEMPFAIL, message=f"bad request: {e}"))
            return
        self.busy = True
        d = deferToThreadPool(self.factory.reactor, self.factory.pool, answer, self.factory.service, request)
        d.addErrback(self._failed)
        d.addCallback(self._send)

    def _failed(self, f: Failure) -> wire.AuthReply:
        log.failure("authd: request failed", f)
        return wire.AuthReply(wire.TEMPFAIL, message="internal error in the auth service")

    def _send(self, reply: wire.AuthReply) -> None:
        self.busy = False
        transport: Any = self.transport
        if transport is not None and self.connected:
            transport.write(reply.encode())
        self._next()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None


class AuthdFactory(Factory):
    noisy = False

    def __init__(self, service: AuthService, reactor: Any, pool: ThreadPool) -> None:
        self.service, self.reactor, self.pool = service, reactor, pool

    def buildProtocol(self, addr: Any) -> AuthdProtocol:
        return AuthdProtocol(self)


def socket_path(cfg: AuthConfig) -> Path:
    """``[authhooks] socket``, or STATE_DIR/authd.sock."""
    return cfg.state_file(cfg.authhooks.socket, "authd.sock")


def build_service(cfg: AuthConfig) -> AuthService:
    """The AuthService of this site with its real stores (the password page reuses the same instance).

    The account store is the *uncached* one: a password changed, or an account locked,
    by another process (the CLI, the password page on another host) must decide the very
    next login, not one ``cache_ttl`` later.  One directory read per login is cheap next
    to the fork Dovecot 2.3 already pays for it.
    """
    secret = load_secret(cfg.state_file(cfg.authhooks.secret_file, "authd.key"))
    return AuthService(cfg, open_store(cfg), open_counters(cfg), hasher_for(cfg), secret,
                       clock=lambda: datetime.now(UTC))


class Authd(Service):
    """The auth service as a Twisted ``Service`` of ``congvu serve``: sockets, policy endpoints, pool, flusher.

    :attr:`ready` fires once it listens (or fails, having closed what it opened).
    """

    name = "authd"

    def __init__(self, cfg: AuthConfig, service: AuthService, reactor: Any, *,
                 listen: Callable[..., defer.Deferred[Any]]) -> None:
        self.cfg, self.service, self.reactor = cfg, service, reactor
        self.listen = listen
        self.pool = ThreadPool(minthreads=1, maxthreads=cfg.authhooks.threads, name="congvu-authd")
        self.ports: list[Any] = []  # IListeningPort (zope interfaces do not type-check as classes)
        self.listening: list[str] = []
        self.flusher: LoopingCall | None = None
        self.ready: defer.Deferred[Authd] | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.ready = self.start()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        d: defer.Deferred[None] = self.stop()
        return d

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Listen on the hook's socket, the SASL sockets and the policy endpoints; fires with self (or fails)."""
        self.pool.start()
        try:
            path = str(socket_path(self.cfg)).replace(":", "\\:")
            factory = AuthdFactory(self.service, self.reactor, self.pool)
            self.ports.append((yield self.listen(f"unix:{path}:mode=660", factory, what="auth socket",
                                                 setting="authhooks.socket", group=self.cfg.authhooks.socket_group,
                                                 group_setting="authhooks.socket_group")))
            self.listening.append(f"unix:{socket_path(self.cfg)} (congvu-checkpassword)")
            sasl = SaslFactory(self.service, self.reactor, self.pool)
            for endpoint in self.cfg.authhooks.sasl_listen:
                self.ports.append((yield self.listen(endpoint, sasl, what="SMTP AUTH socket",
                                                     setting="authhooks.sasl_listen",
                                                     group=self.cfg.authhooks.sasl_group,
                                                     group_setting="authhooks.sasl_group")))
                self.listening.append(f"{endpoint} (Postfix SMTP AUTH)")
            for endpoint in self.cfg.authhooks.policy_listen:
                site = Site(PolicyResource(self.service, self.reactor, self.pool))  # type: ignore[no-untyped-call]
                site.noisy = False
                self.ports.append((yield self.listen(endpoint, site, what="auth policy server",
                                                     setting="authhooks.policy_listen")))
                self.listening.append(f"{endpoint} (Dovecot auth policy server)")
        except Exception:
            yield self.stop()
            raise
        flusher = LoginStampFlusher(self.service.counters, self.service.accounts, self.cfg.state.last_login_flush)
        interval = max(5.0, min(60.0, self.cfg.state.last_login_flush.total_seconds()))
        self.flusher = LoopingCall(lambda: deferToThreadPool(self.reactor, self.pool, flusher.flush,
                                                             datetime.now(UTC).timestamp()))
        self.flusher.clock = self.reactor
        self.flusher.start(interval, now=False).addErrback(
            lambda f: log.failure("authd: login stamp flusher stopped", f))
        for line in self.listening:
            log.info("authd: listening on {where}", where=line)
        return self

    def reload(self, cfg: AuthConfig) -> None:
        """New rules apply to the next login; socket and endpoint changes need a restart."""
        self.service.reconfigure(cfg)
        self.cfg = cfg

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Stop listening, the flusher and the pool; a second call does nothing more."""
        if self.flusher is not None and self.flusher.running:
            self.flusher.stop()
        ports, self.ports = self.ports, []
        yield defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports], consumeErrors=True)
        if self.pool.started:
            self.pool.stop()
