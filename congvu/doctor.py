"""``congvu doctor``: check a live installation the way the administrator would by hand.

Each check is one function returning :class:`Finding` values: ``ok`` or not, one line of
what was seen, and the fix to apply when it failed.  Sockets are tried *as the user that
will call them* (postfix for the policy socket, dovecot for the auth socket), in a child
process that drops to that user, with a real request of their protocol; files are read
as those users too.  Nothing is changed.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import socket
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from congvu.config import Config
from congvu.endpoints import unix_path
from congvu.setup import Layout, runuser


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    seen: str
    fix: str = ""

    def line(self) -> str:
        head = f"{'ok  ' if self.ok else 'FAIL'}  {self.check}: {self.seen}"
        return head if self.ok or not self.fix else f"{head}\n      fix: {self.fix}"


Check = Callable[["Doctor"], Iterator[Finding]]


# --------------------------------------------------------------------------- running as another user


def as_user(user: str, fn: Callable[[], int], timeout: float = 10.0) -> int:
    """``fn()``'s exit status, run in a child process that became ``user`` (its groups too)."""
    pw = pwd.getpwnam(user)
    groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the user, run, report through the exit status
        code = 125
        try:
            os.close(r)
            os.setgroups([pw.pw_gid, *groups])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            code = fn()
        except BaseException:
            code = 126
        finally:
            os._exit(code)
    os.close(w)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _talk(path: Path, request: bytes, expect: Callable[[bytes], bool], timeout: float = 5.0) -> Callable[[], int]:
    """Connect to the unix socket ``path``, send ``request``; 0 if the answer passes ``expect``.

    Exit codes: 0 answered, 2 cannot connect (permission), 3 connected but no or a wrong answer.
    """
    def go() -> int:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except OSError:
            return 2
        try:
            s.sendall(request)
            data = b""
            while not expect(data):
                chunk = s.recv(4096)
                if not chunk:
                    return 3
                data += chunk
            return 0
        except OSError:
            return 3
        finally:
            s.close()
    return go


# --------------------------------------------------------------------------- the doctor


class Doctor:
    """The installation under examination: its config and where things are."""

    def __init__(self, cfg: Config, layout: Layout) -> None:
        self.cfg, self.layout = cfg, layout

    def run(self) -> list[Finding]:
        findings: list[Finding] = []
        for check in CHECKS:
            try:
                findings.extend(check(self))
            except Exception as e:  # a check that breaks is a finding, not a traceback
                findings.append(Finding(check.__name__.removeprefix("check_").replace("_", " "), False,
                                        f"could not be checked: {type(e).__name__}: {e}"))
        return findings

    # ------------------------------------------------------------------ shared helpers

    def postconf(self, name: str, master: bool = False) -> str:
        argv = ["postconf", "-c", str(self.layout.postfix)]
        argv += ["-P", *([name] if name else [])] if master else ["-xh", name]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    def doveconf(self) -> str:
        conf = self.layout.dovecot / "dovecot.conf"
        done = subprocess.run(["doveconf", "-c", str(conf), "-n"], capture_output=True, text=True, check=False)
        return done.stdout if done.returncode == 0 else ""


def check_config(d: Doctor) -> Iterator[Finding]:
    """The site the operator thinks it is, and paths that do not depend on the working directory."""
    cfg = d.cfg
    yield Finding("profile and domain", True, f"profile {cfg.profile.name} ({cfg.profile.title}), domain "
                                              f"{cfg.domain}, {cfg.directory.backend} directory, "
                                              f"{cfg.state.backend} state, config {cfg.path}")
    yield Finding("state_dir", True, str(cfg.state_dir))


def check_service_user(d: Doctor) -> Iterator[Finding]:
    """The service user exists and may give its sockets to postfix and dovecot."""
    user = d.layout.user
    try:
        pwd.getpwnam(user)
    except KeyError:
        yield Finding("service user", False, f"no user {user}", "congvu setup --apply (creates it)")
        return
    missing = [g for g in ("postfix", "dovecot") if user not in grp.getgrnam(g).gr_mem]
    if missing:
        yield Finding("service user", False, f"{user} is not in group(s) {', '.join(missing)}: it cannot give "
                                             "its sockets to them", f"usermod -aG {','.join(missing)} {user}")
    else:
        yield Finding("service user", True, f"{user}, in groups postfix and dovecot")


def check_unit(d: Doctor) -> Iterator[Finding]:
    """The systemd unit exists and starts an existing congvu with this config."""
    unit = d.layout.unit
    if not unit.exists():
        yield Finding("systemd unit", False, f"{unit} missing", "congvu setup --apply, then systemctl daemon-reload "
                                                                 "&& systemctl enable --now congvu")
        return
    text = unit.read_text(encoding="utf-8", errors="replace")
    exec_line = next((x for x in text.splitlines() if x.startswith("ExecStart=")), "")
    binary = Path(exec_line.removeprefix("ExecStart=").split()[0]) if exec_line else Path("")
    if not exec_line or not os.access(binary, os.X_OK):
        yield Finding("systemd unit", False, f"{unit}: ExecStart {binary} is not an executable congvu",
                      "congvu setup --apply with the congvu of the venv you installed")
    elif f"User={d.layout.user}" not in text.splitlines():
        yield Finding("systemd unit", False, f"{unit} does not run as User={d.layout.user}", "congvu setup --apply")
    else:
        yield Finding("systemd unit", True, f"{unit}: {exec_line.removeprefix('ExecStart=')}")
        argv = exec_line.split()
        served = Path(argv[argv.index("--config") + 1]) if "--config" in argv[:-1] else Path("/etc/congvu/congvu.toml")
        if d.cfg.path and served.resolve() != Path(d.cfg.path).resolve():
            yield Finding("config in use", False, f"congvu serve reads {served}, this command read {d.cfg.path}: "
                                                  "two configs, two sets of databases and rules",
                          f"keep one: congvu … --config {served} (or edit the unit's ExecStart)")
        else:
            yield Finding("config in use", True, f"{served}, the one congvu serve reads")


def check_launcher(d: Doctor) -> Iterator[Finding]:
    """Dovecot's checkpassword launcher exists, is congvu's, and runs as dovecot."""
    path = d.layout.launcher
    if not path.exists():
        yield Finding("checkpassword launcher", False, f"{path} missing",
                      f"congvu authd hook-script {path}")
        return
    from congvu.authhooks.launcher import is_launcher
    if not is_launcher(path):
        yield Finding("checkpassword launcher", False, f"{path} is not a launcher congvu wrote",
                      f"move it away, then congvu authd hook-script {path}")
        return
    done = runuser("dovecot", [str(path)])
    if done.returncode == 111 and "no reply program given" in done.stderr:
        yield Finding("checkpassword launcher", True, f"{path} runs as dovecot")
    else:
        from congvu.setup import readable_hint
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        yield Finding("checkpassword launcher", False, f"{path} does not run as dovecot ({last})",
                      readable_hint(path, "dovecot"))


def _socket_finding(name: str, path: Path, group: str, user: str, talk: Callable[[], int]) -> Finding:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return Finding(name, False, f"{path} does not exist: congvu is not running, or listens elsewhere",
                       "systemctl start congvu; journalctl -u congvu")
    if not stat.S_ISSOCK(st.st_mode):
        return Finding(name, False, f"{path} is not a socket", f"remove {path}; systemctl restart congvu")
    mode, owner_group = stat.S_IMODE(st.st_mode), grp.getgrgid(st.st_gid).gr_name
    if group and owner_group != group:
        return Finding(name, False, f"{path} belongs to group {owner_group}, not {group}: {user} gets "
                                    "Permission denied", f"socket_group = \"{group}\"; congvu must be in "
                                                         f"group {group}; systemctl restart congvu")
    code = as_user(user, talk)
    if code == 2:
        return Finding(name, False, f"{user} cannot connect to {path} (mode {mode:04o}, group {owner_group})",
                       f"mode=660 on the endpoint and socket_group = \"{group or user}\"")
    if code != 0:
        return Finding(name, False, f"{path} accepts {user} but gives no proper answer (exit {code})",
                       "journalctl -u congvu")
    return Finding(name, True, f"{path} (mode {mode:04o}, group {owner_group}) answers {user}")


def check_auth_socket(d: Doctor) -> Iterator[Finding]:
    """The checkpassword socket answers the dovecot user a userdb lookup."""
    from congvu.authhooks import wire
    path = Path(d.cfg.authhooks.socket)
    frame = wire.AuthRequest(wire.OP_LOOKUP, f"congvu-doctor@{d.cfg.domain}", service="doctor").encode()
    yield _socket_finding("auth socket", path, d.cfg.authhooks.socket_group, "dovecot",
                          _talk(path, frame, lambda data: len(data) >= 4 and len(data) >= 4 + int.from_bytes(
                              data[:4], "big")))


def check_policy_socket(d: Doctor) -> Iterator[Finding]:
    """Every unix policy socket answers postfix a request; no lock file sits beside it."""
    request = (b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=congvu-doctor@example.org\n"
               b"recipient=congvu-doctor@example.org\nclient_address=127.0.0.1\ninstance=doctor\n\n")
    for endpoint in d.cfg.policyd.listen:
        path_text = unix_path(endpoint)
        if path_text is None:
            yield Finding("policy socket", True, f"{endpoint} (TCP: postfix connects as any user)")
            continue
        path = Path(path_text)
        yield _socket_finding("policy socket", path, d.cfg.policyd.socket_group, "postfix",
                              _talk(path, request, lambda data: data.endswith(b"\n\n")))
        lock = path.with_name(path.name + ".lock")
        if lock.is_symlink() or lock.exists():
            yield Finding("policy socket lock", False, f"{lock} exists: `postfix check` warns it is not owned "
                                                       "by postfix", f"rm {lock} (congvu uses no lock file)")


def check_sasl(d: Doctor) -> Iterator[Finding]:
    """Every master.cf service with SMTP AUTH asks congvu's SASL socket, which answers postfix."""
    sockets = [Path(p) for p in map(unix_path, d.cfg.authhooks.sasl_listen) if p]
    if not sockets:
        return
    queue = Path(d.postconf("queue_directory") or "/var/spool/postfix")
    expected = {str(p.relative_to(queue)) if p.is_relative_to(queue) else str(p) for p in sockets}
    params: dict[str, dict[str, str]] = {}
    for line in d.postconf("", master=True).splitlines():  # "service/type/param = value"
        key, _, value = line.partition(" = ")
        service, _, param = key.rpartition("/")
        params.setdefault(service, {})[param] = value.strip()
    for service, opts in sorted(params.items()):
        if opts.get("smtpd_sasl_auth_enable") != "yes":
            continue
        sasl_path = opts.get("smtpd_sasl_path", d.postconf("smtpd_sasl_path"))
        kind = opts.get("smtpd_sasl_type", d.postconf("smtpd_sasl_type"))
        if kind != "dovecot" or sasl_path not in expected:
            yield Finding(f"SMTP AUTH {service}", False,
                          f"smtpd_sasl_type={kind or '(unset)'}, smtpd_sasl_path={sasl_path or '(unset)'}: not "
                          "congvu's "
                          "socket (Dovecot's auth socket makes every failure, outages too, a permanent 535)",
                          f"postconf -P '{service}/smtpd_sasl_type=dovecot' '{service}/smtpd_sasl_path="
                          f"{sorted(expected)[0]}'")
        else:
            yield Finding(f"SMTP AUTH {service}", True, f"smtpd_sasl_path={sasl_path}")
    for path in sockets:
        yield _socket_finding("SASL socket", path, d.cfg.authhooks.sasl_group, "postfix",
                              _talk(path, b"VERSION\t1\t2\nCPID\t1\n", lambda data: b"\nDONE\n" in data))


def check_postfix(d: Doctor) -> Iterator[Finding]:
    """main.cf asks congvu at RCPT, DATA and END-OF-MESSAGE, delivers over LMTP, validates from the directory."""
    if not d.postconf("queue_directory"):
        yield Finding("postfix", False, f"postconf -c {d.layout.postfix} fails", "apt-get install postfix")
        return
    service = d.postconf("congvu_policy_service")
    queue = Path(d.postconf("queue_directory"))
    sockets = [Path(p) for p in map(unix_path, d.cfg.policyd.listen) if p]
    expected = {f"unix:{p.relative_to(queue)}" for p in sockets if p.is_relative_to(queue)}
    if not service:
        yield Finding("postfix policy", False, "main.cf has no congvu_policy_service",
                      "congvu setup --apply (postconf -e the lines of conf/postfix/main.cf)")
    elif sockets and service not in expected:
        yield Finding("postfix policy", False, f"congvu_policy_service = {service}, but congvu listens on "
                                               f"{', '.join(map(str, sockets))}",
                      f"postconf -e 'congvu_policy_service = {sorted(expected)[0] if expected else service}'")
    else:
        yield Finding("postfix policy", True, f"congvu_policy_service = {service}")
    for stage in ("smtpd_recipient_restrictions", "smtpd_data_restrictions", "smtpd_end_of_data_restrictions"):
        value = d.postconf(stage)
        if "check_policy_service" not in value or ("$congvu_policy_service" not in value and service not in value):
            yield Finding(f"postfix {stage}", False, "does not ask congvu",
                          "congvu setup --apply (conf/postfix/main.cf)")
    transport = d.postconf("virtual_transport")
    domains = d.postconf("virtual_mailbox_domains")
    maps = d.postconf("virtual_mailbox_maps")
    problems = []
    for kind in {m.split(":")[1] for m in (maps, d.postconf("virtual_alias_maps"))
                 if m.startswith("proxy:") and m.count(":") >= 2}:
        done = subprocess.run(["postconf", "-c", str(d.layout.postfix), "-m"], capture_output=True, text=True,
                              check=False)
        if kind not in done.stdout.split():
            problems.append(f"Postfix cannot read {kind}: maps (apt-get install postfix-{kind})")
    if not transport.startswith("lmtp:"):
        problems.append(f"virtual_transport = {transport or '(unset)'}")
    if d.cfg.domain not in domains.replace(",", " ").split():
        problems.append(f"virtual_mailbox_domains = {domains or '(unset)'} lacks {d.cfg.domain}")
    if "congvu/" not in maps:
        problems.append(f"virtual_mailbox_maps = {maps or '(unset)'} is not congvu's")
    if problems:
        yield Finding("postfix delivery", False, "; ".join(problems), "congvu setup --apply (conf/postfix/delivery.cf)")
    else:
        yield Finding("postfix delivery", True, f"{domains} over {transport}, recipients from {maps}")


def check_dovecot(d: Doctor) -> Iterator[Finding]:
    """Dovecot authenticates through congvu's launcher and socket, delivers over LMTP, no system users."""
    conf = d.doveconf()
    if not conf:
        yield Finding("dovecot", False, f"doveconf -c {d.layout.dovecot / 'dovecot.conf'} fails",
                      "apt-get install dovecot-core; doveconf -n shows why")
        return
    args = f"{d.layout.launcher} --socket {d.cfg.authhooks.socket}"
    if args not in conf:
        yield Finding("dovecot passdb", False, f"no checkpassword passdb running `{args}`",
                      "congvu setup --apply (conf/dovecot/congvu-checkpassword.conf.ext)")
    elif "driver = pam" in conf:
        yield Finding("dovecot passdb", False, "a PAM passdb is still active: system users can log in",
                      "comment out !include auth-system.conf.ext in conf.d/10-auth.conf")
    else:
        yield Finding("dovecot passdb", True, args)
    passdbs = re.findall(r"^passdb \{\n(.*?)^\}", conf, flags=re.M | re.S)
    ours = next((i for i, body in enumerate(passdbs) if args in body), None)
    if ours is not None:
        body, after = passdbs[ours], passdbs[ours + 1:]
        terminator = bool(after) and "driver = static" in after[0] and "result_success = return-fail" in after[0]
        if "result_internalfail = return-fail" not in body or "result_failure = return-fail" not in body:
            yield Finding("dovecot refusal codes", False, "congvu's passdb lacks result_failure/result_internalfail "
                                                          "= return-fail: an outage is not NO [UNAVAILABLE]",
                          "congvu setup --apply (conf/dovecot/congvu-checkpassword.conf.ext)")
        elif not terminator:
            yield Finding("dovecot refusal codes", False, "no terminator passdb (driver = static, result_success = "
                                                          "return-fail) after congvu's: a must-change login is not "
                                                          "NO [EXPIRED], a refusal loses its reason",
                          "congvu setup --apply (conf/dovecot/congvu-checkpassword.conf.ext)")
        else:
            yield Finding("dovecot refusal codes", True, "NO [EXPIRED] / [ALERT] reasons / [UNAVAILABLE]")
    lmtp = Path(d.postconf("queue_directory") or "/var/spool/postfix") / "private" / "dovecot-lmtp"
    if f"unix_listener {lmtp}" not in conf:
        yield Finding("dovecot lmtp", False, f"no LMTP listener at {lmtp} for Postfix",
                      "congvu setup --apply (conf/dovecot/congvu-delivery.conf.ext)")
    else:
        yield Finding("dovecot lmtp", True, str(lmtp))


def check_stores(d: Doctor) -> Iterator[Finding]:
    """The directory and the state store answer, and their files are not readable by other users."""
    from congvu.directory.accounts import open_store
    from congvu.directory.counters import open_counters
    try:
        store = open_store(d.cfg)
        try:
            store.get(f"congvu-doctor@{d.cfg.domain}")
        finally:
            store.close()
        yield Finding("directory", True, f"{d.cfg.directory.backend} answers")
    except Exception as e:
        yield Finding("directory", False, f"{d.cfg.directory.backend}: {e}", "see [directory] in the config")
    try:
        counters = open_counters(d.cfg)
        try:
            counters.lock_info("congvu-doctor", 0.0)
        finally:
            counters.close()
        yield Finding("state store", True, f"{d.cfg.state.backend} answers")
    except Exception as e:
        yield Finding("state store", False, f"{d.cfg.state.backend}: {e}", "see [state] in the config")
    rmap = d.cfg.state_file(d.cfg.directory.recipient_map, "maps/recipients.sqlite3")
    if d.cfg.directory.backend == "sqlite":
        readable = as_user("postfix", lambda: 0 if os.access(rmap, os.R_OK) else 2) == 0
        if readable:
            yield Finding("recipient map", True, f"{rmap} readable by postfix")
        else:
            group = d.cfg.directory.recipient_map_group or "postfix"
            yield Finding("recipient map", False, f"postfix cannot read {rmap}: every recipient is refused with "
                                                  "a temporary lookup error", f"chgrp {group} {rmap} {rmap.parent}; "
                                                  f"chmod 640 {rmap}; chmod 750 {rmap.parent}")
    try:
        owner = pwd.getpwnam(d.layout.user).pw_uid
    except KeyError:
        owner = None
    if owner is not None and d.cfg.state_dir.exists():
        strangers = sorted(str(p) for p in d.cfg.state_dir.rglob("*") if p.lstat().st_uid != owner)
        if strangers:
            yield Finding("state owner", False, f"not owned by {d.layout.user}: {', '.join(strangers[:3])}"
                                                f"{' …' if len(strangers) > 3 else ''} — congvu cannot record "
                                                "logins, failures or lockouts there",
                          f"chown -R {d.layout.user}: {d.cfg.state_dir}")
        else:
            yield Finding("state owner", True, f"{d.cfg.state_dir} owned by {d.layout.user}")
    for name in ("directory.sqlite3", "state.sqlite3", "audit.sqlite3", "authd.key"):
        path = d.cfg.state_dir / name
        if path.exists() and stat.S_IMODE(path.stat().st_mode) & 0o007:
            yield Finding("file modes", False, f"{path} is mode {stat.S_IMODE(path.stat().st_mode):04o}: any "
                                               "local user reads it", f"chmod 600 {path}")


CHECKS: tuple[Check, ...] = (check_config, check_service_user, check_unit, check_launcher, check_auth_socket,
                             check_policy_socket, check_sasl, check_postfix, check_dovecot, check_stores)


def summary(findings: list[Finding]) -> str:
    failed = [f for f in findings if not f.ok]
    return (f"congvu doctor: {len(findings) - len(failed)} ok, {len(failed)} failed"
            + ("" if not failed else f" ({', '.join(sorted({f.check for f in failed}))})"))
