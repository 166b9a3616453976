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

from congvu.directory.model import LoginStamp, RateDecision, StateUnavailable
from congvu.directory.settings import StoreConfig
from congvu.directory.windows import (
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
    specs,
    window_ms,
)
from congvu.rules.errors import ConfigError

T = TypeVar("T")
_log = Logger()

#: The window arithmetic of :func:`congvu.directory.windows.decide` in Lua: the ONE copy both
#: scripts run (``COUNTER_LUA`` here, ``policyd.redis_native.MULTI_LUA`` for batches); the
#: backend-neutral tests hold it to ``decide`` (CT25-3.1 rate limits, CT25-3.2 lockouts).
#: A key is read once (HGETALL) into a cache ``st``: entries ``field, window, expiry, amount``
#: at ``st[i..i+3]`` for i = 1, 5, .. < ``st.n`` (window ``false`` once deleted; no field-to-entry
#: map: a table costs more than scanning a key's ≤ ~60 entries), ``st.max``/``st.min`` the
#: latest/earliest expiry, ``st.ttl`` the expiry Redis's TTL was last set for.  Field names
#: (``"<window_ms>:<index>"``) are parsed once per batch, not once per key (``MEMO``): the keys
#: of a batch share most of them (the same windows' current buckets); one key alone does not.  PEXPIRE only when a write
#: moves the key's latest bucket on: the TTL set when that bucket was created already ends
#: at its expiry (Redis expiry only bounds memory; answers never depend on it).  This Redis's
#: Lua pays ~150 ns per C call (``tonumber``, ``math.floor``) and ~45 ns per global read, hence
#: the local aliases, ``x + 0`` and ``now - now % b``.
COUNTER_LIB = """
local call, huge, match, format = redis.call, math.huge, string.match, string.format
local NB, MEMO = 60, true
local WIN, EXP, WIDTH, LASTI, LASTF = {}, {}, {}, {}, {}
local function width(w)
  local b = WIDTH[w]
  if b == nil then b = math.ceil(w / NB); WIDTH[w] = b end
  return b
end
local function load(key)
  local flat = call('HGETALL', key)
  local st = {false, false, false, false, false, false, false, false, n = 0, max = 0, min = 0, ttl = 0}
  local n, max, min = 0, 0, huge
  for j = 1, #flat, 2 do
    local f = flat[j]
    local e, w = EXP[f], WIN[f]
    if e == nil then
      local ws, i = match(f, '^(%d+):(%d+)$')
      w = ws + 0
      e = (i + 1) * width(w) + w
      if MEMO then WIN[f] = w; EXP[f] = e end
    end
    st[n + 1] = f; st[n + 2] = w; st[n + 3] = e; st[n + 4] = flat[j + 1] + 0
    n = n + 4
    if e > max then max = e end
    if e < min then min = e end
  end
  st.n = n; st.max = max; st.min = min; st.ttl = max
  return st
end
local function sums(st, pos, now, out)
  for i = 1, st.n, 4 do
    local at = pos[st[i + 1]]
    if at and st[i + 2] > now then out[at] = out[at] + st[i + 3] end
  end
end
local function wait(st, w, now, over)
  local live = {}
  for i = 1, st.n, 4 do
    if st[i + 1] == w and st[i + 2] > now then live[#live + 1] = {st[i + 2], st[i + 3]} end
  end
  table.sort(live, function(a, b) return a[1] < b[1] end)
  local freed, when = 0, now
  for _, e in ipairs(live) do
    freed = freed + e[2]; when = e[1]
    if freed >= over then break end
  end
  return when - now
end
local function add(st, w, amount, now, f)
  local b = width(w)
  local i = (now - now % b) / b
  if f == nil then
    if LASTI[w] ~= i then LASTI[w] = i; LASTF[w] = format('%d:%d', w, i) end
    f = LASTF[w]
  end
  local e = (i + 1) * b + w
  local n, at = st.n, nil
  if e <= st.max then  -- else newer than every stored bucket: not there
    for k = n - 3, 1, -4 do
      if st[k] == f and st[k + 1] then at = k; break end
    end
  end
  if at then
    st[at + 3] = st[at + 3] + amount
  else
    at = n + 1
    st[at] = f; st[at + 1] = w; st[at + 2] = e; st[at + 3] = amount
    st.n = n + 4
  end
  if e > st.max then st.max = e end
  if e < st.min then st.min = e end
  return f, at
end
local function sweep(key, st, now)
  if st.min > now then return end
  local stale, min = {}, huge
  for i = 1, st.n, 4 do
    if st[i + 1] then
      local e = st[i + 2]
      if e <= now then
        stale[#stale + 1] = st[i]; st[i + 1] = false
      elseif e < min then min = e end
    end
  end
  st.min = min
  if #stale > 0 then call('HDEL', key, unpack(stale)) end
end
local function expire(key, st, now)
  if st.max > st.ttl then call('PEXPIRE', key, st.max - now); st.ttl = st.max end
end
"""

# ARGV: now (ms), amount, mode (peek/hit/check), buckets per window; per window: its ms, its limit
# (-1 for plain hits), its current bucket's field (``bucket_ms`` arithmetic; Python's string
# saves Lua a ``string.format``).  Reply: allowed (1/0), retry (ms; -2 none, -1 never), the
# total per window.
COUNTER_LUA = COUNTER_LIB + """
local now, amount, mode = ARGV[1] + 0, ARGV[2] + 0, ARGV[3]
NB, MEMO = ARGV[4] + 0, false  -- one key: no other key to share parsed field names with
local st = load(KEYS[1])
local n = (#ARGV - 4) / 3
local out, pos = {1, -2}, {}
for i = 1, n do out[i + 2] = 0; pos[ARGV[2 + 3 * i] + 0] = i + 2 end
sums(st, pos, now, out)
if mode == 'check' then
  for i = 1, n do
    local lim = ARGV[3 + 3 * i] + 0
    local over = out[i + 2] + amount - lim
    if over > 0 then
      out[1] = 0
      if amount > lim then out[2] = -1; break end
      local r = wait(st, ARGV[2 + 3 * i] + 0, now, over)
      if r > out[2] then out[2] = r end
    end
  end
end
if mode ~= 'peek' and out[1] == 1 then
  for i = 1, n do
    call('HINCRBY', KEYS[1], add(st, ARGV[2 + 3 * i] + 0, amount, now, ARGV[4 + 3 * i]), amount)
    out[i + 2] = out[i + 2] + amount
  end
  sweep(KEYS[1], st, now)
  expire(KEYS[1], st, now)
end
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

def read_password_file(cfg: StoreConfig) -> str | None:
    """The Redis password from ``state.password_file`` (first line), or None when unset."""
    path = cfg.state.password_file
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline().rstrip("\r\n")
    except OSError as e:
        raise ConfigError(cfg.path, "state.password_file", f"cannot read: {e.strerror or e}") from None
    if not line:
        raise ConfigError(cfg.path, "state.password_file", "the file is empty")
    return line


_HOSTPORT = re.compile(r"^\[?(?P<host>[^\]]+?)\]?:(?P<port>\d{1,5})$")


def _sentinel_address(cfg: StoreConfig, entry: str) -> tuple[str, int]:
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
    def from_config(cls, cfg: StoreConfig) -> RedisCounters:
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
                manager = Sentinel(sentinels, sentinel_kwargs=dict(bounded), **opts, **bounded)
                client = manager.master_for(st.sentinel_service, **bounded)
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
