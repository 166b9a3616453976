"""Lifecycle state machine, working-day calendar and inactivity clocks, with an injected clock."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from congvu.config import config_from_mapping, load_config
from congvu.rules.lifecycle import (
    TRANSITIONS,
    AccountState,
    Event,
    InactivityFacts,
    InvalidTransition,
    add_working_days,
    apply,
    inactivity_event,
    initial_state,
    reclaim_due,
    sweep,
    working_days_between,
)

S, E = AccountState, Event
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # a Monday


def _day(n: int) -> datetime:
    return T0 + timedelta(days=n)


@pytest.mark.parametrize(
    ("state", "event", "new", "rule"),
    [
        (S.MUST_CHANGE_PASSWORD, E.PASSWORD_CHANGED, S.ACTIVE, "CT25-5.2"),
        (S.PASSWORD_EXPIRED, E.PASSWORD_CHANGED, S.ACTIVE, "CT25-6.4b"),
        (S.ACTIVE, E.PASSWORD_EXPIRED, S.PASSWORD_EXPIRED, "CT25-6.4b"),
        (S.ACTIVE, E.PASSWORD_RESET, S.MUST_CHANGE_PASSWORD, "CT25-7"),
        (S.ACTIVE, E.OPERATOR_LOCK, S.LOCKED, "CT25-6.4a"),
        (S.LOCKED, E.OPERATOR_RESTORE, S.ACTIVE, "CT25-6.6"),
        (S.ACTIVE, E.INACTIVITY_SUSPEND, S.SUSPENDED, "CT15-5.4"),
        (S.SUSPENDED, E.AGENCY_CONFIRMED, S.ACTIVE, "CT15-5.4"),
        (S.SUSPENDED, E.INACTIVITY_RECLAIM, S.RECLAIMED, "CT15-5.4"),
        (S.ACTIVE, E.INACTIVITY_RECLAIM, S.RECLAIMED, "CT25-6.5"),
        (S.RECLAIMED, E.OPERATOR_RESTORE, S.MUST_CHANGE_PASSWORD, "CT25-6.6"),
        (S.LOCKED, E.OPERATOR_CANCEL, S.CANCELLED, "CT25-6.3"),
    ],
)
def test_allowed_transitions(state: AccountState, event: Event, new: AccountState, rule: str) -> None:
    """Each allowed event moves the account to the expected state, citing its article."""
    t = apply(state, event)
    assert (t.new, t.rule_id) == (new, rule)


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.CANCELLED, E.OPERATOR_RESTORE),
        (S.CANCELLED, E.LOGGED_IN),
        (S.LOCKED, E.LOGGED_IN),
        (S.LOCKED, E.PASSWORD_CHANGED),
        (S.MUST_CHANGE_PASSWORD, E.LOGGED_IN),
        (S.RECLAIMED, E.INACTIVITY_SUSPEND),
        (S.ACTIVE, E.OPERATOR_RESTORE),
    ],
)
def test_forbidden_transitions(state: AccountState, event: Event) -> None:
    """Events that make no sense in a state are refused, naming both."""
    with pytest.raises(InvalidTransition, match=event.value):
        apply(state, event)


def test_cancel_is_final() -> None:
    """No event leads out of cancelled."""
    assert not [k for k in TRANSITIONS if k[0] is S.CANCELLED]


def test_new_mailbox_must_change_password() -> None:
    """A created mailbox starts in must_change_password (CT25-5.2) unless the operator disabled it."""
    assert initial_state(True).new is S.MUST_CHANGE_PASSWORD
    assert initial_state(False).new is S.ACTIVE


def test_working_days_skip_weekend_and_holidays() -> None:
    """15 working days from a Friday skip three weekends and a configured holiday."""
    lc = config_from_mapping({"lifecycle": {"holidays": ["2026-01-14"]}}).lifecycle
    friday = date(2026, 1, 2)
    assert add_working_days(friday, 1, lc) == date(2026, 1, 5)
    # Jan 5..23 has 15 weekdays; the 14th is a holiday, so the 15th working day is Jan 26.
    assert add_working_days(friday, 15, lc) == date(2026, 1, 26)
    assert working_days_between(friday, date(2026, 1, 26), lc) == 15
    assert working_days_between(friday, date(2026, 1, 25), lc) == 14


def _facts(state: AccountState = S.ACTIVE, last_login: int | None = None,
           changed: int | None = None) -> InactivityFacts:
    return InactivityFacts(state, T0, None if last_login is None else _day(last_login),
                           None if changed is None else _day(changed))


@pytest.mark.parametrize(("day", "expected"), [(0, None), (89, None), (90, E.INACTIVITY_SUSPEND),
                                               (91, E.INACTIVITY_SUSPEND)])
def test_ct15_suspends_after_three_months_without_login(day: int, expected: Event | None) -> None:
    """CT15-5.4: days 0 and 89 nothing; from day 90 the account is suspended."""
    lc = load_config(None, profile="cantho-2015").lifecycle
    assert inactivity_event(_facts(), lc, _day(day)) is expected


def test_ct15_reclaims_fifteen_working_days_after_suspension() -> None:
    """CT15-5.4: suspended on a Friday, reclaimed on the 15th working day, not the 14th."""
    lc = load_config(None, profile="cantho-2015").lifecycle
    suspended_on = 4  # Friday 2026-01-09
    facts = _facts(S.SUSPENDED, changed=suspended_on)
    assert _day(suspended_on).weekday() == 4
    due = reclaim_due(facts, lc)
    assert due is not None and due.date() == date(2026, 1, 30)
    assert inactivity_event(facts, lc, due - timedelta(days=1)) is None
    assert inactivity_event(facts, lc, due) is E.INACTIVITY_RECLAIM


@pytest.mark.parametrize(("last_login", "day", "expected"), [
    (None, 179, None), (None, 180, E.INACTIVITY_RECLAIM), (100, 279, None), (100, 280, E.INACTIVITY_RECLAIM),
])
def test_ct25_reclaims_after_six_months_since_creation_or_last_access(
        last_login: int | None, day: int, expected: Event | None) -> None:
    """CT25-6.5: six months (180 days) since creation, or since the last access if later."""
    lc = load_config(None).lifecycle
    assert inactivity_event(_facts(last_login=last_login), lc, _day(day)) is expected


def test_clock_ignores_locked_and_cancelled() -> None:
    """Operator states are not touched by the inactivity clock."""
    lc = load_config(None).lifecycle
    for state in (S.LOCKED, S.CANCELLED, S.RECLAIMED):
        assert inactivity_event(_facts(state), lc, _day(1000)) is None


def test_thanhhoa_has_no_inactivity_clock() -> None:
    """TH13 sets no inactivity rule: the suite default never reclaims."""
    lc = load_config(None, profile="thanhhoa-2013").lifecycle
    assert inactivity_event(_facts(), lc, _day(2000)) is None


def test_sweep_lists_due_transitions() -> None:
    """The sweep returns only the accounts whose clock ran out, with the transition."""
    lc = load_config(None, profile="cantho-2015").lifecycle
    out = sweep([("a", _facts()), ("b", _facts(last_login=80))], lc, _day(95))
    assert [(k, t.new) for k, t in out] == [("a", S.SUSPENDED)]


def test_suspended_is_not_reclaimed_without_the_ct15_clock() -> None:
    """Under cantho-2025 (no suspension rule) a suspended account waits for the operator."""
    lc = load_config(None).lifecycle
    assert inactivity_event(_facts(S.SUSPENDED, changed=0), lc, _day(400)) is None
