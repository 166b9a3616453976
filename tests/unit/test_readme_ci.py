"""The README's two set-up commands and .ci/run must not drift apart."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block is not None, "README must open with a sh code block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_exactly_two_commands() -> None:
    """The first code block of the README holds the run command and the test command."""
    cmds = _readme_commands()
    assert len(cmds) == 2
    assert "run" in cmds[0] and "test" in cmds[1]
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.index("```sh") < text.index("\n## "), "the commands must come first"


def test_ci_calls_the_readme_test_command() -> None:
    """.ci/run runs the README's test command verbatim."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ci_lines = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.startswith("#")]
    assert _readme_commands()[1] in ci_lines


def test_readme_scripts_exist() -> None:
    """Both README commands name scripts that exist in the checkout."""
    for cmd in _readme_commands():
        script = cmd.split()[1]
        assert (ROOT / script).is_file(), script
