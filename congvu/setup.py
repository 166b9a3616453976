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
import re
import shlex
import shutil
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
    def rspamd(self) -> Path:
        return self.p("/etc/rspamd")

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


def _must(argv: Sequence[str]) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SetupError(f"`{shlex.join(argv)}` failed ({done.returncode}): {done.stderr.strip()}")


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
            _must(add)
            created = True
        if mod:
            _must(mod)
        return "created" if created else "exists"
    return Step(f"system user {name}" + (f" (also in {', '.join(groups)})" if groups else ""),
                [shlex.join(add), *([shlex.join(mod)] if mod else [])], apply=do)


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Site:
    """The operator's answers: the site's domain and profile, and where accounts live."""

    domain: str
    profile: str
    backend: str = "sqlite"
    ldap_url: str = ""
    base_dn: str = ""
    bind_dn: str = ""
    bind_password_file: str = ""
    postfix_ldap_password_file: str = ""


def config_text(layout: Layout, site: Site) -> str:
    """/etc/congvu/congvu.toml: the installed layout written out, every path absolute."""
    lines = [
        f"{MARK} ({layout.config}).",
        "# Every other setting, with its requirement id and article: `congvu config example`",
        "# (or conf/congvu.toml).  `systemctl reload congvu` applies a change; `congvu config check` first.",
        f'profile = "{site.profile}"',
        f'domain = "{site.domain}"',
        f'state_dir = "{layout.state}"',
        "",
        "[directory]",
        f'backend = "{site.backend}"',
        f'recipient_map = "{layout.maps / "recipients.sqlite3"}"',
    ]
    if site.backend == "ldap":
        lines += [f'url = "{site.ldap_url}"', f'base_dn = "{site.base_dn}"', f'bind_dn = "{site.bind_dn}"',
                  f'bind_password_file = "{site.bind_password_file}"']
    lines += [
        "",
        "[policyd]",
        f'listen = ["unix:{layout.sockets / "policy"}:mode=660"]',
        'socket_group = "postfix"',
        "",
        "[milter]",
        f'listen = ["unix:{layout.sockets / "milter"}:mode=660"]',
        "",
        "[authhooks]",
        f'socket = "{layout.run / "authd.sock"}"',
        'socket_group = "dovecot"',
        f'sasl_listen = ["unix:{layout.sockets / "auth"}:mode=660"]',
        'sasl_group = "postfix"',
        f'uid = "{layout.mail_user}"',
        f'gid = "{layout.mail_user}"',
        f'home = "{layout.vmail}/{{domain}}/{{local_part}}"',
    ]
    return "\n".join(lines) + "\n"


def substitutions(layout: Layout, site: Site) -> list[tuple[str, str]]:
    """The shipped snippets' paths and names → this installation's (longest first)."""
    return [
        ("/usr/local/libexec/congvu/checkpassword", str(layout.launcher)),
        ("/run/congvu/authd.sock", str(layout.run / "authd.sock")),
        ("/var/spool/postfix/private/dovecot-lmtp", str(layout.queue / "private" / "dovecot-lmtp")),
        ("/var/lib/congvu/maps/recipients.sqlite3", str(layout.maps / "recipients.sqlite3")),
        ("/etc/postfix/congvu/", f"{layout.postfix / 'congvu'}/"),
        ("/opt/congvu/bin/congvu", str(layout.congvu)),
        ("/etc/congvu/congvu.toml", str(layout.config)),
        ("/var/spool/postfix/congvu", str(layout.sockets)),
    ]


def render(text: str, subs: Sequence[tuple[str, str]]) -> str:
    for old, new in subs:
        text = text.replace(old, new)
    return text


def ours(text: str, where: Path) -> str:
    """A shipped file as congvu setup writes it: marked, so a rerun may replace it."""
    return f"{MARK} from congvu's conf/ ({where.name}); rerunning setup replaces it.\n{text}"


def _postconf(layout: Layout, settings: Sequence[tuple[str, str]]) -> Step:
    argv = ["postconf", "-c", str(layout.postfix), "-e", *(f"{k}={v}" for k, v in settings)]
    return Step(f"Postfix main.cf ({layout.postfix / 'main.cf'}): {len(settings)} settings",
                [f"postconf -c {layout.postfix} -e '{k} = {v}'" for k, v in settings],
                apply=run(argv).apply)


def _master(layout: Layout) -> list[Step]:
    steps = []
    for fields, options in master_entries(shipped("postfix/master.cf")):
        name = layout.submission if fields[0] == "submission" else fields[0]
        kind = fields[1]
        line = " ".join([name, *fields[1:]])
        argv = ["postconf", "-c", str(layout.postfix), "-M", f"{name}/{kind}={line}"]
        argv_p = [["postconf", "-c", str(layout.postfix), "-P", f"{name}/{kind}/{k}={v}"] for k, v in options]
        detail = [shlex.join(argv), *(shlex.join(a) for a in argv_p)]

        def do(argv: list[str] = argv, argv_p: list[list[str]] = argv_p) -> str:
            for a in (argv, *argv_p):
                done = subprocess.run(a, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise SetupError(f"`{shlex.join(a)}` failed: {done.stderr.strip()}")
            return "set"
        steps.append(Step(f"Postfix master.cf: {name}/{kind} with {len(options)} -o options", detail, apply=do))
    return steps


def _auth_include(layout: Layout, snippet: Path) -> Step:
    """10-auth.conf: congvu's passdb in place of the system users' (``!include auth-system.conf.ext``)."""
    path = layout.dovecot / "conf.d" / "10-auth.conf"
    ours_line = f"!include {snippet}"

    def do() -> str:
        text = path.read_text(encoding="utf-8")
        if ours_line in text.splitlines():
            return "unchanged"
        new, n = re.subn(r"^!include auth-system\.conf\.ext\s*$",
                         "#!include auth-system.conf.ext  # off: official mail has no system-user logins (congvu)\n"
                         + ours_line, text, flags=re.M)
        if n == 0:
            new = text.rstrip("\n") + "\n" + ours_line + "\n"
        path.write_text(new, encoding="utf-8")
        return "edited"
    return Step(f"Dovecot {path}: congvu's passdb instead of auth-system.conf.ext",
                ["#!include auth-system.conf.ext", ours_line], apply=do)


def _launcher(layout: Layout) -> Step:
    def do() -> str:
        from congvu.authhooks import launcher
        try:
            launcher.write(layout.launcher, str(layout.python))
        except launcher.LauncherError as e:
            raise SetupError(str(e)) from None
        for user in ("dovecot", layout.user):
            runs_as(user, [str(layout.launcher)], expect_exit=111, expect_err="no reply program given",
                    what=f"the checkpassword launcher {layout.launcher}")
        return "written; runs as dovecot"
    return Step(f"checkpassword launcher {layout.launcher} (Dovecot forks it for every login)",
                [f"{layout.congvu} authd hook-script {layout.launcher}"], apply=do)


def runuser(user: str, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """``argv`` run as ``user`` by util-linux's runuser (in /usr/sbin, which a user's PATH may lack)."""
    binary = shutil.which("runuser", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") or "runuser"
    return subprocess.run([binary, "-u", user, "--", *argv], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL, timeout=60)


def runs_as(user: str, argv: Sequence[str], *, expect_exit: int, expect_err: str = "", what: str) -> None:
    """Run ``argv`` as ``user``; SetupError naming what it could not read when it fails."""
    done = runuser(user, argv)
    if done.returncode == expect_exit and expect_err in done.stderr:
        return
    first = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    raise SetupError(f"{what} does not run as user {user}: {first}.  {readable_hint(Path(argv[0]), user)}")


def readable_hint(path: Path, user: str) -> str:
    """Which directory on the way to ``path`` (or its interpreter) ``user`` cannot enter, if one."""
    try:
        interp = path.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0]
    except OSError:
        interp = ""
    targets = [path]
    if interp.startswith("#!"):
        targets.append(Path(interp[2:].split()[0]).resolve())
    for target in targets:
        for parent in [*reversed(target.parents), target]:
            try:
                st = parent.stat()
            except OSError:
                continue
            if parent != target and not st.st_mode & 0o001:
                return (f"{parent} is mode {st.st_mode & 0o777:04o}: {user} cannot reach {target}.  Create the venv "
                        f"with a system interpreter in a readable place, e.g. /usr/bin/python3 -m venv /opt/congvu")
    return "Check that the venv and its interpreter are readable by everyone (mode 755)."


def plan(layout: Layout, site: Site) -> list[Step]:
    """Every step of the install, in order (nothing is done until a step is applied)."""
    subs = substitutions(layout, site)
    ldap = site.backend == "ldap"
    maps = "ldap" if ldap else "sqlite"
    delivery = [(k, v) for k, v in postfix_settings(shipped("postfix/delivery.cf"))]
    delivery = [(k, site.domain if k == "virtual_mailbox_domains" else
                 render(v.replace("proxy:sqlite:", f"proxy:{maps}:").replace("/sqlite-", f"/{maps}-"), subs))
                for k, v in delivery]
    steps = [
        user_step(layout.user, layout.state, ["postfix", "dovecot"], "congvu official e-mail rules"),
        user_step(layout.mail_user, layout.vmail, [], "owner of every congvu mailbox"),
        directory(layout.etc, 0o750, "root", layout.user),
        directory(layout.state, 0o711, layout.user, layout.user),
        directory(layout.maps, 0o2750, layout.user, "postfix"),
        directory(layout.run, 0o755, layout.user, layout.user),
        directory(layout.sockets, 0o2750, layout.user, "postfix"),
        directory(layout.vmail, 0o750, layout.mail_user, layout.mail_user),
        write_file(layout.config, config_text(layout, site), 0o640, "root", layout.user),
        _launcher(layout),
        write_file(layout.unit, ours(render(shipped("systemd/congvu.service"), subs), layout.unit)),
        directory(layout.postfix / "congvu", 0o750, "root", "postfix"),
    ]
    for name in (f"{maps}-mailboxes.cf", f"{maps}-aliases.cf"):
        text = render(shipped(f"postfix/maps/{name}"), subs)
        if ldap:
            text = _ldap_map(text, site)
        steps.append(write_file(layout.postfix / "congvu" / name, ours(text, Path(name)), 0o640, "root", "postfix"))
    steps += [
        _postconf(layout, [(k, render(v, subs)) for k, v in postfix_settings(shipped("postfix/main.cf"))]
                  + delivery),
        *_master(layout),
        directory(layout.etc / "dovecot", 0o755, "root", "root"),
    ]
    snippets = {}
    for name in ("congvu-checkpassword.conf.ext", "congvu-delivery.conf.ext", "congvu-quota.conf"):
        target = layout.etc / "dovecot" / name.replace("congvu-quota.conf", "congvu-quota.conf.ext")
        snippets[name] = target
        steps.append(write_file(target, ours(render(shipped(f"dovecot/{name}"), subs), target)))
    steps.append(_rspamd_present(layout))
    for name in sorted(p.name for p in resources.files("congvu").joinpath("conf", "rspamd", "local.d").iterdir()):
        target = layout.rspamd / "local.d" / name
        steps.append(write_file(target, ours(shipped(f"rspamd/local.d/{name}"), target)))
    conf_d = layout.dovecot / "conf.d" / "99-congvu.conf"
    steps += [
        write_file(conf_d, f"{MARK}: mail location, LMTP for Postfix, quota (CT25-5.1).\n"
                           f"!include {snippets['congvu-delivery.conf.ext']}\n"
                           f"!include {snippets['congvu-quota.conf']}\n"),
        _auth_include(layout, snippets["congvu-checkpassword.conf.ext"]),
    ]
    return steps


def _rspamd_present(layout: Layout) -> Step:
    """rspamd is the spam and malware milter Postfix asks first (conf/postfix/main.cf): it must be installed."""
    def do() -> str:
        if not (layout.rspamd / "rspamd.conf").exists() and not (layout.rspamd / "local.d").is_dir():
            raise SetupError(f"{layout.rspamd} missing: apt-get install rspamd (Postfix asks it first for spam "
                             "and malware, CT25-9.2)")
        (layout.rspamd / "local.d").mkdir(exist_ok=True)
        return "present"
    return Step(f"rspamd ({layout.rspamd}): congvu's local.d, local checks only, no network lookups",
                apply=do)


def _ldap_map(text: str, site: Site) -> str:
    """An LDAP map with the site's server, base and the postfix account's password."""
    try:
        password = Path(site.postfix_ldap_password_file).read_text(encoding="utf-8").splitlines()[0]
    except (OSError, IndexError):
        raise SetupError(f"--postfix-ldap-password-file {site.postfix_ldap_password_file!r}: cannot read the "
                         "password of Postfix's lookup account (cn=postfix, conf/ldap/congvu-service.ldif)") from None
    suffix = site.base_dn.split(",", 1)[1] if "," in site.base_dn else site.base_dn
    text = text.replace("ldap://127.0.0.1:389", site.ldap_url.split()[0])
    text = text.replace("ou=people,dc=cantho,dc=gov,dc=vn", site.base_dn)
    text = text.replace("dc=cantho,dc=gov,dc=vn", suffix)
    return text.replace("REPLACE-WITH-THE-POSTFIX-ACCOUNT-PASSWORD", password)


#: What the operator runs after ``--apply`` (systemd and the mail servers are theirs to restart).
AFTERWARDS = (
    "systemctl daemon-reload && systemctl enable --now congvu",
    "systemctl reload postfix && systemctl restart dovecot && systemctl restart rspamd",
    "congvu doctor",
)
