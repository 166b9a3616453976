"""The ``[directory]`` and ``[state]`` sections: where accounts and counters live.

Declared with :func:`congvu.rules.config.setting` like every section; :class:`StoreConfig`
is what the store layer reads of the whole configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from congvu.rules.config import RulesConfig, boolean, choice, duration, list_of, setting, text, text_map, whole
from congvu.rules.errors import ConfigError


@dataclass(frozen=True)
class DirectorySettings:
    """Where accounts live (CT15-3.2: the city's LDAP directory, or embedded SQLite)."""

    backend: str = setting("sqlite", choice("sqlite", "ldap"), doc="account store")
    path: str = setting("", text, doc="SQLite file; empty = STATE_DIR/directory.sqlite3", path=True)
    recipient_map: str = setting("", text, path=True,
        doc="SQLite backend: the file Postfix reads recipients and aliases from (conf/postfix/congvu-*.cf), derived "
            "from the directory; empty = STATE_DIR/maps/recipients.sqlite3")
    recipient_map_group: str = setting("postfix", text,
        doc="group that may read recipient_map (Postfix's proxymap runs as postfix)")
    audit_path: str = setting("", text, path=True,
        doc="the append-only audit log of operator changes (SQLite, whatever the backend); "
            "empty = STATE_DIR/audit.sqlite3")
    url: str = setting("ldap://127.0.0.1:389", text, "CT15-3.2",
        doc="LDAP server URL (ldap:// or ldaps://); several separated by spaces are tried in order")
    base_dn: str = setting("", text, "CT15-3.2", doc="subtree holding the mail accounts")
    bind_dn: str = setting("", text, doc="service account DN")
    bind_password_file: str = setting("", text, doc="file holding the service account password", path=True)
    start_tls: bool = setting(False, boolean, doc="StartTLS on ldap:// URLs")
    ca_file: str = setting("", text, doc="CA bundle for ldaps/StartTLS", path=True)
    timeout: timedelta = setting("5s", duration, doc="timeout on every directory call")
    pool_size: int = setting(4, whole(1, 64), doc="LDAP connections kept open")
    cache_ttl: timedelta = setting("30s", duration, doc="how long hot-path reads are cached")
    cache_size: int = setting(10000, whole(0), doc="accounts kept in the read cache")
    hash_cost: str = setting("normal", choice("normal", "test"), "SUITE",
        doc="argon2 cost: normal = 64 MiB, 3 passes; test = 1 MiB, 1 pass (tests/benchmarks only, never production)")
    attributes: Mapping[str, str] = setting({}, text_map, doc="LDAP attribute names to use instead of congvu's")
    object_classes: tuple[str, ...] = setting(["inetOrgPerson", "congvuAccount"], list_of(text), "CT15-3.2",
        doc="object classes of the LDAP entries congvu creates (add the class of any mapped attribute)")


@dataclass(frozen=True)
class StateSettings:
    """Counters and volatile state shared by MX and IMAP hosts."""

    backend: str = setting("sqlite", choice("sqlite", "redis"), doc="counter store")
    path: str = setting("", text, doc="SQLite file; empty = STATE_DIR/state.sqlite3", path=True)
    url: str = setting("redis://127.0.0.1:6379/0", text,
        doc="redis://[user:password@]host:port/db, rediss:// (TLS; CA via ?ssl_ca_certs=/path) or "
            "unix:///path?db=N; prefer password_file to a password in the URL", secret=True)
    sentinels: tuple[str, ...] = setting([], list_of(text), doc="host:port of Redis Sentinels; empty = no Sentinel")
    sentinel_service: str = setting("mymaster", text, doc="Sentinel service name")
    password_file: str = setting("", text,
        doc="file holding the Redis password (first line); replaces a password in url, keeps its user name", path=True)
    prefix: str = setting("congvu:", text, doc="key prefix, so several sites can share one Redis")
    timeout: timedelta = setting("1s", duration,
        doc="connect and read timeout on every counter call, no retries; then StateUnavailable")
    last_login_flush: timedelta = setting("10m", duration,
        doc="write last-login stamps to the directory at most this often")



class StoreConfig(RulesConfig, Protocol):
    """What the store layer reads: its two sections and where embedded files live."""

    @property
    def directory(self) -> DirectorySettings: ...
    @property
    def state(self) -> StateSettings: ...
    @property
    def state_dir(self) -> Path: ...
    def state_file(self, configured: str, default_name: str) -> Path: ...


def validate(fname: str, cfg: StoreConfig) -> None:
    """Cross-key checks of ``[directory]`` and ``[state]``."""
    if cfg.directory.backend == "ldap" and not cfg.directory.base_dn:
        raise ConfigError(fname, "directory.base_dn", "required when directory.backend = \"ldap\"")
