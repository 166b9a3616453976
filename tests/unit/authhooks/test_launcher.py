"""``congvu authd hook-script FILE``: the launcher generator (authhooks.launcher), through the real CLI."""

from __future__ import annotations

import io
import os
import stat
import sys
from pathlib import Path

import pytest

from congvu.authhooks.launcher import MARKER, LauncherError, package_parent, render
from congvu.cli import main as congvu
from congvu.output import Output


def hook_script(path: Path, *before: str, after: tuple[str, ...] = ()) -> tuple[int, str, str]:
    """Run `congvu authd [before] hook-script PATH [after]`; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = congvu(["authd", *before, "hook-script", str(path), *after], Output(out, err))
    return code, out.getvalue(), err.getvalue()


def test_writes_an_executable_launcher_for_this_interpreter(tmp_path: Path) -> None:
    """The file is 0755, starts `#!<sys.executable> -S`, puts the package's parent on sys.path, runs main."""
    path = tmp_path / "libexec" / "congvu" / "checkpassword"
    code, out, err = hook_script(path)
    assert code == 0, err
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == f"#!{sys.executable} -S" and lines[1] == MARKER
    assert f"sys.path.insert(0, {str(package_parent())!r})" in lines
    assert "from congvu.authhooks.checkpassword import main" in lines and "    sys.exit(main())" in lines
    assert (package_parent() / "authhooks" / "checkpassword.py").is_file()
    assert f"args = {path} --socket " in out


def test_prints_the_dovecot_line_with_the_configured_socket(tmp_path: Path) -> None:
    """With --config (before or after the action) the printed passdb args name [authhooks] socket."""
    conf = tmp_path / "c.toml"
    conf.write_text('[authhooks]\nsocket = "/run/congvu/test-authd.sock"\n', encoding="utf-8")
    _, out, _ = hook_script(tmp_path / "a", "--config", str(conf))
    assert f"args = {tmp_path / 'a'} --socket /run/congvu/test-authd.sock" in out
    code, out, err = hook_script(tmp_path / "b", after=("--config", str(conf)))
    assert code == 0 and "--socket /run/congvu/test-authd.sock" in out, err


def test_replaces_its_own_launcher(tmp_path: Path) -> None:
    """Regenerating over a launcher it wrote (an upgrade) succeeds and rewrites it."""
    path = tmp_path / "checkpassword"
    assert hook_script(path)[0] == 0
    path.write_text(path.read_text(encoding="utf-8").replace("sys.path.insert(0, ", "sys.path.insert(0, 'x') #"))
    assert hook_script(path)[0] == 0
    assert f"sys.path.insert(0, {str(package_parent())!r})" in path.read_text(encoding="utf-8")


@pytest.mark.parametrize("kind", ["console-script", "symlink", "directory"])
def test_refuses_to_overwrite_anything_else(tmp_path: Path, kind: str) -> None:
    """An existing file that is not a launcher (pip's script, a symlink, a directory) is left alone: exit 1."""
    path = tmp_path / "congvu-checkpassword"
    original = "#!/usr/bin/python3\nfrom authhooks.checkpassword import main\nmain()\n"
    if kind == "console-script":
        path.write_text(original)
    elif kind == "symlink":
        target = tmp_path / "target"
        target.write_text(original)
        path.symlink_to(target)
    else:
        path.mkdir()
    code, out, err = hook_script(path)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "is not a congvu launcher; refusing to overwrite it" in err
    if kind != "directory":
        assert path.read_text() == original
    assert kind != "symlink" or path.is_symlink()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_interpreter_paths_a_shebang_cannot_carry_are_refused() -> None:
    """A relative path, one with a blank, or one too long for the kernel's #! buffer cannot be the interpreter."""
    for bad in ("python3", "/opt/my python/bin/python3", "/" + "x" * 260):
        with pytest.raises(LauncherError):
            render(bad, package_parent())


def test_launcher_that_cannot_run_is_reported(tmp_path: Path) -> None:
    """A launcher whose interpreter is gone fails the generator's self-check with one line."""
    from congvu.authhooks import launcher

    path = tmp_path / "checkpassword"
    launcher.write(path, python="/nonexistent/python3")
    assert os.access(path, os.X_OK)
    with pytest.raises(LauncherError, match="cannot be run"):
        launcher.self_check(path)
