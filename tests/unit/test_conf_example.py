"""conf/congvu.toml is the annotated example for the default profile, and stays in step with the code."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from congvu.cli import main
from congvu.config import load_config
from congvu.output import Output
from congvu.rules.requirements import KNOWN_IDS

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "conf" / "congvu.toml"


def _example(profile: str) -> str:
    out = io.StringIO()
    assert main(["config", "example", "--profile", profile], out=Output(out, io.StringIO())) == 0
    return out.getvalue()


@pytest.fixture(autouse=True)
def _no_env_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONGVU_CONFIG", raising=False)


def test_shipped_example_is_current() -> None:
    """The shipped file equals `congvu config example` (regenerate it when a key changes)."""
    assert SHIPPED.read_text(encoding="utf-8") == _example("cantho-2025"), (
        "conf/congvu.toml is stale: .venv/bin/congvu config example --profile cantho-2025 > conf/congvu.toml")


def test_every_key_is_annotated_with_a_requirement_id() -> None:
    """Each key of every section appears once, right after a comment citing a known id."""
    text = SHIPPED.read_text(encoding="utf-8")
    cfg = load_config(SHIPPED)
    lines = text.splitlines()
    section = ""
    seen = set()
    for i, line in enumerate(lines):
        if m := re.match(r"^\[(\w+)\]$", line):
            section = m.group(1)
        elif m := re.match(r"^#? ?(\w+) = ", line):
            key = f"{section}.{m.group(1)}" if section else m.group(1)
            ids = re.findall(r"(?:CT25|CT15|TH13)-[\w.đ]+|SUITE|ND91-2020", lines[i - 1])
            assert ids and ids[0] in KNOWN_IDS, f"{key}: comment above cites no known id"
            seen.add(key)
    assert seen == set(cfg.origins)


@pytest.mark.parametrize("profile", ["cantho-2025", "cantho-2015", "thanhhoa-2013"])
def test_example_loads_back_to_the_profile(profile: str, tmp_path: Path) -> None:
    """The generated example for each profile is a valid config that changes nothing."""
    f = tmp_path / "c.toml"
    f.write_text(_example(profile), encoding="utf-8")
    cfg = load_config(f)
    assert cfg.profile.name == profile
    assert not [k for k, o in cfg.origins.items() if o.source == "file" and o.raw != o.profile_raw]
