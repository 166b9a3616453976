"""Counters and volatile state: open the configured store, and flush login stamps to the directory.

The backends (:mod:`~congvu.directory.counters_sqlite`, :mod:`~congvu.directory.counters_redis`)
share their window arithmetic from :mod:`congvu.directory.windows`; this module only picks
one, as :mod:`congvu.directory.accounts` does for account stores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from twisted.logger import Logger

from congvu.directory.model import (
    AccountNotFound,
    AccountStore,
    CounterStore,
    DirectoryUnavailable,
    LoginStamp,
    StateUnavailable,
)
from congvu.directory.settings import StoreConfig
from congvu.rules.requirements import citation

_log = Logger()


# --------------------------------------------------------------------------- factory


def open_counters(cfg: StoreConfig) -> CounterStore:
    """The counter store the config names (``[state] backend``)."""
    if cfg.state.backend == "redis":
        from congvu.directory.counters_redis import RedisCounters
        return RedisCounters.from_config(cfg)
    from congvu.directory.counters_sqlite import SqliteCounters
    return SqliteCounters(cfg.state_file(cfg.state.path, "state.sqlite3"),
                          timeout=cfg.state.timeout.total_seconds())


# --------------------------------------------------------------------------- last-login flushing


@dataclass(frozen=True, slots=True)
class FlushResult:
    written: int
    unknown: int  # stamps of addresses no longer in the directory (dropped)
    deferred: int  # put back because the directory was unavailable


class LoginStampFlusher:
    """Moves last-login stamps from the counter store to the directory.

    Logins stamp the fast store on the hot path; this writes ``last_login_at`` at most once
    per ``interval`` per address (CT25-6.5 and CT15-5.4 count inactivity from it).  Call
    :meth:`flush` periodically from a thread (e.g. a Twisted ``LoopingCall`` via
    ``deferToThread``); several hosts may run it at once.
    """

    def __init__(self, counters: CounterStore, accounts: AccountStore, interval: timedelta) -> None:
        self.counters, self.accounts, self.interval = counters, accounts, interval

    def flush(self, now: float) -> FlushResult:
        """Write the due stamps; on a directory outage put the rest back for the next run."""
        try:
            stamps = self.counters.take_login_stamps(now, self.interval)
        except StateUnavailable as e:
            _log.warn("last-login flush skipped: state store unavailable ({err})", err=str(e))
            return FlushResult(0, 0, 0)
        written = unknown = 0
        for i, st in enumerate(stamps):
            try:
                self.accounts.update(st.address, last_login_at=datetime.fromtimestamp(st.when, UTC))
                written += 1
            except AccountNotFound:
                unknown += 1
            except DirectoryUnavailable as e:
                rest = stamps[i:]
                self._put_back(rest)
                _log.warn("last-login flush: directory unavailable ({err}); {n} stamps kept for later",
                          err=str(e), n=len(rest))
                return FlushResult(written, unknown, len(rest))
        if stamps:
            _log.info("last-login flush: {written} written, {unknown} unknown addresses "
                      "[CT25-6.5: {cite}]", written=written, unknown=unknown, cite=citation("CT25-6.5"))
        return FlushResult(written, unknown, 0)

    def _put_back(self, stamps: Sequence[LoginStamp]) -> None:
        for st in stamps:
            try:
                self.counters.stamp_login(st.address, st.when, st.service, st.ip)
            except StateUnavailable:
                _log.warn("last-login flush: {n} stamps lost, both stores unavailable", n=len(stamps))
                return
