"""Fixtures for the account-store suites: one store per backend, and a site config for the CLI."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from congvu.cli import main
from congvu.config import config_from_mapping
from congvu.directory.model import AccountStore
from congvu.directory.sqlite_store import SqliteAccountStore
from congvu.output import Output


def ldap_store(slapd: Any, **extra: Any) -> AccountStore:
    """An LdapAccountStore on the test slapd (``slapd_server`` from tests/integration/servers/slapd.py)."""
    from congvu.directory.ldap_store import LdapAccountStore

    cfg = config_from_mapping({"directory": slapd.directory_overrides(**extra)})
    store: AccountStore = LdapAccountStore(cfg.directory)
    return store


@pytest.fixture(params=["sqlite", "ldap"])
def account_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AccountStore]:
    """The same contract on every backend; what a test adds is removed afterwards (slapd is per session)."""
    store: AccountStore
    if request.param == "sqlite":
        store = SqliteAccountStore(tmp_path / "directory.sqlite3")
    else:
        store = ldap_store(request.getfixturevalue("slapd_server"))
    before = {a.address for a in store.list()}
    try:
        yield store
    finally:
        for a in list(store.list()):
            if a.address not in before:
                store.delete(a.address)
        store.close()


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@dataclass
class Site:
    """A congvu.toml in a temp dir (embedded SQLite under it, fast hashes) and a way to run the CLI on it."""

    root: Path
    config: Path

    def run(self, *argv: str) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        code = main([*argv, "--config", str(self.config)], out=Output(out, err))
        return CliResult(code, out.getvalue(), err.getvalue())

    @property
    def db(self) -> Path:
        return self.root / "var" / "directory.sqlite3"


def write_site(root: Path, profile: str = "cantho-2025", directory: dict[str, Any] | None = None) -> Site:
    root.mkdir(parents=True, exist_ok=True)
    section = {"hash_cost": "test", **(directory or {})}
    lines = [f"profile = {json.dumps(profile)}", f"state_dir = {json.dumps(str(root / 'var'))}", "", "[directory]"]
    # JSON strings and numbers are valid TOML; booleans are spelled the same too.
    lines += [f"{k} = {json.dumps(v)}" for k, v in section.items()]
    cfg = root / "congvu.toml"
    cfg.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Site(root, cfg)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    """The default site: cantho-2025 profile, SQLite directory, test hash cost."""
    return write_site(tmp_path / "site")


@pytest.fixture
def make_site(tmp_path: Path) -> Callable[..., Site]:
    """Further sites (import targets, other profiles) under the same temp dir."""
    count = 0

    def make(**kw: Any) -> Site:
        nonlocal count
        count += 1
        return write_site(tmp_path / f"site{count}", **kw)

    return make
