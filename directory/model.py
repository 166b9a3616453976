"""The account record and the two store interfaces every component talks to.

Stores are synchronous (sqlite3, ldap3 and redis-py all are); Twisted services call
them from a thread pool.  Outages surface as :class:`DirectoryUnavailable` or
:class:`StateUnavailable`, so each caller chooses fail-open or fail-closed itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from rules.config import MailboxType
from rules.lifecycle import AccountState


class DirectoryError(Exception):
    """Base of every account-store error."""


class DirectoryUnavailable(DirectoryError):
    """The backend did not answer in time or refused the connection."""


class AccountNotFound(DirectoryError):
    pass


class AccountExists(DirectoryError):
    pass


class StateUnavailable(Exception):
    """The counter store did not answer within its timeout."""


@dataclass(frozen=True, slots=True)
class Account:
    """One mailbox.  ``password_hash`` and ``password_history`` never reach a repr."""

    local_part: str
    domain: str
    full_name: str
    mailbox_type: MailboxType
    agency: str = ""
    unit: str = ""
    display_name: str = ""
    title: str = ""
    password_hash: str = field(default="", repr=False)
    password_history: tuple[str, ...] = field(default=(), repr=False)
    state: AccountState = AccountState.ACTIVE
    state_reason: str = ""
    state_by: str = ""
    created_at: datetime | None = None
    password_changed_at: datetime | None = None
    must_change: bool = True
    last_login_at: datetime | None = None
    quota_override: int | None = None
    aliases: tuple[str, ...] = ()
    delegates: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        return f"{self.local_part}@{self.domain}"


class AccountStore(Protocol):
    """Accounts by address.  Addresses and aliases are compared lower-cased."""

    def get(self, address: str) -> Account | None:
        """The account whose address or alias is ``address``, or None."""

    def add(self, account: Account) -> None:
        """Raises AccountExists if the address or an alias is taken."""

    def update(self, address: str, **changes: Any) -> Account:
        """Change fields of an existing account; raises AccountNotFound."""

    def delete(self, address: str) -> None:
        """Remove the record (only for import rollback and tests; cancel is a state)."""

    def list(self, agency: str | None = None) -> Iterator[Account]:
        """Every account, optionally of one agency."""

    def local_parts(self) -> frozenset[str]:
        """Every local part in use (addresses and aliases), for clash checks."""

    def close(self) -> None: ...


class CounterStore(Protocol):
    """Counters and volatile state shared by every MX and IMAP host."""

    def hit(self, key: str, amount: int, windows: Sequence[timedelta],
            now: float) -> tuple[int, ...]:
        """Add ``amount`` at ``now`` and return the total in each sliding window, atomically."""

    def peek(self, key: str, windows: Sequence[timedelta], now: float) -> tuple[int, ...]:
        """The totals without adding anything."""

    def seen(self, marker: str, ttl: timedelta, now: float) -> bool:
        """Mark ``marker``; True if it was already marked within ``ttl`` (de-duplication)."""

    def close(self) -> None: ...
