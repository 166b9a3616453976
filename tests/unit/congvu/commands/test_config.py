"""``congvu config check|show``: exit codes, overrides marked, errors without tracebacks."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from congvu.cli import main
from congvu.output import Output


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=Output(out, err))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(autouse=True)
def _no_env_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONGVU_CONFIG", raising=False)


def test_check_valid(tmp_path: Path) -> None:
    """A valid file exits 0 and names its profile."""
    f = tmp_path / "c.toml"
    f.write_text('profile = "cantho-2015"\n', encoding="utf-8")
    code, out, _ = run("config", "check", "--config", str(f))
    assert code == 0 and "cantho-2015" in out


def test_check_invalid_names_file_key_reason(tmp_path: Path) -> None:
    """An invalid file exits 1 with one line naming file, key and reason."""
    f = tmp_path / "c.toml"
    f.write_text('[mailbox]\nattachment_max = "lots"\n', encoding="utf-8")
    code, out, err = run("config", "check", "--config", str(f))
    assert code == 1 and out == ""
    assert f"{f}: mailbox.attachment_max: expected a size" in err
    assert "Traceback" not in err


def test_env_variable_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$CONGVU_CONFIG is read when --config is absent."""
    f = tmp_path / "c.toml"
    f.write_text('profile = "thanhhoa-2013"\n', encoding="utf-8")
    monkeypatch.setenv("CONGVU_CONFIG", str(f))
    code, out, _ = run("config", "check")
    assert code == 0 and "thanhhoa-2013" in out


def test_show_marks_changes_with_profile_value(tmp_path: Path) -> None:
    """show lists every value with its id and marks operator changes, giving the profile value."""
    f = tmp_path / "c.toml"
    f.write_text('[mailbox]\nquota_agency = "20GB"\n', encoding="utf-8")
    code, out, _ = run("config", "show", "--config", str(f))
    assert code == 0
    changed = [ln for ln in out.splitlines() if ln.startswith("* ")]
    assert len(changed) == 1
    assert "mailbox.quota_agency" in changed[0] and '"20GB"' in changed[0]
    assert "CT25-5.1" in changed[0] and '[\"10GB\"]' in changed[0]
    assert any("password.min_length" in ln and "CT25-5.3" in ln for ln in out.splitlines())


@pytest.mark.parametrize("url", ["redis://:Url-Secret-1@127.0.0.1:6379/0",
                                 "redis://127.0.0.1:6379/0?password=Url-Secret-1",
                                 "redis://congvu:Url-Secret-1@127.0.0.1/0?db=0"])
def test_show_never_prints_a_redis_password(tmp_path: Path, url: str) -> None:
    """``config show``, as text and JSON, masks a password in state.url however the URL carries it."""
    f = tmp_path / "c.toml"
    f.write_text(f'[state]\nbackend = "redis"\nurl = "{url}"\n', encoding="utf-8")
    for extra in ([], ["--json"]):
        code, out, err = run("config", "show", "--config", str(f), *extra)
        assert code == 0 and "state.url" in out and "***" in out
        assert "Url-Secret-1" not in out + err


def test_show_json(tmp_path: Path) -> None:
    """--json gives every key with rule, source and the profile value of changed keys."""
    code, out, _ = run("config", "show", "--json", "--profile", "cantho-2015")
    assert code == 0
    data = json.loads(out)
    values = {v["key"]: v for v in data["values"]}
    assert values["mailbox.quota_agency"]["value"] == "unlimited"
    assert values["mailbox.quota_agency"]["rule"] == "CT15-4.1"
    assert not any(v["changed"] for v in data["values"])


def test_usage_error_exits_2() -> None:
    """Unknown subcommands are usage errors."""
    code, _, err = run("config", "frob")
    assert code == 2 and "invalid choice" in err
