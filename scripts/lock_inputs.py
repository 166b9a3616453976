"""The digest of pyproject.toml's dependency lists, the lock's inputs (scripts/lock.sh, tests/unit/test_lock.py)."""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from pathlib import Path


def inputs(pyproject: Path) -> dict[str, list[str]]:
    """The requirement lists the lock is resolved from: runtime, and the extras it installs."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    extras = project.get("optional-dependencies", {})
    return {"dependencies": sorted(project.get("dependencies", [])),
            "python": [project.get("requires-python", "")],
            **{f"extra:{name}": sorted(extras.get(name, [])) for name in ("test", "dev")}}


def digest(pyproject: Path) -> str:
    return hashlib.sha256(json.dumps(inputs(pyproject), sort_keys=True).encode()).hexdigest()


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    print(digest(root / "pyproject.toml"))
