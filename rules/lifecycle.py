"""Account lifecycle: states, the events that move an account between them, and the clocks.

One state machine per account (CT25-6, CT15-5.4, TH13-4).  The transition table below is
the single place that says what may follow what; operators, the auth service and the
nightly inactivity sweep all go through :func:`apply`, so an illegal move (restoring a
cancelled mailbox, say) is refused the same way everywhere.

The inactivity clocks differ by regulation:

* CT25-6.5: not accessed for 6 months since creation or last access → reclaimed.
* CT15-5.4: no login for 3 months → suspended and the owning agency notified; no
  confirmation within 15 *working* days → reclaimed.

Working days skip the configured weekend days and public holidays.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from congvu.rules.config import LifecycleSettings
from congvu.rules.errors import InvalidInput


class AccountState(enum.Enum):
    ACTIVE = "active"
    MUST_CHANGE_PASSWORD = "must_change_password"
    PASSWORD_EXPIRED = "password_expired"
    LOCKED = "locked"
    SUSPENDED = "suspended"
    RECLAIMED = "reclaimed"
    CANCELLED = "cancelled"


class Event(enum.Enum):
    CREATED = "created"
    LOGGED_IN = "logged_in"
    PASSWORD_CHANGED = "password_changed"
    PASSWORD_RESET = "password_reset"          # operator sets a temporary password
    PASSWORD_EXPIRED = "password_expired"      # the expiry clock ran out
    OPERATOR_LOCK = "operator_lock"
    OPERATOR_RESTORE = "operator_restore"
    OPERATOR_CANCEL = "operator_cancel"
    AGENCY_CONFIRMED = "agency_confirmed"      # the agency answered the CT15 notice
    INACTIVITY_SUSPEND = "inactivity_suspend"
    INACTIVITY_RECLAIM = "inactivity_reclaim"


class InvalidTransition(InvalidInput):
    """The event is not allowed in the account's current state."""


S, E = AccountState, Event

#: Which states can use the mailbox at all (log in, send).
USABLE = frozenset({S.ACTIVE})
#: States the inactivity clock still runs in.
_LIVE = frozenset({S.ACTIVE, S.MUST_CHANGE_PASSWORD, S.PASSWORD_EXPIRED})

#: (state, event) → (new state, requirement id).  The one table of the state machine.
TRANSITIONS: dict[tuple[AccountState, Event], tuple[AccountState, str]] = {
    (S.ACTIVE, E.LOGGED_IN): (S.ACTIVE, "CT25-6.5"),
    (S.MUST_CHANGE_PASSWORD, E.PASSWORD_CHANGED): (S.ACTIVE, "CT25-5.2"),
    (S.PASSWORD_EXPIRED, E.PASSWORD_CHANGED): (S.ACTIVE, "CT25-6.4b"),
    (S.ACTIVE, E.PASSWORD_CHANGED): (S.ACTIVE, "CT25-5.2"),
    (S.ACTIVE, E.PASSWORD_EXPIRED): (S.PASSWORD_EXPIRED, "CT25-6.4b"),
    **{(s, E.PASSWORD_RESET): (S.MUST_CHANGE_PASSWORD, "CT25-7")
       for s in (S.ACTIVE, S.MUST_CHANGE_PASSWORD, S.PASSWORD_EXPIRED)},
    # Temporary lock on a violation or security warning (CT25-6.4a); restore on request (CT25-6.6).
    **{(s, E.OPERATOR_LOCK): (S.LOCKED, "CT25-6.4a")
       for s in (S.ACTIVE, S.MUST_CHANGE_PASSWORD, S.PASSWORD_EXPIRED, S.SUSPENDED)},
    (S.LOCKED, E.OPERATOR_RESTORE): (S.ACTIVE, "CT25-6.6"),
    (S.SUSPENDED, E.OPERATOR_RESTORE): (S.ACTIVE, "CT25-6.6"),
    (S.RECLAIMED, E.OPERATOR_RESTORE): (S.MUST_CHANGE_PASSWORD, "CT25-6.6"),
    (S.SUSPENDED, E.AGENCY_CONFIRMED): (S.ACTIVE, "CT15-5.4"),
    # Inactivity clocks (CT15-5.4 suspend; CT25-6.5 / CT15-5.4 reclaim).
    **{(s, E.INACTIVITY_SUSPEND): (S.SUSPENDED, "CT15-5.4") for s in _LIVE},
    **{(s, E.INACTIVITY_RECLAIM): (S.RECLAIMED, "CT25-6.5") for s in _LIVE | {S.SUSPENDED}},
    # Cancel: agency merged or dissolved, person left (CT25-6.3, TH13-4).  Final.
    **{(s, E.OPERATOR_CANCEL): (S.CANCELLED, "CT25-6.3") for s in S if s is not S.CANCELLED},
}


@dataclass(frozen=True, slots=True)
class Transition:
    old: AccountState
    event: Event
    new: AccountState
    rule_id: str


def initial_state(must_change_on_create: bool) -> Transition:
    """The state of a new mailbox: it must change its password first (CT25-5.2), unless disabled."""
    new = S.MUST_CHANGE_PASSWORD if must_change_on_create else S.ACTIVE
    return Transition(S.ACTIVE, E.CREATED, new, "CT25-5.2" if must_change_on_create else "CT25-6.1")


def apply(state: AccountState, event: Event) -> Transition:
    """The state after ``event``, or InvalidTransition naming both."""
    try:
        new, rule_id = TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(f"{event.value} is not allowed for an account that is {state.value}") from None
    if event is E.INACTIVITY_RECLAIM and state is S.SUSPENDED:
        rule_id = "CT15-5.4"
    return Transition(state, event, new, rule_id)


# --------------------------------------------------------------------------- working days


def is_working_day(day: date, settings: LifecycleSettings) -> bool:
    return day.weekday() not in settings.weekend and day not in settings.holidays


def add_working_days(start: date, n: int, settings: LifecycleSettings) -> date:
    """The date ``n`` working days after ``start`` (``start`` itself is not counted)."""
    day, left = start, n
    while left > 0:
        day += timedelta(days=1)
        if is_working_day(day, settings):
            left -= 1
    return day


def working_days_between(start: date, end: date, settings: LifecycleSettings) -> int:
    """Working days in (start, end]: how many have passed since ``start`` by ``end``."""
    return sum(1 for i in range(1, (end - start).days + 1)
               if is_working_day(start + timedelta(days=i), settings))


# --------------------------------------------------------------------------- inactivity


@dataclass(frozen=True, slots=True)
class InactivityFacts:
    """What the clock needs to know about one account."""

    state: AccountState
    created_at: datetime
    last_login_at: datetime | None
    state_changed_at: datetime | None


def inactivity_event(facts: InactivityFacts, settings: LifecycleSettings, now: datetime) -> Event | None:
    """The clock event due for an account at ``now``, if any.

    The last access is the last login, or creation when there was none ("kể từ ngày
    tạo hoặc lần truy cập cuối", CT25-6.5).
    """
    last = max(filter(None, (facts.created_at, facts.last_login_at)))
    idle = now - last
    if facts.state is S.SUSPENDED:
        if settings.suspend_after is None:
            return None  # only CT15-5.4 has the suspend → 15 working days → reclaim clock
        since = facts.state_changed_at or last
        if working_days_between(since.date(), now.date(), settings) >= settings.reclaim_after_suspend_working_days:
            return E.INACTIVITY_RECLAIM
        return None
    if facts.state not in _LIVE:
        return None
    if settings.reclaim_after is not None and idle >= settings.reclaim_after:
        return E.INACTIVITY_RECLAIM
    if settings.suspend_after is not None and idle >= settings.suspend_after:
        return E.INACTIVITY_SUSPEND
    return None


def reclaim_due(facts: InactivityFacts, settings: LifecycleSettings) -> datetime | None:
    """When a suspended account will be reclaimed, for the notice sent to its agency."""
    if facts.state is not S.SUSPENDED:
        return None
    since = facts.state_changed_at or facts.created_at
    day = add_working_days(since.date(), settings.reclaim_after_suspend_working_days, settings)
    return datetime.combine(day, since.timetz())


def sweep(accounts: Iterable[tuple[str, InactivityFacts]], settings: LifecycleSettings,
          now: datetime) -> list[tuple[str, Transition]]:
    """Every transition the inactivity clock makes at ``now``; the caller stores them."""
    out = []
    for key, facts in accounts:
        event = inactivity_event(facts, settings, now)
        if event is not None:
            out.append((key, apply(facts.state, event)))
    return out
