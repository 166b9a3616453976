"""A bounded TTL read cache in front of any AccountStore, for the hot paths.

The policy daemon looks up the sender of every message and the auth daemon the user
of every login; the directory answers those from a file or a network server.  Answers
(including "no such account", so a flood of unknown names does not reach LDAP) are
kept for ``[directory] cache_ttl`` and at most ``cache_size`` entries, least recently
used evicted first.  Writes made through this wrapper invalidate the entries they
touch at once; writes made by another process (the CLI, another host) are seen when
the entry expires, so ``cache_ttl`` bounds how stale a read can be.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from directory.model import Account, AccountNotFound, AccountStore


def _key(address: str) -> str:
    return address.strip().lower() if isinstance(address, str) else ""


class CachedAccountStore:
    """Wraps ``inner``; ``get`` is cached, everything else passes through."""

    def __init__(self, inner: AccountStore, *, size: int, ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self.size = size
        self.ttl = ttl
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, Account | None]] = OrderedDict()
        #: account address → the lookup keys currently cached for it (address and aliases).
        self._keys_of: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        #: Bumped by every invalidation, so a read that raced a write does not cache the old answer.
        self._generation = 0
        self.hits = 0
        self.misses = 0

    # ------------------------------------------------------------------ cache bookkeeping

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None and entry[1] is not None:
            keys = self._keys_of.get(entry[1].address)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._keys_of[entry[1].address]

    def _store(self, key: str, account: Account | None) -> None:
        self._drop(key)
        self._entries[key] = (self.clock() + self.ttl, account)
        if account is not None:
            self._keys_of.setdefault(account.address, set()).add(key)
        while len(self._entries) > self.size:
            self._drop(next(iter(self._entries)))

    def invalidate(self, *addresses: str) -> None:
        """Forget every cached answer for these addresses (as lookup keys or as accounts)."""
        with self._lock:
            self._generation += 1
            for address in addresses:
                key = _key(address)
                for k in list(self._keys_of.get(key, ())):
                    self._drop(k)
                self._drop(key)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()
            self._keys_of.clear()

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------------ AccountStore

    def get(self, address: str) -> Account | None:
        key = _key(address)
        if self.size <= 0:
            return self.inner.get(address)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > self.clock():
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[1]
            self.misses += 1
            generation = self._generation
        account = self.inner.get(address)
        with self._lock:
            if generation == self._generation:
                self._store(key, account)
        return account

    def add(self, account: Account) -> None:
        try:
            self.inner.add(account)
        finally:
            self.invalidate(account.address, *account.aliases)

    def update(self, address: str, **changes: Any) -> Account:
        try:
            new = self.inner.update(address, **changes)
        except AccountNotFound:
            self.invalidate(address)
            raise
        # The account's own keys cover aliases it just lost; its new aliases may be cached as "none".
        self.invalidate(address, new.address, *new.aliases)
        return new

    def delete(self, address: str) -> None:
        # ``address`` may be an alias: learn the account's address so every key goes.
        current = self.inner.get(address)
        try:
            self.inner.delete(address)
        finally:
            self.invalidate(address, *((current.address, *current.aliases) if current else ()))

    def list(self, agency: str | None = None) -> Iterator[Account]:
        return self.inner.list(agency)

    def local_parts(self) -> frozenset[str]:
        return self.inner.local_parts()

    def close(self) -> None:
        self.clear()
        self.inner.close()
