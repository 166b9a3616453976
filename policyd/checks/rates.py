"""Defer mail beyond the sending rates: per authenticated user (messages/hour, recipients/day) or per client IP."""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import NamedTuple

from congvu.directory.model import Account, RateDecision, StateUnavailable
from congvu.policyd.checks.base import PASSED, Check, Context, Result, passed
from congvu.policyd.protocol import PolicyRequest
from congvu.policyd.settings import PolicydConfig
from congvu.rules.config import MailboxType
from congvu.rules.decision import Decision, Verdict

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


class Call(NamedTuple):
    """One counter call the rate check needs: add ``amount`` to ``key`` if ``window`` stays ≤ ``limit``."""

    key: str
    amount: int
    window: timedelta
    limit: int
    label: str
    now: float


class Plan(NamedTuple):
    """What the rate check will count for one message: every window, and those with a limit, in order."""

    calls: tuple[Call, ...]
    #: The calls with a limit (0 = unlimited is not counted), in the order they must be made.
    counted: tuple[Call, ...]
    who: str
    source: str
    marker: str
    now: float


class Limits(NamedTuple):
    """One sender's windows; 0 means unlimited (a NamedTuple: one is built per counted message)."""

    messages_per_hour: int
    recipients_per_day: int
    source: str


def user_limits(cfg: PolicydConfig, address: str, kind: MailboxType) -> Limits:
    """The mailbox type's limits, replaced key by key by ``[policyd.rate_overrides]`` for this address.

    This is the per-account override hook: a directory attribute can feed it later
    without the check changing.
    """
    p = cfg.policyd
    override = p.rate_overrides.get(address)
    if override is None:
        return Limits(p.messages_per_hour(kind), p.recipients_per_day(kind), f"{kind} mailbox defaults")
    return Limits(override.get("messages_per_hour", p.messages_per_hour(kind)),
                  override.get("recipients_per_day", p.recipients_per_day(kind)),
                  f"rate_overrides[{address}]")


def client_key(address: str, v6_prefix: int) -> str:
    """IPv4 clients count alone; IPv6 clients by their /64 (or the configured prefix)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return str(ipaddress.ip_network(f"{ip}/{v6_prefix}", strict=False))
    return str(ip)


class RatesCheck(Check):
    """Sliding-window sending rates, counted once per message (``instance``) at DATA or END-OF-MESSAGE."""

    name = "rates"
    rule_id = "CT25-3.1"
    states = frozenset({"DATA", "END-OF-MESSAGE"})

    def _marker(self, req: PolicyRequest) -> str:
        return f"{req.instance}|{req.sasl_username}|{req.client_address}" if req.instance else ""

    def skip_reason(self, req: PolicyRequest, ctx: Context) -> str | None:
        marker = self._marker(req)
        if marker and marker in ctx.counted:
            return f"message {req.instance} already counted"
        if not req.authenticated:
            p = ctx.cfg.policyd
            if p.ip_messages_per_hour == 0:
                return "ip_messages_per_hour = 0 (unlimited)"
            if p.ip_rate_skip_mynetworks and ctx.in_mynetworks(req.client_address):
                return f"client {req.client_address} is in mynetworks"
            try:
                ipaddress.ip_address(req.client_address)
            except ValueError:
                return f"client address {req.client_address!r} is not an IP address"
        return None

    def needs_io(self, req: PolicyRequest, ctx: Context) -> bool:
        return True

    def needs_directory(self, req: PolicyRequest, ctx: Context) -> bool:
        """True if finding the sender's limits needs a directory call (a thread)."""
        return req.authenticated and not ctx.accounts.cached(ctx.login(req))

    def plan(self, req: PolicyRequest, ctx: Context) -> Plan:
        """The windows to count for this message, in order, with who is counted and under which limits."""
        now = ctx.clock()
        if req.authenticated:
            login = ctx.login(req)
            account: Account | None = ctx.accounts.get(login)
            address = account.address if account is not None else login
            lim = user_limits(ctx.cfg, address, account.mailbox_type if account is not None else "personal")
            calls: tuple[Call, ...] = (
                Call(f"policyd:msgs:{address}", 1, HOUR, lim.messages_per_hour, "messages per hour", now),
                Call(f"policyd:rcpts:{address}", max(1, req.recipient_count), DAY, lim.recipients_per_day,
                     "recipients per day", now))
            who, source = address, lim.source
        else:
            net = client_key(req.client_address, ctx.cfg.policyd.ipv6_prefix)
            calls = (Call(f"policyd:ip:{net}", 1, HOUR, ctx.cfg.policyd.ip_messages_per_hour,
                          "messages per hour", now),)
            who, source = f"client {net}", "ip_messages_per_hour"
        return Plan(calls, tuple(c for c in calls if c.limit != 0), who, source, self._marker(req), now)

    def conclude(self, ctx: Context, plan: Plan, answers: Sequence[RateDecision]) -> Result:
        """The result once the counter store answered ``plan.counted`` in order, up to the first refusal."""
        explain = ctx.dry_run
        notes: list[str] = []
        replies = iter(answers)
        for call in plan.calls:
            if call.limit == 0:
                if explain:
                    notes.append(f"{call.label} unlimited")
                continue
            answer = next(replies, None)
            if answer is None:
                raise StateUnavailable(f"counter store gave no answer for {call.label} of {plan.who}")
            allowed, totals, retry = answer
            if not allowed:
                if plan.marker and not ctx.dry_run:
                    ctx.counted.add(plan.marker)
                return Result(self._refusal(ctx, plan.who, call.label, call.limit, retry, plan.now),
                              f"{plan.who}: {call.label} would reach {totals[0] + call.amount} > {call.limit} "
                              f"({plan.source})")
            if explain:  # notes only for explain: nobody reads them on the hot path
                notes.append(f"{call.label} {totals[0]}/{call.limit} (dry run: not counted)")
        if not explain:
            if plan.marker:
                ctx.counted.add(plan.marker)
            return PASSED
        return passed(f"{plan.who} counted ({plan.source}): {', '.join(notes)}")

    def run(self, req: PolicyRequest, ctx: Context) -> Result:
        """The check with the blocking store (thread pool, SQLite, ``explain``): all windows or none.

        Every window is looked at (``peek``) before any is counted, so a message refused by
        one window (recipients per day, say) does not spend another (messages per hour):
        otherwise each retry of a deferred message would burn more of the hourly budget.
        The store is atomic per key only, so two races remain, both rare and both
        conservative: a window found full whose oldest bucket expires between the look and
        the refusal gets counted before the other windows are, and a window filled by
        another request between the look and the count refuses after the earlier windows
        were counted.  The native Redis path (its batch script, ``policyd/lua/multi.lua``) has
        neither: its check and its count run in one script.
        """
        counters = ctx.counters
        if counters is None:
            raise StateUnavailable(ctx.counters_reason or "counter store not opened")
        plan = self.plan(req, ctx)
        looked: list[RateDecision] = []
        counted_early: set[int] = set()
        for i, call in enumerate(plan.counted):
            total = counters.peek(call.key, [call.window], call.now)[0]
            if total + call.amount <= call.limit:
                looked.append(RateDecision(True, (total,), None))
                continue
            if ctx.dry_run:  # explain: look, never count
                return self.conclude(ctx, plan, [*looked, RateDecision(False, (total,), 0.0)])
            # Full: the store itself refuses (nothing counted) and says when to retry.
            answer = counters.hit_if_below(call.key, call.amount, [(call.window, call.limit)], call.now)
            if not answer.allowed:
                return self.conclude(ctx, plan, [*looked, answer])
            counted_early.add(i)  # a bucket expired in between: this window is counted already
            looked.append(answer)
        if ctx.dry_run:
            return self.conclude(ctx, plan, looked)
        answers: list[RateDecision] = []
        for i, call in enumerate(plan.counted):
            if i in counted_early:
                answers.append(looked[i])
                continue
            answer = counters.hit_if_below(call.key, call.amount, [(call.window, call.limit)], call.now)
            answers.append(answer)
            if not answer.allowed:
                break
        return self.conclude(ctx, plan, answers)

    def _refusal(self, ctx: Context, who: str, label: str, limit: int, retry: float | None,
                 now: float) -> Decision:
        rid = ctx.cfg.origins["policyd.messages_per_hour_personal"].rule_id
        label_vi = {"messages per hour": "thư mỗi giờ", "recipients per day": "người nhận mỗi ngày"}[label]
        if retry is None or math.isinf(retry):
            return Decision(
                Verdict.REJECT, rid,
                text_vi=f"Một thư không thể vượt mức {limit} {label_vi} của {who}",
                text_en=f"One message cannot exceed the limit of {limit} {label} of {who}",
                smtp_code=550, enhanced="5.7.1")
        minutes = max(1, math.ceil(retry / 60))
        at = time.strftime("%H:%M", time.localtime(now + retry))
        return Decision(
            Verdict.DEFER, rid,
            text_vi=f"{who} đã đạt mức {limit} {label_vi}; hãy gửi lại sau {minutes} phút (lúc {at})",
            text_en=f"{who} reached the limit of {limit} {label}; retry in {minutes} min (at {at})",
            smtp_code=450, enhanced="4.7.1")
