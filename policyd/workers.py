"""Several policyd processes sharing the listening sockets (``[policyd] workers``).

One Twisted reactor is one core: at ~120 µs of CPU per request the policy server is bound
by a single core.  Postfix holds its policy connections open, so spreading *connections*
over processes spreads the load: the process running ``congvu policyd``/``congvu serve``
(the master, worker 0) listens as usual, then starts ``workers - 1`` children (the command
line comes from the composition root: ``congvu policyd --worker N --worker-fds ...``) that inherit its listening
sockets and accept on them too, one connection per wake-up (:class:`_OneAccept`), the
master through a duplicate of each socket.  Each process has its own directory and counter
connections, account cache and CountedInstances: every request of one message comes over
one Postfix connection, hence to one process.

Child descriptors (set up by ``reactor.spawnProcess``):

* 0, the control pipe, written by nobody: EOF means the master is gone (even SIGKILLed),
  and the child stops;
* 1 and 2, the master's stderr: log lines, tagged ``[wN]``, written whole and at most
  PIPE_BUF bytes at a time (:func:`congvu.logging.write_lines`) so lines never mix;
* 3, the stats pipe: a JSON line ``{"stats": {...}}`` (:meth:`policyd.stats.Stats.to_dict`)
  about once a second; the master's ``/metrics`` renders the sum and a per-worker series;
* 4 onwards, the listening sockets of ``[policyd] listen`` (TCP, TCP6 or unix; ``ssl:``
  endpoints stay with the master, where their TLS is set up).

SIGHUP on the master is forwarded: each child rereads the same config file itself (a
refused file leaves it on its running config, logged).  On stop the master sends SIGTERM,
waits up to :data:`STOP_GRACE` seconds, then SIGKILLs.  A child that dies otherwise is
restarted after 1 s, doubling to 30 s while it keeps dying; the counters it had reported
stay in the sums so ``/metrics`` counters never go down.  Changing ``workers`` or ``listen``
needs a restart (a reload logs so).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, tcp, unix
from twisted.internet.error import ProcessDone, ProcessTerminated, ReactorNotRunning
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from congvu.policyd.stats import Stats

log = Logger()

CONTROL_FD = 0
STATS_FD = 3
FIRST_SOCKET_FD = 4
#: Seconds between two stats snapshots of a child.
SNAPSHOT_INTERVAL = 1.0
#: Seconds a stopping master waits for its children after SIGTERM before SIGKILL.
STOP_GRACE = 5.0
#: Restart delay after a child died: first, and the most it doubles to.  A child that ran
#: at least BACKOFF_MAX seconds before dying is restarted after BACKOFF_FIRST again.
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0
#: Seconds a process leaves the shared sockets to the others after it accepted a connection.
ACCEPT_PAUSE = 0.005
#: Largest stats line the master accepts from a child (a snapshot is a few kB).
MAX_SNAPSHOT = 1 << 20


# --------------------------------------------------------------------------- the sockets


class _OneAccept:
    """Accept one connection, then leave the next ones to the other processes for ACCEPT_PAUSE.

    Every process sharing a listening socket is woken when a connection waits, and the one
    already running wins the race: Twisted's port accepts up to 100 in a row, so one process
    took a whole burst (16 smtpd processes connecting at once: 16 to 0), and with one accept
    per wake-up the same process still won most (2:14, 15:1, 4:12 in six trials).  Postfix
    keeps policy connections for minutes, so that imbalance lasts.  Pausing after each
    accept lets the others take turns, and a busy process (not waiting in its reactor)
    takes fewer.  Connections are few and long-lived: a few ms on a connect cost nothing.
    """

    _resume: Any = None

    @property
    def numberAccepts(self) -> int:
        return 1

    @numberAccepts.setter
    def numberAccepts(self, value: int) -> None:
        pass  # Twisted raises it after a full batch; it stays 1

    def doRead(self) -> None:
        port: Any = self  # a tcp.Port or unix.Port (the other base class)
        before = port.sessionno  # Twisted counts accepted connections here
        super().doRead()  # type: ignore[misc]
        if port.sessionno != before and port.connected and not port.disconnecting:
            port.stopReading()
            self._resume = port.reactor.callLater(ACCEPT_PAUSE, self._accept_again)

    def _accept_again(self) -> None:
        port: Any = self
        if port.connected and not port.disconnecting:
            port.startReading()


class _SharedTCPPort(_OneAccept, tcp.Port):
    """A TCP listening socket shared by the policyd processes (Twisted skips shutdown(2) on an adopted one)."""


class _SharedUnixPort(_OneAccept, unix.Port):
    """A unix listening socket shared by the policyd processes: its file's mode and the file are the master's.

    Twisted's unix port chmods its file at start (0666 unless told), and at stop calls
    shutdown(2), which stops the socket listening in every process holding it, and unlinks
    the file.  A shared port does none of these, or it would undo ``mode=660`` or take the
    socket away from the other processes; the master's own port (from ``[policyd] listen``)
    still unlinks the file when the master stops.
    """

    _shouldShutdown = False

    def startListening(self) -> None:
        with contextlib.suppress(OSError):  # chmod to the mode the master set: a no-op
            self.mode = stat.S_IMODE(os.stat(self._bindPath).st_mode)
        super().startListening()  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure) -> None:
        tcp.Port.connectionLost(self, reason)  # type: ignore[no-untyped-call]  # no unlink


def adopt_ports(reactor: Any, fds: Iterable[int], factory: Factory) -> list[Any]:
    """Serve ``factory`` on listening sockets (any family) one accept at a time; the descriptors given are closed.

    What ``reactor.adoptStreamPort`` does, with the port classes above.  The ports are
    IListeningPorts (typed Any: zope interfaces do not type-check under mypy --strict).
    """
    ports: list[Any] = []
    for fd in fds:
        s = socket.socket(fileno=fd)  # the family from the socket itself
        family = s.family
        s.setblocking(False)  # Twisted needs it; the flag is shared with the master's copy, which has it already
        s.detach()
        try:
            port: Any
            if family == socket.AF_UNIX:
                port = _SharedUnixPort._fromListeningDescriptor(reactor, fd, factory)  # type: ignore[no-untyped-call]
            else:
                port = _SharedTCPPort._fromListeningDescriptor(  # type: ignore[no-untyped-call]
                    reactor, fd, family, factory)
            port.startListening()
        finally:
            os.close(fd)  # the port listens on its own duplicate
        ports.append(port)
    return ports


# --------------------------------------------------------------------------- the child side


class _Control(Protocol):
    """The control pipe (fd 0) and the stats pipe (fd 3) of a child, as one stdio transport."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        #: Set when the reactor shuts down for another reason (SIGTERM): the pipe closing then is expected.
        self.stopping = False
        reactor.addSystemEventTrigger("before", "shutdown", self._shutdown)

    def _shutdown(self) -> None:
        self.stopping = True

    def dataReceived(self, data: bytes) -> None:
        pass  # the master writes nothing: the pipe only tells when it is gone

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("policyd: control pipe closed (the master is gone or stopping); stopping")
        with contextlib.suppress(ReactorNotRunning):
            self.reactor.stop()


class WorkerControl(Service):
    """A child's ends of its pipes: stop when the master is gone, send stats snapshots.

    The composition root adds it beside the child's PolicyService; :meth:`serving` is called
    once the service listens and the child's SIGHUP handler is in place: only then may the
    first snapshot go, since the master forwards SIGHUP to a child after its first snapshot.
    """

    name = "worker-control"

    def __init__(self, reactor: Any, index: int, stats: Callable[[], Stats],
                 listening: Callable[[], list[str]]) -> None:
        self.reactor, self.index, self.stats, self.ports = reactor, index, stats, listening
        self.control = _Control(reactor)
        self._pipe: Any = None
        self._snapshots = LoopingCall(self._send)
        self._snapshots.clock = reactor

    def startService(self) -> None:
        from twisted.internet.stdio import StandardIO
        super().startService()  # type: ignore[no-untyped-call]
        stdio: Any = StandardIO
        self._pipe = stdio(self.control, stdin=CONTROL_FD, stdout=STATS_FD, reactor=self.reactor)

    def serving(self) -> None:
        log.info("policyd: worker {n} (pid {pid}) serving {ports}", n=self.index, pid=os.getpid(),
                 ports=", ".join(self.ports()))
        self._snapshots.start(SNAPSHOT_INTERVAL, now=True)

    def _send(self) -> None:
        if self._pipe is not None:
            self._pipe.write(json.dumps({"stats": self.stats().to_dict()}, separators=(",", ":")).encode() + b"\n")

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._snapshots.running:
            self._snapshots.stop()


# --------------------------------------------------------------------------- the master side


def _describe_end(reason: Failure) -> str:
    err = reason.value
    if isinstance(err, ProcessDone):
        return "exit status 0"
    if isinstance(err, ProcessTerminated):
        if err.signal is not None:
            return f"killed by signal {err.signal}"
        return f"exit status {err.exitCode}"
    return str(err)


class _Child(ProcessProtocol):
    """The master's end of one child: its stats pipe, and its end."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool, self.index = pool, index
        self.buf = b""
        self.latest = Stats()
        self.pid: int | None = None
        self.started_at = 0.0
        #: Serving, with its SIGHUP handler in place (it sent a snapshot): before that, a SIGHUP
        #: would kill it (the default action), so a reload is held for it in ``reload_pending``.
        self.ready = False
        self.reload_pending = False

    def connectionMade(self) -> None:
        self.pid = getattr(self.transport, "pid", None)
        self.started_at = self.pool.reactor.seconds()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != STATS_FD:
            return
        self.buf += data
        if b"\n" not in self.buf:
            if len(self.buf) > MAX_SNAPSHOT:
                self.buf = b""
            return
        lines = self.buf.split(b"\n")
        self.buf = lines.pop()
        try:
            self.latest = Stats.from_dict(json.loads(lines[-1])["stats"])
        except (ValueError, TypeError, KeyError) as e:
            log.warn("policyd: worker {n} sent an unreadable stats snapshot ({err})", n=self.index, err=str(e))
            return
        if not self.ready:
            self.ready = True
            if self.reload_pending:  # a SIGHUP came while it was starting
                self.reload_pending = False
                self.pool._signal(self, "HUP")

    def processEnded(self, reason: Failure) -> None:
        self.pool._ended(self, reason)


class WorkerPool:
    """The master's children: spawned once it listens, restarted when they die, stopped with it.

    What it needs of the master, and no more: the reactor, ``size`` processes in all,
    ``ports`` (``[policyd] listen`` endpoint → listening port) to share, the ``factory`` its
    own share of the connections is served with, the master's ``stats`` (summed into
    ``/metrics``), ``argv(index, fds)`` (a child's command line, from the composition root)
    and the environment children get.
    """

    def __init__(self, reactor: Any, size: int, ports: Sequence[tuple[str, Any]], factory: Factory, stats: Stats,
                 argv: Callable[[int, Sequence[int]], list[str]], env: dict[str, str] | None = None) -> None:
        self.reactor = reactor
        self.size = size
        self.factory = factory
        self.stats = stats
        self.argv = argv
        self.env = env
        self.ports = list(ports)
        #: The master's own one-at-a-time ports on duplicates of the shared sockets (once started).
        self.adopted: list[Any] = []
        self.children: dict[int, _Child] = {}
        #: Counters of children that ended, so the sums in /metrics never go down.
        self.retired = Stats()
        self.retired_requests: dict[int, int] = {}
        self._delay: dict[int, float] = {}
        self._restarts: dict[int, Any] = {}
        self._stopping = False
        self._stopped: defer.Deferred[None] | None = None
        self._kill: Any = None
        #: The shared sockets: ``[policyd] listen`` (ssl: endpoints stay with the master: TLS is set up there).
        self.shared = [(ep, port) for ep, port in self.ports if not ep.startswith("ssl:")]

    def start(self) -> list[Any]:
        """Spawn the children; returns the ports the master now accepts on (its one-at-a-time duplicates)."""
        skipped = [ep for ep, _ in self.ports if ep.startswith("ssl:")]
        if skipped:
            log.warn("policyd: {eps} served by the master only (workers share plain sockets only)",
                     eps=", ".join(skipped))
        if not self.shared:
            log.warn("policyd: [policyd] workers = {w} but no plain listen endpoint to share: one process",
                     w=self.size)
            return []
        log.info("policyd: starting {n} worker process(es) besides this one ([policyd] workers = {w})",
                 n=self.size - 1, w=self.size)
        # The master too accepts one connection at a time: through a shared port on a duplicate of
        # each socket; its own port stops reading but stays, to remove a unix socket file at stop.
        fds = [os.dup(port.fileno()) for _, port in self.shared]
        self.adopted = adopt_ports(self.reactor, fds, self.factory)
        for _, port in self.shared:
            port.stopReading()
        for index in range(1, self.size):
            self._spawn(index)
        return self.adopted

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self._stopping:
            return
        fds = [FIRST_SOCKET_FD + k for k in range(len(self.shared))]
        child_fds: dict[int, int | str] = {CONTROL_FD: "w", 1: 2, 2: 2, STATS_FD: "r"}
        for fd, (_, port) in zip(fds, self.shared, strict=True):
            child_fds[fd] = port.fileno()
        argv = self.argv(index, fds)
        child = _Child(self, index)
        try:
            self.reactor.spawnProcess(child, argv[0], argv, env=self.env, childFDs=child_fds)
        except Exception as e:  # fork failed (out of processes or memory): try again later
            self._retry(index, f"could not be started ({e})")
            return
        self.children[index] = child

    def _retry(self, index: int, why: str) -> None:
        delay = self._delay.get(index, BACKOFF_FIRST)
        self._delay[index] = min(BACKOFF_MAX, delay * 2)
        log.error("policyd: worker {n} {why}; restarting it in {delay:g}s", n=index, why=why, delay=delay)
        self._restarts[index] = self.reactor.callLater(delay, self._spawn, index)

    def _ended(self, child: _Child, reason: Failure) -> None:
        if self.children.get(child.index) is child:
            del self.children[child.index]
        latest, child.latest = child.latest, Stats()
        latest.connections_open = latest.state_store_down = 0  # gauges of a process that is gone
        self.retired.merge(latest)
        self.retired_requests[child.index] = self.retired_requests.get(child.index, 0) + latest.requests
        if self._stopping:
            if not self.children and self._stopped is not None and not self._stopped.called:
                self._stopped.callback(None)
            return
        if self.reactor.seconds() - child.started_at >= BACKOFF_MAX:
            self._delay[child.index] = BACKOFF_FIRST  # it had settled: a fresh failure, not a crash loop
        self._retry(child.index, f"(pid {child.pid}) exited unexpectedly, {_describe_end(reason)}")

    def reload(self) -> None:
        """Forward SIGHUP: each child rereads the config file itself (a starting one once it serves)."""
        for child in list(self.children.values()):
            if child.ready:
                self._signal(child, "HUP")
            else:
                child.reload_pending = True

    def _signal(self, child: _Child, sig: str) -> None:
        transport: Any = child.transport
        with contextlib.suppress(Exception):  # already gone: processEnded follows
            transport.signalProcess(sig)

    def stop(self) -> defer.Deferred[None]:
        """SIGTERM every child; SIGKILL those alive after STOP_GRACE seconds.

        The control pipes stay open: a child stopping on SIGTERM and on the pipe's EOF at
        once would stop its reactor twice.  They close when the master exits.
        """
        self._stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        d: defer.Deferred[None] = defer.Deferred()
        if not self.children:
            d.callback(None)
            return d
        self._stopped = d
        for child in list(self.children.values()):
            self._signal(child, "TERM")

        def kill() -> None:
            for child in list(self.children.values()):
                log.warn("policyd: worker {n} (pid {pid}) still running {s:g}s after SIGTERM; SIGKILL",
                         n=child.index, pid=child.pid, s=STOP_GRACE)
                self._signal(child, "KILL")

        self._kill = self.reactor.callLater(STOP_GRACE, kill)

        def done(result: None) -> None:
            if self._kill is not None and self._kill.active():
                self._kill.cancel()

        d.addCallback(done)
        return d

    def snapshot(self) -> tuple[Stats, dict[int, int]]:
        """The sum of every process's counters (ended children included) and the requests per worker."""
        total = Stats()
        total.merge(self.stats)
        total.merge(self.retired)
        per_worker = {0: self.stats.requests}
        for index in range(1, self.size):
            child = self.children.get(index)
            latest = child.latest if child is not None else Stats()
            total.merge(latest)
            per_worker[index] = self.retired_requests.get(index, 0) + latest.requests
        return total, per_worker

    def render(self, checks: Iterable[str]) -> str:
        total, per_worker = self.snapshot()
        return total.render(checks, per_worker)
