"""Send a small write at once when nothing is queued, instead of on the reactor's next turn.

Twisted's ``transport.write`` queues the bytes, registers the socket for writability
(epoll_ctl), sends on the next loop iteration through one more dispatched event, then
unregisters (epoll_ctl again).  A policy reply (or a batch of counter calls) is a few
dozen bytes going into a socket whose send buffer is empty, so one ``send`` almost always
takes it all; measured, the queued path cost more than the checks themselves.  When the
direct send does not take everything (the peer stopped reading) or fails, the rest and
every later write go through the transport as usual, so ordering, back-pressure and
error handling (the connection is closed) stay Twisted's.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.tcp import Connection


class Sender:
    """Writes for one transport: direct while everything fits, the transport's queue afterwards."""

    __slots__ = ("sock", "transport")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        #: Plain TCP and UNIX connections only (no TLS, test transports): None = always the transport.
        self.sock: Any = transport.socket if isinstance(transport, Connection) else None

    def write(self, data: bytes) -> None:
        sock = self.sock
        if sock is not None:
            try:
                sent = sock.send(data)
            except OSError:  # EAGAIN, a reset...: the transport sees it and handles it itself
                sent = 0
            if sent == len(data):
                return
            self.sock = None  # something is queued now: from here on, only the transport keeps order
            data = data[sent:]
        self.transport.write(data)
