"""Decision counters per check, rendered as Prometheus text (``/metrics``) for ``congvu policyd stats``.

Counters live in the reactor thread only (the server updates them after each answer),
so they need no lock.  They reset when the process restarts, as Prometheus expects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

#: The plain integer counters, in the order of the dict form.
_SCALARS = ("requests", "threaded", "native", "protocol_errors", "timeouts", "refused_connections",
            "connections_total", "connections_open", "reloads_ok", "reloads_failed", "state_store_down")


class Stats:
    def __init__(self) -> None:
        #: (check, verdict) → answers; check "" = no check objected (DUNNO).
        self.decisions: Counter[tuple[str, str]] = Counter()
        #: (check, failure policy applied) → checks that raised
        self.failures: Counter[tuple[str, str]] = Counter()
        self.requests = 0
        self.threaded = 0
        self.native = 0
        self.protocol_errors = 0
        self.timeouts = 0
        self.refused_connections = 0
        self.connections_total = 0
        self.connections_open = 0
        self.reloads_ok = 0
        self.reloads_failed = 0
        #: Processes whose counter store does not answer (a gauge: 0 or 1 per process, summed over workers).
        self.state_store_down = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot: how a policyd worker process sends its counters to the master."""
        d: dict[str, Any] = {k: getattr(self, k) for k in _SCALARS}
        d["decisions"] = [[c, v, n] for (c, v), n in sorted(self.decisions.items())]
        d["failures"] = [[c, p, n] for (c, p), n in sorted(self.failures.items())]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Stats:
        """Read back :meth:`to_dict`; raises ValueError (or TypeError/KeyError) on a malformed snapshot."""
        st = cls()
        for k in _SCALARS:
            setattr(st, k, _count(d.get(k, 0)))
        for c, v, n in d.get("decisions", []):
            st.decisions[(str(c), str(v))] = _count(n)
        for c, p, n in d.get("failures", []):
            st.failures[(str(c), str(p))] = _count(n)
        return st

    def merge(self, other: Stats) -> None:
        """Add ``other``'s counters (and open connections) to these: the sum over worker processes."""
        for k in _SCALARS:
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.decisions.update(other.decisions)
        self.failures.update(other.failures)

    def render(self, checks: Iterable[str], workers: Mapping[int, int] | None = None) -> str:
        """The Prometheus text exposition format (version 0.0.4).

        ``workers``: requests answered per worker process (0 = the master) when these stats are
        the sum over several; None = a single process, worker 0, answered them all.
        """
        out: list[str] = []

        def metric(name: str, kind: str, doc: str, rows: Iterable[tuple[Mapping[str, str], int]]) -> None:
            out.append(f"# HELP congvu_policyd_{name} {doc}")
            out.append(f"# TYPE congvu_policyd_{name} {kind}")
            for labels, value in rows:
                lab = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                out.append(f"congvu_policyd_{name}{{{lab}}} {value}" if lab else f"congvu_policyd_{name} {value}")

        names = list(checks)
        metric("decisions_total", "counter", "Answers by deciding check (none = DUNNO) and verdict.",
               [({"check": c or "none", "verdict": v}, n) for (c, v), n in sorted(self.decisions.items())])
        metric("check_failures_total", "counter", "Checks that raised, by failure policy applied.",
               [({"check": c, "policy": p}, n) for (c, p), n in sorted(self.failures.items())])
        metric("requests_total", "counter", "Policy requests answered.", [({}, self.requests)])
        metric("threaded_requests_total", "counter", "Requests that needed the directory or counter store.",
               [({}, self.threaded)])
        metric("native_counter_requests_total", "counter", "Requests whose rate check ran on the native Redis path.",
               [({}, self.native)])
        metric("protocol_errors_total", "counter", "Connections closed for malformed or oversized input.",
               [({}, self.protocol_errors)])
        metric("timeouts_total", "counter", "Connections closed idle or with an unfinished request.",
               [({}, self.timeouts)])
        metric("refused_connections_total", "counter", "Connections closed at once (max_connections).",
               [({}, self.refused_connections)])
        metric("connections_total", "counter", "Connections accepted.", [({}, self.connections_total)])
        metric("connections_open", "gauge", "Connections open now.", [({}, self.connections_open)])
        metric("reloads_total", "counter", "SIGHUP reloads by result.",
               [({"result": "ok"}, self.reloads_ok), ({"result": "failed"}, self.reloads_failed)])
        metric("state_store_up", "gauge", "1 when the counter store answers; 0 when it is down or refuses "
               "congvu's credentials (the log says which, and the setting to fix).",
               [({}, 0 if self.state_store_down else 1)])
        metric("check_enabled", "gauge", "1 for each check in the running order.",
               [({"check": c}, 1) for c in names])
        per_worker = {0: self.requests} if workers is None else workers
        metric("workers", "gauge", "Policy server processes sharing the listen sockets ([policyd] workers).",
               [({}, len(per_worker))])
        metric("worker_requests_total", "counter", "Policy requests answered, by worker process (0 = master).",
               [({"worker": str(w)}, n) for w, n in sorted(per_worker.items())])
        return "\n".join(out) + "\n"


def _count(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"expected a count, got {v!r}")
    return v


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Read back the exposition format (for ``congvu policyd stats``): (name, labels, value)."""
    rows = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels: dict[str, str] = {}
        if rest:
            for part in rest.rstrip("}").split('",'):
                k, _, v = part.partition('="')
                labels[k] = v.rstrip('"')
        try:
            rows.append((name, labels, float(value)))
        except ValueError:
            continue
    return rows
