"""Benchmark the Dovecot auth path of issue 5: the checkpassword hook and end-to-end IMAP logins.

One run measures, on this machine:

1. **Hook wall time**: the hook run exactly as Dovecot runs it (user/password on fd 3,
   fd 4 open, Dovecot's real ``checkpassword-reply`` exec'd at the end) against a running
   ``congvu authd``, against the bare interpreter start-up ``python3 -c pass`` (the venv's
   python3, which the hook's ``#!`` line names; ``python3 -S -c pass`` and the system
   ``/usr/bin/python3 -c pass`` are printed as well).  Target: hook ≤ 2× bare start-up.
   The hook is the launcher the shipped snippet recommends, generated for this run by
   its own command (``congvu authd hook-script FILE``); pip's console script
   ``.venv/bin/congvu-checkpassword`` is measured beside it for comparison.
2. **End-to-end IMAP logins per second** (connect, LOGIN, LOGOUT; ``--clients`` parallel
   imaplib clients for ``--duration`` seconds each) through four throwaway Dovecot 2.3
   instances started by ``tests/integration/servers/dovecot.py``:

   * ``passwd-file``: Dovecot's own ``passwd-file`` passdb/userdb, the baseline (the
     instances run side by side and are measured in round-robin slices, so the load of
     other processes on a shared machine falls on each path alike);
   * ``hook``: the shipped ``conf/dovecot/congvu-checkpassword.conf.ext`` with the
     launcher (a fork of it per login, decisions by authd).  Target ≥ 45% of passwd-file;
   * ``hook-console``: the same snippet with pip's console script instead (what the
     launcher replaces; ``--no-console`` leaves it out);
   * ``policy``: the baseline passdb plus the shipped ``congvu-policy.conf.ext`` (authd's
     auth policy server asked before and after each login, and told the result).
     Target ≥ 80% of passwd-file.

Every password hash, in congvu's directory and in the passwd-file alike, is the same
**test-cost** argon2id (``[directory] hash_cost = "test"``: 1 MiB, 1 pass, 1 lane; the
passwd-file uses Dovecot's ``{ARGON2ID}`` scheme on the identical string), so hashing does
not dominate and the comparison is fair.  Production cost (64 MiB, 3 passes) adds the
same ~0.15 s per login to every path.  Dovecot's auth cache is off (its default), as it
must be for checkpassword, which it never caches.

Needs root (Dovecot drops to its users) and Debian's dovecot-core + dovecot-imapd.

    .venv/bin/python bench/auth_bench.py                      # 10 s per server, 4 clients
    .venv/bin/python bench/auth_bench.py --duration 5 --clients 8 --hook-runs 100
    .venv/bin/python bench/auth_bench.py --hook /path/to/other-hook   # measure another hook program
"""

from __future__ import annotations

import argparse
import imaplib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from congvu.directory.accounts import hasher_for, open_store  # noqa: E402
from congvu.directory.model import Account  # noqa: E402
from congvu.endpoints import unix_accepts  # noqa: E402
from congvu.rules.config import load_config  # noqa: E402
from tests.integration.servers.dovecot import (  # noqa: E402
    CHECKPASSWORD_SNIPPET,
    CONSOLE_HOOK,
    DOVECOT_CONF,
    MAIL_GID,
    MAIL_UID,
    DovecotServer,
    auth_user_for_hook,
    generate_launcher,
    shipped,
)
from tests.integration.support import free_port, new_root  # noqa: E402

VENV_PY = REPO / ".venv" / "bin" / "python3"
REPLY = "/usr/lib/dovecot/checkpassword-reply"
PASSWORD = "Ben-Ninh-Kieu-9!"  # ASCII: imaplib sends LOGIN arguments as ASCII
DOMAIN = "cantho.gov.vn"
USERS = 40


class Site:
    """congvu authd (checkpassword socket + auth policy server) over a seeded SQLite directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mail = root / "mail"
        self.mail.mkdir()
        os.chown(self.mail, MAIL_UID, MAIL_GID)
        (root / "var").mkdir()
        self.policy_port = free_port()
        self.config = root / "congvu.toml"
        self.config.write_text(f"""\
state_dir = "{root}/var"
[directory]
hash_cost = "test"
[authhooks]
socket = "{root}/var/authd.sock"
socket_group = "dovecot"
sasl_listen = ["unix:{root}/var/sasl.sock:mode=660"]
sasl_group = ""
uid = "{MAIL_UID}"
gid = "{MAIL_GID}"
home = "{self.mail}/{{domain}}/{{local_part}}"
lockout_exempt = ["127.0.0.1/32"]
policy_listen = ["tcp:{self.policy_port}:interface=127.0.0.1"]
web_listen = []
""", encoding="utf-8")
        self.socket = root / "var" / "authd.sock"
        cfg = load_config(self.config)
        hasher = hasher_for(cfg)
        self.hash = hasher.hash(PASSWORD)
        store = open_store(cfg)
        now = datetime.now(UTC)
        self.users = [f"bench{i:03d}@{DOMAIN}" for i in range(USERS)]
        for u in self.users:
            store.add(Account(local_part=u.split("@")[0], domain=DOMAIN, full_name="Người Đo Tải",
                              mailbox_type="personal", password_hash=self.hash, must_change=False,
                              password_changed_at=now - timedelta(days=1), created_at=now - timedelta(days=1)))
        store.close()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.root / "authd.log").open("ab")
        self.proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "congvu"), "authd", "--config", str(self.config)],
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"congvu authd exited: {(self.root / 'authd.log').read_text()[-2000:]}")
            if unix_accepts(self.socket):
                return
            time.sleep(0.05)
        raise SystemExit("congvu authd did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)


# --------------------------------------------------------------------------- 1. the hook alone


def run_hook(hook: Path, site: Site, user: str) -> float:
    """One hook run as Dovecot does it (fd 3 in, fd 4 to the reply); its wall time in seconds."""
    r3, w3 = os.pipe()
    r4, w4 = os.pipe()
    os.write(w3, f"{user}\0{PASSWORD}\0\0".encode())
    os.close(w3)

    def onto_3_and_4() -> None:
        os.dup2(r3, 3)
        os.dup2(w4, 4)

    env = {"PATH": "/usr/bin:/bin", "SERVICE": "imap", "TCPREMOTEIP": "127.0.0.1", "PROTO": "TCP",
           "ORIG_UID": str(os.getuid()), "CONGVU_AUTH_SOCKET": str(site.socket)}
    t0 = time.perf_counter()
    proc = subprocess.run([str(hook), REPLY], pass_fds=(3, 4, r3, w4), preexec_fn=onto_3_and_4,
                          capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - t0
    os.close(r3)
    os.close(w4)
    reply = os.read(r4, 65536)
    os.close(r4)
    if proc.returncode != 0 or b"userdb_quota_rule" not in reply:
        raise SystemExit(f"hook failed ({proc.returncode}): {proc.stderr.decode()!r} {reply!r}")
    return elapsed


def run_bare(*argv: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([*argv, "-c", "pass"], check=True)
    return time.perf_counter() - t0


def hook_figures(hook: Path, site: Site, runs: int, console: bool) -> dict[str, float]:
    """Median wall times (ms) of the hook, pip's console script, and bare interpreter start-ups."""
    probes: dict[str, Callable[[int], float]] = {
        "hook": lambda i: run_hook(hook, site, site.users[i % len(site.users)]),
        "bare": lambda i: run_bare(str(VENV_PY)),
        "bare_S": lambda i: run_bare(str(VENV_PY), "-S"),
        "system_python": lambda i: run_bare("/usr/bin/python3"),
    }
    if console:
        probes["console_script"] = lambda i: run_hook(CONSOLE_HOOK, site, site.users[i % len(site.users)])
    for i in range(3):  # warm the page cache
        for probe in probes.values():
            probe(i)
    times: dict[str, list[float]] = {name: [] for name in probes}
    for i in range(runs):  # interleaved, so machine noise hits all alike
        for name, probe in probes.items():
            times[name].append(probe(i))
    out = {f"{name}_ms": statistics.median(t) * 1000 for name, t in times.items()}
    out["ratio"] = out["hook_ms"] / out["bare_ms"]
    out["ratio_vs_system_python"] = out["hook_ms"] / out["system_python_ms"]
    return out


# --------------------------------------------------------------------------- 2. IMAP logins per second


def warm_up(server: DovecotServer, users: list[str]) -> None:
    """Every user logs in once (creates the Maildirs, fills the page cache)."""
    for u in users:
        c = imaplib.IMAP4(server.host, server.imap_port, timeout=30)
        try:
            c.login(u, PASSWORD)
        except imaplib.IMAP4.error as e:
            raise SystemExit(f"warm-up login of {u} failed: {e}\n{server.log_tail()}") from None
        c.logout()


def imap_logins(server: DovecotServer, users: list[str], clients: int, duration: float) -> tuple[int, int, float]:
    """(logins, failures, seconds): ``clients`` threads doing connect + LOGIN + LOGOUT for ``duration``."""
    count = [0] * clients
    failures = [0] * clients
    start = threading.Event()
    stop_at = [0.0]

    def worker(n: int) -> None:
        start.wait()
        i = n
        while time.monotonic() < stop_at[0]:
            user = users[i % len(users)]
            i += clients
            try:
                c = imaplib.IMAP4(server.host, server.imap_port, timeout=30)
                c.login(user, PASSWORD)
                c.logout()
                count[n] += 1
            except (imaplib.IMAP4.error, OSError):
                failures[n] += 1

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(clients)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    stop_at[0] = t0 + duration
    start.set()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    return sum(count), sum(failures), elapsed


def passwd_file(site: Site) -> Path:
    users = site.root / "dovecot-users"
    users.write_text("".join(f"{u}:{{ARGON2ID}}{site.hash}:{MAIL_UID}:{MAIL_GID}::{site.mail}/{DOMAIN}/"
                             f"{u.split('@')[0]}::\n" for u in site.users), encoding="utf-8")
    users.chmod(0o644)
    return users


def conf_passwd_file(site: Site, *, override: bool = False) -> str:
    users = passwd_file(site)
    extra = "  override_fields = congvu_authed=yes\n" if override else ""
    return f"""\
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=ARGON2ID username_format=%u {users}
{extra}}}
userdb {{
  driver = passwd-file
  args = username_format=%u {users}
}}
"""


def conf_policy(site: Site) -> str:
    snippet = (DOVECOT_CONF / "congvu-policy.conf.ext").read_text(encoding="utf-8")
    snippet = snippet.replace("http://127.0.0.1:10042/", f"http://127.0.0.1:{site.policy_port}/")
    return conf_passwd_file(site, override=True) + snippet


def dovecot(conf: str, hook: Path) -> DovecotServer:
    root = new_root("congvu-authbench-dc-")
    server = DovecotServer(root)
    # As in the tests: Dovecot's auth process runs as "dovecot" unless the hook's interpreter lives
    # where that user cannot run it (a pyenv under /root), in which case it runs as root.
    server.auth_user = auth_user_for_hook(hook)
    server.build(conf)
    server.start()
    return server


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of IMAP logins per server")
    ap.add_argument("--clients", type=int, default=4, help="parallel IMAP clients")
    ap.add_argument("--rounds", type=int, default=5, help="round-robin slices the duration is split into")
    ap.add_argument("--hook-runs", type=int, default=60, help="hook and bare-python runs for the wall time")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    ap.add_argument("--hook", default="",
                    help="hook program to measure (default: a launcher written by `congvu authd hook-script`)")
    ap.add_argument("--no-console", dest="console", action="store_false",
                    help="do not measure pip's console script congvu-checkpassword beside the hook")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: Dovecot drops privileges to its own users")
    root = new_root("congvu-authbench-")
    hook = Path(args.hook) if args.hook else generate_launcher(root)
    site = Site(root)
    servers: list[DovecotServer] = []
    results: dict[str, object] = {"cpus": os.cpu_count(), "clients": args.clients, "duration_s": args.duration,
                                  "rounds": args.rounds, "load_avg_at_start": os.getloadavg()[0],
                                  "hook_program": str(hook), "hash": "argon2id test cost (m=1024 KiB, t=1, p=1)"}
    try:
        site.start()
        h = hook_figures(hook, site, args.hook_runs, args.console)
        results["hook"] = h
        print(f"hook wall time (median of {args.hook_runs}, {hook}): {h['hook_ms']:.1f} ms; "
              f"venv python3 -c pass {h['bare_ms']:.1f} ms; python3 -S -c pass {h['bare_S_ms']:.1f} ms; "
              f"/usr/bin/python3 -c pass {h['system_python_ms']:.1f} ms; ratio {h['ratio']:.2f}x (target <= 2x), "
              f"{h['ratio_vs_system_python']:.2f}x /usr/bin/python3", flush=True)
        if args.console:
            print(f"console script {CONSOLE_HOOK}: {h['console_script_ms']:.1f} ms", flush=True)
        paths = [("passwd-file", conf_passwd_file(site)),
                 ("hook", shipped(CHECKPASSWORD_SNIPPET, hook=hook, socket_path=site.socket))]
        if args.console:
            paths.append(("hook-console", shipped(CHECKPASSWORD_SNIPPET, hook=CONSOLE_HOOK, socket_path=site.socket)))
        paths.append(("policy", conf_policy(site)))
        named: dict[str, DovecotServer] = {}
        for name, conf in paths:
            named[name] = dovecot(conf, hook)
            servers.append(named[name])
            warm_up(named[name], site.users)
        # Round-robin slices, so the load other processes put on the machine hits every path alike.
        totals: dict[str, list[float]] = {name: [0, 0, 0.0] for name in named}
        for _ in range(args.rounds):
            for name, server in named.items():
                n, failed, secs = imap_logins(server, site.users, args.clients, args.duration / args.rounds)
                totals[name][0] += n
                totals[name][1] += failed
                totals[name][2] += secs
        rates: dict[str, float] = {}
        for name, (done, lost, spent) in totals.items():
            rates[name] = done / spent
            if lost:
                print(f"  {name}: {lost:.0f} logins failed; see {named[name].log}", flush=True)
            print(f"IMAP logins/s via {name:12}: {rates[name]:7.1f}  ({done:.0f} logins in {spent:.1f} s)",
                  flush=True)
        base = rates["passwd-file"]
        results["imap_logins_per_s"] = rates
        for name in rates:
            if name != "passwd-file":
                results[f"{name.replace('-', '_')}_vs_passwd_file"] = rates[name] / base
        print(f"hook path    {rates['hook'] / base:6.1%} of passwd-file (target >= 45%)")
        if "hook-console" in rates:
            print(f"console hook {rates['hook-console'] / base:6.1%} of passwd-file (pip's script, for comparison)")
        print(f"policy path  {rates['policy'] / base:6.1%} of passwd-file (target >= 80%)")
        if args.json:
            print(json.dumps(results, indent=2))
    finally:
        for s in servers:
            s.stop()
            shutil.rmtree(s.root, ignore_errors=True)
        site.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
