"""Benchmark: messages per second through Postfix with congvu policyd, with no policy service, and with postfwd2.

Issue 10's measure of what congvu costs a real mail host.  Three throwaway Postfix 3.7
instances built like the test fixture (tests/integration/servers/postfix.py: the shipped
conf/postfix/main.cf verbatim, substitutions named), side by side, milters off (their cost
is bench/milter_bench.py's), delivering to Postfix's ``discard`` transport:

* ``nopolicy``: the shipped main.cf with every ``check_policy_service`` removed from the
  RCPT, DATA and END-OF-MESSAGE restriction lists: Postfix's own rate, the reference;
* ``congvu``: the shipped main.cf as it is: ``congvu policyd`` asked at RCPT, DATA and
  END-OF-MESSAGE over its unix socket, SQLite directory and counters (the embedded
  defaults), profile cantho-2025, the sender an account in the directory;
* ``postfwd2``: the same lines with ``congvu_policy_service`` pointing at Debian's postfwd2
  running ``bench/postfwd/postfwd.cf`` (the size and rate rules congvu applies).

The load is Postfix's own ``smtp-source`` (C): ``--sessions`` parallel SMTP sessions from
127.0.0.1 (mynetworks), one message each, a 1.7 KB UTF-8 text mail.  Each ratio is taken
within one round (the machine is shared; instances measured seconds apart see the same
load).  Target (issue 10): congvu keeps >= 90 % of Postfix's rate without a policy service.

    .venv/bin/python bench/postfix_policy_bench.py                 # 1000 msgs x 7 rounds, 8 sessions
    .venv/bin/python bench/postfix_policy_bench.py --count 500 --rounds 1
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.milter_bench import SMTP_SOURCE, _pcts, cpu_seconds, message, postconf  # noqa: E402
from bench.policyd_bench import Servers  # noqa: E402
from tests.integration.policyd.conftest import PolicydProcess, site_config, write_config  # noqa: E402
from tests.integration.servers.postfix import PostfixServer  # noqa: E402
from tests.integration.support import new_root  # noqa: E402

DOMAIN = "cantho.gov.vn"
SENDER = f"vanthu.sonv@{DOMAIN}"
RCPT = f"nhan.sonv@{DOMAIN}"
POLICY_LINE = re.compile(r",?\s*check_policy_service \{ \$congvu_policy_service, \{[^}]*\} \}")


def build(name: str, *settings: str, no_policy: bool = False) -> PostfixServer:
    """An instance as the fixture builds it, then (bench only) no milters, discard delivery, ``settings``."""
    pf = PostfixServer(new_root(f"congvu-bench-{name}-"), rspamd_milter="inet:127.0.0.1:1")
    pf.build()
    postconf(pf, "virtual_transport = discard", "smtpd_milters =", "non_smtpd_milters =",
             "default_process_limit = 100", *settings)
    if no_policy:  # the shipped restriction lists minus congvu's entry
        for stage in ("smtpd_recipient_restrictions", "smtpd_data_restrictions", "smtpd_end_of_data_restrictions"):
            raw = subprocess.run([pf.postconf, "-c", str(pf.config_dir), "-h", stage], capture_output=True,
                                 text=True, check=True).stdout  # unexpanded: $congvu_policy_service
            stripped = POLICY_LINE.sub("", raw).strip().strip(",").strip()
            assert "check_policy_service" not in stripped, (stage, stripped)
            postconf(pf, f"{stage} = {stripped}")
    pf.start()
    return pf


def run_load(pf: PostfixServer, message_file: Path, count: int, sessions: int) -> tuple[float, str]:
    """``smtp-source`` sending ``count`` messages over ``sessions`` sessions; (seconds, its error output)."""
    t0 = time.perf_counter()
    done = subprocess.run([SMTP_SOURCE, "-s", str(sessions), "-m", str(count), "-F", str(message_file),
                           "-f", SENDER, "-t", RCPT, "-M", f"bench.{DOMAIN}", f"{pf.host}:{pf.smtp_port}"],
                          capture_output=True, text=True, timeout=900, check=False)
    return time.perf_counter() - t0, (done.stdout + done.stderr).strip()


def delivered(pf: PostfixServer) -> int:
    """Messages the instance handed to ``discard`` (from its log): smtp-source finishing is not proof."""
    return pf.log.read_text(errors="replace").count("status=sent (") if pf.log.exists() else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--count", type=int, default=1000, help="messages per instance per round (default 1000)")
    ap.add_argument("--sessions", type=int, default=8, help="parallel SMTP sessions (default 8)")
    ap.add_argument("--rounds", type=int, default=7, help="rounds, instances alternating (default 7)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (logs, configs)")
    ap.add_argument("--log-decisions", choices=("all", "blocks"), default="all",
                    help="[policyd] log_decisions (default all: one log line per request, as shipped)")
    args = ap.parse_args(argv)
    if not Path(SMTP_SOURCE).exists():
        print(f"{SMTP_SOURCE} not found: install the Debian package postfix", file=sys.stderr)
        return 1

    root = Path(tempfile.mkdtemp(prefix="congvu-postfix-bench-"))
    root.chmod(0o755)
    instances: dict[str, PostfixServer] = {}
    servers = Servers(root / "postfwd", n_users=0, max_connections=args.sessions + 4)
    (root / "postfwd").mkdir()
    policyd: PolicydProcess | None = None
    try:
        port = servers.start_postfwd()
        instances["nopolicy"] = build("nopolicy", no_policy=True)
        instances["congvu"] = build("congvu")
        instances["postfwd2"] = build("postfwd2", f"congvu_policy_service = inet:127.0.0.1:{port}")

        listen = [f"unix:{instances['congvu'].policy_socket}:mode=666"]
        state = root / "site"
        state.mkdir()
        site = site_config(state, profile="cantho-2025", listen=listen, redis=None)
        site["directory"].pop("cache_ttl")  # the production default
        site["policyd"]["log_decisions"] = args.log_decisions
        cfg_path = write_config(root / "congvu.toml", site)
        _add_sender(cfg_path)
        policyd = PolicydProcess(root / "policyd.log")
        policyd.start(cfg_path, listen)

        msg = root / "small.eml"
        msg.write_bytes(message(0).replace(b"thanhhoa", DOMAIN.split(".")[0].encode()))
        print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} UTC; message {msg.stat().st_size} bytes; "
              f"{args.sessions} sessions; {args.count} messages per instance per round", flush=True)
        ratios: dict[str, list[float]] = {"congvu": [], "postfwd2": []}
        failed = 0
        for rnd in range(1, args.rounds + 1):
            rates: dict[str, float] = {}
            for name, pf in instances.items():
                before = delivered(pf)
                cpu0 = cpu_seconds(policyd.pid)
                secs, errors = run_load(pf, msg, args.count, args.sessions)
                rates[name] = args.count / secs
                cpu = (f"  congvu policyd CPU per message {1e6 * (cpu_seconds(policyd.pid) - cpu0) / args.count:.0f} us"
                       if name == "congvu" else "")
                bad = "" if not errors else f"  smtp-source said: {errors[:200]!r}"
                failed += bool(errors)
                print(f"round {rnd}  {name:8s} {rates[name]:8.1f} msg/s  ({args.count} in {secs:.2f} s; "
                      f"{_wait_delivered(pf, before + args.count) - before} delivered){cpu}{bad}", flush=True)
            for name in ratios:
                ratios[name].append(rates[name] / rates["nopolicy"])
        if failed:
            print(f"\nINVALID RUN: smtp-source failed {failed} time(s) (see above); no ratio is worth reading")
            return 1
        print()
        print(f"congvu / no policy service = {_pcts(ratios['congvu'])} (target >= 90 %)")
        print(f"postfwd2 / no policy service = {_pcts(ratios['postfwd2'])}")
        policyd.stop()  # flushes its log
        log = (root / "policyd.log").read_text(errors="replace")
        states = re.findall(r"policyd: queue_id=\S* .* state=(\S+) ", log)
        print("congvu policyd decisions logged: " + ", ".join(f"{s} {states.count(s)}" for s in sorted(set(states)))
              + f" (expected {args.count * args.rounds} each with log_decisions = \"all\")")
    finally:
        if policyd is not None:
            policyd.stop()
        servers.stop()
        for pf in instances.values():
            pf.stop()
        if args.keep:
            print(f"kept {root} and the instances' dirs")
        else:
            for d in [root, *(pf.root for pf in instances.values())]:
                shutil.rmtree(d, ignore_errors=True)
    return 0


def _add_sender(cfg_path: Path) -> None:
    """The sender is a mailbox of the directory, so the account-state check looks it up (cached)."""
    from congvu.config import load_config
    from congvu.directory.accounts import open_store
    from congvu.directory.model import Account

    now = datetime.now(UTC)
    store = open_store(load_config(cfg_path))
    try:
        for address in (SENDER, RCPT):
            local = address.split("@")[0]
            store.add(Account(local_part=local, domain=DOMAIN, full_name="Văn thư Sở Nội vụ", mailbox_type="agency",
                              agency="sonv", must_change=False, created_at=now, password_changed_at=now))
    finally:
        store.close()


def _wait_delivered(pf: PostfixServer, expected: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while (n := delivered(pf)) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return n


if __name__ == "__main__":
    sys.exit(main())
