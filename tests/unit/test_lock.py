"""requirements.lock: the pinned tree the README commands install agrees with pyproject.toml's ranges."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements.lock"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def _inputs_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("lock_inputs", REPO / "scripts" / "lock_inputs.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _pins() -> dict[str, tuple[str, str | None]]:
    pins: dict[str, tuple[str, str | None]] = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        m = _PIN.match(line)
        if m:
            pins[canonicalize_name(m[1])] = (m[2], m[3])
    return pins


def test_lock_was_generated_from_the_current_pyproject() -> None:
    """The lock's inputs digest is pyproject's: a changed dependency list without `scripts/lock.sh` fails here."""
    header = re.search(r"^# inputs-sha256: ([0-9a-f]{64})$", LOCK.read_text(encoding="utf-8"), re.M)
    assert header is not None, "requirements.lock has no inputs-sha256 line: regenerate it with scripts/lock.sh"
    assert header[1] == _inputs_module().digest(REPO / "pyproject.toml"), \
        "pyproject.toml's dependencies changed since requirements.lock was made: run scripts/lock.sh"


def test_every_direct_requirement_is_pinned_within_its_range() -> None:
    """Each runtime, test and dev requirement of pyproject.toml is in the lock at a version its range allows."""
    pins = _pins()
    lists = _inputs_module().inputs(REPO / "pyproject.toml")
    wrong = []
    for key, reqs in lists.items():
        if key == "python":
            continue
        for text in reqs:
            req = Requirement(text)
            pinned = pins.get(canonicalize_name(req.name))
            if pinned is None or not req.specifier.contains(pinned[0], prereleases=True):
                wrong.append(f"{text}: {pinned[0] if pinned else 'not in the lock'}")
    assert wrong == []


def test_every_pin_carries_hashes() -> None:
    """pip installs the lock with --require-hashes: every pinned line is followed by at least one hash."""
    text = LOCK.read_text(encoding="utf-8")
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 3)[3])
    assert blocks and all("--hash=sha256:" in b for b in blocks if _PIN.match(b.splitlines()[0]))


def test_this_environment_was_installed_from_the_lock() -> None:
    """What runs these tests is exactly the lock (for the packages whose markers apply here)."""
    off = []
    for name, (version, marker) in _pins().items():
        if marker and not Marker(marker).evaluate():
            continue
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            off.append(f"{name}: not installed")
            continue
        if canonicalize_name(installed) != canonicalize_name(version) and installed != version:
            off.append(f"{name}: {installed} installed, {version} locked")
    assert off == []
