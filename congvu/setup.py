"""``congvu setup``: from an apt-installed Postfix + Dovecot to a host that enforces the rules.

The install is a list of :class:`Step` values built by :func:`plan` from a :class:`Layout`
(every path, under an optional root so the integration test can install into a temp
directory) and the site's answers (domain, profile, backend).  Printing the plan is what
``congvu setup`` does; ``--apply`` performs it.  Every step is idempotent: a file congvu
wrote before is replaced, an operator's file that differs is never overwritten (the step
says so and shows the difference), users and directories that exist are left alone.

What it sets up, in order (README "Install on a mail host"):
1. the system users: ``congvu`` (in groups postfix and dovecot, to give its sockets to
   them) and ``vmail`` (owns every mailbox);
2. the directories: /etc/congvu, /var/lib/congvu (0711; files inside 0600), its maps/
   (group postfix), the socket directory inside Postfix's queue directory
   (/var/spool/postfix/congvu, congvu:postfix 2750: smtpd runs chrooted there), /var/vmail;
3. /etc/congvu/congvu.toml with absolute paths;
4. the checkpassword launcher Dovecot runs for every login, checked to run as dovecot;
5. the systemd unit;
6. Postfix: the map definitions in /etc/postfix/congvu/, and ``postconf -e`` / ``-M`` / ``-P``
   for main.cf and master.cf;
7. Dovecot: the snippets in /etc/congvu/dovecot/, conf.d/99-congvu.conf including them, and
   10-auth.conf's ``!include auth-system.conf.ext`` replaced by congvu's passdb.
"""

from __future__ import annotations

import difflib
import grp
import os
import pwd
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from congvu.rules.errors import CongvuError

#: The marker congvu puts in every file it writes, so a rerun may replace it.
MARK = "# Written by `congvu setup`"


class SetupError(CongvuError):
    """A step cannot be done; the message says which and what to do."""


# --------------------------------------------------------------------------- where things go


@dataclass(frozen=True)
class Layout:
    """Every path of an installation; ``root`` prefixes them all (``/`` on a real host)."""

    root: Path = Path("/")
    postfix_config: Path | None = None
    dovecot_config: Path | None = None
    #: The interpreter of the venv congvu runs from (the unit's ExecStart, the launcher's #!).
    python: Path = Path(sys.executable)
    user: str = "congvu"
    mail_user: str = "vmail"
    #: Postfix's queue directory (its chroot); read from postconf by :func:`detect`.
    queue: Path = Path("/var/spool/postfix")
    #: master.cf service name of the submission entry (a loopback port in the test).
    submission: str = "submission"

    def p(self, path: str) -> Path:
        """``path`` under the root."""
        return self.root / path.lstrip("/")

    @property
    def etc(self) -> Path:
        return self.p("/etc/congvu")

    @property
    def config(self) -> Path:
        return self.etc / "congvu.toml"

    @property
    def state(self) -> Path:
        return self.p("/var/lib/congvu")

    @property
    def run(self) -> Path:
        return self.p("/run/congvu")

    @property
    def maps(self) -> Path:
        return self.state / "maps"

    @property
    def sockets(self) -> Path:
        """congvu's socket directory inside Postfix's chroot."""
        return self.queue / "congvu"

    @property
    def launcher(self) -> Path:
        return self.p("/usr/local/libexec/congvu/checkpassword")

    @property
    def unit(self) -> Path:
        return self.p("/etc/systemd/system/congvu.service")

    @property
    def postfix(self) -> Path:
        return self.postfix_config or self.p("/etc/postfix")

    @property
    def dovecot(self) -> Path:
        return self.dovecot_config or self.p("/etc/dovecot")

    @property
    def vmail(self) -> Path:
        return self.p("/var/vmail")

    @property
    def congvu(self) -> Path:
        """The ``congvu`` console script beside the interpreter."""
        return self.python.parent / "congvu"


def detect(layout: Layout) -> Layout:
    """Fill in what the host decides: Postfix's queue directory (its chroot)."""
    done = subprocess.run(["postconf", "-c", str(layout.postfix), "-h", "queue_directory"], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise SetupError(f"postconf -c {layout.postfix} failed ({done.stderr.strip() or done.returncode}); "
                         "is Postfix installed? apt-get install postfix")
    return _replace(layout, queue=Path(done.stdout.strip()))


def _replace(layout: Layout, **changes: object) -> Layout:
    from dataclasses import replace
    return replace(layout, **changes)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the shipped files


def shipped(name: str) -> str:
    """A file of conf/ (installed inside the package as congvu/conf)."""
    return resources.files("congvu").joinpath("conf", name).read_text(encoding="utf-8")


def postfix_settings(text: str) -> list[tuple[str, str]]:
    """``name = value`` settings of a main.cf snippet (continuation lines joined), comments dropped."""
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            name, value = out[-1]
            out[-1] = (name, f"{value} {line.strip()}")
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise SetupError(f"not a main.cf setting: {line!r}")
        out.append((name.strip(), value.strip()))
    return out


def master_entries(text: str) -> list[tuple[list[str], list[tuple[str, str]]]]:
    """master.cf entries of a snippet: the service line's fields and its ``-o name=value`` options."""
    entries: list[tuple[list[str], list[tuple[str, str]]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            opt = line.strip()
            if not opt.startswith("-o "):
                raise SetupError(f"master.cf: only -o options are supported, got {opt!r}")
            name, _, value = opt[3:].strip().partition("=")
            entries[-1][1].append((name, value))
        else:
            entries.append((line.split(), []))
    return entries


# --------------------------------------------------------------------------- steps


@dataclass
class Step:
    """One thing to do: what it is (shown), and how (``apply``; None: only shown, the operator runs it)."""

    title: str
    detail: list[str] = field(default_factory=list)
    apply: Callable[[], str] | None = None


def _owner(user: str, group: str) -> tuple[int, int]:
    try:
        uid = pwd.getpwnam(user).pw_uid if user else -1
        gid = grp.getgrnam(group).gr_gid if group else -1
    except KeyError as e:
        raise SetupError(f"no such user or group {e.args[0]!s}") from None
    return uid, gid


def directory(path: Path, mode: int, user: str = "root", group: str = "root") -> Step:
    def do() -> str:
        existed = path.is_dir()
        path.mkdir(parents=True, exist_ok=True)
        uid, gid = _owner(user, group)
        os.chown(path, uid, gid)
        os.chmod(path, mode)
        return "exists, owner and mode set" if existed else "created"
    return Step(f"directory {path} ({user}:{group} {mode:04o})", apply=do)


def write_file(path: Path, text: str, mode: int = 0o644, user: str = "root", group: str = "root",
               *, ours: bool = True) -> Step:
    """Write ``text`` to ``path``; a file there that congvu did not write and that differs is refused."""
    def do() -> str:
        if path.exists():
            old = path.read_text(encoding="utf-8", errors="replace")
            if old == text:
                _chown(path, mode, user, group)
                return "unchanged"
            if ours and MARK not in old:
                diff = "".join(difflib.unified_diff(old.splitlines(True), text.splitlines(True), str(path),
                                                    f"{path} (congvu)"))
                raise SetupError(f"{path} exists and was not written by congvu setup; not overwritten. "
                                 f"Merge by hand, or move it away and rerun:\n{diff}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.congvu-setup")
        tmp.write_text(text, encoding="utf-8")
        _chown(tmp, mode, user, group)
        os.replace(tmp, path)
        return "written"
    return Step(f"file {path} ({user}:{group} {mode:04o})", apply=do)


def _chown(path: Path, mode: int, user: str, group: str) -> None:
    uid, gid = _owner(user, group)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def run(argv: Sequence[str], title: str = "", *, ok: Callable[[subprocess.CompletedProcess[str]], bool] | None = None
        ) -> Step:
    """A command: shown as a shell line, run by ``--apply``."""
    line = shlex.join(argv)

    def do() -> str:
        done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
        if (ok(done) if ok is not None else done.returncode == 0):
            return (done.stdout.strip().splitlines() or ["done"])[-1]
        raise SetupError(f"`{line}` failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return Step(title or line, [line] if title else [], apply=do)


def user_step(name: str, home: Path, groups: Sequence[str], comment: str) -> Step:
    """A system user with its own group (and supplementary ``groups``), created if missing."""
    add = ["useradd", "--system", "--user-group", "--home-dir", str(home), "--no-create-home",
           "--shell", "/usr/sbin/nologin", "--comment", comment, name]
    mod = ["usermod", "--append", "--groups", ",".join(groups), name] if groups else []

    def do() -> str:
        try:
            pwd.getpwnam(name)
            created = False
        except KeyError:
            subprocess.run(add, check=True, capture_output=True)
            created = True
        if mod:
            subprocess.run(mod, check=True, capture_output=True)
        return "created" if created else "exists"
    return Step(f"system user {name}" + (f" (also in {', '.join(groups)})" if groups else ""),
                [shlex.join(add), *([shlex.join(mod)] if mod else [])], apply=do)
