"""Postfix's SMTP AUTH, answered by ``congvu authd`` on ``[authhooks] sasl_listen`` (``smtpd_sasl_type = dovecot``).

Postfix asks here instead of Dovecot because of how it reads answers: any ``FAIL`` is a
permanent ``535 5.7.8``, even Dovecot's ``code=temp_fail`` when the hook exits 111, and
only a lost connection is a temporary ``454 4.7.0``.  Answering ourselves, an outage
(directory or state store down, a bug) closes the connection without a word, so SMTP
AUTH is never refused for good because congvu could not decide.

Each login is decided by the same :meth:`AuthService.login` as IMAP and POP3 (lockout,
lifecycle, CT25-5.2 …), in authd's thread pool: OK with the canonical address (which
policyd then compares senders with, CT25-3.2); anything else a ``FAIL`` whose ``reason``
Postfix puts in its 535 reply: "wrong user name or password" alike for both, or why the
mailbox is refused (must change, expired, disabled, locked out, with Dovecot's ``code``).
The protocol itself is :mod:`congvu.authhooks.sasl` (no I/O); this module is the thin
Twisted side.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections import deque
from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from congvu.authhooks import sasl
from congvu.authhooks.service import AuthService, LoginAttempt, LoginStatus

log = Logger()

#: Events of one connection waiting behind a decision (Postfix sends one request at a time).
MAX_QUEUE = 64


def decide(service: AuthService, request: sasl.Verify) -> sasl.Success | sasl.Failure | None:
    """The answer to one set of credentials; None when congvu cannot decide (the caller closes: Postfix says 454)."""
    attempt = LoginAttempt(request.username, request.password, request.service, request.remote_ip,
                           request.local_ip)
    result = service.login(attempt, via=f"sasl-{request.mechanism.lower()}")
    if result.status is LoginStatus.UNAVAILABLE:
        return None
    if result.status is LoginStatus.OK:
        return sasl.Success(request.id, result.address)
    user = result.address or request.username  # for Postfix's log line (sasl_username=), never the client
    refusal = service.refusal(result)
    if refusal is None:  # a wrong password and an unknown name read the same, so nothing tells them apart
        return sasl.Failure(request.id, result.decision.text(service.cfg.language), user=user)
    return sasl.Failure(request.id, refusal.reason, refusal.code, user)


class SaslProtocol(Protocol):
    """One Postfix connection (kept by an smtpd process across its sessions): events answered in order."""

    def __init__(self, factory: SaslFactory) -> None:
        self.factory = factory
        self.core = sasl.SaslServer()
        self.queue: deque[sasl.Event] = deque()
        self.busy = False

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(sasl.handshake(os.getpid(), next(self.factory.cuids), secrets.token_bytes(16)))

    def dataReceived(self, data: bytes) -> None:
        try:
            self.queue.extend(self.core.feed(data))
        except sasl.SaslProtocolError as e:
            log.warn("sasl: closing a connection that broke the auth protocol ({err})", err=str(e))
            self._close()
            return
        if len(self.queue) > MAX_QUEUE:
            log.warn("sasl: closing a connection with more than {n} requests queued", n=MAX_QUEUE)
            self._close()
            return
        self._next()

    def _next(self) -> None:
        transport: Any = self.transport
        while not self.busy and self.queue and self.connected:
            event = self.queue.popleft()
            if isinstance(event, sasl.Verify):
                self.busy = True
                f = self.factory
                d = deferToThreadPool(f.reactor, f.pool, decide, f.service, event)
                d.addCallbacks(self._answer, self._failed)
                return
            transport.write(event.encode())

    def _answer(self, reply: sasl.Success | sasl.Failure | None) -> None:
        self.busy = False
        if reply is None:  # the decision's log line says why (directory or state store unavailable)
            self._close()
            return
        transport: Any = self.transport
        if self.connected:
            transport.write(reply.encode())
        self._next()

    def _failed(self, f: Failure) -> None:
        self.busy = False
        log.failure("sasl: a login could not be decided; closing the connection (Postfix: 454 4.7.0)", f)
        self._close()

    def _close(self) -> None:
        """No answer at all: Postfix's only temporary SMTP AUTH failure is a lost connection."""
        self.queue.clear()
        transport: Any = self.transport
        if transport is not None:
            transport.loseConnection()


class SaslFactory(Factory):
    """Connections from Postfix's smtpd processes; decisions in the auth service's thread pool."""

    noisy = False

    def __init__(self, service: AuthService, reactor: Any, pool: ThreadPool) -> None:
        self.service, self.reactor, self.pool = service, reactor, pool
        self.cuids = itertools.count(1)

    def buildProtocol(self, addr: Any) -> SaslProtocol:
        return SaslProtocol(self)
