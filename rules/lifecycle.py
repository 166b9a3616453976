"""Account lifecycle states (CT25-6, CT15-5.4, TH13-4)."""

from __future__ import annotations

import enum


class AccountState(enum.Enum):
    ACTIVE = "active"
    MUST_CHANGE_PASSWORD = "must_change_password"
    PASSWORD_EXPIRED = "password_expired"
    LOCKED = "locked"
    SUSPENDED = "suspended"
    RECLAIMED = "reclaimed"
    CANCELLED = "cancelled"
