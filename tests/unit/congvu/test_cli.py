"""The ``congvu`` dispatcher: every error a command lets through becomes one line and its exit code."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

import congvu.directory.accounts
from congvu.cli import main
from congvu.directory.model import AccountNotFound, DirectoryError, DirectoryUnavailable
from congvu.output import Output


@pytest.mark.parametrize(("error", "code", "line"), [
    (PermissionError(13, "Permission denied", "/var/lib/congvu/directory.sqlite3"), 1,
     "congvu: /var/lib/congvu/directory.sqlite3: Permission denied"),
    (DirectoryUnavailable("ldap://10.0.0.1: timed out after 5s"), 1,
     "congvu: directory unavailable: ldap://10.0.0.1: timed out after 5s"),
    (DirectoryError("schema version 9 is newer than this congvu knows (2)"), 1,
     "congvu: directory error: schema version 9 is newer than this congvu knows (2)"),
    (AccountNotFound("ghost@cantho.gov.vn"), 4, "not found: ghost@cantho.gov.vn"),
])
def test_store_errors_are_one_line_with_their_exit_code(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                        error: Exception, code: int, line: str) -> None:
    """An error opening the store reaches the operator as one line, never a traceback."""
    def refuse(_cfg: object) -> None:
        raise error

    monkeypatch.setattr(congvu.directory.accounts, "open_store", refuse)
    conf = tmp_path / "congvu.toml"
    conf.write_text(f'state_dir = "{tmp_path}"\n', encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    assert main(["account", "list", "--config", str(conf)], out=Output(out, err)) == code
    assert err.getvalue() == line + "\n" and out.getvalue() == ""
