"""Where the counter store's Redis is and how to log in: ``[state]`` parsed once, for both clients.

redis-py (:mod:`congvu.directory.counters_redis`) and policyd's native client
(:mod:`congvu.policyd.redis_native`) build their connections from the same
:class:`RedisTarget`, so a setting cannot reach one client and not the other (the native
client once sent AUTH only from ``password_file``, got ``NOAUTH`` on every call from a
password given in the URL, and the rate check failed open in silence).

The URL: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://…`` for TLS, or
``unix://[[user]:password@]/path/to/socket``; options after ``?``: ``db``, ``username``,
``password`` and, on ``rediss://`` only, ``ssl_ca_certs``, ``ssl_ca_path``, ``ssl_certfile``,
``ssl_keyfile``, ``ssl_cert_reqs`` (none/optional/required) and ``ssl_check_hostname``.
Anything else is refused, as is a value given twice.

The password: ``[state] password_file`` (its first line), when set, replaces any password in
the URL; the URL's user name is kept, so ``redis://congvu@host`` with a password file logs in
as ``congvu``.  Otherwise the URL's password (``user:password@`` or ``?password=``).  It never
appears in a repr, a str or an error message.

:class:`Health` tracks whether a client's Redis answers; it logs each change once rather
than once per call, and a refusal of congvu's credentials as an error naming the setting to fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

from twisted.logger import Logger

from congvu.directory.model import StateMisconfigured
from congvu.directory.settings import StoreConfig
from congvu.rules.errors import ConfigError

log = Logger()

#: TLS options of a rediss:// URL, passed to redis-py as given (a path, or a word for the last two).
_TLS_OPTIONS = ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
_OPTIONS = ("db", "username", "password", *_TLS_OPTIONS)
_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_HOSTPORT = re.compile(r"^\[?(?P<host>[^\]]+?)\]?:(?P<port>\d{1,5})$")


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """One Redis to talk to: a socket (host and port, or a unix path) or Sentinels, the database, the login.

    ``str()`` is :attr:`where`; the password is in neither ``str()`` nor ``repr()``.
    """

    host: str = "localhost"
    port: int = 6379
    #: A unix socket instead of host and port.
    path: str = ""
    db: int = 0
    username: str = ""
    password: str | None = field(default=None, repr=False)
    #: The setting the password came from (``state.url``, ``state.password_file``; "" = none): what to fix.
    password_from: str = ""
    tls: bool = False
    #: The TLS options of the URL, sorted: (name, value) as redis-py takes them.
    tls_options: tuple[tuple[str, str | bool], ...] = ()
    #: (host, port) of each Sentinel; empty = no Sentinel, talk to host and port.
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_service: str = ""
    #: Connect and read timeout, seconds.
    timeout: float = 1.0

    def __str__(self) -> str:
        return self.where

    @property
    def where(self) -> str:
        """Where Redis is, for log lines and errors: never the URL (it may hold a password)."""
        if self.sentinels:
            return f"sentinel service {self.sentinel_service}"
        if self.path:
            return self.path
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def fix(self, code: str) -> str:
        """The setting to fix when Redis answers ``code`` (NOAUTH, WRONGPASS, NOPERM …) to our login or a call."""
        if code == "NOPERM":
            return f"the ACL of Redis user {self.username or 'default'} (or the user in [state] url)"
        if self.password_from == "state.password_file":
            return "[state] password_file"
        if self.password_from == "state.url":
            return "the password in [state] url"
        return "[state] password_file (Redis asks for a password and none is configured)"

    @classmethod
    def from_config(cls, cfg: StoreConfig) -> RedisTarget:
        """``[state]``'s url, sentinels, sentinel_service, password_file and timeout; ConfigError naming the key."""
        st = cfg.state
        target = _parse_url(cfg.path, st.url)
        sentinels = tuple(_sentinel_address(cfg.path, s) for s in st.sentinels)
        if sentinels and target.path:
            raise ConfigError(cfg.path, "state.sentinels", "Sentinels name a TCP master: use a redis:// or "
                                                           "rediss:// state.url with them, not unix://")
        password, password_from = target.password, target.password_from
        from_file = read_password_file(cfg)
        if from_file is not None:
            password, password_from = from_file, "state.password_file"
        if target.username and password is None:
            raise ConfigError(cfg.path, "state.url", "a user name without a password: add the password "
                                                     "(state.password_file or the URL)")
        return cls(host=target.host, port=target.port, path=target.path, db=target.db, username=target.username,
                   password=password, password_from=password_from, tls=target.tls, tls_options=target.tls_options,
                   sentinels=sentinels, sentinel_service=st.sentinel_service if sentinels else "",
                   timeout=st.timeout.total_seconds())


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


def _parse_url(fname: str, url: str) -> RedisTarget:
    """The URL alone (no password file, no Sentinels).  Error messages never quote the URL: it may hold a password."""
    try:
        u = urlsplit(url.strip())
        port = u.port
    except ValueError as e:  # a port out of range or not a number, a bad IPv6 address
        raise _bad(fname, f"not a valid URL ({e})") from None
    scheme = u.scheme.lower()
    if scheme not in ("redis", "rediss", "unix") or not url.strip().lower().startswith(f"{scheme}://"):
        raise _bad(fname, "expected a redis://, rediss:// or unix:// URL")
    query: dict[str, str] = {}
    for name, values in parse_qs(u.query, keep_blank_values=True).items():
        if name not in _OPTIONS:
            raise _bad(fname, f"unsupported option ?{name}= (supported: {', '.join(_OPTIONS)})")
        if len(values) > 1:
            raise _bad(fname, f"option ?{name}= given twice")
        query[name] = values[0]
    username = _once(fname, "user name", unquote(u.username or ""), query.get("username", ""))
    password = _once(fname, "password", unquote(u.password or ""), query.get("password", "")) or None
    db_text = _once(fname, "database", "" if scheme == "unix" else u.path.strip("/"), query.get("db", ""))
    if db_text and not (db_text.isascii() and db_text.isdigit()):
        raise _bad(fname, "the database must be a number (redis://host:port/2 or ?db=2)")
    tls_options = tuple(sorted((k, _tls_value(fname, k, v)) for k, v in query.items() if k in _TLS_OPTIONS))
    if tls_options and scheme != "rediss":
        raise _bad(fname, "ssl_* options need a rediss:// URL")
    if scheme == "unix":
        host, path = "localhost", unquote(u.path)
        if not path.startswith("/"):
            raise _bad(fname, "unix:// needs an absolute socket path: unix:///run/redis/redis.sock")
    else:
        host, path = u.hostname or "localhost", ""
        if port == 0:
            raise _bad(fname, "port 0")
    return RedisTarget(host=host, port=port or 6379, path=path, db=int(db_text or 0), username=username,
                       password=password, password_from="state.url" if password else "", tls=scheme == "rediss",
                       tls_options=tls_options)


def _bad(fname: str, reason: str) -> ConfigError:
    return ConfigError(fname, "state.url", reason)


def _once(fname: str, what: str, a: str, b: str) -> str:
    """One value given in one place: in the URL itself or as its ``?option=``, not both."""
    if a and b and a != b:
        raise _bad(fname, f"{what} given twice (in the URL and as an ?option=)")
    return a or b


def _tls_value(fname: str, name: str, value: str) -> str | bool:
    if name == "ssl_check_hostname":
        if value.lower() not in _BOOLS:
            raise _bad(fname, f"?{name}= must be true or false")
        return _BOOLS[value.lower()]
    if name == "ssl_cert_reqs" and value not in ("none", "optional", "required"):
        raise _bad(fname, f"?{name}= must be none, optional or required")
    if not value:
        raise _bad(fname, f"?{name}= is empty")
    return value


def _sentinel_address(fname: str, entry: str) -> tuple[str, int]:
    m = _HOSTPORT.match(entry.strip())
    if m is None or not 0 < int(m["port"]) < 65536:
        raise ConfigError(fname, "state.sentinels", f"expected host:port, got {entry!r}")
    return m["host"], int(m["port"])


class Health:
    """Whether one client's Redis answers, and why not; each change is logged once, not once per call.

    Unavailable (refused connection, no answer in time): a warning, and the checks apply
    their failure policy until Redis is back.  Misconfigured (Redis refused congvu's
    credentials, permissions or database): an ERROR naming the setting to fix, since no call
    can succeed until the configuration changes; the calls fail with
    :class:`StateMisconfigured`, which callers need not log again.
    """

    __slots__ = ("client", "problem", "target")

    def __init__(self, target: RedisTarget, client: str) -> None:
        self.target = target
        #: Which client this is, for the log lines ("policyd native client", "redis-py").
        self.client = client
        self.problem: Literal["unavailable", "misconfigured"] | None = None

    @property
    def up(self) -> bool:
        return self.problem is None

    def answered(self) -> None:
        """A call got its answer."""
        if self.problem is not None:
            log.info("state store {where} answers again ({client})", where=self.target.where, client=self.client)
            self.problem = None

    def unavailable(self, why: str) -> None:
        """A call got no answer (Redis down, unreachable or too slow)."""
        if self.problem is None:
            log.warn("state store {where} unavailable ({client}): {why}", where=self.target.where,
                     client=self.client, why=why)
        self.problem = "unavailable"

    def refused(self, reply: str, fix: str) -> StateMisconfigured:
        """Redis refused congvu's configuration (``reply``, its error); the error to fail the call with."""
        where = self.target.where
        if self.problem != "misconfigured":
            log.error("state store {where} refuses congvu's credentials ({client}): {reply}; fix {fix}. "
                      "Until then every call fails and each check applies its fail_* policy",
                      where=where, client=self.client, reply=reply, fix=fix)
        self.problem = "misconfigured"
        return StateMisconfigured(f"redis {where}: refused ({reply}); fix {fix}")
