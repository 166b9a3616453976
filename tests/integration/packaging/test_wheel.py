"""The built wheel: one top-level import name, and the commands and the -S launcher work from a clean venv."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
#: The top-level folders of the repository and where they must land in the wheel.
FOLDERS = {"rules": "congvu/rules", "directory": "congvu/directory", "policyd": "congvu/policyd",
           "authhooks": "congvu/authhooks", "quota": "congvu/quota"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel`` of a copy of the checkout (setuptools' build/ stays out of it; setuptools is the lock's)."""
    out = tmp_path_factory.mktemp("wheel")
    src = out / "src"
    shutil.copytree(REPO, src, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", ".venv*", "build", "var", "__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(out), str(src)], check=True, cwd=out)
    (whl,) = out.glob("congvu-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new venv holding the lock's packages and the wheel, not editable, nothing from the checkout."""
    root = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    pip = [str(root / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
    subprocess.run([*pip, "--require-hashes", "-r", str(REPO / "requirements.lock")], check=True)
    subprocess.run([*pip, str(wheel)], check=True)
    yield root


def test_the_wheel_has_one_top_level_package_congvu(wheel: Path) -> None:
    """Every file of the wheel is under congvu/ (or its dist-info); no rules/, directory/ … at the top."""
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"congvu"}
    assert len(names) == len(set(names))


def test_every_module_and_asset_of_the_checkout_is_in_the_wheel(wheel: Path) -> None:
    """Each .py under the top-level folders (and the page's assets) is in the wheel at its congvu.… path."""
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {f"{FOLDERS[p.parts[0]]}/{'/'.join(p.parts[1:])}"
              for folder in FOLDERS for p in (f.relative_to(REPO) for f in (REPO / folder).rglob("*"))
              if p.suffix in (".py", ".css", ".js", ".html", ".lua") and "__pycache__" not in p.parts}
    wanted |= {f"congvu/{p.name}" for p in (REPO / "congvu").glob("*.py")}
    assert wanted - names == set()


def _run(venv: Path, *argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(argv), input=stdin, capture_output=True, cwd="/", timeout=60,
                          env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": "/tmp"})


def test_congvu_runs_from_the_installed_wheel(venv: Path, tmp_path: Path) -> None:
    """`congvu config check` and `congvu address suggest` work, importing congvu from site-packages."""
    r = _run(venv, str(venv / "bin" / "congvu"), "config", "check")
    assert r.returncode == 0, r.stderr
    r = _run(venv, str(venv / "bin" / "congvu"), "address", "suggest", "Nguyễn Văn Minh", "--agency", "sonv")
    assert r.returncode == 0 and b"nvminh@cantho.gov.vn" in r.stdout, r.stdout + r.stderr
    r = _run(venv, str(venv / "bin" / "python"), "-c",
             "import congvu, congvu.rules.config as c; print(c.__file__); import rules")
    assert b"site-packages/congvu/rules/config.py" in r.stdout and b"No module named 'rules'" in r.stderr


def test_console_checkpassword_and_the_s_launcher_run_from_the_wheel(venv: Path, tmp_path: Path) -> None:
    """congvu-checkpassword answers 111 without a reply program; hook-script writes a -S launcher that does too."""
    r = _run(venv, str(venv / "bin" / "congvu-checkpassword"))
    assert r.returncode == 111 and b"no reply program given" in r.stderr, r.stderr
    launcher = tmp_path / "checkpassword"
    r = _run(venv, str(venv / "bin" / "congvu"), "authd", "hook-script", str(launcher))
    assert r.returncode == 0, r.stderr
    text = launcher.read_text(encoding="utf-8")
    assert text.startswith(f"#!{venv / 'bin' / 'python'} -S\n") and "site-packages" in text
    r = _run(venv, str(launcher))
    assert r.returncode == 111 and b"no reply program given" in r.stderr, r.stderr
    probe = ("import sys; p = sys.argv[1]; exec(compile(open(p).read(), p, 'exec'), {'__name__': 'probe'}); "
             "print(' '.join(sys.modules))")
    r = _run(venv, str(venv / "bin" / "python"), "-S", "-c", probe, str(launcher))
    loaded = r.stdout.decode().split()
    assert "congvu.authhooks.checkpassword" in loaded and "site" not in loaded
    assert not [m for m in loaded if m.split(".")[0] in ("twisted", "ldap3", "redis", "zxcvbn")]


def test_hook_script_warns_when_dovecot_cannot_run_the_launcher(venv: Path, tmp_path: Path) -> None:
    """A venv under a 0700 directory: hook-script still writes the launcher but says dovecot cannot run it, and why."""
    if not shutil.which("runuser") or subprocess.run(["id", "dovecot"], capture_output=True).returncode != 0:
        pytest.fail("needs runuser and the dovecot user (apt-get install dovecot-core)")
    hidden = venv.parent
    hidden.chmod(0o700)
    try:
        r = _run(venv, str(venv / "bin" / "congvu"), "authd", "hook-script", str(tmp_path / "checkpassword"))
    finally:
        hidden.chmod(0o755)
    assert r.returncode == 0, r.stderr
    assert b"warning: the launcher" in r.stderr and b"does not run as user dovecot" in r.stderr, r.stderr
    assert b" is mode 0700: dovecot cannot reach " in r.stderr, r.stderr  # the first closed directory on the way
