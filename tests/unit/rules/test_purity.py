"""rules/ is the regulations as pure code: no I/O, no Twisted, no clock of its own, nothing from the machine."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import congvu.rules

RULES = Path(congvu.rules.__file__).parent
#: Modules whose import would mean I/O, a network client, a reactor or a process of its own.
FORBIDDEN_IMPORTS = {"twisted", "ldap3", "redis", "sqlite3", "socket", "subprocess", "urllib", "http",
                     "importlib", "tomllib", "shutil", "pathlib", "os", "time", "logging"}
#: Calls that read the machine or the clock.
FORBIDDEN_CALLS = {"open", "now", "today", "utcnow", "cpu_count", "getenv", "read_text", "read_bytes"}


def _sources() -> list[Path]:
    return sorted(RULES.rglob("*.py"))


def test_rules_import_nothing_that_does_io() -> None:
    """No module under rules/ imports a network, disk, process, clock or logging module."""
    found = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN_IMPORTS]
    assert found == []


def test_rules_call_no_clock_and_read_no_file() -> None:
    """No call under rules/ reads a file, the environment, the CPU count or the current time."""
    found = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                fn = node.func
                name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
                if name in FORBIDDEN_CALLS:
                    found.append(f"{path.name}:{node.lineno}: {name}()")
    assert found == []


def test_importing_every_rules_module_loads_no_twisted() -> None:
    """In a fresh interpreter, importing all of congvu.rules leaves Twisted, sqlite3 and socket unloaded."""
    mods = [".".join(("congvu.rules", *p.relative_to(RULES).with_suffix("").parts)).removesuffix(".__init__")
            for p in _sources()]
    code = "import sys\n" + "".join(f"import {m}\n" for m in mods) + \
        "print(' '.join(m for m in ('twisted', 'sqlite3', 'socket', 'ldap3', 'redis') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
