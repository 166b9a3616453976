"""A policy engine over real embedded stores (SQLite directory and counters in tmp_path), with a fake clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from congvu.config import config_from_mapping
from congvu.directory.cache import CachedAccountStore
from congvu.directory.counters_sqlite import SqliteCounters
from congvu.directory.model import Account, UnavailableStore
from congvu.directory.sqlite_store import SqliteAccountStore
from congvu.policyd.checks.base import Context, CountedInstances
from congvu.policyd.engine import Engine, Evaluation
from congvu.policyd.protocol import PolicyRequest

NOW = datetime(2026, 9, 2, 9, 0, tzinfo=UTC).timestamp()


class Clock:
    """Seconds since the epoch, moved by the test."""

    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Site:
    store: SqliteAccountStore
    counters: SqliteCounters
    clock: Clock
    tmp: Path

    def engine(self, data: dict[str, Any] | None = None, *, profile: str | None = None,
               counters: Any = "real", store: Any = "real") -> Engine:
        cfg = config_from_mapping(data or {}, profile=profile)
        ctx = Context(cfg=cfg,
                      accounts=CachedAccountStore(self.store if store == "real" else
                                                  store or UnavailableStore("directory down"), size=100, ttl=30,
                                                  clock=self.clock),
                      counters=self.counters if counters == "real" else counters, clock=self.clock,
                      counted=CountedInstances())
        return Engine(ctx, cfg.policyd.disabled_checks)

    def add(self, local: str, **kw: Any) -> Account:
        kw.setdefault("mailbox_type", "personal")
        kw.setdefault("must_change", False)
        kw.setdefault("password_changed_at", datetime.fromtimestamp(self.clock.t, UTC))
        a = Account(local_part=local, domain="cantho.gov.vn", full_name="Nguyễn Văn Thử", **kw)
        self.store.add(a)
        return a


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """Empty SQLite directory and counter store in tmp_path."""
    store = SqliteAccountStore(tmp_path / "directory.sqlite3")
    counters = SqliteCounters(tmp_path / "state.sqlite3")
    yield Site(store, counters, Clock(), tmp_path)
    store.close()
    counters.close()


def request(**kw: Any) -> PolicyRequest:
    """A request as Postfix sends it; protocol_state is upper-cased like the parser does."""
    kw.setdefault("request", "smtpd_access_policy")
    kw.setdefault("client_address", "203.0.113.9")
    kw["protocol_state"] = kw.get("protocol_state", "RCPT").upper()
    return PolicyRequest(**kw)


Ask = Callable[..., Evaluation]
