"""``congvu authd``: the long-running auth service behind ``congvu-checkpassword`` and the policy server.

A Twisted unix-socket server speaking :mod:`authhooks.wire` (the protocol class only
buffers; framing is wire's, decisions are :class:`authhooks.service.AuthService`'s),
the auth policy HTTP server on ``[authhooks] policy_listen``, the password page on
``[authhooks] web_listen`` (same AuthService and pool: a change decides the very next
login, CT25-5.2), and a periodic flush of login stamps to the directory
(``last_login_at``, CT25-6.5).  Password hashing and directory calls run in a dedicated
thread pool of ``[authhooks] threads`` threads.  An endpoint that cannot be opened stops
the start with one line naming the setting and the endpoint (:mod:`authhooks.endpoints`).
"""

from __future__ import annotations

import grp
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Site

from authhooks import wire
from authhooks.policy_server import PolicyResource
from authhooks.service import AuthService, answer, load_secret
from authhooks.web import PasswordWebService, start_web
from directory.accounts import hasher_for, open_store
from directory.counters import LoginStampFlusher, open_counters
from directory.endpoints import ListenFailed, failure_message, listen, unix_accepts
from rules.config import Config

log = Logger(namespace="congvu.authd")

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
        except wire.ProtocolError as e:
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
        except wire.ProtocolError as e:
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


def socket_path(cfg: Config) -> Path:
    """``[authhooks] socket``, or STATE_DIR/authd.sock."""
    return cfg.state_file(cfg.authhooks.socket, "authd.sock")


def build_service(cfg: Config) -> AuthService:
    """The AuthService of this site with its real stores (the password page reuses the same instance).

    The account store is the *uncached* one: a password changed, or an account locked,
    by another process (the CLI, the password page on another host) must decide the very
    next login, not one ``cache_ttl`` later.  One directory read per login is cheap next
    to the fork Dovecot 2.3 already pays for it.
    """
    secret = load_secret(cfg.state_file(cfg.authhooks.secret_file, "authd.key"))
    return AuthService(cfg, open_store(cfg), open_counters(cfg), hasher_for(cfg), secret,
                       clock=lambda: datetime.now(UTC))


class Authd:
    """A running auth service (a ``congvu serve`` RunningService): ports, thread pool, stamp flusher."""

    name = "authd"

    def __init__(self, cfg: Config, service: AuthService, reactor: Any) -> None:
        self.cfg, self.service, self.reactor = cfg, service, reactor
        self.pool = ThreadPool(minthreads=1, maxthreads=cfg.authhooks.threads, name="congvu-authd")
        self.ports: list[Any] = []  # IListeningPort (zope interfaces do not type-check as classes)
        self.listening: list[str] = []
        self.flusher: LoopingCall | None = None
        self.web: PasswordWebService | None = None

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Listen on the unix socket, the policy endpoints and the page; fires with self (or fails, closed again)."""
        self.pool.start()
        try:
            path = socket_path(self.cfg)
            path.parent.mkdir(parents=True, exist_ok=True)
            if (path.is_socket() or path.exists()) and not unix_accepts(path):
                path.unlink()  # left by a process that died: nobody answers on it any more
            try:
                port = self.reactor.listenUNIX(str(path), AuthdFactory(self.service, self.reactor, self.pool),
                                               mode=0o660)
            except CannotListenError as e:
                raise ListenFailed(failure_message("auth socket", f"unix:{path}", "authhooks.socket", e)) from None
            self.ports.append(port)
            os.chmod(path, 0o660)
            if self.cfg.authhooks.socket_group:
                os.chown(path, -1, grp.getgrnam(self.cfg.authhooks.socket_group).gr_gid)
            self.listening.append(f"unix:{path} (congvu-checkpassword)")
            for endpoint in self.cfg.authhooks.policy_listen:
                site = Site(PolicyResource(self.service, self.reactor, self.pool))  # type: ignore[no-untyped-call]
                site.noisy = False
                self.ports.append((yield listen(self.reactor, endpoint, site, what="auth policy server",
                                                setting="authhooks.policy_listen")))
                self.listening.append(f"{endpoint} (Dovecot auth policy server)")
            # The page shares this service and pool: a change here decides the very next login.
            self.web = yield start_web(self.cfg, self.reactor, self.service, self.pool)
            self.listening.extend(self.web.listening)
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

    def reload(self, cfg: Config) -> None:
        """New rules apply to the next login; socket and endpoint changes need a restart."""
        self.service.reconfigure(cfg)
        self.cfg = cfg
        if self.web is not None:
            self.web.reload(cfg)

    @defer.inlineCallbacks
    def stop(self) -> Any:
        if self.flusher is not None and self.flusher.running:
            self.flusher.stop()
        web, self.web = self.web, None
        if web is not None:
            yield web.stop()
        ports, self.ports = self.ports, []
        yield defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports], consumeErrors=True)
        if self.pool.started:
            self.pool.stop()


def start(cfg: Config, reactor: Any, service: AuthService | None = None) -> defer.Deferred[Authd]:
    """The ``congvu serve`` starter: build the service with the real stores and listen."""
    daemon = Authd(cfg, service or build_service(cfg), reactor)
    d: defer.Deferred[Authd] = daemon.start()
    return d
