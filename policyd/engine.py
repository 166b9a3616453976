"""Run the checks over one request and turn the first refusal into a Postfix action.

Synchronous and free of Twisted: the server calls :meth:`Engine.evaluate` in the reactor
when :meth:`Engine.needs_io` is False and in its thread pool otherwise; ``congvu policyd
explain`` calls it directly.  A check that raises is handled by its failure policy
(``[policyd] fail_<check>``): ``defer`` answers ``DEFER_IF_PERMIT 4.3.0`` (fail closed),
``dunno`` goes on to the next check (fail open).  Nothing here can produce a 5xx for an
internal error.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from twisted.python.failure import Failure

from congvu.directory.model import DirectoryUnavailable, StateUnavailable
from congvu.policyd.checks import CHECK_NAMES, CHECKS, Check, Context, Result
from congvu.policyd.protocol import PolicyRequest, bounded_action
from congvu.rules.decision import Decision, Language, Verdict
from congvu.rules.requirements import citation


@dataclass(frozen=True, slots=True)
class Step:
    """What one check did with the request: skipped, passed, refused, or failed (and the policy used)."""

    check: str
    outcome: str
    note: str


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The answer to one request, with the check and article behind it."""

    action: str
    verdict: str  # dunno, reject, defer, warn, defer_if_permit
    check: str = ""
    rule_id: str = ""
    citation: str = ""
    steps: tuple[Step, ...] = ()
    #: (check, failure) for every check that raised; logged by the caller, in the reactor.
    failures: tuple[tuple[str, Failure], ...] = field(default=(), repr=False)

    @property
    def blocks(self) -> bool:
        return self.verdict != "dunno" and self.verdict != "warn"


DUNNO = Evaluation("DUNNO", "dunno")


@dataclass(slots=True)
class Pending:
    """What :meth:`Engine.first_pass` left for a thread: the remaining checks, the first needing I/O."""

    checks: tuple[Check, ...]
    failures: list[tuple[str, Failure]]


def decision_action(d: Decision, language: Language) -> str:
    """A Decision as a Postfix access(5) action: ``550 5.7.1 text (id: citation)``.

    Bounded here, for every check: the free text is cut (:data:`policyd.protocol.MAX_REASON`
    characters per reason, :data:`policyd.protocol.MAX_ACTION` bytes in all), the codes, the
    rule id and the citation are kept, so a 2,000-character ``state_reason`` never makes a
    reply longer than the 512 octets RFC 5321 allows per line.
    """
    if d.verdict is Verdict.REJECT:
        head = f"{d.smtp_code or 554} {d.enhanced or '5.7.1'}"
    elif d.verdict is Verdict.DEFER:
        head = f"{d.smtp_code or 450} {d.enhanced or '4.7.1'}"
    elif d.verdict is Verdict.WARN:
        head = "WARN"
    else:
        return "DUNNO"
    return bounded_action(head, _texts(d, language), f"({d.rule_id}: {d.citation})")


def _texts(d: Decision, language: Language) -> tuple[str, ...]:
    """The decision's sentences in the configured language (as :meth:`Decision.text` picks them)."""
    if language == "vi":
        return (d.text_vi or d.text_en,)
    if language == "en":
        return (d.text_en or d.text_vi,)
    return tuple(t for t in (d.text_vi, d.text_en) if t)


def failure_action(check: Check, language: Language) -> str:
    """Fail closed: 450 4.3.0 if nothing else rejects the mail (Postfix DEFER_IF_PERMIT)."""
    d = Decision(Verdict.DEFER, check.rule_id,
                 text_vi=f"Tạm thời không kiểm tra được ({check.name}), xin gửi lại sau",
                 text_en=f"Temporary failure in the {check.name} check, please retry later")
    return bounded_action("DEFER_IF_PERMIT 4.3.0", _texts(d, language), f"({d.rule_id}: {d.citation})")


class Engine:
    """The enabled checks in table order, over one :class:`Context` (one config)."""

    def __init__(self, ctx: Context, disabled: Iterable[str] = ()) -> None:
        disabled = set(disabled)
        unknown = disabled - set(CHECK_NAMES)
        if unknown:
            raise ValueError(f"unknown checks in disabled_checks: {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(CHECK_NAMES)})")
        self.ctx = ctx
        self.checks: tuple[Check, ...] = tuple(cls() for cls in CHECKS if cls.name not in disabled)
        self.disabled = tuple(n for n in CHECK_NAMES if n in disabled)
        self.language: Language = ctx.cfg.language
        #: protocol state → the enabled checks that run in it, in table order.
        self._by_state: dict[str, tuple[Check, ...]] = {
            st: tuple(c for c in self.checks if st in c.states) for c in self.checks for st in c.states}

    def first_pass(self, req: PolicyRequest) -> Evaluation | Pending:
        """Run, in order, the checks that need no I/O; stop at the first one that does.

        The server calls this in the reactor: most requests end here.  A :class:`Pending`
        holds the rest (starting with the check that needs I/O) for :meth:`finish`, in a
        thread, or for the server's native counter path and :meth:`settle`.
        """
        checks = self._by_state.get(req.protocol_state)
        if not checks:
            return DUNNO
        return self._inline(req, checks, [])

    def _inline(self, req: PolicyRequest, checks: tuple[Check, ...],
                failures: list[tuple[str, Failure]]) -> Evaluation | Pending:
        ctx = self.ctx
        for i, check in enumerate(checks):
            if check.skip_reason(req, ctx) is not None:
                continue
            if check.needs_io(req, ctx):
                return Pending(checks[i:], failures)
            outcome: Result | Failure
            try:
                result = check.run(req, ctx)
            except Exception:
                outcome = Failure()  # type: ignore[no-untyped-call]
            else:
                d = result.decision
                if d is None or not d.blocks:  # passed: nothing to record on this path (no steps)
                    continue
                outcome = result
            ev = self._outcome(check, outcome, failures, None)
            if ev is not None:
                return ev
        return Evaluation("DUNNO", "dunno", failures=tuple(failures)) if failures else DUNNO

    def settle(self, req: PolicyRequest, pending: Pending, outcome: Result | Failure) -> Evaluation | Pending:
        """The first pending check was run elsewhere (natively): apply its outcome, go on inline."""
        check = pending.checks[0]
        ev = self._outcome(check, outcome, pending.failures, None)
        if ev is not None:
            return ev
        return self._inline(req, pending.checks[1:], pending.failures)

    def finish(self, req: PolicyRequest, pending: Pending) -> Evaluation:
        """The rest of :meth:`first_pass`, I/O allowed (called from the thread pool)."""
        ctx = self.ctx
        failures = pending.failures
        for check in pending.checks:
            if check.skip_reason(req, ctx) is not None:
                continue
            ev = self._run(check, req, failures, None)
            if ev is not None:
                return ev
        return Evaluation("DUNNO", "dunno", failures=tuple(failures)) if failures else DUNNO

    def evaluate(self, req: PolicyRequest, explain: bool = False) -> Evaluation:
        """Every check in order, I/O allowed; with ``explain``, the steps say what each did and why."""
        ctx = self.ctx
        steps: list[Step] | None = [] if explain else None
        failures: list[tuple[str, Failure]] = []
        for check in self.checks:
            if req.protocol_state not in check.states:
                reason: str | None = (f"not run at {req.protocol_state or 'an empty state'} "
                                      f"(runs at {', '.join(sorted(check.states))})")
            else:
                reason = check.skip_reason(req, ctx)
            if reason is not None:
                if steps is not None:
                    steps.append(Step(check.name, "skipped", reason))
                continue
            ev = self._run(check, req, failures, steps)
            if ev is not None:
                return ev
        if not steps and not failures:
            return DUNNO
        return Evaluation("DUNNO", "dunno", steps=tuple(steps or ()), failures=tuple(failures))

    def _run(self, check: Check, req: PolicyRequest, failures: list[tuple[str, Failure]],
             steps: list[Step] | None) -> Evaluation | None:
        """One check: its blocking answer, its failure policy's answer, or None to go on."""
        try:
            outcome: Result | Failure = check.run(req, self.ctx)
        except Exception:
            outcome = Failure()  # type: ignore[no-untyped-call]
        return self._outcome(check, outcome, failures, steps)

    def _outcome(self, check: Check, outcome: Result | Failure, failures: list[tuple[str, Failure]],
                 steps: list[Step] | None) -> Evaluation | None:
        if isinstance(outcome, Failure):
            failures.append((check.name, outcome))
            e = outcome.value
            kind = "unavailable" if isinstance(e, DirectoryUnavailable | StateUnavailable) else "error"
            policy = self.ctx.cfg.policyd.failure(check.name)
            step = Step(check.name, "failed", f"{kind}: {e}; fail_{check.name} = {policy}")
            if steps is not None:
                steps.append(step)
            if policy == "defer":
                return Evaluation(failure_action(check, self.language), "defer_if_permit", check.name,
                                  check.rule_id, citation(check.rule_id), tuple(steps or (step,)), tuple(failures))
            return None
        d = outcome.decision
        if d is None or not d.blocks:
            if steps is not None:
                steps.append(Step(check.name, "passed", outcome.note))
            return None
        step = Step(check.name, "refused", outcome.note)
        if steps is not None:
            steps.append(step)
        return Evaluation(decision_action(d, self.language), d.verdict.value, check.name, d.rule_id,
                          d.citation, tuple(steps or (step,)), tuple(failures))
