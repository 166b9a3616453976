"""Account lookups for the checks, behind a cache the reactor can read without I/O.

Most requests are about a sender the server has seen seconds ago.  Keeping the answer
(including "no such account") for ``[directory] cache_ttl`` lets the server answer those
inside the reactor, with no hop to a thread; only a miss goes to the directory, from a
thread.  ``cache_ttl`` therefore bounds how long a newly locked account can still send.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from congvu.directory.model import Account, AccountStore, DirectoryUnavailable


def normalise(address: str) -> str:
    """Addresses compare lower-cased, without surrounding space or angle brackets, and
    without trailing dots on the domain: Postfix delivers ``a@cantho.gov.vn.`` as
    ``a@cantho.gov.vn``, so the forged-sender check must see them as the same (CT25-3.2)."""
    addr = address.strip().strip("<>").lower()
    local, at, domain = addr.rpartition("@")
    return f"{local}@{domain.rstrip('.')}" if at else addr


class AccountLookup:
    """A bounded TTL cache over an AccountStore; ``store`` None means the directory could not be opened."""

    def __init__(self, store: AccountStore | None, *, ttl: float, size: int, clock: Callable[[], float],
                 unavailable_reason: str = "") -> None:
        self.store = store
        self.ttl, self.size, self.clock = ttl, size, clock
        self.unavailable_reason = unavailable_reason or "directory not opened"
        self._entries: OrderedDict[str, tuple[float, Account | None]] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, address: str) -> bool:
        """True if :meth:`get` would answer without I/O."""
        entry = self._entries.get(address) or self._entries.get(normalise(address))
        return entry is not None and entry[0] > self.clock()

    def get(self, address: str) -> Account | None:
        """The account owning ``address`` (or alias); raises DirectoryUnavailable."""
        now = self.clock()
        entry = self._entries.get(address)  # as Postfix spelled it: no normalising on a hit
        if entry is not None and entry[0] > now:
            return entry[1]
        key = normalise(address)
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        if self.store is None:
            raise DirectoryUnavailable(self.unavailable_reason)
        account = self.store.get(key)
        if self.size > 0 and self.ttl > 0:
            with self._lock:
                for k in {key, address}:
                    self._entries[k] = (now + self.ttl, account)
                    self._entries.move_to_end(k)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return account

    def close(self) -> None:
        self._entries.clear()
        if self.store is not None:
            self.store.close()
