"""The one read cache in front of an AccountStore, for the daemons' hot paths.

The policy server looks up the sender of every message; the quota and content services
will look up recipients and delegations.  Answers (including "no such account", so a
flood of unknown names does not reach LDAP) are kept for ``[directory] cache_ttl`` and at
most ``cache_size`` entries, least recently used evicted first.  Writes made through this
wrapper invalidate the entries they touch at once; writes made by another process (the
CLI, another host) are seen when the entry expires, so ``cache_ttl`` bounds how long a
newly locked account can still send.

The auth service reads through no cache on purpose: a password changed or an account
locked by another process must decide the very next login (``authhooks.authd``).

Keys are :func:`~congvu.rules.addresses.canonical` forms.  A hit on the text exactly as a
caller spelled it is tried first (Postfix repeats the same spellings), then the canonical
form; :meth:`cached` tells a caller in the reactor whether :meth:`get` would answer
without I/O.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from congvu.directory.model import Account, AccountNotFound, AccountStore
from congvu.rules.addresses import canonical


class CachedAccountStore:
    """Wraps ``inner``; ``get`` is cached, everything else passes through.  ``size`` 0 turns caching off."""

    def __init__(self, inner: AccountStore, *, size: int, ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self.size = size
        self.ttl = ttl
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, Account | None]] = OrderedDict()
        #: account address → the keys currently cached for it (address, aliases, spellings).
        self._keys_of: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        #: Bumped by every invalidation, so a read that raced a write does not cache the old answer.
        self._generation = 0
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"CachedAccountStore({self.inner!r}, size={self.size}, ttl={self.ttl:g})"

    # ------------------------------------------------------------------ cache bookkeeping

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None and entry[1] is not None:
            keys = self._keys_of.get(entry[1].address)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._keys_of[entry[1].address]

    def _store(self, keys: set[str], account: Account | None) -> None:
        expires = self.clock() + self.ttl
        for key in keys:
            self._drop(key)
            self._entries[key] = (expires, account)
            if account is not None:
                self._keys_of.setdefault(account.address, set()).add(key)
        while len(self._entries) > self.size:
            self._drop(next(iter(self._entries)))

    def _fresh(self, key: str) -> tuple[float, Account | None] | None:
        entry = self._entries.get(key)
        return entry if entry is not None and entry[0] > self.clock() else None

    def invalidate(self, *addresses: str) -> None:
        """Forget every cached answer for these addresses (as lookup keys or as accounts)."""
        with self._lock:
            self._generation += 1
            for address in addresses:
                key = canonical(address) or address
                for k in list(self._keys_of.get(key, ())):
                    self._drop(k)
                self._drop(key)
                self._drop(address)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()
            self._keys_of.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def cached(self, address: str) -> bool:
        """True if :meth:`get` would answer from the cache, without I/O."""
        if self.size <= 0:
            return False
        if self._fresh(address) is not None:
            return True
        key = canonical(address)
        return key is not None and self._fresh(key) is not None

    # ------------------------------------------------------------------ AccountStore

    def get(self, address: str) -> Account | None:
        if self.size <= 0 or self.ttl <= 0:
            return self.inner.get(address)
        entry = self._fresh(address)  # as the caller spelled it: no canonicalising on a hit
        key = address
        if entry is None:
            key = canonical(address) or ""
            entry = self._fresh(key)
        if entry is not None:
            try:  # noqa: SIM105 (hot path: cheaper than contextlib.suppress)
                self._entries.move_to_end(key)
            except KeyError:  # evicted by another thread meanwhile: still a right answer
                pass
            self.hits += 1
            return entry[1]
        self.misses += 1
        generation = self._generation
        account = self.inner.get(address)
        with self._lock:
            if generation == self._generation:
                self._store({address, key} - {""}, account)
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
