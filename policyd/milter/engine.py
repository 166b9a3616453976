"""Run the content rules over one message and turn what they found into the milter's answer.

Synchronous and free of Twisted's reactor: the server calls :meth:`Engine.evaluate` in the
reactor when every address :meth:`Engine.lookups` names is cached, and in its thread pool
otherwise; ``congvu milter explain`` calls it directly.  Mail from outside the site (not
authenticated, client not in ``[policyd] mynetworks``) is held to no rule unless
``[milter] apply_to = "all"``: the regulations bind the site's senders.

Per rule, ``[milter] <rule>`` says what a violation does: ``reject`` (the decision's 5xx),
``tempfail`` (the same text as 451 4.7.1), ``tag`` (an ``X-Congvu-Check`` header, and the
next rule runs), ``off`` (the rule is not in the engine).  A rule that raises (directory
down, :class:`~congvu.policyd.milter.checks.Incomplete`, a bug) gets ``fail_<rule>``:
``tempfail`` answers 451 4.3.0, ``accept`` goes on to the next rule.  Nothing here can
produce a 5xx for an internal error.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from twisted.python.failure import Failure

from congvu.directory.model import Account, DirectoryUnavailable
from congvu.policyd.engine import decision_action
from congvu.policyd.milter.checks import RULES, Envelope, Incomplete, Rule
from congvu.policyd.milter.mime import MessageFacts
from congvu.policyd.milter.settings import MilterConfig
from congvu.policyd.protocol import clip
from congvu.rules.decision import Decision, Verdict
from congvu.rules.requirements import citation

#: ``get(address)`` → the account, or None; may raise DirectoryUnavailable.
Lookup = Callable[[str], Account | None]


class Step(NamedTuple):
    """What one rule did with the message: skipped, passed, tagged, refused, or failed (and the policy used).

    A NamedTuple: five are made for every message.
    """

    rule: str
    outcome: str
    note: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer to one message, with the rule and article behind it."""

    action: str  # accept, reject, tempfail
    reply: str = ""  # "550 5.7.1 text (id: citation)" for reject and tempfail
    headers: tuple[tuple[str, str], ...] = ()
    rule: str = ""
    rule_id: str = ""
    citation: str = ""
    steps: tuple[Step, ...] = ()
    #: (rule, failure) for every rule that raised; logged by the caller, in the reactor.
    failures: tuple[tuple[str, Failure], ...] = field(default=(), repr=False)


def failure_reply(rule: Rule, rid: str, cfg: MilterConfig) -> str:
    """Fail closed: 451 4.3.0, naming the rule that could not decide."""
    d = Decision(Verdict.DEFER, rid, smtp_code=451, enhanced="4.3.0",
                 text_vi=f"Tạm thời không kiểm tra được thư ({rule.name}), xin gửi lại sau",
                 text_en=f"Temporary failure in the {rule.name} check, please retry later")
    return decision_action(d, cfg.language)


class Engine:
    """The rules not turned off, in table order, over one configuration."""

    def __init__(self, cfg: MilterConfig) -> None:
        self.cfg = cfg
        self.rules: tuple[Rule, ...] = tuple(r() for r in RULES if cfg.milter.action(r.name) != "off")
        self.off: tuple[str, ...] = tuple(r.name for r in RULES if cfg.milter.action(r.name) == "off")

    def outside(self, env: Envelope) -> str | None:
        """Why no rule applies to this message's sender (``[milter] apply_to``), or None."""
        if env.login or self.cfg.milter.apply_to == "all":
            return None
        try:
            ip = ipaddress.ip_address(env.client)
        except ValueError:
            return f"client {env.client or 'unknown'}, not authenticated: [milter] apply_to = senders"
        if any(ip in net for net in self.cfg.policyd.mynetworks):
            return None
        return f"mail from outside ({env.client}, not authenticated): [milter] apply_to = senders"

    def lookups(self, env: Envelope, facts: MessageFacts) -> tuple[str, ...]:
        """Every address the applicable rules will look up."""
        if self.outside(env):
            return ()
        out: list[str] = []
        for rule in self.rules:
            if rule.skip_reason(env, facts, self.cfg) is None:
                out.extend(rule.lookups(env, facts, self.cfg))
        return tuple(dict.fromkeys(out))

    def evaluate(self, env: Envelope, facts: MessageFacts, get: Lookup) -> Outcome:
        """Every rule in order; the first reject or tempfail wins, tags add up; the steps say why."""
        cfg = self.cfg
        steps: list[Step] = []
        headers: list[tuple[str, str]] = []
        failures: list[tuple[str, Failure]] = []
        tagged: tuple[str, str] = ("", "")  # the first rule that tagged, and its id
        outside = self.outside(env)
        for rule in self.rules:
            reason = outside or rule.skip_reason(env, facts, cfg)
            if reason is not None:
                steps.append(Step(rule.name, "skipped", reason))
                continue
            rid = rule.rule_id(cfg)
            try:
                accounts = {a: get(a) for a in rule.lookups(env, facts, cfg)}
                result = rule.run(env, facts, accounts, cfg)
            except Exception:
                f = Failure()  # type: ignore[no-untyped-call]
                failures.append((rule.name, f))
                policy = cfg.milter.failure(rule.name)
                kind = ("incomplete" if isinstance(f.value, Incomplete) else
                        "unavailable" if isinstance(f.value, DirectoryUnavailable) else "error")
                steps.append(Step(rule.name, "failed", f"{kind}: {f.value}; fail_{rule.name} = {policy}"))
                if policy == "tempfail":
                    return Outcome("tempfail", failure_reply(rule, rid, cfg), tuple(headers), rule.name, rid,
                                   citation(rid), tuple(steps), tuple(failures))
                continue
            d = result.decision
            if d is None:
                steps.append(Step(rule.name, "passed", result.note))
                continue
            action = "tempfail" if d.verdict is Verdict.DEFER else cfg.milter.action(rule.name)
            if action == "tag":
                steps.append(Step(rule.name, "tagged", result.note))
                headers.append((cfg.milter.tag_header, clip(f"{d.rule_id} {rule.name}: {result.note}", 300)))
                tagged = tagged if tagged[0] else (rule.name, d.rule_id)
                continue
            if action == "tempfail" and d.verdict is not Verdict.DEFER:
                d = replace(d, verdict=Verdict.DEFER, smtp_code=451, enhanced="4.7.1")
            steps.append(Step(rule.name, "refused" if action == "reject" else "deferred", result.note))
            return Outcome(action, decision_action(d, cfg.language), tuple(headers), rule.name, d.rule_id,
                           d.citation, tuple(steps), tuple(failures))
        name, rid = tagged
        return Outcome("accept", "", tuple(headers), name, rid, citation(rid) if rid else "", tuple(steps),
                       tuple(failures))
