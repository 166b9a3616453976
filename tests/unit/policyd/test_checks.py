"""Each check through the engine, over real SQLite stores: what is refused, with which code and article."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from congvu.directory.model import DirectoryUnavailable, StateUnavailable
from congvu.policyd.checks import CHECK_NAMES, CHECKS
from congvu.policyd.checks.rates import client_key
from congvu.rules.lifecycle import AccountState
from congvu.rules.units import MB
from tests.unit.policyd.conftest import Site, request


def test_the_order_table_names_every_check_once_with_docs_and_ids() -> None:
    """One table, each check with a one-line docstring, a requirement id and its protocol states."""
    assert CHECK_NAMES == ("account_state", "sender_login", "forged_sender", "size", "recipients", "rates")
    for cls in CHECKS:
        assert cls.__doc__ and len(cls.__doc__.strip().splitlines()) == 1
        assert cls.rule_id and cls.states
        assert (cls.__module__.rsplit(".", 1)[1]) == cls.name


# --------------------------------------------------------------------------- account state


@pytest.mark.parametrize(("state", "rid", "word"), [
    (AccountState.LOCKED, "CT25-6.4a", "temporarily locked"),
    (AccountState.SUSPENDED, "CT15-5.4", "suspended"),
    (AccountState.RECLAIMED, "CT25-6.5", "reclaimed"),
    (AccountState.CANCELLED, "CT25-6.3", "cancelled"),
])
def test_blocked_account_states_are_refused_with_their_reason(site: Site, state: AccountState, rid: str,
                                                              word: str) -> None:
    """A locked, suspended, reclaimed or cancelled sender gets 550 5.7.1 naming the reason and article."""
    site.add("nvminh", state=state, state_reason="vi phạm Điều 3")
    ev = site.engine().evaluate(request(sasl_username="nvminh", sender="nvminh@cantho.gov.vn"))
    assert ev.check == "account_state" and ev.rule_id == rid
    assert ev.action.startswith("550 5.7.1 ") and word in ev.action and "vi phạm Điều 3" in ev.action


def test_must_change_password_names_the_change_page(site: Site) -> None:
    """A new password not yet changed (CT25-5.2): refused, and the reply gives the change URL."""
    site.add("nvminh", must_change=True)
    ev = site.engine().evaluate(request(sasl_username="nvminh@cantho.gov.vn", sender="nvminh@cantho.gov.vn"))
    assert ev.rule_id == "CT25-5.2" and "https://mail.cantho.gov.vn/doimatkhau" in ev.action
    assert ev.action.startswith("550 5.7.1")


def test_expired_password_is_refused_after_three_months(site: Site) -> None:
    """CT25-6.4b: 3 months after the last change the account cannot send until it changes it."""
    site.add("nvminh", password_changed_at=datetime.fromtimestamp(site.clock.t, UTC) - timedelta(days=89))
    engine = site.engine()
    req = request(sasl_username="nvminh", sender="nvminh@cantho.gov.vn")
    assert engine.evaluate(req).action == "DUNNO"
    site.clock.t += 2 * 86400
    ev = engine.evaluate(req)
    assert ev.rule_id == "CT25-6.4b" and "doimatkhau" in ev.action


def test_active_account_passes_and_unknown_login_is_deferred(site: Site) -> None:
    """An active account sends; a login the directory does not know is deferred (4xx), never bounced."""
    site.add("nvminh")
    engine = site.engine()
    assert engine.evaluate(request(sasl_username="nvminh", sender="nvminh@cantho.gov.vn")).action == "DUNNO"
    ev = engine.evaluate(request(sasl_username="ghost", sender="ghost@cantho.gov.vn"))
    assert ev.check == "account_state" and ev.action.startswith("450 4.7.1")


def test_directory_down_fails_closed(site: Site) -> None:
    """Security checks fail closed: DEFER_IF_PERMIT 4.3.0, never a 5xx."""
    ev = site.engine(store=None).evaluate(request(sasl_username="nvminh", sender="nvminh@cantho.gov.vn"))
    assert ev.action.startswith("DEFER_IF_PERMIT 4.3.0 ") and ev.check == "account_state"
    assert ev.failures and ev.failures[0][1].check(DirectoryUnavailable)


def test_failure_policy_dunno_goes_on(site: Site) -> None:
    """fail_account_state = dunno lets the next checks decide (here size refuses)."""
    engine = site.engine({"policyd": {"fail_account_state": "dunno", "fail_sender_login": "dunno"}}, store=None)
    ev = engine.evaluate(request(sasl_username="nvminh", sender="nvminh@cantho.gov.vn", size=100 * MB))
    assert ev.check == "size" and ev.action.startswith("552 5.3.4")


# --------------------------------------------------------------------------- sender = login


def test_sender_login_own_alias_delegation_and_mismatch(site: Site) -> None:
    """CT25-3.2: own address, aliases and shared mailboxes delegated to the login pass; anything else is refused."""
    site.add("nvminh", aliases=("minh.nv@cantho.gov.vn",))
    site.add("vanphong.sonv", mailbox_type="unit", delegates=("nvminh@cantho.gov.vn",))
    site.add("other")
    engine = site.engine()
    for sender in ("nvminh@cantho.gov.vn", "NVMinh@Cantho.gov.vn", "minh.nv@cantho.gov.vn",
                   "vanphong.sonv@cantho.gov.vn", ""):
        assert engine.evaluate(request(sasl_username="nvminh", sender=sender)).action == "DUNNO", sender
    for sender in ("other@cantho.gov.vn", "nvminh@gmail.com"):
        ev = engine.evaluate(request(sasl_username="nvminh", sender=sender))
        assert ev.check == "sender_login" and ev.action.startswith("553 5.7.1") and "CT25-3.2" in ev.action


def test_delegate_cannot_send_as_a_blocked_shared_mailbox(site: Site) -> None:
    """A cancelled or locked shared mailbox cannot be used through its delegates either."""
    site.add("nvminh")
    site.add("vanphong.sonv", mailbox_type="unit", delegates=("nvminh@cantho.gov.vn",),
             state=AccountState.CANCELLED)
    ev = site.engine().evaluate(request(sasl_username="nvminh", sender="vanphong.sonv@cantho.gov.vn"))
    assert ev.check == "sender_login" and ev.action.startswith("550 5.7.1") and "CT25-6.3" in ev.action


# --------------------------------------------------------------------------- forged local domain


def test_forged_local_sender_from_outside(site: Site) -> None:
    """Unauthenticated mail claiming the site's domain is refused from outside mynetworks only."""
    engine = site.engine({"policyd": {"local_domains": ["sonv.cantho.gov.vn"]}})
    ev = engine.evaluate(request(sender="giamdoc@cantho.gov.vn", client_address="198.51.100.7"))
    assert ev.check == "forged_sender" and ev.action.startswith("553 5.7.1")
    assert engine.evaluate(request(sender="x@sonv.cantho.gov.vn", client_address="2001:db8::1")).blocks
    assert engine.evaluate(request(sender="giamdoc@cantho.gov.vn", client_address="127.0.0.1")).action == "DUNNO"
    assert engine.evaluate(request(sender="a@example.com", client_address="198.51.100.7")).action == "DUNNO"
    for trick in ("giamdoc@cantho.gov.vn.", "<GiamDoc@CANTHO.GOV.VN..>"):
        ev = engine.evaluate(request(sender=trick, client_address="198.51.100.7"))
        assert ev.check == "forged_sender" and ev.action.startswith("553 5.7.1"), trick


# --------------------------------------------------------------------------- size


@pytest.mark.parametrize(("profile", "ok_mb", "refused_mb", "rid"), [
    ("cantho-2025", 15, 25, "CT25-5.1"), ("thanhhoa-2013", 9, 12, "TH13-9")])
def test_size_declared_at_rcpt_and_actual_at_end(site: Site, profile: str, ok_mb: int, refused_mb: int,
                                                 rid: str) -> None:
    """A base64 attachment of refused_mb is refused with 552 5.3.4 and the profile's article; ok_mb passes."""
    engine = site.engine(profile=profile)

    def encoded(mb: int) -> int:
        return math.ceil(mb * MB * 4 / 3 * 78 / 76) + 20_000

    for state in ("RCPT", "END-OF-MESSAGE"):
        assert engine.evaluate(request(protocol_state=state, size=encoded(ok_mb), sender="a@x.vn")).action == "DUNNO"
        ev = engine.evaluate(request(protocol_state=state, size=encoded(refused_mb), sender="a@x.vn"))
        assert ev.action.startswith("552 5.3.4 ") and ev.rule_id == rid
        assert "tập tin đính kèm" in ev.action and "attachments are limited" in ev.action


def test_size_limit_per_mailbox_type(site: Site) -> None:
    """With attachment_max_agency set, an agency sender may send more than a personal one."""
    site.add("nvminh")
    site.add("sonv", mailbox_type="agency")
    engine = site.engine({"policyd": {"attachment_max_agency": "50MB"}})
    size = 40 * MB
    ev = engine.evaluate(request(sasl_username="nvminh", sender="nvminh@cantho.gov.vn", size=size))
    assert ev.check == "size"
    assert engine.evaluate(request(sasl_username="sonv", sender="sonv@cantho.gov.vn", size=size)).action == "DUNNO"
    # inbound to the agency mailbox: the recipient's type decides
    assert engine.evaluate(request(sender="a@example.com", recipient="sonv@cantho.gov.vn", size=size)).action == "DUNNO"


# --------------------------------------------------------------------------- recipients


def test_recipients_per_message_at_data(site: Site) -> None:
    """More than max_recipients accepted recipients: the message is refused at DATA."""
    engine = site.engine({"policyd": {"max_recipients": 5}})
    assert engine.evaluate(request(protocol_state="DATA", recipient_count=5, sender="a@x.vn")).action == "DUNNO"
    ev = engine.evaluate(request(protocol_state="DATA", recipient_count=6, sender="a@x.vn"))
    assert ev.check == "recipients" and ev.action.startswith("550 5.5.3")


# --------------------------------------------------------------------------- rates


def _message(n: int, **kw: Any) -> dict[str, Any]:
    return dict(protocol_state="DATA", instance=f"i{n}", recipient_count=1, **kw)


def test_the_101st_message_of_the_hour_is_deferred_with_the_retry_time(site: Site) -> None:
    """100 messages/hour for a personal mailbox; the 101st gets 450 4.7.1 with when to retry."""
    site.add("nvminh")
    engine = site.engine()
    for n in range(100):
        site.clock.t += 1
        assert engine.evaluate(request(**_message(n, sasl_username="nvminh", sender="nvminh@cantho.gov.vn"))).action \
            == "DUNNO"
    ev = engine.evaluate(request(**_message(100, sasl_username="nvminh", sender="nvminh@cantho.gov.vn")))
    assert ev.check == "rates" and ev.action.startswith("450 4.7.1 ") and "retry in" in ev.action
    site.clock.t += 3600 + 120  # the window slides past the first messages
    assert engine.evaluate(request(**_message(101, sasl_username="nvminh", sender="nvminh@cantho.gov.vn"))).action \
        == "DUNNO"


def test_a_message_counts_once_across_data_and_end_of_message(site: Site) -> None:
    """DATA and END-OF-MESSAGE of one instance count one message (limit 1 → the second message defers)."""
    site.add("nvminh")
    engine = site.engine({"policyd": {"rate_overrides": {"nvminh@cantho.gov.vn": {"messages_per_hour": 1}}}})
    base = dict(sasl_username="nvminh", sender="nvminh@cantho.gov.vn", recipient_count=1)
    assert engine.evaluate(request(protocol_state="DATA", instance="m1", **base)).action == "DUNNO"
    assert engine.evaluate(request(protocol_state="END-OF-MESSAGE", instance="m1", **base)).action == "DUNNO"
    assert engine.evaluate(request(protocol_state="DATA", instance="m2", **base)).action.startswith("450 4.7.1")


def test_recipients_per_day_and_type_defaults(site: Site) -> None:
    """Recipients per day count recipient_count; a unit mailbox has its own (higher) default."""
    site.add("nvminh")
    engine = site.engine({"policyd": {"recipients_per_day_personal": 10, "max_recipients": 0}})
    base = dict(sasl_username="nvminh", sender="nvminh@cantho.gov.vn")
    assert engine.evaluate(request(**{**_message(1, **base), "recipient_count": 8})).action == "DUNNO"
    ev = engine.evaluate(request(**{**_message(2, **base), "recipient_count": 3}))
    assert ev.action.startswith("450 4.7.1") and "recipients per day" in ev.action
    ev = engine.evaluate(request(**{**_message(3, **base), "recipient_count": 11}))
    assert ev.action.startswith("550 5.7.1")  # can never fit in the window: no point retrying


def test_unauthenticated_clients_are_counted_per_ip_and_ipv6_per_64(site: Site) -> None:
    """Per-IP limit for unauthenticated mail; two addresses in one IPv6 /64 share a counter."""
    engine = site.engine({"policyd": {"ip_messages_per_hour": 2}})
    seq = [("2001:db8:1:2::1", "DUNNO"), ("2001:db8:1:2::ffff", "DUNNO"), ("2001:db8:1:2:abcd::9", "450"),
           ("2001:db8:1:3::1", "DUNNO"), ("198.51.100.1", "DUNNO"), ("127.0.0.1", "DUNNO")]
    for n, (ip, want) in enumerate(seq):
        ev = engine.evaluate(request(**_message(n, sender="a@example.com", client_address=ip)))
        assert ev.action.startswith(want), (ip, ev.action)
    assert client_key("::ffff:198.51.100.1", 64) == "198.51.100.1"


def test_counter_store_down_fails_open(site: Site) -> None:
    """Rate limits fail open: DUNNO, with the failure recorded for the log."""
    site.add("nvminh")

    class Down:
        def hit_if_below(self, *a: Any) -> Any:
            raise StateUnavailable("redis 127.0.0.1:1: connection refused")

    ev = site.engine(counters=Down()).evaluate(request(**_message(1, sasl_username="nvminh",
                                                                   sender="nvminh@cantho.gov.vn")))
    assert ev.action == "DUNNO" and ev.failures[0][0] == "rates"


def test_a_bug_in_a_check_never_gives_a_5xx(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected exception in a security check defers (4.3.0); never a permanent refusal."""
    from congvu.policyd.checks.forged_sender import ForgedSenderCheck

    def boom(*a: Any) -> Any:
        raise KeyError("bug")

    monkeypatch.setattr(ForgedSenderCheck, "run", boom)
    ev = site.engine().evaluate(request(sender="a@cantho.gov.vn", size=100 * MB))
    assert ev.action.startswith("DEFER_IF_PERMIT 4.3.0") and ev.check == "forged_sender"


def test_disabled_checks_do_not_run(site: Site) -> None:
    """disabled_checks removes a check from the order."""
    engine = site.engine({"policyd": {"disabled_checks": ["size"]}})
    assert engine.evaluate(request(size=100 * MB, sender="a@x.vn")).action == "DUNNO"
    assert [c.name for c in engine.checks] == [n for n in CHECK_NAMES if n != "size"]


def test_explain_lists_every_check_and_why(site: Site) -> None:
    """explain=True records skipped checks with their reason and the deciding one."""
    ev = site.engine().evaluate(request(sender="a@x.vn", size=100 * MB), explain=True)
    outcomes = {s.check: s.outcome for s in ev.steps}
    assert outcomes == {"account_state": "skipped", "sender_login": "skipped", "forged_sender": "passed",
                        "size": "refused"}
    assert any("did not authenticate" in s.note for s in ev.steps)


def test_first_pass_answers_cached_requests_without_io(site: Site) -> None:
    """A RCPT from a sender already looked up needs no I/O; a new sender or a DATA count does."""
    from congvu.policyd.engine import Pending
    site.add("nvminh")
    engine = site.engine()
    req = request(sasl_username="nvminh", sender="nvminh@cantho.gov.vn")
    pending = engine.first_pass(req)
    assert isinstance(pending, Pending) and pending.checks[0].name == "account_state"
    assert engine.finish(req, pending).action == "DUNNO"
    assert engine.first_pass(req).action == "DUNNO"  # type: ignore[union-attr]
    pending = engine.first_pass(request(**_message(1, sasl_username="nvminh", sender="nvminh@cantho.gov.vn")))
    assert isinstance(pending, Pending) and pending.checks[0].name == "rates"


# --------------------------------------------------------------------------- issue 4 audit


def test_a_long_state_reason_is_cut_but_the_article_stays(site: Site) -> None:
    """A 2,000-character state_reason gives a bounded reply: codes, reason start, rule id and citation kept."""
    from congvu.policyd.protocol import MAX_ACTION, MAX_REASON, format_reply
    from congvu.rules.requirements import citation
    reason = "Khóa theo yêu cầu của Sở " + "x" * 2000
    site.add("nvminh", state=AccountState.LOCKED, state_reason=reason)
    ev = site.engine().evaluate(request(sasl_username="nvminh", sender="nvminh@cantho.gov.vn"))
    assert ev.action.startswith("550 5.7.1 "), ev.action
    assert len(ev.action.encode()) <= MAX_ACTION, len(ev.action.encode())
    assert ev.action.endswith(f"(CT25-6.4a: {citation('CT25-6.4a')})"), ev.action
    assert "Khóa theo yêu cầu của Sở" in ev.action and "x" * (MAX_REASON + 1) not in ev.action
    reply = format_reply(ev.action)
    assert len(reply) <= MAX_ACTION + len(b"action=\n\n") and b"CT25-6.4a" in reply


def test_a_long_text_is_cut_in_every_language_before_the_citation() -> None:
    """bounded_action cuts the free texts (both languages keep a share), never the codes or the citation."""
    from congvu.policyd.protocol import MAX_ACTION, bounded_action, format_reply
    action = bounded_action("450 4.7.1", ["ngắn", "y" * 5000], "(CT25-3.1: Điều 3 khoản 1)")
    assert len(action.encode()) <= MAX_ACTION
    assert action.startswith("450 4.7.1 ngắn / yyy") and action.endswith("... (CT25-3.1: Điều 3 khoản 1)")
    assert bounded_action("WARN", ["a", "b"], "(X: y)") == "WARN a / b (X: y)"
    assert len(format_reply("REJECT " + "é" * 3000)) <= MAX_ACTION + len(b"action=\n\n")
    format_reply("REJECT " + "é" * 3000).decode()  # cut on a character boundary


def test_a_message_refused_on_recipients_is_not_counted_on_messages(site: Site) -> None:
    """All windows or none: retries of a message deferred on recipients/day do not spend messages/hour."""
    from datetime import timedelta as td
    site.add("nvminh")
    engine = site.engine({"policyd": {"messages_per_hour_personal": 3, "recipients_per_day_personal": 10,
                                      "max_recipients": 0}})
    base = dict(sasl_username="nvminh", sender="nvminh@cantho.gov.vn")
    assert engine.evaluate(request(**{**_message(1, **base), "recipient_count": 8})).action == "DUNNO"
    for n in range(2, 8):  # six retries, each a new SMTP session (a new instance)
        ev = engine.evaluate(request(**{**_message(n, **base), "recipient_count": 5}))
        assert ev.action.startswith("450 4.7.1") and "recipients per day" in ev.action, ev.action
    assert site.counters.peek("policyd:msgs:nvminh@cantho.gov.vn", [td(hours=1)], site.clock.t) == (1,)
    assert site.counters.peek("policyd:rcpts:nvminh@cantho.gov.vn", [td(days=1)], site.clock.t) == (8,)
    assert engine.evaluate(request(**{**_message(9, **base), "recipient_count": 2})).action == "DUNNO"
    assert site.counters.peek("policyd:msgs:nvminh@cantho.gov.vn", [td(hours=1)], site.clock.t) == (2,)


def test_per_ip_limit_is_off_by_default(site: Site) -> None:
    """ip_messages_per_hour defaults to 0: a big provider's relay is never deferred for its volume."""
    engine = site.engine()
    assert engine.ctx.cfg.policyd.ip_messages_per_hour == 0
    for n in range(400):
        ev = engine.evaluate(request(**_message(n, sender="a@example.com", client_address="203.0.113.25")))
        assert ev.action == "DUNNO", (n, ev.action)
