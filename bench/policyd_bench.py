"""Benchmark congvu policyd against postfwd2 and a bare DUNNO responder (issue 4).

Drives each server the way Postfix's smtpd processes do: N persistent connections, each
sending one request, waiting for the answer, and sending the next.  The traffic is a mix
of RCPT and END-OF-MESSAGE requests (one of each per message, full Postfix 3.7 attribute
sets) from authenticated senders drawn from USERS mailboxes; 2% of the messages exceed
the CT25-5.1 size limit and get only their RCPT request (Postfix stops there).

Servers, in the same run and on the same machine:

* ``congvu``: ``congvu policyd`` with every check on, accounts in SQLite (all USERS
  created before the run), counters in a redis-server the bench starts itself;
* ``postfwd2``: Debian's ``/usr/sbin/postfwd2`` with ``bench/postfwd/postfwd.cf`` (the
  same size and rate rules), prefork children enough for every connection;
* ``bare``: a minimal Twisted server in this file that answers ``action=DUNNO`` to each
  request with no logic: the framework ceiling (as many processes as congvu's
  ``[policyd] workers``, sharing one socket).

The load generator is one asyncio process (Protocols, no streams) sharing the machine's
cores with the server under test; its own cost is part of every figure.  Every server is
measured ``--rounds`` times, alternating, each round with new message instances; the
summary gives each ratio per round (servers measured seconds apart see the same load from
the rest of the machine) and the median over the rounds.

    .venv/bin/python bench/policyd_bench.py                 # 16 and 64 connections, 3 rounds of 5 s each
    .venv/bin/python bench/policyd_bench.py --duration 10 --connections 16 --servers congvu,bare
    .venv/bin/python bench/policyd_bench.py --servers bare,congvu --policyd-option workers=2
"""

from __future__ import annotations

import argparse
import asyncio
import grp
import json
import os
import pwd
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

POSTFWD_RULES = REPO / "bench" / "postfwd" / "postfwd.cf"
DOMAIN = "cantho.gov.vn"
SIZE_LIMIT = 28993127  # cantho-2025: rules.limits.message_size_limit (20 MB attachment)
#: [policyd] settings of the bench run, before --policyd-option.  At 2,000+ messages a second
#: over 500 users, the default 100 messages/hour per user is reached after ~25 s of load
#: (earlier on a faster machine), and from then on every END-OF-MESSAGE is a defer: a
#: different workload.  The windows are still counted on every message (same Redis work);
#: they are just never full.  bench/postfwd/postfwd.cf raises its limits the same way.
BENCH_POLICYD: dict[str, Any] = {"messages_per_hour_personal": 1_000_000, "recipients_per_day_personal": 10_000_000}

# --------------------------------------------------------------------------- requests

_TEMPLATE = (
    "request=smtpd_access_policy\nprotocol_state={state}\nprotocol_name=ESMTP\n"
    "client_address=10.{a}.{b}.{c}\nclient_name=pc{c}.sonv.{domain}\nclient_port={port}\n"
    "reverse_client_name=pc{c}.sonv.{domain}\nserver_address=10.0.0.25\nserver_port=587\n"
    "helo_name=pc{c}.sonv.{domain}\nsender={user}\nrecipient={rcpt}\nrecipient_count={rcount}\n"
    "queue_id={qid}\ninstance={instance}\nsize={size}\netrn_domain=\nstress=\nsasl_method=PLAIN\n"
    "sasl_username={user}\nsasl_sender=\nccert_subject=\nccert_issuer=\nccert_fingerprint=\n"
    "ccert_pubkey_fingerprint=\nencryption_protocol=TLSv1.3\nencryption_cipher=TLS_AES_256_GCM_SHA384\n"
    "encryption_keysize=256\npolicy_context=submission\ncompatibility_level=3.6\nmail_version=3.7.11\n\n"
)


def users(n: int) -> list[str]:
    return [f"nv{i:04d}.sonv@{DOMAIN}" for i in range(n)]


def message_requests(rng: random.Random, senders: list[str], conn: int) -> Iterator[bytes]:
    """Endless requests of one smtpd process: RCPT then END-OF-MESSAGE for each message."""
    n = 0
    while True:
        n += 1
        user = rng.choice(senders)
        rcpt = f"nhan{rng.randrange(5000)}@{DOMAIN}"
        big = rng.random() < 0.02
        size = rng.randrange(SIZE_LIMIT + 1, 40 * 1024 * 1024) if big else rng.randrange(2_000, 400_000)
        a, b, c = rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)
        common = dict(a=a, b=b, c=c, domain=DOMAIN, port=40000 + conn, user=user, rcpt=rcpt,
                      instance=f"{conn:x}.{n:x}.{rng.getrandbits(32):08x}.0", size=size)
        yield _TEMPLATE.format(state="RCPT", rcount=0, qid="", **common).encode()
        if not big:
            qid = f"{rng.getrandbits(40):010X}"
            yield _TEMPLATE.format(state="END-OF-MESSAGE", rcount=1, qid=qid, **common).encode()


# --------------------------------------------------------------------------- load generator


@dataclass
class Result:
    server: str
    connections: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    actions: dict[str, int]
    round: int = 1


def summary(results: list[Result], conn_counts: list[int], rounds: int) -> list[str]:
    """Ratios per round (servers measured back to back), then their median over the rounds.

    The machine is shared: a server's absolute rate moves by ±30 % between runs, but two
    servers measured seconds apart see the same weather, so only same-round ratios are compared.
    """
    by = {(r.server, r.connections, r.round): r for r in results}
    out = []
    for conns in conn_counts:
        cv = [by[("congvu", conns, n)] for n in range(1, rounds + 1) if ("congvu", conns, n) in by]
        if not cv:
            continue
        parts = [f"conns={conns}"]
        for other, label, target in (("postfwd2", "congvu/postfwd2", "target >= 10x"),
                                     ("bare", "congvu/bare", "target >= 60%")):
            ratios = [c.rps / by[(other, conns, c.round)].rps for c in cv if (other, conns, c.round) in by]
            if not ratios:
                continue
            shown = ", ".join(f"{x:.1f}x" if other == "postfwd2" else f"{100 * x:.0f}%" for x in ratios)
            med = statistics.median(ratios)
            medtxt = f"{med:.1f}x" if other == "postfwd2" else f"{100 * med:.0f}%"
            parts.append(f"{label} = {medtxt} median of [{shown}] ({target})")
        p99 = statistics.median(c.p99_ms for c in cv)
        parts.append(f"congvu p99 = {p99:.2f} ms median of [{', '.join(f'{c.p99_ms:.2f}' for c in cv)}]"
                     + (" (target < 5 ms)" if conns == 16 else ""))
        out.append("  ".join(parts))
    return out


class _Client(asyncio.Protocol):
    """One persistent connection: send, wait for ``action=...\\n\\n``, record, send the next."""

    def __init__(self, requests: Iterator[bytes], record: Callable[[int, bytes], None],
                 done: asyncio.Future[None]) -> None:
        self.requests, self.record, self.done = requests, record, done
        self.buf = b""
        self.sent_at = 0
        self.transport: asyncio.Transport | None = None
        self.stopping = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if self.stopping:
            self.transport.close()
            return
        self.sent_at = time.perf_counter_ns()
        self.transport.write(next(self.requests))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\n\n")
        if end < 0:
            return
        reply, self.buf = self.buf[:end], self.buf[end + 2:]
        self.record(time.perf_counter_ns() - self.sent_at, reply)
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if self.stopping:
                self.done.set_result(None)
            else:
                self.done.set_exception(ConnectionError(f"server closed the connection: {exc}"))


async def _drive(host: str, port: int, connections: int, warmup: float, duration: float,
                 senders: list[str], seed: int) -> tuple[list[int], dict[str, int], float]:
    loop = asyncio.get_running_loop()
    latencies: list[int] = []
    actions: dict[str, int] = {}
    measuring = False

    def record(ns: int, reply: bytes) -> None:
        if measuring:
            latencies.append(ns)
            verb = reply[7:].split(b" ", 1)[0].decode(errors="replace")
            actions[verb] = actions.get(verb, 0) + 1

    clients: list[_Client] = []
    futures: list[asyncio.Future[None]] = []
    for i in range(connections):
        fut: asyncio.Future[None] = loop.create_future()
        client = _Client(message_requests(random.Random(seed * 1000 + i), senders, i), record, fut)
        await loop.create_connection(lambda c=client: c, host, port)  # type: ignore[misc]
        clients.append(client)
        futures.append(fut)
    await asyncio.sleep(warmup)
    measuring = True
    t0 = time.perf_counter()
    await asyncio.sleep(duration)
    measuring = False
    elapsed = time.perf_counter() - t0
    for c in clients:
        c.stopping = True
    await asyncio.wait_for(asyncio.gather(*futures), timeout=30)
    return latencies, actions, elapsed


def run_load(server: str, host: str, port: int, connections: int, warmup: float, duration: float,
             senders: list[str], seed: int = 1) -> Result:
    latencies, actions, elapsed = asyncio.run(_drive(host, port, connections, warmup, duration, senders, seed))
    latencies.sort()
    n = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(n - 1, int(p * n))] / 1e6 if n else float("nan")

    return Result(server, connections, n, round(elapsed, 2), round(n / elapsed, 1), round(pct(0.50), 3),
                  round(pct(0.99), 3), dict(sorted(actions.items())))


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_answering(port: int, timeout: float = 30.0) -> None:
    """Until the server on ``port`` answers a policy request."""
    probe = _TEMPLATE.format(state="RCPT", a=1, b=2, c=3, domain=DOMAIN, port=1, user=f"nv0000.sonv@{DOMAIN}",
                             rcpt=f"x@{DOMAIN}", rcount=0, qid="", instance="probe", size=100).encode()
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(probe)
                if s.recv(4096).startswith(b"action="):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answers policy requests on 127.0.0.1:{port}")
        time.sleep(0.1)


def pwd_group(gid: int) -> str:
    return grp.getgrgid(gid).gr_name


def bare_responder(port: int, workers: int = 1) -> None:
    """The framework ceiling: Twisted, ``action=DUNNO`` for every request, no logic.

    With ``workers`` > 1, that many processes share one listening socket, as congvu policyd's
    ``[policyd] workers`` do, so a multi-process congvu is compared with a multi-process ceiling.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    sock.setblocking(False)
    for _ in range(workers - 1):
        if os.fork() == 0:
            break  # a child: serve below (the reactor is imported after the fork)
    from twisted.internet import reactor as _reactor
    from twisted.internet.protocol import Factory, Protocol

    reactor: Any = _reactor

    class Bare(Protocol):
        buf = b""

        def dataReceived(self, data: bytes) -> None:
            self.buf += data
            n = self.buf.count(b"\n\n")
            if n:
                self.buf = self.buf[self.buf.rfind(b"\n\n") + 2:]
                transport: Any = self.transport
                transport.write(b"action=DUNNO\n\n" * n)

    if workers > 1:  # accepted one at a time, as congvu's workers do, or one process takes every connection
        from congvu.policyd.workers import adopt_ports
        adopt_ports(reactor, [os.dup(sock.fileno())], Factory.forProtocol(Bare))
    else:
        reactor.adoptStreamPort(sock.fileno(), socket.AF_INET, Factory.forProtocol(Bare))
    reactor.run()


class Servers:
    """Starts and stops the servers under test and the Redis the congvu one counts in."""

    def __init__(self, root: Path, n_users: int, max_connections: int,
                 policyd_options: dict[str, Any] | None = None) -> None:
        self.root = root
        self.policyd_options = policyd_options or {}
        self.n_users = n_users
        self.max_connections = max_connections
        self.procs: list[subprocess.Popen[bytes]] = []
        self.redis: Any = None
        self.redis_client: Any = None
        self.postfwd_pid: Path | None = None

    def start_redis(self) -> None:
        from tests.integration.servers.redis import RedisServer  # the test suite's throwaway redis-server

        self.redis = RedisServer(self.root / "redis")
        self.redis.start()
        import redis

        self.redis_client = redis.Redis.from_url(self.redis.url)

    def flush_counters(self) -> None:
        """Empty the counters and Redis's command statistics before a run."""
        if self.redis_client is not None:
            self.redis_client.flushdb()
            self.redis_client.config_resetstat()

    def redis_stats(self) -> str:
        """Redis's own cost per command during the last run (where congvu's counter time goes)."""
        if self.redis_client is None:
            return ""
        stats = self.redis_client.info("commandstats")
        return "  ".join(f"{k.removeprefix('cmdstat_')}: {v['calls']} calls, {v['usec_per_call']:.1f} us/call"
                         for k, v in sorted(stats.items()) if v.get("calls", 0) > 100)

    def start_congvu(self) -> int:
        from congvu.config import load_config
        from congvu.directory.accounts import open_store
        from congvu.directory.model import Account
        from tests.integration.policyd.conftest import PolicydProcess, site_config, write_config

        if self.redis is None:
            self.start_redis()
        port = free_port()
        state = self.root / "congvu"
        state.mkdir()
        listen = [f"tcp:{port}:interface=127.0.0.1"]
        site = site_config(state, profile="cantho-2025", listen=listen, redis=self.redis)
        site["directory"].pop("cache_ttl")  # production default (30s), not the tests' 1s
        site["policyd"].update(BENCH_POLICYD)
        site["policyd"].update(self.policyd_options)
        cfg_path = write_config(self.root / "congvu.toml", site)
        cfg = load_config(cfg_path)
        store = open_store(cfg)
        now = datetime.now(UTC)
        for address in users(self.n_users):
            local = address.split("@")[0]
            store.add(Account(local_part=local, domain=DOMAIN, full_name=f"Nguyễn Văn {local}",
                              mailbox_type="personal", agency="sonv", must_change=False,
                              created_at=now, password_changed_at=now))
        store.close()
        self.congvu = PolicydProcess(self.root / "congvu.log")
        self.congvu.start(cfg_path, listen)
        return port

    def start_postfwd(self) -> int:
        binary = shutil.which("postfwd2") or "/usr/sbin/postfwd2"
        if not Path(binary).exists():
            raise RuntimeError("postfwd2 not found: install the Debian package postfwd")
        port = free_port()
        run = self.root / "postfwd2"  # postfwd2 drops to nobody: its sockets and pid file live here
        run.mkdir()
        pw = pwd.getpwnam("nobody")
        os.chown(run, pw.pw_uid, pw.pw_gid)
        self.postfwd_pid = run / "postfwd2.pid"
        children = self.max_connections + 4  # prefork: one child per persistent connection
        subprocess.run(
            [binary, "--file", str(POSTFWD_RULES), "--interface", "127.0.0.1", "--port", str(port),
             "--cache_proto", "unix", "--cache_port", str(run / "cache.sock"), "--pidfile", str(self.postfwd_pid),
             "--min_servers", str(children), "--max_servers", str(children + 8),
             "--min_spare_servers", "2", "--max_spare_servers", str(children), "--perfmon",
             "--user", "nobody", "--group", pwd_group(pw.pw_gid)],
            check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return port

    def start_bare(self) -> int:
        port = free_port()
        workers = int({**BENCH_POLICYD, **self.policyd_options}.get("workers", 1))  # as many as congvu has
        self.procs.append(subprocess.Popen([sys.executable, __file__, "--bare-responder", str(port),
                                            "--bare-workers", str(workers)],
                                           cwd=REPO, stdin=subprocess.DEVNULL, start_new_session=True))
        return port

    def stop(self) -> None:
        congvu = getattr(self, "congvu", None)
        if congvu is not None:
            congvu.stop()
        for p in self.procs:
            os.killpg(p.pid, signal.SIGTERM)  # the bare responder and its forked workers
            p.wait(10)
        if self.postfwd_pid is not None and self.postfwd_pid.exists():
            pid = int(self.postfwd_pid.read_text().split()[0])
            os.kill(pid, signal.SIGTERM)  # the postfwd2 master: it stops its children and cache
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.1)
        if self.redis is not None:
            self.redis.stop()


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--connections", default="16,64", help="comma-separated connection counts (default 16,64)")
    ap.add_argument("--servers", default="bare,congvu,postfwd2", help="which servers, in this order")
    ap.add_argument("--users", type=int, default=500, help="distinct senders (default 500)")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default 5)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="measure every server this many times, alternating (default 3); ratios are per round")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run (default 1)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--policyd-option", action="append", default=[], metavar="KEY=TOML",
                    help='extra [policyd] setting for congvu, e.g. threads=2 or log_decisions="blocks" (repeatable)')
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    ap.add_argument("--bare-responder", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--bare-workers", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.bare_responder:
        bare_responder(args.bare_responder, args.bare_workers)
        return 0

    conn_counts = [int(x) for x in args.connections.split(",")]
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    root = Path(tempfile.mkdtemp(prefix="congvu-bench-"))
    root.chmod(0o755)
    options = {k.strip(): tomllib.loads(f"v = {v}")["v"]
               for k, v in (o.split("=", 1) for o in args.policyd_option)}
    servers = Servers(root, args.users, max(conn_counts), options)
    senders = users(args.users)
    results: list[Result] = []
    try:
        starters = {"bare": servers.start_bare, "congvu": servers.start_congvu, "postfwd2": servers.start_postfwd}
        ports = {}
        for name in names:
            ports[name] = starters[name]()
            wait_answering(ports[name])
        for conns in conn_counts:
            for rnd in range(1, args.rounds + 1):  # servers alternate, so a busy spell hits each alike
                for name in names:
                    servers.flush_counters()
                    # A new seed each round: new message instances, or policyd would find them counted already.
                    r = run_load(name, "127.0.0.1", ports[name], conns, args.warmup, args.duration, senders,
                                 seed=conns * 1000 + rnd)
                    r.round = rnd
                    results.append(r)
                    print(f"{name:9s} conns={conns:3d} round {rnd}  {r.rps:9.1f} req/s  p50={r.p50_ms:7.3f} ms  "
                          f"p99={r.p99_ms:7.3f} ms  n={r.requests}  {r.actions}", flush=True)
                    if name == "congvu":
                        print(f"          redis during the run: {servers.redis_stats()}", flush=True)
    finally:
        servers.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            for _ in range(20):  # postfwd2's children may still be removing their sockets
                shutil.rmtree(root, ignore_errors=True)
                if not root.exists():
                    break
                time.sleep(0.25)
    print()
    for line in summary(results, conn_counts, args.rounds):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
