"""Benchmark: messages per second through Postfix with congvu's content milter vs without, in one run (issue 14).

Two throwaway Postfix instances built like the test fixture (tests/integration/servers/
postfix.py: the shipped conf/postfix/main.cf verbatim, substitutions named), started side
by side on the same machine:

* ``postfix``: the shipped snippet with ``smtpd_milters`` emptied (the reference: Postfix
  and policyd, no content milter);
* ``bare``: the same milter line, served by a minimal Twisted milter in this file that
  negotiates as congvu's does and accepts every message unread: the framework's ceiling;
* ``milter``: the shipped snippet with ``smtpd_milters = $congvu_milter_service`` only (rspamd
  is not in the chain: its own cost is rspamd's, not congvu's; ``--with-rspamd`` adds it).

Both ask one ``congvu policyd`` (listening on both instances' policy sockets) and deliver
to Postfix's ``discard`` transport, so the disk is not what is measured.  One ``congvu
milter`` on the thanhhoa-2013 profile (every content rule on: attachments, formats,
Unicode, subject) serves the second instance.  The load is Postfix's own ``smtp-source``
(C, light), ``--sessions`` parallel SMTP sessions sending a message file (``-F``) from
mynetworks; the mail is unauthenticated, so the header-From rule is skipped (for a
login its cost is one cached account lookup).

Mixes: ``small`` (a 1.5 KB UTF-8 text mail with a subject) and ``5mb`` (the same with a
5 MB PDF attachment, base64: 6.8 MB on the wire).  Each mix is measured ``--rounds``
times, the two instances alternating; each ratio is taken within one round (the machine
is shared; instances measured seconds apart see the same load).  Also printed: the
milter's peak RSS (VmHWM) after the run, and what the stdlib ``email`` feed parser would
have held for one 30 MB message.

    .venv/bin/python bench/milter_bench.py                       # small 2000 msgs x 3 rounds, 5mb 40 msgs x 3
    .venv/bin/python bench/milter_bench.py --small 500 --large 10 --rounds 1
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.integration.policyd.conftest import PolicydProcess, site_config, write_config  # noqa: E402
from tests.integration.policyd.milter.conftest import MilterProcess  # noqa: E402
from tests.integration.servers.postfix import PostfixServer  # noqa: E402
from tests.integration.servers.rspamd import RspamdServer  # noqa: E402
from tests.integration.support import free_port, new_root  # noqa: E402

SMTP_SOURCE = "/usr/sbin/smtp-source"
MiB = 1024 * 1024
SENDER = "vanthu.sonv@thanhhoa.gov.vn"
RCPT = "nhan.sonv@thanhhoa.gov.vn"


def message(attachment: int) -> bytes:
    """The bench's message: a Vietnamese text part with a subject, and optionally a PDF of ``attachment`` bytes."""
    text = ("Kính gửi các đồng chí,\r\n\r\n" + "Sở Thông tin và Truyền thông gửi báo cáo tình hình tháng 11. " * 20
            + "\r\n\r\nTrân trọng.\r\n").encode()
    head = (f"From: {SENDER}\r\nTo: {RCPT}\r\nSubject: =?utf-8?b?"
            f"{base64.b64encode('Báo cáo tháng 11'.encode()).decode()}?=\r\nMIME-Version: 1.0\r\n").encode()
    if not attachment:
        return head + b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + text
    pdf = base64.encodebytes(b"%PDF-1.4\n" + bytes(attachment - 9)).replace(b"\n", b"\r\n")
    return (head + b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\n'
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + text
            + b'\r\n--b1\r\nContent-Type: application/pdf; name="baocao.pdf"\r\nContent-Transfer-Encoding: base64\r\n'
            b'Content-Disposition: attachment; filename="baocao.pdf"\r\n\r\n' + pdf + b"--b1--\r\n")


def postconf(pf: PostfixServer, *settings: str) -> None:
    subprocess.run([pf.postconf, "-c", str(pf.config_dir), "-e", *settings], check=True, capture_output=True)


def build_postfix(root: Path, milters: str, congvu_milter: str = "") -> PostfixServer:
    """An instance as the fixture builds it, then (bench only) discard delivery and the given milters.

    ``congvu_milter``: an ``inet:`` endpoint for ``$congvu_milter_service`` instead of the shipped socket.
    """
    pf = PostfixServer(root, rspamd_milter="inet:127.0.0.1:1")  # keeps the milter lines; replaced below
    pf.build()
    postconf(pf, "virtual_transport = discard", f"smtpd_milters = {milters}", f"non_smtpd_milters = {milters}",
             "default_process_limit = 100", *([f"congvu_milter_service = {congvu_milter}"] if congvu_milter else []))
    pf.start()
    return pf


def run_load(pf: PostfixServer, message_file: Path, count: int, sessions: int) -> tuple[float, str]:
    """``smtp-source`` sending ``count`` copies over ``sessions`` sessions; (seconds, its error output)."""
    t0 = time.perf_counter()
    done = subprocess.run([SMTP_SOURCE, "-s", str(sessions), "-m", str(count), "-F", str(message_file),
                           "-f", SENDER, "-t", RCPT, "-M", "bench.thanhhoa.gov.vn", f"{pf.host}:{pf.smtp_port}"],
                          capture_output=True, text=True, timeout=900, check=False)
    return time.perf_counter() - t0, (done.stdout + done.stderr).strip()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bare_milter(endpoint: str) -> None:
    """The framework ceiling: congvu's negotiation, then accept at end of body; no parsing, rules or log."""
    import socket
    import struct

    from twisted.internet import reactor as _reactor
    from twisted.internet.protocol import Factory, Protocol

    from congvu.policyd.milter import protocol as mp

    reactor: Any = _reactor

    class Bare(Protocol):
        buf = b""

        def dataReceived(self, data: bytes) -> None:
            sock: Any = getattr(self.transport, "socket", None)
            if sock is not None and sock.family == socket.AF_INET:  # as congvu's milter does on TCP
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            self.buf += data
            out = b""
            while len(self.buf) >= 4:
                (n,) = struct.unpack_from("!I", self.buf)
                if len(self.buf) < 4 + n:
                    break
                cmd, body, self.buf = self.buf[4:5], self.buf[5:4 + n], self.buf[4 + n:]
                if cmd == b"O":
                    out += mp.negotiate(mp.OptNeg(*struct.unpack_from("!III", body)))[0]
                elif cmd == b"E":
                    out += mp.ACCEPT
            if out:
                transport: Any = self.transport
                transport.write(out)

    from twisted.internet.endpoints import serverFromString
    serverFromString(reactor, endpoint).listen(Factory.forProtocol(Bare))
    reactor.run()


def stdlib_peak(size: int) -> float:
    """MB the stdlib BytesFeedParser's peak RSS grows by for one message with a ``size``-byte attachment."""
    code = ("import resource, sys; sys.path.insert(0, '.');"
            "from bench.milter_bench import message; from email.parser import BytesFeedParser;"
            f"m = message({size}); r = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; b = r();"
            "p = BytesFeedParser(); [p.feed(m[i:i + 65535]) for i in range(0, len(m), 65535)];"
            "msg = p.close(); [x.get_payload(decode=True) for x in msg.walk() if not x.is_multipart()];"
            "print((r() - b) / 1024)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--small", type=int, default=2000, help="small messages per instance per round (default 2000)")
    ap.add_argument("--large", type=int, default=40, help="5 MB messages per instance per round (default 40)")
    ap.add_argument("--sessions", type=int, default=8, help="parallel SMTP sessions (default 8)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, instances alternating (default 3)")
    ap.add_argument("--with-rspamd", action="store_true", help="put rspamd before congvu's milter, as shipped")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (logs, configs)")
    ap.add_argument("--tcp", action="store_true", help="milters on loopback TCP instead of the shipped unix socket")
    ap.add_argument("--c-milter", action="store_true",
                    help="add an instance whose milter is a no-op in C on libmilter (bench/nullmilter/, needs "
                         "libmilter-dev): what any milter round trip costs Postfix")
    ap.add_argument("--bare-milter", metavar="ENDPOINT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.bare_milter:
        bare_milter(args.bare_milter)
        return 0
    for binary in (SMTP_SOURCE,):
        if not Path(binary).exists():
            print(f"{binary} not found: install the Debian package postfix", file=sys.stderr)
            return 1

    root = Path(tempfile.mkdtemp(prefix="congvu-milter-bench-"))
    root.chmod(0o755)
    rspamd: RspamdServer | None = None
    procs: list[Any] = []
    instances: dict[str, PostfixServer] = {}
    try:
        milters = "$congvu_milter_service"
        if args.with_rspamd:
            rspamd = RspamdServer(new_root("congvu-bench-rspamd-"))
            rspamd.build()
            rspamd.start()
            milters = f"{rspamd.milter}, $congvu_milter_service"
        ports = {"bare": free_port(), "milter": free_port()} if args.tcp else {}
        instances["postfix"] = build_postfix(new_root("congvu-bench-postfix-"), "")
        named = ("bare", "milter", *(("c-null",) if args.c_milter else ()))
        for name in named:
            instances[name] = build_postfix(new_root(f"congvu-bench-{name}-"), milters,
                                            f"inet:127.0.0.1:{ports[name]}" if args.tcp else "")
        if args.c_milter:
            binary = root / "nullmilter"
            subprocess.run(["cc", "-O2", "-o", str(binary), str(REPO / "bench/nullmilter/nullmilter.c"), "-lmilter",
                            "-pthread"], check=True)
            sock = instances["c-null"].milter_socket
            procs.append(_Child(subprocess.Popen(["sh", "-c", f'umask 0; exec "{binary}" unix:{sock}'],
                                                 stdin=subprocess.DEVNULL, start_new_session=True)))
        endpoints = {name: f"tcp:{ports[name]}:interface=127.0.0.1" if args.tcp else
                     f"unix:{instances[name].milter_socket}:mode=666:lockfile=0" for name in ("bare", "milter")}
        for pf in instances.values():  # congvu's Listener makes it for its own sockets; the bare ones need it too
            pf.milter_socket.parent.mkdir(parents=True, exist_ok=True)
        bare = subprocess.Popen([sys.executable, __file__, "--bare-milter", endpoints["bare"]],
                                cwd=REPO, stdin=subprocess.DEVNULL, start_new_session=True)
        procs.append(_Child(bare))
        listen = [f"unix:{pf.policy_socket}:mode=666" for pf in instances.values()]
        state = root / "site"
        state.mkdir()
        site = site_config(state, profile="thanhhoa-2013", listen=listen, redis=None)
        site["directory"].pop("cache_ttl")
        site["milter"] = {"listen": [endpoints["milter"]], "log_decisions": "all"}
        cfg = write_config(root / "congvu.toml", site)
        policyd = PolicydProcess(root / "policyd.log")
        policyd.start(cfg, listen)
        procs.append(policyd)
        milter = MilterProcess(root / "milter.log")
        milter.start(cfg, instances["milter"].milter_socket, tcp_port=ports.get("milter"))
        procs.append(milter)

        files = {"small": root / "small.eml", "5mb": root / "5mb.eml"}
        files["small"].write_bytes(message(0))
        files["5mb"].write_bytes(message(5 * MiB))
        counts = {"small": args.small, "5mb": args.large}
        print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} UTC; small message {files['small'].stat().st_size} bytes, "
              f"5mb message {files['5mb'].stat().st_size} bytes; {args.sessions} sessions; "
              f"milters on the second instance: {milters}", flush=True)
        ratios: dict[str, list[float]] = {"small": [], "5mb": []}
        failed = 0
        bare_ratios: dict[str, list[float]] = {"small": [], "5mb": []}
        c_ratios: dict[str, list[float]] = {"small": [], "5mb": []}
        for mix in ("small", "5mb"):
            for rnd in range(1, args.rounds + 1):
                rates: dict[str, float] = {}
                for name, pf in instances.items():
                    cpu0 = {p: cpu_seconds(p.pid) for p in procs}
                    secs, errors = run_load(pf, files[mix], counts[mix], args.sessions)
                    cpu = "  CPU per message: " + ", ".join(
                        f"{type(p).__name__.removesuffix('Process').lower().strip('_')} "
                        f"{1e6 * (cpu_seconds(p.pid) - c) / counts[mix]:.0f} us" for p, c in cpu0.items())
                    rates[name] = counts[mix] / secs
                    bad = "" if not errors else f"  smtp-source said: {errors[:200]!r}"
                    failed += bool(errors)
                    print(f"{mix:5s} round {rnd}  {name:7s} {rates[name]:8.1f} msg/s  ({counts[mix]} in {secs:.2f} s)"
                          f"{cpu}{bad}", flush=True)
                ratios[mix].append(rates["milter"] / rates["postfix"])
                bare_ratios[mix].append(rates["bare"] / rates["postfix"])
                if "c-null" in rates:
                    c_ratios[mix].append(rates["c-null"] / rates["postfix"])
        if failed:
            print(f"\nINVALID RUN: smtp-source failed {failed} time(s) (see above); no ratio is worth reading")
            return 1
        peak = milter.peak_rss()
        milter.stop()  # flushes its log
        decided = sum(1 for line in milter.log_text().splitlines() if "milter: queue_id=" in line)
        print()
        for mix, rs in ratios.items():
            target = " (target >= 80 %)" if mix == "small" else ""
            print(f"{mix}: with milter / without = {_pcts(rs)}{target}; bare milter / without = "
                  f"{_pcts(bare_ratios[mix])}" + (f"; C no-op milter / without = {_pcts(c_ratios[mix])}"
                                                  if c_ratios[mix] else ""))
        print(f"milter: {decided} messages decided (expected {(args.small + args.large) * args.rounds}); "
              f"peak RSS {peak / MiB:.1f} MB; policyd peak RSS {_peak(policyd.pid) / MiB:.1f} MB")
        print(f"stdlib BytesFeedParser, one 30 MB message (22 MB attachment): peak RSS grows by "
              f"{stdlib_peak(22 * MiB):.0f} MB")
    finally:
        for p in reversed(procs):
            p.stop()
        for pf in instances.values():
            pf.stop()
        if rspamd is not None:
            rspamd.stop()
        if args.keep:
            print(f"kept {root} and the instances' dirs")
        else:
            for d in [root, *(pf.root for pf in instances.values()), *([rspamd.root] if rspamd else [])]:
                shutil.rmtree(d, ignore_errors=True)
    return 0


def _pcts(ratios: list[float]) -> str:
    return f"{100 * statistics.median(ratios):.0f} % median of [{', '.join(f'{100 * r:.0f} %' for r in ratios)}]"


class _Child:
    """The bare milter's process, stopped like the others."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _peak(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    sys.exit(main())
