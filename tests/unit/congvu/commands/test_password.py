"""``congvu password check``: stdin only, exit codes 0/1/2, bilingual text and JSON (CT25-5.3)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from congvu.cli import main
from congvu.output import Output

ROOT = Path(__file__).resolve().parents[4]
ACCOUNT = ["--user", "nvminh", "--name", "Nguyễn Văn Minh", "--agency", "sonv"]


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """A site file naming the default profile, so no /etc file or $CONGVU_CONFIG leaks in."""
    p = tmp_path / "congvu.toml"
    p.write_text('profile = "cantho-2025"\n', encoding="utf-8")
    return p


def run(argv: list[str], stdin: str, monkeypatch: Any) -> tuple[int, str, str]:
    monkeypatch.delenv("CONGVU_CONFIG", raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, Output(out, err))
    return code, out.getvalue(), err.getvalue()


def test_a_strong_password_exits_0(conf: Path, monkeypatch: Any) -> None:
    """Accepted: prints "accepted", exits 0."""
    code, out, _ = run(["password", "check", *ACCOUNT, "--config", str(conf)], "Qu@nLyThu3!\n", monkeypatch)
    assert (code, out) == (0, "accepted\n")


def test_a_refused_password_exits_1_with_both_languages(conf: Path, monkeypatch: Any) -> None:
    """Refused: every reason in Vietnamese and English with its article; the password is not echoed."""
    code, out, _ = run(["password", "check", *ACCOUNT, "--config", str(conf)], "minhabc\n", monkeypatch)
    assert code == 1
    assert out.startswith("refused\n")
    assert "ít nhất 8 ký tự" in out and "at least 8 characters" in out
    assert "CT25-5.3" in out and "Điều 5 khoản 3" in out
    assert "minhabc" not in out.lower()


def test_json_output(conf: Path, monkeypatch: Any) -> None:
    """--json gives accepted, score and reasons [{rule, citation, vi, en}]."""
    code, out, _ = run(["password", "check", *ACCOUNT, "--config", str(conf), "--json"],
                       "Minh@2025Abc\n", monkeypatch)
    doc = json.loads(out)
    assert code == 1 and doc["accepted"] is False and isinstance(doc["score"], int)
    (reason,) = doc["reasons"]
    assert {"rule", "citation", "vi", "en"} <= set(reason)
    assert reason["code"] == "contains_name"
    assert "Minh@2025Abc" not in out

    code, out, _ = run(["password", "check", *ACCOUNT, "--config", str(conf), "--json"],
                       "Qu@nLyThu3!\n", monkeypatch)
    doc = json.loads(out)
    assert code == 0 and doc["accepted"] is True and doc["reasons"] == [] and doc["score"] >= 3


def test_type_and_profile_show_the_lifetime(monkeypatch: Any) -> None:
    """--profile cantho-2015 --type unit: the JSON names the 60-day lifetime of CT15-11.4."""
    code, out, _ = run(["password", "check", *ACCOUNT, "--profile", "cantho-2015", "--type", "unit", "--json"],
                       "Qu@nLyThu3!\n", monkeypatch)
    doc = json.loads(out)
    assert code == 0
    assert (doc["expires_after_days"], doc["expiry_rule"]) == (60, "CT15-11.4")


def test_the_published_example_is_refused(conf: Path, monkeypatch: Any) -> None:
    """MatKhaus7894 from the regulation is refused, citing CT15-10.3."""
    code, out, _ = run(["password", "check", *ACCOUNT, "--config", str(conf), "--json"],
                       "MatKhaus7894!\n", monkeypatch)
    assert code == 1
    assert "CT15-10.3" in [r["rule"] for r in json.loads(out)["reasons"]]


def test_only_the_first_line_and_only_its_newline(conf: Path, monkeypatch: Any) -> None:
    """One line is read; the newline (or CRLF) is dropped but a trailing space is kept."""
    pw = "Qx7vLrtzK2 "  # the trailing space is its only special character
    argv = ["password", "check", *ACCOUNT, "--config", str(conf)]
    assert run(argv, pw + "\n", monkeypatch)[0] == 0
    assert run(argv, pw + "\r\nsecond line\n", monkeypatch)[0] == 0
    assert run(argv, pw.rstrip() + "\n" + " \n", monkeypatch)[0] == 1
    assert run(argv, pw, monkeypatch)[0] == 0  # no newline at EOF


def test_an_empty_line_is_refused_but_no_input_is_a_usage_error(conf: Path, monkeypatch: Any) -> None:
    """An empty password is refused (1); nothing at all on stdin is a usage error (2)."""
    argv = ["password", "check", *ACCOUNT, "--config", str(conf)]
    assert run(argv, "\n", monkeypatch)[0] == 1
    code, out, err = run(argv, "", monkeypatch)
    assert code == 2 and out == "" and "stdin" in err


def test_a_huge_line_is_refused_without_reading_it_all(conf: Path, monkeypatch: Any) -> None:
    """A 1 MB line is refused as too long (exit 1); the reader stops after a few hundred characters."""
    stream = io.StringIO("Aa1!" * 250_000 + "\n")
    monkeypatch.delenv("CONGVU_CONFIG", raising=False)
    monkeypatch.setattr(sys, "stdin", stream)
    out = io.StringIO()
    code = main(["password", "check", *ACCOUNT, "--config", str(conf), "--json"], Output(out, io.StringIO()))
    assert code == 1
    assert [r["code"] for r in json.loads(out.getvalue())["reasons"]] == ["too_long"]
    assert stream.tell() < 1000


@pytest.mark.parametrize("argv", [
    ["password", "check", "--name", "Nguyễn Văn Minh"],                       # no --user
    ["password", "check", "--user", "nvminh"],                                # no --name
    ["password", "check", *ACCOUNT, "--password", "Qu@nLyThu3!"],             # never on argv
    ["password", "check", *ACCOUNT, "--type", "shared"],
    ["password"],
])
def test_usage_errors_exit_2(argv: list[str], monkeypatch: Any) -> None:
    """Missing or unknown arguments exit 2; there is no way to pass the password on the command line."""
    assert run(argv, "Qu@nLyThu3!\n", monkeypatch)[0] == 2


def test_real_stdin_bytes(tmp_path: Path) -> None:
    """Through a real process: UTF-8 bytes on stdin are checked; other bytes are a usage error."""
    env = {k: v for k, v in os.environ.items() if k != "CONGVU_CONFIG"}
    conf = tmp_path / "c.toml"
    conf.write_text('profile = "cantho-2025"\n', encoding="utf-8")
    cmd = [sys.executable, "-m", "congvu.cli", "password", "check", *ACCOUNT, "--config", str(conf)]
    ok = subprocess.run(cmd, input="Sóng Gió 2024 Tím!\n".encode(), capture_output=True, cwd=ROOT, env=env,
                        timeout=60, check=False)
    assert (ok.returncode, ok.stdout) == (0, b"accepted\n")
    bad = subprocess.run(cmd, input=b"S\xf3ng Gi\xf3 2024!\n", capture_output=True, cwd=ROOT, env=env,
                         timeout=60, check=False)
    assert bad.returncode == 2 and b"UTF-8" in bad.stderr
