"""The rate-limit counter calls on Redis without a thread: a Twisted client, pipelined on one connection.

redis-py is blocking, so every counted message would cost a hop to the thread pool and,
worse, a fight for the GIL between that thread and the reactor; measured, that made the
END-OF-MESSAGE path several times slower than the rest.  This client runs the counter
arithmetic of :mod:`directory.counters_redis` (``COUNTER_LIB``: same keys, same stored
layout, same answers, so both clients share the counters) from the reactor, pipelined on
one connection.

The rate check's messages go out in batches (:meth:`NativeCounters.count`): every message
counted during one reactor tick, all its windows, in ONE script call (``MULTI_LUA``, from
``policyd/lua/multi.lua``: each key read once, every window of a message checked before any
is counted, so a refused message counts nowhere, as the check's own flow does), written
straight to the socket (:mod:`policyd.sendnow`).  The plan goes as one binary argument and
the answers come back as one short string (:mod:`policyd.batch`); plain callbacks rather
than Deferred chains, and one timer per connection watches the oldest call rather than one
timer per call.  Measured (issue 4, 2026-11-23, A/B on the same shared machine): the batch
script costs Redis ~30 µs per message instead of ~50 µs (bench/policyd_bench.py, 16
connections, ~5.5 messages a batch), and building a batch and reading its answer ~2.4× and
~5× less policyd CPU than the per-key text protocol before.

This module is the connection: the wire format is :mod:`policyd.resp`, the batch's packing
:mod:`policyd.batch`.  Besides ``count``, only ``hit_if_below`` and ``peek`` (Deferreds, one
key per call, ``COUNTER_LUA``).  The connection comes from the same
:class:`~congvu.directory.redis_target.RedisTarget` as redis-py's: its first round trip sends
``AUTH [user] password`` and ``SELECT db`` when configured (``PING`` otherwise), so a login
Redis refuses shows when policyd starts (:meth:`NativeCounters.probe`), logged once as an
error naming the setting to fix, and :attr:`NativeCounters.health` says so to ``/metrics``.
Sentinel and TLS are left to redis-py in a thread (:meth:`NativeCounters.supported`).  Errors
and timeouts (``[state] timeout``) become :class:`StateUnavailable`, like the blocking store.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import partial
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from congvu.directory.counters_redis import COUNTER_LIB, COUNTER_LUA, counter_args, counter_decision, lua
from congvu.directory.model import RateDecision, StateMisconfigured, StateUnavailable
from congvu.directory.redis_target import Health, RedisTarget
from congvu.directory.windows import Mode, WindowSpec, check_amount, limit_specs, specs
from congvu.policyd.batch import MAX_BATCH, Planner, answers
from congvu.policyd.checks.rates import Call
from congvu.policyd.resp import ErrorReply, RespParser, encode, encode_strs
from congvu.policyd.sendnow import Sender
from congvu.policyd.settings import PolicydConfig
from congvu.rules.errors import ProtocolError

log = Logger()

#: A batch of messages in mode ``check``, on the counter library (``policyd/lua/multi.lua``).
MULTI_LUA = COUNTER_LIB + lua("congvu.policyd", "multi.lua")
_MULTI_SHA = hashlib.sha1(MULTI_LUA.encode()).hexdigest()
_SHA = hashlib.sha1(COUNTER_LUA.encode()).hexdigest()

#: Error codes with which Redis refuses congvu's login or a permission: a setting to fix, not an outage.
_REFUSED = ("NOAUTH", "WRONGPASS", "NOPERM")
#: The same refusal from a Redis without ACLs (< 6), or AUTH sent to one without a password.
_REFUSED_ERR = ("ERR invalid password", "ERR AUTH", "ERR Client sent AUTH")

#: What a pending call is told: the reply (an ErrorReply value included) or the StateUnavailable that ended it.
Reply = Callable[[Any], None]
#: What ``count`` tells its caller: one RateDecision per key answered, or why there is none.
Done = Callable[[list[RateDecision] | StateUnavailable], None]


def _refusal(r: ErrorReply) -> bool:
    """Redis refused congvu's credentials or a permission (not an outage: retrying cannot help)."""
    return r.code in _REFUSED or r.message.startswith(_REFUSED_ERR)


class _Resp(Protocol):
    """One connection to Redis: commands pipelined, each reply handed to its callback in order."""

    def __init__(self) -> None:
        self.parser = RespParser()
        #: (sent at, callback) per command awaiting its reply, oldest first.
        self.waiting: deque[tuple[float, Reply]] = deque()
        self.t: Any = None
        self.out: Any = None
        self.clock: Callable[[], float] = lambda: 0.0
        #: Told when the first command goes out while none is pending (NativeCounters arms its timer).
        self.on_busy: Callable[[], None] | None = None

    def connectionMade(self) -> None:
        self.t = self.transport
        self.out = Sender(self.t)
        if hasattr(self.t, "setTcpNoDelay"):  # a batch may leave before the last one's reply: no Nagle wait
            self.t.setTcpNoDelay(True)

    def call(self, data: bytes, reply: Reply) -> None:
        """Send one encoded command; ``reply`` gets its answer (or the error that lost it)."""
        busy = bool(self.waiting)
        self.waiting.append((self.clock(), reply))
        self.out.write(data)
        if not busy and self.on_busy is not None:
            self.on_busy()

    def dataReceived(self, data: bytes) -> None:
        try:
            replies = self.parser.feed(data)
        except ProtocolError as e:
            self.t.abortConnection()
            self._fail(StateUnavailable(f"redis: bad reply: {e}"))
            return
        waiting = self.waiting
        for r in replies:
            if waiting:
                self._tell(waiting.popleft()[1], r)

    @staticmethod
    def _tell(reply: Reply, value: Any) -> None:
        """A callback's bug must not cost the other calls on this connection their answers."""
        try:
            reply(value)
        except Exception:
            log.failure("policyd: error handling a Redis reply")

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.connected = False
        self._fail(StateUnavailable("redis: connection lost"))

    def _fail(self, err: StateUnavailable) -> None:
        while self.waiting:
            self._tell(self.waiting.popleft()[1], err)


class NativeCounters:
    """The rate check's counters on Redis from the reactor: ``count`` (batched), ``hit_if_below``/``peek``."""

    @staticmethod
    def supported(target: RedisTarget) -> bool:
        """A plain TCP or unix socket: Sentinel and TLS are left to redis-py in a thread."""
        return not target.sentinels and not target.tls

    def __init__(self, cfg: PolicydConfig, reactor: Any, target: RedisTarget | None = None) -> None:
        target = target or RedisTarget.from_config(cfg)
        self.reactor = reactor
        self.target = target
        self.where = target.where
        self.prefix = cfg.state.prefix
        self.timeout = target.timeout
        #: Whether Redis answers, and why not (read by the policy server's ``/metrics``).
        self.health = Health(target, "policyd native client")
        if target.path:
            self.endpoint: Any = UNIXClientEndpoint(reactor, target.path, timeout=self.timeout)  # type: ignore[no-untyped-call]
        else:
            tcp = TCP6ClientEndpoint if ":" in target.host else TCP4ClientEndpoint
            self.endpoint = tcp(reactor, target.host, target.port, timeout=self.timeout)
        #: The first round trip of every connection: (command name, encoded command).
        self._hello: list[tuple[str, bytes]] = []
        if target.password is not None:
            login = (target.username, target.password) if target.username else (target.password,)
            self._hello.append(("AUTH", encode("AUTH", *login)))
        if target.db:
            self._hello.append(("SELECT", encode("SELECT", target.db)))
        if not self._hello:  # nothing to send, but a Redis that wants a password says so to a PING
            self._hello.append(("PING", encode("PING")))
        self.conn: _Resp | None = None
        self._connecting = False
        self._waiters: list[defer.Deferred[_Resp]] = []
        self._down_until = 0.0
        self._down_error = StateUnavailable(f"redis {self.where}: unavailable")
        self._timer: Any = None
        #: Messages waiting for the end of this reactor tick, to be counted in one script call, and their callbacks.
        self._messages: list[Sequence[Call]] = []
        self._dones: list[Done] = []
        self._flush_scheduled = False
        self.planner = Planner(self.prefix)
        self._closed = False

    # ------------------------------------------------------------------ connection

    def probe(self) -> None:
        """Connect now, so a login Redis refuses is reported when policyd starts, not at the first message."""
        if not self._closed:
            self._connection().addErrback(lambda f: None)  # reported through self.health

    def _connection(self) -> defer.Deferred[_Resp]:
        if self.conn is not None and self.conn.connected:
            return defer.succeed(self.conn)
        if self.reactor.seconds() < self._down_until:  # fail fast for a second after a failure
            return defer.fail(self._down_error)
        d: defer.Deferred[_Resp] = defer.Deferred()
        self._waiters.append(d)
        if not self._connecting:
            self._connecting = True
            self._connect().addBoth(self._connected)
        return d

    def _connected(self, result: Any) -> None:
        self._connecting = False
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if isinstance(result, Failure):
                w.errback(result)
            else:
                w.callback(result)

    @defer.inlineCallbacks
    def _connect(self) -> Any:
        conn: _Resp | None = None
        try:
            factory = Factory.forProtocol(_Resp)
            factory.noisy = False
            conn = yield self.endpoint.connect(factory)
            replies = yield self._greet(conn)
            err = self._refused_hello(replies)
        except defer.TimeoutError:
            err = StateUnavailable(f"redis {self.where}: no answer within {self.timeout:g}s")
        except Exception as e:
            err = StateUnavailable(f"redis {self.where}: {e or type(e).__name__}")
        if err is not None or self._closed:
            if conn is not None and conn.t is not None:
                conn.t.abortConnection()
            if err is None:
                raise StateUnavailable(f"redis {self.where}: client closed")
            self._mark_down(err)
            raise err
        assert conn is not None
        conn.clock = self.reactor.seconds
        conn.on_busy = self._arm
        if conn.waiting:
            self._arm()
        self.conn = conn
        self.health.answered()
        return conn

    def _greet(self, conn: _Resp) -> defer.Deferred[list[Any]]:
        """Send the hello commands in one write; fires with their replies, or fails after the timeout."""
        d: defer.Deferred[list[Any]] = defer.Deferred()
        got: list[Any] = []

        def reply(r: Any) -> None:
            got.append(r)
            if len(got) == len(self._hello) and not d.called:
                d.callback(got)

        for _, data in self._hello:
            conn.call(data, reply)
        return d.addTimeout(self.timeout, self.reactor)

    def _refused_hello(self, replies: list[Any]) -> StateUnavailable | None:
        """Why the hello failed (Redis refusing a setting is a StateMisconfigured), or None."""
        for (name, _), r in zip(self._hello, replies, strict=True):
            if isinstance(r, StateUnavailable):
                return r
            if isinstance(r, ErrorReply):
                if _refusal(r):
                    return self.health.refused(str(r), self.target.fix(r.code))
                if name == "SELECT" and r.code == "ERR":
                    return self.health.refused(str(r), f"the database number ({self.target.db}) in [state] url")
                return StateUnavailable(f"redis {self.where}: {name}: {r}")
        return None

    def _mark_down(self, err: StateUnavailable) -> None:
        """Fail fast with ``err`` for a second; a refused login was already reported by ``health``."""
        self._down_until = self.reactor.seconds() + 1.0
        self._down_error = err
        if not isinstance(err, StateMisconfigured):
            self.health.unavailable(str(err))

    def _arm(self) -> None:
        """One timer per connection, not per call: it looks at the oldest call still waiting."""
        if self._timer is None or not self._timer.active():
            self._timer = self.reactor.callLater(self.timeout, self._check_timeout)

    def _check_timeout(self) -> None:
        self._timer = None
        conn = self.conn
        if conn is None or not conn.waiting:
            return
        waited = self.reactor.seconds() - conn.waiting[0][0]
        if waited < self.timeout:
            self._timer = self.reactor.callLater(self.timeout - waited, self._check_timeout)
            return
        err = StateUnavailable(f"redis {self.where}: no answer within {self.timeout:g}s")
        self._mark_down(err)
        conn.connected = False
        self.conn = None
        conn._fail(err)
        if conn.t is not None:
            conn.t.abortConnection()

    def _script(self, sha: str, script: str, keys: Sequence[str], args: Sequence[str], done: Reply,
                blob: bytes | None = None) -> None:
        """EVALSHA (EVAL if Redis lost the script) with ``blob``, if any, as the last argument.

        ``done`` gets the reply or a StateUnavailable.
        """
        data = encode_strs(["EVALSHA", sha, str(len(keys)), *keys, *args], blob)
        health = self.health

        def finish(r: Any) -> None:
            if isinstance(r, ErrorReply):
                r = (health.refused(str(r), self.target.fix(r.code)) if _refusal(r)
                     else StateUnavailable(f"redis {self.where}: {r}"))
            elif health.problem is not None and not isinstance(r, StateUnavailable):
                health.answered()
            done(r)

        def send(conn: _Resp) -> None:
            def got(r: Any) -> None:
                if isinstance(r, ErrorReply) and r.code == "NOSCRIPT" and conn.connected:
                    conn.call(encode_strs(["EVAL", script, str(len(keys)), *keys, *args], blob), finish)
                else:
                    finish(r)
            conn.call(data, got)

        conn = self.conn
        if conn is not None and conn.connected:
            send(conn)
            return
        if self._closed:
            done(StateUnavailable(f"redis {self.where}: client closed"))
            return

        def failed(f: Failure) -> None:
            e = f.value
            done(e if isinstance(e, StateUnavailable) else StateUnavailable(f"redis {self.where}: {e}"))

        self._connection().addCallbacks(send, failed)

    # ------------------------------------------------------------------ the counter calls

    def count(self, calls: Sequence[Call], done: Done) -> None:
        """Count one message's windows; ``done`` gets the answers in the reactor, a tick or more later.

        All or nothing: every window is checked before any is counted.  ``done`` gets one
        RateDecision per call if all were counted, or the answers up to the first refusal
        (the last one refused; then nothing was counted), or the StateUnavailable that
        stopped it.

        Messages are batched: every message counted during one reactor tick (all the
        connections whose END-OF-MESSAGE arrived in one poll) goes to Redis in ONE script
        call (``MULTI_LUA``) at the end of the tick.  (Holding the next batch until the
        previous one is answered was measured too: fewer, larger batches, but slower.)
        """
        if not calls:
            done([])
            return
        self._messages.append(calls)
        self._dones.append(done)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.reactor.callLater(0, self._tick)

    def _tick(self) -> None:
        self._flush_scheduled = False
        self._flush()

    def _flush(self) -> None:
        """Send the waiting messages (at most MAX_BATCH of them per call) as script calls."""
        while self._messages:
            messages, dones = self._messages, self._dones
            if len(messages) > MAX_BATCH:
                self._messages, self._dones = messages[MAX_BATCH:], dones[MAX_BATCH:]
                messages, dones = messages[:MAX_BATCH], dones[:MAX_BATCH]
            else:
                self._messages, self._dones = [], []
            try:
                keys, plan = self.planner.plan(messages)
            except Exception as e:  # a call the store would refuse too, or a bug: nothing was counted
                for done in dones:
                    _Resp._tell(done, StateUnavailable(f"redis {self.where}: {e}"))
                continue
            self._script(_MULTI_SHA, MULTI_LUA, keys, [], partial(self._answered, messages, dones), plan)

    def _answered(self, messages: list[Sequence[Call]], dones: list[Done], r: Any) -> None:
        if isinstance(r, StateUnavailable):
            for done in dones:
                _Resp._tell(done, r)
            return
        try:
            got = answers(r, [len(calls) for calls in messages])
        except ValueError:  # not what MULTI_LUA returns
            err = StateUnavailable(f"redis {self.where}: unexpected reply {r!r:.80}")
            for done in dones:
                _Resp._tell(done, err)
            return
        for done, decisions in zip(dones, got, strict=True):
            try:
                done(decisions)
            except Exception:  # as _Resp._tell: one callback's bug must not cost the others their answers
                log.failure("policyd: error handling a Redis reply")

    def _count(self, key: str, amount: int, windows: Sequence[WindowSpec], now: float,
               mode: Mode) -> defer.Deferred[RateDecision]:
        d: defer.Deferred[Any] = defer.Deferred()
        self._script(_SHA, COUNTER_LUA, [self.prefix + "c:" + key], counter_args(amount, windows, now, mode),
                     lambda r: d.errback(r) if isinstance(r, Exception) else d.callback(r))
        return d.addCallback(counter_decision)

    def hit_if_below(self, key: str, amount: int, limits: Sequence[tuple[timedelta, int]],
                     now: float) -> defer.Deferred[RateDecision]:
        return self._count(key, check_amount(amount), limit_specs(limits), now, "check")

    def peek(self, key: str, windows: Sequence[timedelta], now: float) -> defer.Deferred[RateDecision]:
        return self._count(key, 0, specs(windows), now, "peek")

    def close(self) -> None:
        self._closed = True
        dones, self._messages, self._dones = self._dones, [], []
        for done in dones:
            _Resp._tell(done, StateUnavailable(f"redis {self.where}: client closed"))
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.conn is not None and self.conn.t is not None:
            self.conn.t.loseConnection()
        self.conn = None
