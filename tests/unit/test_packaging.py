"""What a wheel must carry besides Python: every data file the code loads is declared as package data."""

from __future__ import annotations

import fnmatch
import tomllib
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _setuptools() -> dict[str, dict[str, list[str]] | dict[str, str]]:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    return {"package-dir": tool["package-dir"], "package-data": tool["package-data"]}


def test_every_lua_script_is_package_data() -> None:
    """Each .lua file under an installed folder matches a package-data glob, so a non-editable install has it."""
    cfg = _setuptools()
    dirs: dict[str, str] = cfg["package-dir"]  # type: ignore[assignment]
    data: dict[str, list[str]] = cfg["package-data"]  # type: ignore[assignment]
    found = 0
    for package, folder in dirs.items():
        for script in (ROOT / folder).rglob("*.lua"):
            rel = script.relative_to(ROOT / folder).as_posix()
            assert any(fnmatch.fnmatch(rel, g) for g in data.get(package, [])), f"{package}: {rel} not in package-data"
            found += 1
    assert found >= 7


def test_the_scripts_load_through_importlib_resources() -> None:
    """The code reads its scripts as package resources, not by path from the checkout."""
    from congvu.directory.counters_redis import COUNTER_LIB, COUNTER_LUA, TAKE_LUA
    from congvu.policyd.redis_native import MULTI_LUA
    lib = resources.files("congvu.directory").joinpath("lua", "counter_lib.lua").read_text(encoding="utf-8")
    assert lib == COUNTER_LIB and COUNTER_LUA.startswith(lib) and MULTI_LUA.startswith(lib)
    assert "redis.call('HGETALL', KEYS[2])" in TAKE_LUA
    assert "struct.unpack" in MULTI_LUA and MULTI_LUA.isascii()
