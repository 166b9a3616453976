"""The account record and the two store interfaces every component talks to.

Stores are synchronous (sqlite3, ldap3 and redis-py all are); Twisted services call
them from a thread pool.  Outages surface as :class:`DirectoryUnavailable` or
:class:`StateUnavailable`, so each caller chooses fail-open or fail-closed itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol

from congvu.rules.addresses import canonical
from congvu.rules.config import MAILBOX_TYPES, MailboxType
from congvu.rules.errors import CongvuError, Unavailable
from congvu.rules.lifecycle import AccountState


class DirectoryError(CongvuError):
    """Base of every account-store error."""


class DirectoryUnavailable(DirectoryError, Unavailable):
    """The backend did not answer in time or refused the connection."""


class AccountNotFound(DirectoryError):
    pass


class AccountExists(DirectoryError):
    pass


class StateUnavailable(Unavailable):
    """The counter store did not answer within its timeout."""


class StateMisconfigured(StateUnavailable):
    """The counter store answers but refuses congvu's configuration (credentials, permissions, database).

    Still a StateUnavailable, so every caller applies its failure policy as for an outage;
    but no call can succeed until an operator fixes a setting, so the client logs it once,
    as an error naming that setting, and callers need not log each failed call again.
    """


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
    state_changed_at: datetime | None = None  # starts the CT15-5.4 15-working-day clock
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


#: Account fields that hold a time (kept in UTC by every store).
DATE_FIELDS = ("state_changed_at", "created_at", "password_changed_at", "last_login_at")
#: Fields ``AccountStore.update`` may change; the address itself is the record's identity.
UPDATABLE = frozenset(f.name for f in fields(Account)) - {"local_part", "domain"}


def _utc(v: datetime | None) -> datetime | None:
    """``v`` in UTC (a naive datetime is taken as UTC)."""
    if v is None:
        return None
    return (v if v.tzinfo else v.replace(tzinfo=UTC)).astimezone(UTC)


def normalise(account: Account) -> Account:
    """The form every store keeps: lower-cased addresses, sorted unique aliases and delegates, UTC times.

    Raises ValueError for a mailbox type or state that does not exist.
    """
    if account.mailbox_type not in MAILBOX_TYPES:
        raise ValueError(f"mailbox type must be one of {', '.join(MAILBOX_TYPES)}, got {account.mailbox_type!r}")
    own = f"{account.local_part}@{account.domain}".lower()
    times: dict[str, Any] = {name: _utc(getattr(account, name)) for name in DATE_FIELDS}
    return replace(
        account,
        local_part=account.local_part.lower(), domain=account.domain.lower(),
        aliases=tuple(sorted({a for a in map(canonical, account.aliases) if a} - {own})),
        delegates=tuple(sorted({d for d in map(canonical, account.delegates) if d})),
        password_history=tuple(account.password_history),
        state=AccountState(account.state),
        **times,
    )


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


class UnavailableStore:
    """The AccountStore of a backend that could not be opened: every call raises DirectoryUnavailable.

    A daemon still starts without its directory (size checks need none); the checks that
    need an account apply their failure policy, and a reload retries the backend.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason or "directory not opened"

    def __repr__(self) -> str:
        return f"UnavailableStore({self.reason!r})"

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise DirectoryUnavailable(self.reason)

    get = add = update = delete = list = local_parts = _fail

    def close(self) -> None:
        pass


class RateDecision(NamedTuple):
    """Answer of :meth:`CounterStore.hit_if_below`; unpacks as ``allowed, totals, retry_after``."""

    allowed: bool
    #: The total in each window after the decision (what was counted, if allowed).
    totals: tuple[int, ...]
    #: Seconds until the amount would fit (None when allowed; ``math.inf`` when it never can).
    retry_after: float | None


class LockInfo(NamedTuple):
    """A lock on a counter key (a lockout): since when, until when, and why (shown by ``account show``)."""

    since: float
    until: float
    reason: str


class LoginStamp(NamedTuple):
    """One successful login, kept in the counter store until flushed to the directory."""

    address: str
    when: float
    service: str
    ip: str


class CounterStore(Protocol):
    """Counters and volatile state shared by every MX and IMAP host.

    Every ``now`` is a Unix time in seconds from the caller's (injected) clock.  Windows are
    approximate by one bucket (a sixtieth of the window): an event counts for at least the
    window and at most the window plus one bucket.  Errors: :class:`StateUnavailable`.
    """

    def hit(self, key: str, amount: int, windows: Sequence[timedelta],
            now: float) -> tuple[int, ...]:
        """Add ``amount`` at ``now`` and return the total in each sliding window, atomically."""

    def peek(self, key: str, windows: Sequence[timedelta], now: float) -> tuple[int, ...]:
        """The totals without adding anything."""

    def hit_if_below(self, key: str, amount: int, limits: Sequence[tuple[timedelta, int]],
                     now: float) -> RateDecision:
        """Add ``amount`` only if every window stays within its limit (one round trip)."""

    def record_failure(self, key: str, fingerprint: str, window: timedelta, now: float) -> int:
        """Count a failed login; repeats of one ``fingerprint`` count once.  Returns the count."""

    def failures(self, key: str, window: timedelta, now: float) -> int:
        """Distinct failed logins within ``window``."""

    def clear_failures(self, key: str) -> None:
        """Forget the failures (after a successful login or an operator reset)."""

    def lock(self, key: str, until: float, now: float, reason: str = "") -> None:
        """Lock ``key`` from ``now`` until the time ``until``, remembering ``reason`` (one line, no secret)."""

    def unlock(self, key: str) -> None:
        """Lift a lock early (operator action)."""

    def lock_info(self, key: str, now: float) -> LockInfo | None:
        """The lock on ``key`` at ``now``, or None if it is not locked."""

    def stamp_login(self, address: str, when: float, service: str, ip: str) -> None:
        """Remember a successful login (hot path: one round trip; the latest stamp wins)."""

    def take_login_stamps(self, now: float, min_interval: timedelta) -> list[LoginStamp]:
        """Remove and return pending stamps of addresses not taken within ``min_interval``."""

    def seen(self, marker: str, ttl: timedelta, now: float) -> bool:
        """Mark ``marker``; True if it was already marked within ``ttl`` (de-duplication)."""

    def close(self) -> None: ...
