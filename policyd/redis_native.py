"""The rate-limit counter call on Redis without a thread: RESP over a Twisted connection.

redis-py is blocking, so every counted message would cost a hop to the thread pool and,
worse, a fight for the GIL between that thread and the reactor; measured, that made the
END-OF-MESSAGE path several times slower than the rest.  This client sends the very
script of :mod:`directory.counters_redis` (``COUNTER_LUA``, same keys and arguments, so
both clients share the counters) from the reactor, pipelined on one connection.

Only what the rate check needs: ``hit_if_below`` and ``peek``.  Sentinel and TLS URLs
are left to redis-py in a thread (``NativeCounters.supported``).  Errors and timeouts
(``[state] timeout``) become :class:`StateUnavailable`, like the blocking store.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from directory.counters import BUCKETS, bucket_ms, check_amount, limit_specs, ms, read_password_file, specs
from directory.counters_redis import COUNTER_LUA
from directory.model import RateDecision, StateUnavailable
from rules.config import Config

log = Logger(namespace="congvu.policyd.redis")

_SHA = hashlib.sha1(COUNTER_LUA.encode()).hexdigest()


class RedisError(Exception):
    """An error reply (``-ERR ...``)."""


def encode(*args: bytes | str | int) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class RespParser:
    """Incremental RESP2 reply parser: bytes in, complete replies out (errors as RedisError values)."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[Any]:
        self.buf += data
        out: list[Any] = []
        while True:
            try:
                value, pos = self._parse(0)
            except IndexError:  # incomplete
                return out
            out.append(value)
            self.buf = self.buf[pos:]

    def _line(self, pos: int) -> tuple[bytes, int]:
        end = self.buf.find(b"\r\n", pos)
        if end < 0:
            raise IndexError
        return self.buf[pos:end], end + 2

    def _parse(self, pos: int) -> tuple[Any, int]:
        if pos >= len(self.buf):
            raise IndexError
        kind = self.buf[pos:pos + 1]
        line, pos = self._line(pos + 1)
        if kind == b":":
            return int(line), pos
        if kind == b"+":
            return line.decode(), pos
        if kind == b"-":
            return RedisError(line.decode(errors="replace")), pos
        if kind == b"$":
            n = int(line)
            if n < 0:
                return None, pos
            if len(self.buf) < pos + n + 2:
                raise IndexError
            return self.buf[pos:pos + n], pos + n + 2
        if kind == b"*":
            n = int(line)
            items = []
            for _ in range(max(n, 0)):
                item, pos = self._parse(pos)
                items.append(item)
            return (items if n >= 0 else None), pos
        raise ValueError(f"unexpected RESP type {kind!r}")


class _Resp(Protocol):
    def __init__(self) -> None:
        self.parser = RespParser()
        self.waiting: deque[defer.Deferred[Any]] = deque()
        self.t: Any = None

    def connectionMade(self) -> None:
        self.t = self.transport

    def send(self, *args: bytes | str | int) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.waiting.append(d)
        self.t.write(encode(*args))
        return d

    def dataReceived(self, data: bytes) -> None:
        try:
            replies = self.parser.feed(data)
        except ValueError as e:
            self.t.abortConnection()
            self._fail(StateUnavailable(f"redis: bad reply: {e}"))
            return
        for r in replies:
            if self.waiting:
                self.waiting.popleft().callback(r)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.connected = False
        self._fail(StateUnavailable("redis: connection lost"))

    def _fail(self, err: Exception) -> None:
        while self.waiting:
            self.waiting.popleft().errback(err)


class NativeCounters:
    """``hit_if_below``/``peek`` of :class:`directory.counters_redis.RedisCounters`, returning Deferreds."""

    @staticmethod
    def supported(cfg: Config) -> bool:
        from redis.connection import SSLConnection, parse_url
        if cfg.state.backend != "redis" or cfg.state.sentinels:
            return False
        try:
            opts = parse_url(cfg.state.url)  # type: ignore[no-untyped-call]
        except ValueError:
            return False
        return opts.get("connection_class") is not SSLConnection

    def __init__(self, cfg: Config, reactor: Any) -> None:
        from redis.connection import UnixDomainSocketConnection, parse_url
        opts = parse_url(cfg.state.url)  # type: ignore[no-untyped-call]
        self.reactor = reactor
        self.prefix = cfg.state.prefix
        self.timeout = cfg.state.timeout.total_seconds()
        self.password = read_password_file(cfg)
        self.username: str | None = opts.get("username")
        self.db = int(opts.get("db", 0) or 0)
        if opts.get("connection_class") is UnixDomainSocketConnection:
            self.endpoint: Any = UNIXClientEndpoint(reactor, opts["path"], timeout=self.timeout)  # type: ignore[no-untyped-call]
            self.where = opts["path"]
        else:
            host, port = opts.get("host", "localhost"), int(opts.get("port", 6379))
            cls = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
            self.endpoint = cls(reactor, host, port, timeout=self.timeout)
            self.where = f"{host}:{port}"
        self.conn: _Resp | None = None
        self._connecting = False
        self._waiters: list[defer.Deferred[_Resp]] = []
        self._down_until = 0.0
        self._down = False

    # ------------------------------------------------------------------ connection

    def _connection(self) -> defer.Deferred[_Resp]:
        if self.conn is not None and self.conn.connected:
            return defer.succeed(self.conn)
        if self.reactor.seconds() < self._down_until:  # fail fast for a second after a failure
            return defer.fail(StateUnavailable(f"redis {self.where}: unavailable"))
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
        try:
            factory = Factory.forProtocol(_Resp)
            factory.noisy = False
            conn = yield self.endpoint.connect(factory)
            if self.password is not None:
                auth = ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
                r = yield conn.send(*auth)
                if isinstance(r, RedisError):
                    raise StateUnavailable(f"redis {self.where}: AUTH refused")
            if self.db:
                r = yield conn.send("SELECT", self.db)
                if isinstance(r, RedisError):
                    raise StateUnavailable(f"redis {self.where}: SELECT {self.db}: {r}")
        except Exception as e:
            self._mark_down()
            raise StateUnavailable(f"redis {self.where}: {e}") from None
        self.conn = conn
        if self._down:
            log.info("policyd: state store {where} answers again (native client)", where=self.where)
            self._down = False
        return conn

    def _mark_down(self) -> None:
        self._down_until = self.reactor.seconds() + 1.0
        if not self._down:
            log.warn("policyd: state store {where} unavailable (native client)", where=self.where)
            self._down = True

    @defer.inlineCallbacks
    def _eval(self, key: str, args: list[Any]) -> Any:
        conn = yield self._connection()
        d = conn.send("EVALSHA", _SHA, 1, key, *args)
        timer = self.reactor.callLater(self.timeout, self._timed_out, conn, d)
        try:
            r = yield d
            if isinstance(r, RedisError) and str(r).startswith("NOSCRIPT"):
                r = yield conn.send("EVAL", COUNTER_LUA, 1, key, *args)
        finally:
            if timer.active():
                timer.cancel()
        if isinstance(r, RedisError):
            raise StateUnavailable(f"redis {self.where}: {r}")
        return r

    def _timed_out(self, conn: _Resp, d: defer.Deferred[Any]) -> None:
        if not d.called:
            self._mark_down()
            conn.connected = False
            if self.conn is conn:
                self.conn = None
            conn._fail(StateUnavailable(f"redis {self.where}: no answer within {self.timeout:g}s"))
            if conn.t is not None:
                conn.t.abortConnection()

    # ------------------------------------------------------------------ the counter calls

    def _count(self, key: str, amount: int, windows: Sequence[Any], now: float, mode: str) -> defer.Deferred[Any]:
        # Same arguments as RedisCounters._count (directory/counters_redis.py).
        now_ms = ms(now)
        args: list[Any] = [now_ms, amount, mode, BUCKETS]
        for s in windows:
            args += [s.w_ms, -1 if s.limit is None else s.limit, f"{s.w_ms}:{now_ms // bucket_ms(s.w_ms)}"]
        d = self._eval(self.prefix + "c:" + key, args)
        d.addCallback(_decision)
        return d

    def hit_if_below(self, key: str, amount: int, limits: Sequence[tuple[timedelta, int]],
                     now: float) -> defer.Deferred[RateDecision]:
        return self._count(key, check_amount(amount), limit_specs(limits), now, "check")

    def peek(self, key: str, windows: Sequence[timedelta], now: float) -> defer.Deferred[RateDecision]:
        return self._count(key, 0, specs(windows), now, "peek")

    def close(self) -> None:
        if self.conn is not None and self.conn.t is not None:
            self.conn.t.loseConnection()
        self.conn = None


def _decision(res: Any) -> RateDecision:
    allowed, retry, *totals = (int(x) for x in res)
    retry_after = None if retry == -2 else float("inf") if retry == -1 else retry / 1000
    return RateDecision(bool(allowed), tuple(totals), retry_after)
