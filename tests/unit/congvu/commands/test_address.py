"""``congvu address …``: exit codes, JSON shape and text output, through congvu.cli.main."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from congvu.cli import main
from congvu.output import Output


@pytest.fixture(autouse=True)
def _no_site_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their profile or file; a $CONGVU_CONFIG of the developer must not leak in."""
    monkeypatch.delenv("CONGVU_CONFIG", raising=False)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=Output(out, err))
    return code, out.getvalue(), err.getvalue()


def run_json(*argv: str) -> tuple[int, dict[str, object]]:
    code, out, err = run(*argv, "--json")
    assert err == ""
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return code, doc


def test_suggest_plain_form() -> None:
    """No clash: nvminh@cantho.gov.vn under CT25-4.3a, exit 0."""
    code, doc = run_json("address", "suggest", "Nguyễn Văn Minh", "--agency", "sonv", "--profile", "cantho-2025")
    assert code == 0
    assert {k: doc[k] for k in ("address", "local_part", "rule", "manual")} == {
        "address": "nvminh@cantho.gov.vn", "local_part": "nvminh", "rule": "CT25-4.3a", "manual": False}
    assert isinstance(doc["reason"], str) and doc["reason"]


def test_suggest_clash_json_matches_the_documented_shape() -> None:
    """Taken nvminh → nvminh1 (CT25-4.3b); --taken is comma-separated and repeatable."""
    code, doc = run_json("address", "suggest", "Nguyễn Văn Minh", "--agency", "sonv", "--taken", "nvminh")
    assert code == 0
    assert (doc["address"], doc["local_part"], doc["rule"], doc["manual"]) == (
        "nvminh1@cantho.gov.vn", "nvminh1", "CT25-4.3b", False)
    code, doc = run_json("address", "suggest", "Nguyễn Văn Minh", "--agency", "sonv",
                         "--taken", "nvminh,nvminh1", "--taken", "nvminh2")
    assert (code, doc["local_part"]) == (0, "nvminh3")


def test_suggest_manual_exits_3_with_null_address() -> None:
    """The 4th clashing person: address null, manual true, exit 3."""
    code, doc = run_json("address", "suggest", "Nguyễn Văn Minh", "--agency", "sonv",
                         "--taken", "nvminh,nvminh1,nvminh2,nvminh3")
    assert code == 3
    assert doc["address"] is None and doc["local_part"] is None and doc["manual"] is True
    assert doc["rule"] == "CT25-4.3b" and "administrator" in str(doc["reason"])


def test_suggest_text_output() -> None:
    """Text mode prints the address and the rule with its citation."""
    code, out, _ = run("address", "suggest", "Nguyễn Văn Minh", "--agency", "sonv", "--taken", "nvminh")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "nvminh1@cantho.gov.vn"
    assert "CT25-4.3b" in lines[1] and "Điều 4 khoản 3 điểm b" in lines[1]
    code, out, _ = run("address", "suggest", "Minh", "--agency", "sonv")
    assert code == 3 and out.startswith("manual:")


@pytest.mark.parametrize(
    ("profile", "agency", "taken", "code", "local", "rule"),
    [
        ("cantho-2015", "sonv", "nvminh", 0, "nvanminh", "CT15-4.2d"),
        ("cantho-2015", "sonv", "nvminh,nvanminh", 0, "nguyenvanminh", "CT15-4.2d"),
        ("cantho-2015", "sonv", "nvminh,nvanminh,nguyenvanminh", 3, None, "CT15-4.2d"),
        ("thanhhoa-2013", "sttt", "", 0, "minhnv.sttt", "TH13-3.3"),
        ("thanhhoa-2013", "sttt", "minhnv.sttt", 3, None, "TH13-3.3"),
    ],
)
def test_suggest_per_profile(profile: str, agency: str, taken: str, code: int, local: str | None,
                             rule: str) -> None:
    """--profile picks the scheme when no config file is given."""
    got, doc = run_json("address", "suggest", "Nguyễn Văn Minh", "--agency", agency, "--profile", profile,
                        "--taken", taken)
    assert (got, doc["local_part"], doc["rule"]) == (code, local, rule)


def test_config_file_selects_scheme_and_domain(tmp_path: Path) -> None:
    """--config FILE: its profile, domain and naming settings apply."""
    f = tmp_path / "congvu.toml"
    f.write_text('profile = "cantho-2025"\ndomain = "example.gov.vn"\n[naming]\nmax_clash = 1\n', encoding="utf-8")
    code, doc = run_json("address", "suggest", "Nguyễn Văn Minh", "--agency", "sonv", "--config", str(f),
                         "--taken", "nvminh")
    assert (code, doc["address"]) == (0, "nvminh1@example.gov.vn")
    code, doc = run_json("address", "suggest", "Nguyễn Văn Minh", "--agency", "sonv", "--config", str(f),
                         "--taken", "nvminh,nvminh1")
    assert code == 3 and doc["manual"] is True


def test_same_day_and_rank() -> None:
    """--same-day with a Giám đốc: the Phó Giám đốc gets nvminh1; with --rank above, nvminh."""
    code, doc = run_json("address", "suggest", "Nguyễn Văn Minh", "--agency", "sonv", "--rank", "Phó Giám đốc",
                         "--same-day", "Nguyễn Văn Minh:Giám đốc", "--date", "2026-03-02")
    assert (code, doc["local_part"], doc["date"]) == (0, "nvminh1", "2026-03-02")
    same_day = doc["same_day"]
    assert isinstance(same_day, list)
    assert (same_day[0]["name"], same_day[0]["rank"], same_day[0]["local_part"]) == ("Nguyễn Văn Minh", 80, "nvminh")
    code, doc = run_json("address", "suggest", "Nguyễn Văn Minh", "--agency", "sonv", "--rank", "90",
                         "--same-day", "Nguyễn Văn Minh:Giám đốc")
    assert (code, doc["local_part"]) == (0, "nvminh")


def test_same_day_equal_ranks_is_manual() -> None:
    """Equal ranks on the same day for a free plain form: exit 3."""
    code, doc = run_json("address", "suggest", "Nguyễn Văn Minh", "--agency", "sonv", "--rank", "Trưởng phòng",
                         "--same-day", "Nguyễn Văn Minh:60")
    assert code == 3 and doc["manual"] is True


def test_urgent_and_family_words_and_display_name() -> None:
    """--urgent is manual under CT25; --family-words changes CT15's 2nd form; --agency-name shows it."""
    code, _ = run_json("address", "suggest", "Nguyễn Văn Minh", "--agency", "sonv", "--urgent")
    assert code == 3
    code, doc = run_json("address", "suggest", "Tôn Nữ Thị Hà", "--agency", "sonv", "--profile", "cantho-2015",
                         "--family-words", "2", "--taken", "tntha", "--agency-name", "Sở Nội vụ")
    assert (code, doc["local_part"], doc["display_name"]) == (0, "tnthiha", "Tôn Nữ Thị Hà - Sở Nội vụ")


@pytest.mark.parametrize(
    "argv",
    [
        ["address", "suggest", "Nguyễn Văn Minh"],                                   # --agency missing
        ["address", "suggest", "Nguyễn Văn Minh", "--agency", "Sở NV"],
        ["address", "suggest", "", "--agency", "sonv"],
        ["address", "suggest", "Nguyễn Văn Minh", "--agency", "sonv", "--date", "02/03/2026"],
        ["address", "suggest", "Nguyễn Văn Minh", "--agency", "sonv", "--rank", "Thủ quỹ"],
        ["address", "suggest", "Nguyễn Văn Minh", "--agency", "sonv", "--same-day", "Nguyễn Văn Minh"],
        ["address", "suggest", "Nguyễn Văn Minh", "--agency", "sonv", "--same-day", ":80"],
        ["address", "suggest", "Nguyễn Văn Minh", "--agency", "sonv", "--family-words", "3"],
        ["address", "suggest", "Nguyễn Văn Minh", "--agency", "sonv", "--family-words", "x"],
    ],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    """Bad arguments exit 2 with a message on stderr and nothing on stdout."""
    code, out, err = run(*argv)
    assert code == 2, err
    assert err and out == ""


def test_unknown_profile_is_a_config_error() -> None:
    """An unknown --profile is reported by the config loader: exit 1 like every config error."""
    code, out, err = run("address", "suggest", "Nguyễn Anh Tuấn", "--agency", "sonv", "--profile", "nowhere-1999")
    assert code == 1 and "unknown profile" in err and out == ""


def test_agency_and_unit_subcommands() -> None:
    """address agency / unit: chosen, clash → 3, malformed → 1."""
    code, doc = run_json("address", "agency", "songoaivu", "--taken", "sonv")
    assert (code, doc["address"], doc["rule"]) == (0, "songoaivu@cantho.gov.vn", "CT25-4.1")
    code, doc = run_json("address", "agency", "sonv", "--taken", "sonv")
    assert (code, doc["manual"]) == (3, True)
    code, doc = run_json("address", "agency", "Sở NV")
    assert (code, doc["manual"], doc["refused"]) == (1, False, True)
    code, out, err = run("address", "agency", "so.nv")
    assert code == 1 and "allow_dots_in_abbreviation" in err
    code, doc = run_json("address", "unit", "pvhtt", "--agency", "yendinh", "--profile", "thanhhoa-2013")
    assert (code, doc["address"], doc["rule"]) == (0, "pvhtt.yendinh@thanhhoa.gov.vn", "TH13-3.2")
    code, out, _ = run("address", "unit", "vanphong", "--agency", "sonv", "--taken", "vanphong.sonv")
    assert code == 3 and out.startswith("manual:")


def test_help_documents_ranks_and_same_day(capsys: pytest.CaptureFixture[str]) -> None:
    """--help explains the rank scale and the --same-day format (argparse prints help to stdout)."""
    with pytest.raises(SystemExit) as e:
        main(["address", "suggest", "--help"], out=Output(io.StringIO(), io.StringIO()))
    assert e.value.code == 0
    text = capsys.readouterr().out
    for needle in ("--same-day", "NAME:RANK", "Giám đốc", "Phó Trưởng phòng", "--family-words", "exit codes"):
        assert needle in text
