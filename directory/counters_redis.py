"""The shared counter store on Redis: one Lua script, so one round trip, per decision.

Keys (after the configured prefix): ``c:<key>`` a hash of window buckets
(``"<window_ms>:<index>" → amount``), ``f:<key>`` a sorted set of failure fingerprints
scored by time, ``l:<key>`` a lock, ``s:<marker>`` a de-dup marker, ``ll:pending`` and
``ll:taken`` hashes of last-login stamps.  Every decision uses the callers' clock; Redis
expiry (PEXPIRE) only bounds memory.  Needs Redis ≥ 6.2 (``ZADD GT``).

Outages: no retries, ``socket_timeout`` and ``socket_connect_timeout`` both set to
``[state] timeout``, every redis-py error becomes :class:`StateUnavailable`.  The pool
reconnects on the next call after Redis comes back, so no restart is needed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel
from twisted.logger import Logger

from directory.counters import (
    BUCKETS,
    MAX_FINGERPRINTS,
    Mode,
    WindowSpec,
    bucket_ms,
    check_amount,
    clean_field,
    fingerprint_digest,
    limit_specs,
    ms,
    read_password_file,
    specs,
    window_ms,
)
from directory.model import LoginStamp, RateDecision, StateUnavailable
from rules.config import Config, ConfigError

T = TypeVar("T")
_log = Logger(namespace="congvu.counters.redis")

# Mirrors directory.counters.decide; the backend-neutral tests hold both to the same answers.
COUNTER_LUA = """
local now = tonumber(ARGV[1])
local amount = tonumber(ARGV[2])
local mode = ARGV[3]
local nb = tonumber(ARGV[4])
local n = (#ARGV - 4) / 3
local win, lim, field, pos, totals, live = {}, {}, {}, {}, {}, {}
for i = 1, n do
  win[i] = tonumber(ARGV[2 + 3 * i]); lim[i] = tonumber(ARGV[3 + 3 * i]); field[i] = ARGV[4 + 3 * i]
  pos[win[i]] = i; totals[i] = 0; live[i] = {}
end
local stale, maxexp = {}, 0
local flat = redis.call('HGETALL', KEYS[1])
for j = 1, #flat, 2 do
  local f = flat[j]
  local c = string.find(f, ':', 1, true)
  local w = tonumber(string.sub(f, 1, c - 1))
  local exp = (tonumber(string.sub(f, c + 1)) + 1) * math.ceil(w / nb) + w
  if exp <= now then
    stale[#stale + 1] = f
  else
    if exp > maxexp then maxexp = exp end
    local i = pos[w]
    if i then
      local v = tonumber(flat[j + 1])
      totals[i] = totals[i] + v
      live[i][#live[i] + 1] = {exp, v}
    end
  end
end
local allowed, retry = 1, -2
if mode == 'check' then
  for i = 1, n do
    local over = totals[i] + amount - lim[i]
    if over > 0 then
      allowed = 0
      if amount > lim[i] then retry = -1; break end
      table.sort(live[i], function(a, b) return a[1] < b[1] end)
      local freed, when = 0, now
      for _, e in ipairs(live[i]) do
        freed = freed + e[2]; when = e[1]
        if freed >= over then break end
      end
      if when - now > retry then retry = when - now end
    end
  end
end
if mode ~= 'peek' and allowed == 1 then
  for i = 1, n do
    redis.call('HINCRBY', KEYS[1], field[i], amount)
    totals[i] = totals[i] + amount
    local b = math.ceil(win[i] / nb)
    local exp = (math.floor(now / b) + 1) * b + win[i]
    if exp > maxexp then maxexp = exp end
  end
  if #stale > 0 then redis.call('HDEL', KEYS[1], unpack(stale)) end
  if maxexp > now then redis.call('PEXPIRE', KEYS[1], maxexp - now) end
end
local out = {allowed, retry}
for i = 1, n do out[i + 2] = totals[i] end
return out
"""

FAILURE_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
redis.call('ZADD', KEYS[1], 'GT', ARGV[1], ARGV[3])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[4]) + 1))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[2], '+inf')
"""

SEEN_LUA = """
local v = redis.call('GET', KEYS[1])
if v and tonumber(v) > tonumber(ARGV[1]) then return 1 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 0
"""

STAMP_LUA = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local t = tonumber(string.match(cur, '^(%d+)'))
  if t and t >= tonumber(ARGV[2]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

TAKE_LUA = """
local now = tonumber(ARGV[1])
local taken = redis.call('HGETALL', KEYS[2])
local blocked = {}
for j = 1, #taken, 2 do
  if tonumber(taken[j + 1]) <= now then redis.call('HDEL', KEYS[2], taken[j])
  else blocked[taken[j]] = true end
end
local out = {}
local pending = redis.call('HGETALL', KEYS[1])
for j = 1, #pending, 2 do
  local a = pending[j]
  if not blocked[a] then
    out[#out + 1] = a; out[#out + 1] = pending[j + 1]
    redis.call('HDEL', KEYS[1], a)
    redis.call('HSET', KEYS[2], a, ARGV[2])
  end
end
return out
"""

_HOSTPORT = re.compile(r"^\[?(?P<host>[^\]]+?)\]?:(?P<port>\d{1,5})$")


def _sentinel_address(cfg: Config, entry: str) -> tuple[str, int]:
    m = _HOSTPORT.match(entry.strip())
    if m is None:
        raise ConfigError(cfg.path, "state.sentinels", f"expected host:port, got {entry!r}")
    return m["host"], int(m["port"])


class RedisCounters:
    """:class:`directory.model.CounterStore` on Redis (standalone, TLS or behind Sentinel)."""

    def __init__(self, client: redis.Redis, *, prefix: str = "congvu:", where: str = "redis") -> None:
        self._r = client
        self.prefix = prefix
        self.where = where  # host:port or Sentinel service: never the URL (it may hold a password)
        self._down = False
        self._counter: Script = client.register_script(COUNTER_LUA)
        self._failure: Script = client.register_script(FAILURE_LUA)
        self._seen: Script = client.register_script(SEEN_LUA)
        self._stamp: Script = client.register_script(STAMP_LUA)
        self._take: Script = client.register_script(TAKE_LUA)

    def __repr__(self) -> str:
        return f"RedisCounters({self.where!r}, prefix={self.prefix!r})"

    @classmethod
    def from_config(cls, cfg: Config) -> RedisCounters:
        """Build the client from ``[state]``: URL, optional Sentinels, password file, timeout."""
        st = cfg.state
        try:
            opts: dict[str, Any] = parse_url(st.url)  # type: ignore[no-untyped-call]
        except ValueError as e:
            raise ConfigError(cfg.path, "state.url", str(e)) from None
        conn_class = opts.pop("connection_class", None)
        if conn_class is SSLConnection:
            opts["ssl"] = True
        elif conn_class is UnixDomainSocketConnection:
            opts["unix_socket_path"] = opts.pop("path")
        password = read_password_file(cfg)
        if password is not None:
            opts["password"] = password
        t = st.timeout.total_seconds()
        bounded: dict[str, Any] = {"socket_timeout": t, "socket_connect_timeout": t, "retry": Retry(NoBackoff(), 0)}
        try:
            if st.sentinels:
                sentinels = [_sentinel_address(cfg, s) for s in st.sentinels]
                opts.pop("host", None)
                opts.pop("port", None)
                manager = Sentinel(sentinels, sentinel_kwargs=dict(bounded), **opts, **bounded)  # type: ignore[no-untyped-call]
                client = manager.master_for(st.sentinel_service, **bounded)  # type: ignore[no-untyped-call]
                where = f"sentinel service {st.sentinel_service}"
            else:
                client = redis.Redis(**opts, **bounded)
                where = opts.get("unix_socket_path") or f"{opts.get('host', 'localhost')}:{opts.get('port', 6379)}"
        except TypeError as e:  # an unknown ?option= in the URL
            raise ConfigError(cfg.path, "state.url", f"unsupported option: {e}") from None
        return cls(client, prefix=st.prefix, where=where)

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            result = fn()
        except redis.RedisError as e:
            if not self._down:
                _log.warn("state store {where} unavailable: {err}", where=self.where, err=type(e).__name__)
                self._down = True
            raise StateUnavailable(f"redis {self.where}: {e}") from None
        if self._down:
            _log.info("state store {where} answers again", where=self.where)
            self._down = False
        return result

    # ------------------------------------------------------------------ sliding windows

    def _count(self, key: str, amount: int, windows: Sequence[WindowSpec], now: float,
               mode: Mode) -> RateDecision:
        now_ms = ms(now)
        args: list[Any] = [now_ms, amount, mode, BUCKETS]
        for s in windows:
            args += [s.w_ms, -1 if s.limit is None else s.limit, f"{s.w_ms}:{now_ms // bucket_ms(s.w_ms)}"]
        res = self._call(lambda: self._counter(keys=[self.prefix + "c:" + key], args=args))
        allowed, retry, *totals = (int(x) for x in res)
        retry_after = None if retry == -2 else float("inf") if retry == -1 else retry / 1000
        return RateDecision(bool(allowed), tuple(totals), retry_after)

    def hit(self, key: str, amount: int, windows: Sequence[timedelta], now: float) -> tuple[int, ...]:
        return self._count(key, check_amount(amount), specs(windows), now, "hit").totals

    def peek(self, key: str, windows: Sequence[timedelta], now: float) -> tuple[int, ...]:
        return self._count(key, 0, specs(windows), now, "peek").totals

    def hit_if_below(self, key: str, amount: int, limits: Sequence[tuple[timedelta, int]],
                     now: float) -> RateDecision:
        return self._count(key, check_amount(amount), limit_specs(limits), now, "check")

    # ------------------------------------------------------------------ failed logins and locks

    def record_failure(self, key: str, fingerprint: str, window: timedelta, now: float) -> int:
        now_ms, w = ms(now), window_ms(window)
        args: list[int | str] = [now_ms, now_ms - w, fingerprint_digest(fingerprint), MAX_FINGERPRINTS, w]
        return int(self._call(lambda: self._failure(keys=[self.prefix + "f:" + key], args=args)))

    def failures(self, key: str, window: timedelta, now: float) -> int:
        low = f"({ms(now) - window_ms(window)}"
        return int(self._call(lambda: self._r.zcount(self.prefix + "f:" + key, low, "+inf")))

    def clear_failures(self, key: str) -> None:
        self._call(lambda: self._r.delete(self.prefix + "f:" + key))

    def lock(self, key: str, until: float, now: float) -> None:
        until_ms, now_ms = ms(until), ms(now)
        if until_ms <= now_ms:
            self.unlock(key)
            return
        self._call(lambda: self._r.set(self.prefix + "l:" + key, until_ms, px=until_ms - now_ms))

    def unlock(self, key: str) -> None:
        self._call(lambda: self._r.delete(self.prefix + "l:" + key))

    def locked_until(self, key: str, now: float) -> float | None:
        raw = self._call(lambda: self._r.get(self.prefix + "l:" + key))
        if raw is None or int(raw) <= ms(now):
            return None
        return int(raw) / 1000

    # ------------------------------------------------------------------ last-login stamps

    def stamp_login(self, address: str, when: float, service: str, ip: str) -> None:
        when_ms = ms(when)
        value = f"{when_ms}\t{clean_field(service)}\t{clean_field(ip)}"
        self._call(lambda: self._stamp(keys=[self.prefix + "ll:pending"], args=[address.lower(), when_ms, value]))

    def take_login_stamps(self, now: float, min_interval: timedelta) -> list[LoginStamp]:
        now_ms = ms(now)
        nxt = now_ms + min_interval // timedelta(milliseconds=1)
        flat = self._call(lambda: self._take(keys=[self.prefix + "ll:pending", self.prefix + "ll:taken"],
                                             args=[now_ms, nxt]))
        out = []
        for addr, value in zip(flat[::2], flat[1::2], strict=True):
            when, service, ip = value.decode("utf-8", "replace").split("\t", 2)
            out.append(LoginStamp(addr.decode("utf-8", "surrogateescape"), int(when) / 1000, service, ip))
        return sorted(out)

    # ------------------------------------------------------------------ de-duplication

    def seen(self, marker: str, ttl: timedelta, now: float) -> bool:
        now_ms, t = ms(now), window_ms(ttl)
        return bool(self._call(lambda: self._seen(keys=[self.prefix + "s:" + marker], args=[now_ms, now_ms + t, t])))

    def close(self) -> None:
        self._r.close()
