"""Open the configured account store, and the account operations every front end shares.

``open_store(cfg)`` opens the backend ``[directory] backend`` names (embedded SQLite, or
the city's LDAP directory of CT15-3.2), uncached: the CLI, imports and the auth service
must see every write at once.  A daemon on a hot path puts it behind the one read cache,
:class:`congvu.directory.cache.CachedAccountStore` (the policy server does).
"""

from __future__ import annotations

import secrets
import string
from datetime import UTC, datetime
from typing import Any

from twisted.logger import Logger

from congvu.directory.hashing import Hasher, rotate_history
from congvu.directory.model import Account, AccountStore
from congvu.directory.settings import StoreConfig
from congvu.rules.config import PasswordSettings

log = Logger()


def sqlite_path(cfg: StoreConfig) -> str:
    """``[directory] path``, or ``state_dir/directory.sqlite3`` when left empty."""
    return str(cfg.state_file(cfg.directory.path, "directory.sqlite3"))


def open_store(cfg: StoreConfig) -> AccountStore:
    """The configured backend, uncached.  Raises DirectoryUnavailable if it cannot be reached."""
    if cfg.directory.backend == "ldap":
        from congvu.directory.ldap_store import LdapAccountStore  # ldap3 only loads where LDAP is used
        store: AccountStore = LdapAccountStore(cfg.directory)
        return store
    from congvu.directory.sqlite_store import SqliteAccountStore
    return SqliteAccountStore(sqlite_path(cfg), timeout=cfg.directory.timeout.total_seconds(),
                              recipients=cfg.state_file(cfg.directory.recipient_map, "maps/recipients.sqlite3"),
                              recipients_group=cfg.directory.recipient_map_group)


def hasher_for(cfg: StoreConfig) -> Hasher:
    """The site's hasher; says so in the log when the cheap test cost is configured."""
    if cfg.directory.hash_cost != "normal":
        log.warn("[directory] hash_cost = {cost!r}: password hashes are cheap to crack; tests and benchmarks only",
                 cost=cfg.directory.hash_cost)
    return Hasher(cfg.directory.hash_cost)


_SPECIALS = "!#%+-=?@^_"
_ALPHABET = "".join(c for c in string.ascii_letters + string.digits if c not in "Il1O0o") + _SPECIALS


def temporary_password(policy: PasswordSettings, length: int = 16) -> str:
    """A random password that meets the site's composition rules (CT25-5.3), to be changed at first login."""
    length = max(length, policy.min_length)
    length = min(length, policy.max_length)
    rng = secrets.SystemRandom()
    while True:
        pw = "".join(rng.choice(_ALPHABET) for _ in range(length))
        if (any(c.isupper() for c in pw) and any(c.islower() for c in pw)
                and any(c.isdigit() for c in pw) and any(c in _SPECIALS for c in pw)):
            return pw


def password_changes(account: Account, new_hash: str, *, history: int, must_change: bool,
                     now: datetime | None = None) -> dict[str, Any]:
    """The field changes that set a new hash: the old one joins the history (last ``history`` kept)."""
    return {
        "password_hash": new_hash,
        "password_history": rotate_history(account.password_hash, account.password_history, history),
        "password_changed_at": now or datetime.now(UTC),
        "must_change": must_change,
    }
