"""[policyd] workers: the setting, the stats snapshots children send, whole-line log writes, the master's pool."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from congvu.commands.policyd import worker_argv
from congvu.config import config_from_mapping, load_config
from congvu.logging import write_lines
from congvu.policyd.server import PolicyFactory, PolicyService
from congvu.policyd.stats import Stats, parse_metrics
from congvu.policyd.workers import BACKOFF_MAX, STOP_GRACE, WorkerPool, _Child
from congvu.rules.errors import ConfigError


def _load(tmp_path: Path, value: str) -> Any:
    f = tmp_path / "c.toml"
    f.write_text(f"[policyd]\nworkers = {value}\n", encoding="utf-8")
    return load_config(f)


def test_workers_setting_takes_a_count_or_auto(tmp_path: Path) -> None:
    """1 (the default), 64, and "auto" = the CPU count, parsed into an int."""
    assert config_from_mapping({}).policyd.workers == 1
    assert _load(tmp_path, "64").policyd.workers == 64
    assert _load(tmp_path, '"auto"').policyd.workers == max(1, min(64, os.cpu_count() or 1))


@pytest.mark.parametrize("value", ["0", "65", '"x"', "true", "2.5"])
def test_bad_workers_values_are_refused_in_one_line(tmp_path: Path, value: str) -> None:
    """0, 65, "x", a boolean or a fraction: a ConfigError of one line naming policyd.workers."""
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, value)
    assert e.value.key == "policyd.workers" and "\n" not in str(e.value) and "policyd.workers" in str(e.value)


def _stats(requests: int, open_: int = 0) -> Stats:
    st = Stats()
    st.requests = requests
    st.connections_open = open_
    st.decisions[("size", "reject")] = requests // 2
    st.decisions[("", "dunno")] = requests - requests // 2
    st.failures[("rates", "dunno")] = 1
    st.reloads_ok = 2
    return st


def test_stats_round_trip_through_a_json_dict() -> None:
    """to_dict → JSON → from_dict gives back every counter."""
    st = _stats(7, open_=3)
    back = Stats.from_dict(json.loads(json.dumps(st.to_dict())))
    assert back.to_dict() == st.to_dict()
    assert back.decisions == st.decisions and back.failures == st.failures and back.connections_open == 3


@pytest.mark.parametrize("bad", [{"requests": -1}, {"requests": "3"}, {"decisions": [["size", "reject"]]}])
def test_a_malformed_snapshot_is_refused(bad: dict[str, Any]) -> None:
    """Negative or non-integer counts and short rows raise instead of corrupting the sums."""
    with pytest.raises((ValueError, TypeError)):
        Stats.from_dict(bad)


def test_merge_adds_every_counter() -> None:
    """The sum of two processes' counters, decisions per check included."""
    a, b = _stats(4, open_=1), _stats(7, open_=2)
    a.merge(b)
    assert a.requests == 11 and a.connections_open == 3 and a.reloads_ok == 4
    assert a.decisions == {("size", "reject"): 5, ("", "dunno"): 6} and a.failures[("rates", "dunno")] == 2


def test_render_has_the_worker_gauge_and_per_worker_requests() -> None:
    """One process: workers 1 and worker 0 = all requests; given a split, one series per worker."""
    rows = parse_metrics(_stats(5).render([]))
    assert ("congvu_policyd_workers", {}, 1.0) in rows
    assert ("congvu_policyd_worker_requests_total", {"worker": "0"}, 5.0) in rows
    rows = parse_metrics(_stats(5).render([], {0: 2, 1: 3}))
    assert ("congvu_policyd_workers", {}, 2.0) in rows
    assert [(lab, v) for n, lab, v in rows if n == "congvu_policyd_worker_requests_total"] == \
        [({"worker": "0"}, 2.0), ({"worker": "1"}, 3.0)]


def test_state_store_gauge_is_down_when_any_process_says_so() -> None:
    """Each process reports 0/1; the sum over workers renders as up only when none is down."""
    a, b = _stats(1), _stats(2)
    assert ("congvu_policyd_state_store_up", {}, 1.0) in parse_metrics(a.render([]))
    b.state_store_down = 1
    a.merge(Stats.from_dict(json.loads(json.dumps(b.to_dict()))))
    assert a.state_store_down == 1
    assert ("congvu_policyd_state_store_up", {}, 0.0) in parse_metrics(a.render([]))


def test_write_lines_writes_whole_lines_of_at_most_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write(2) ends at a line end and stays within the limit; a longer line goes alone; nothing is lost."""
    lines = [b"x" * n + b"\n" for n in (10, 30, 50, 5, 120, 7)]  # 11, 31, 51, 6, 121 and 8 bytes
    data = b"".join(lines)
    r, w = os.pipe()
    writes: list[int] = []
    real_write = os.write

    def counting(fd: int, chunk: Any) -> int:
        writes.append(len(chunk))
        assert bytes(chunk).endswith(b"\n")
        return real_write(fd, chunk)

    monkeypatch.setattr(os, "write", counting)
    try:
        write_lines(w, data, limit=64)
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        assert f.read() == data
    assert writes == [11 + 31, 51 + 6, 121, 8]


# --------------------------------------------------------------------------- the master's pool


class _Transport:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []
        self.stdin_closed = False

    def signalProcess(self, sig: str) -> None:
        self.signals.append(sig)

    def closeStdin(self) -> None:
        self.stdin_closed = True


class _Reactor(MemoryReactorClock):
    """A memory reactor that records spawnProcess calls (the pool's only use of processes)."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[_Child, list[str], dict[int, Any]]] = []

    def spawnProcess(self, proto: Any, executable: str, args: list[str], env: Any = None,
                     childFDs: Any = None, **kw: Any) -> _Transport:
        tr = _Transport(1000 + len(self.spawned))
        proto.makeConnection(tr)
        self.spawned.append((proto, args, childFDs))
        return tr


class _Port:
    """The master's port for ``[policyd] listen``: a real listening socket (the pool duplicates it)."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen()
        self.reading = True

    def fileno(self) -> int:
        return self.socket.fileno()

    def stopReading(self) -> None:
        self.reading = False


@pytest.fixture
def pool(tmp_path: Path) -> Any:
    cfg_file = tmp_path / "congvu.toml"
    cfg_file.write_text(f'state_dir = "{tmp_path}"\n[policyd]\nworkers = 3\nstats_listen = []\n', encoding="utf-8")
    svc = PolicyService(load_config(cfg_file), _Reactor())
    port = _Port()
    svc.policy_ports = [("tcp:10040:interface=127.0.0.1", port)]  # type: ignore[list-item]
    p = WorkerPool(svc.reactor, svc.cfg.policyd.workers, svc.policy_ports, PolicyFactory(svc), svc.stats,
                   worker_argv(svc, "/usr/bin/python3"))
    p.service = svc  # type: ignore[attr-defined]  # for the assertions below
    yield p
    for shared in p.adopted:
        shared.stopListening()
    port.socket.close()
    svc.engine.ctx.accounts.close()


def _killed() -> Failure:
    return Failure(ProcessTerminated(signal=9))  # type: ignore[no-untyped-call]


def test_pool_spawns_each_worker_with_the_shared_sockets(pool: WorkerPool) -> None:
    """workers - 1 children, each told its index, its socket descriptors and the config path."""
    pool.start()
    reactor: Any = pool.reactor
    assert [args[args.index("--worker") + 1] for _, args, _ in reactor.spawned] == ["1", "2"]
    _, args, fds = reactor.spawned[0]
    assert args[:3] == ["/usr/bin/python3", "-c", "import sys; from congvu.cli import main; sys.exit(main())"]
    assert args[args.index("--worker-fds") + 1] == "4"
    assert args[args.index("--config") + 1] == pool.service.cfg.path
    assert "--profile" not in args  # the default profile: the child resolves it as the master's reload would
    master_port = pool.service.policy_ports[0][1]
    assert fds == {0: "w", 1: 2, 2: 2, 3: "r", 4: master_port.fileno()}
    # the master accepts through a one-at-a-time port on a duplicate; its own port no longer reads
    assert [p.numberAccepts for p in pool.adopted] == [1] and not master_port.reading  # type: ignore[attr-defined]
    assert pool.adopted[0].getHost().port == master_port.socket.getsockname()[1]  # type: ignore[attr-defined]


def test_pool_sums_snapshots_even_split_across_reads(pool: WorkerPool) -> None:
    """A snapshot line cut in two reads is read whole; /metrics sums master and workers."""
    pool.start()
    reactor: Any = pool.reactor
    pool.service.stats.requests = 5
    line = json.dumps({"stats": _stats(7).to_dict()}).encode() + b"\n"
    child1 = reactor.spawned[0][0]
    child1.childDataReceived(3, line[:10])
    child1.childDataReceived(3, line[10:])
    reactor.spawned[1][0].childDataReceived(3, json.dumps({"stats": _stats(1).to_dict()}).encode() + b"\n")
    total, per_worker = pool.snapshot()
    assert total.requests == 13 and per_worker == {0: 5, 1: 7, 2: 1}
    rows = parse_metrics(pool.render([]))
    assert ("congvu_policyd_requests_total", {}, 13.0) in rows and ("congvu_policyd_workers", {}, 3.0) in rows


def test_a_dead_worker_is_restarted_with_doubling_backoff_and_its_counts_kept(pool: WorkerPool) -> None:
    """Killed: restarted after 1 s, 2 s, 4 s ... at most 30 s; its last counts stay in the sums."""
    pool.start()
    reactor: Any = pool.reactor
    child = reactor.spawned[0][0]
    down = _stats(6, open_=2)
    down.state_store_down = 1
    child.childDataReceived(3, json.dumps({"stats": down.to_dict()}).encode() + b"\n")
    assert pool.snapshot()[0].state_store_down == 1
    delays = []
    for _ in range(7):
        n = len(reactor.spawned)
        child.processEnded(_killed())
        waited = 0.0
        while len(reactor.spawned) == n:
            reactor.advance(0.5)
            waited += 0.5
        delays.append(waited)
        child = reactor.spawned[-1][0]
        assert reactor.spawned[-1][1][reactor.spawned[-1][1].index("--worker") + 1] == "1"
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    total, per_worker = pool.snapshot()
    assert per_worker[1] == 6 and total.requests == 6 and total.connections_open == 0
    assert total.state_store_down == 0  # the gauges of a process that is gone are not kept
    reactor.advance(BACKOFF_MAX)  # a worker that ran this long before dying starts again after 1 s
    n = len(reactor.spawned)
    child.processEnded(Failure(ProcessDone(0)))  # type: ignore[no-untyped-call]
    reactor.advance(1)
    assert len(reactor.spawned) == n + 1


def test_stop_terms_then_kills_and_restarts_nothing(pool: WorkerPool) -> None:
    """Stop: SIGTERM (control pipes left open); SIGKILL after the grace time; done once all ended."""
    pool.start()
    reactor: Any = pool.reactor
    (c1, _, _), (c2, _, _) = reactor.spawned
    d = pool.stop()
    assert [c.transport.signals for c in (c1, c2)] == [["TERM"], ["TERM"]]
    assert not c1.transport.stdin_closed and not c2.transport.stdin_closed
    c1.processEnded(Failure(ProcessDone(0)))  # type: ignore[no-untyped-call]
    assert not d.called
    reactor.advance(STOP_GRACE)
    assert c2.transport.signals == ["TERM", "KILL"]
    c2.processEnded(_killed())
    assert d.called
    reactor.advance(60)
    assert len(reactor.spawned) == 2  # nothing restarted
    assert pool.reload() is None and c1.transport.signals == ["TERM"]  # no one left to signal


def test_a_reload_waits_until_a_starting_worker_serves(pool: WorkerPool) -> None:
    """SIGHUP before a child's first snapshot is held (the default action would kill it), then sent."""
    pool.start()
    reactor: Any = pool.reactor
    ready, starting = reactor.spawned[0][0], reactor.spawned[1][0]
    ready.childDataReceived(3, json.dumps({"stats": _stats(1).to_dict()}).encode() + b"\n")
    pool.reload()
    assert ready.transport.signals == ["HUP"] and starting.transport.signals == []
    starting.childDataReceived(3, json.dumps({"stats": _stats(2).to_dict()}).encode() + b"\n")
    assert starting.transport.signals == ["HUP"]
    starting.childDataReceived(3, json.dumps({"stats": _stats(3).to_dict()}).encode() + b"\n")
    assert starting.transport.signals == ["HUP"]  # once, not on every snapshot


def test_no_worker_is_started_without_a_plain_endpoint_to_share(pool: WorkerPool) -> None:
    """Only ssl: endpoints: one process and a warning, not children failing and restarting for ever."""
    pool.shared = []
    pool.start()
    reactor: Any = pool.reactor
    assert reactor.spawned == [] and pool.children == {}
