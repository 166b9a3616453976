"""An AuthService over real SQLite stores with an injected clock, and a way to seed accounts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from congvu.authhooks.service import AuthService
from congvu.config import config_from_mapping
from congvu.directory.counters_sqlite import SqliteCounters
from congvu.directory.hashing import Hasher
from congvu.directory.model import Account
from congvu.directory.sqlite_store import SqliteAccountStore
from congvu.rules.lifecycle import AccountState

PW = "Đúng-Mật-Khẩu-9x"


class Clock:
    """A settable clock (UTC), 2 March 2026 08:00 until a test moves it."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[AuthService, Clock]]:
    """The service with fast hashes and a 3-failure lockout, and its clock."""
    cfg = config_from_mapping({"directory": {"hash_cost": "test"},
                               "authhooks": {"lockout_failures": 3, "lockout_ip_failures": 5,
                                             "lockout_duration": "10m", "lockout_window": "15m"}})
    accounts = SqliteAccountStore(tmp_path / "d.sqlite3")
    counters = SqliteCounters(tmp_path / "s.sqlite3")
    clock = Clock()
    svc = AuthService(cfg, accounts, counters, Hasher("test"), b"k" * 32, clock)
    yield svc, clock
    accounts.close()
    counters.close()


def add(svc: AuthService, lp: str, *, age: int = 1, must_change: bool = False, kind: str = "personal",
        state: AccountState = AccountState.ACTIVE) -> str:
    """Seed ``lp@cantho.gov.vn`` with the password PW; returns the address."""
    now = svc.clock()
    svc.accounts.add(Account(local_part=lp, domain="cantho.gov.vn", full_name="Lê Văn Thử", mailbox_type=kind,  # type: ignore[arg-type]
                             password_hash=svc.hasher.hash(PW), must_change=must_change, state=state,
                             password_changed_at=now - timedelta(days=age), created_at=now - timedelta(days=age)))
    return f"{lp}@cantho.gov.vn"


__all__ = ["PW", "Clock", "add"]
