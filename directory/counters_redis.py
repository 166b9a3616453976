"""The shared counter store on Redis: one Lua script, so one round trip, per decision.

Keys (after the configured prefix): ``c:<key>`` a hash of window buckets
(``"<window_ms>:<index>" → amount``), ``f:<key>`` a sorted set of failure fingerprints
scored by time, ``l:<key>`` a lock, ``s:<marker>`` a de-dup marker, ``ll:pending`` and
``ll:taken`` hashes of last-login stamps.  Every decision uses the callers' clock; Redis
expiry (PEXPIRE) only bounds memory.  Needs Redis ≥ 6.2 (``ZADD GT``).

The connection comes from :class:`~congvu.directory.redis_target.RedisTarget`, as the
native client's does.  Outages: no retries, ``socket_timeout`` and ``socket_connect_timeout``
both set to ``[state] timeout``, every redis-py error becomes :class:`StateUnavailable`
(:class:`StateMisconfigured` when Redis refuses the credentials: logged once, as an error).
The pool reconnects on the next call after Redis comes back, so no restart is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from importlib import resources
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.exceptions import AuthenticationError, AuthenticationWrongNumberOfArgsError, NoPermissionError
from redis.retry import Retry
from redis.sentinel import Sentinel

from congvu.directory.model import LockInfo, LoginStamp, RateDecision, StateUnavailable
from congvu.directory.redis_target import Health, RedisTarget
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

#: What redis-py raises when Redis refuses the login or a permission (NOAUTH, WRONGPASS, NOPERM …).
_REFUSED = (AuthenticationError, AuthenticationWrongNumberOfArgsError, NoPermissionError)


def lua(package: str, name: str) -> str:
    """The source of a script shipped as package data, ``<package>/lua/<name>``."""
    return resources.files(package).joinpath("lua", name).read_text(encoding="utf-8")


#: The window arithmetic of :func:`congvu.directory.windows.decide` in Lua, the ONE copy both
#: counter scripts run (``COUNTER_LUA`` here, the batch script of :mod:`congvu.policyd.redis_native`):
#: each is this library followed by its own body; ``lua/counter_lib.lua`` explains it.
COUNTER_LIB = lua("congvu.directory", "counter_lib.lua")
#: One key, every window: ARGV and reply in ``lua/counter.lua`` (:func:`counter_args`, :func:`counter_decision`).
COUNTER_LUA = COUNTER_LIB + lua("congvu.directory", "counter.lua")
FAILURE_LUA = lua("congvu.directory", "failure.lua")
SEEN_LUA = lua("congvu.directory", "seen.lua")
STAMP_LUA = lua("congvu.directory", "stamp.lua")
TAKE_LUA = lua("congvu.directory", "take.lua")


def counter_args(amount: int, windows: Sequence[WindowSpec], now: float, mode: Mode) -> list[str]:
    """COUNTER_LUA's ARGV (both clients send the same)."""
    now_ms = ms(now)
    args = [str(now_ms), str(amount), mode, str(BUCKETS)]
    for s in windows:
        args += [str(s.w_ms), str(-1 if s.limit is None else s.limit), f"{s.w_ms}:{now_ms // bucket_ms(s.w_ms)}"]
    return args


def counter_decision(reply: Any) -> RateDecision:
    """COUNTER_LUA's reply: allowed, retry (ms; -2 none, -1 never), the total per window."""
    allowed, retry, *totals = (int(x) for x in reply)
    retry_after = None if retry == -2 else float("inf") if retry == -1 else retry / 1000
    return RateDecision(bool(allowed), tuple(totals), retry_after)


class RedisCounters:
    """:class:`directory.model.CounterStore` on Redis (standalone, TLS or behind Sentinel)."""

    def __init__(self, client: redis.Redis, *, prefix: str = "congvu:", target: RedisTarget | None = None) -> None:
        self._r = client
        self.prefix = prefix
        self.target = target or RedisTarget()
        self.where = self.target.where  # never the URL (it may hold a password)
        self.health = Health(self.target, "redis-py")
        self._counter: Script = client.register_script(COUNTER_LUA)
        self._failure: Script = client.register_script(FAILURE_LUA)
        self._seen: Script = client.register_script(SEEN_LUA)
        self._stamp: Script = client.register_script(STAMP_LUA)
        self._take: Script = client.register_script(TAKE_LUA)

    def __repr__(self) -> str:
        return f"RedisCounters({self.where!r}, prefix={self.prefix!r})"

    @classmethod
    def from_config(cls, cfg: StoreConfig) -> RedisCounters:
        """Build the client from ``[state]`` (:class:`RedisTarget`: URL, Sentinels, password file, timeout)."""
        target = RedisTarget.from_config(cfg)
        t = target.timeout
        bounded: dict[str, Any] = {"socket_timeout": t, "socket_connect_timeout": t, "retry": Retry(NoBackoff(), 0)}
        login: dict[str, Any] = {"db": target.db, "username": target.username or None, "password": target.password}
        if target.tls:
            login.update(ssl=True, **dict(target.tls_options))
        try:
            if target.sentinels:
                manager = Sentinel(list(target.sentinels), sentinel_kwargs=dict(bounded), **login, **bounded)
                client = manager.master_for(target.sentinel_service, **bounded)
            elif target.path:
                client = redis.Redis(unix_socket_path=target.path, **login, **bounded)
            else:
                client = redis.Redis(host=target.host, port=target.port, **login, **bounded)
        except TypeError as e:  # an option this redis-py does not know
            raise ConfigError(cfg.path, "state.url", f"unsupported option: {e}") from None
        return cls(client, prefix=cfg.state.prefix, target=target)

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            result = fn()
        except _REFUSED as e:
            code = "NOPERM" if isinstance(e, NoPermissionError) else "AUTH"
            raise self.health.refused(f"{type(e).__name__}: {e}", self.target.fix(code)) from None
        except redis.RedisError as e:
            self.health.unavailable(type(e).__name__)
            raise StateUnavailable(f"redis {self.where}: {e}") from None
        if self.health.problem is not None:
            self.health.answered()
        return result

    # ------------------------------------------------------------------ sliding windows

    def _count(self, key: str, amount: int, windows: Sequence[WindowSpec], now: float,
               mode: Mode) -> RateDecision:
        args = counter_args(amount, windows, now, mode)
        return counter_decision(self._call(lambda: self._counter(keys=[self.prefix + "c:" + key], args=args)))

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

    def lock(self, key: str, until: float, now: float, reason: str = "") -> None:
        until_ms, now_ms = ms(until), ms(now)
        if until_ms <= now_ms:
            self.unlock(key)
            return
        value = f"{until_ms}\t{now_ms}\t{clean_field(reason)}"
        self._call(lambda: self._r.set(self.prefix + "l:" + key, value, px=until_ms - now_ms))

    def unlock(self, key: str) -> None:
        self._call(lambda: self._r.delete(self.prefix + "l:" + key))

    def lock_info(self, key: str, now: float) -> LockInfo | None:
        raw = self._call(lambda: self._r.get(self.prefix + "l:" + key))
        if raw is None:
            return None
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        until, _, rest = text.partition("\t")  # a bare number: written before locks had 'since'
        since, _, reason = rest.partition("\t")
        if int(until) <= ms(now):
            return None
        return LockInfo(int(since or 0) / 1000, int(until) / 1000, reason)

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
