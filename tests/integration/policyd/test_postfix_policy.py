"""congvu policyd behind a real Postfix: the SMTP replies users and their clients see (issue 4).

Postfix is the session instance of ``tests/integration/servers/postfix.py``, configured
with the shipped ``conf/postfix`` snippets; policyd runs as ``congvu policyd`` on the
snippet's socket (``<queue>/congvu/policy``).  Authenticated senders come in on
the submission port with XCLIENT LOGIN (SMTP AUTH, answered by congvu authd, is tested in
tests/integration/authhooks/test_postfix_sasl.py);
"outside" clients are presented with XCLIENT ADDR.
"""

from __future__ import annotations

import base64
import functools
import smtplib
import time
import uuid
from dataclasses import dataclass

from tests.integration.policyd.conftest import Accounts, PostfixSite
from tests.integration.servers.postfix import PostfixServer

OUTSIDE = "198.51.100.7"  # TEST-NET-2: not in mynetworks
MiB = 1024 * 1024


@dataclass(frozen=True)
class Reply:
    """Where a transaction stopped (MAIL, RCPT, DATA, or END after the final dot) and Postfix's reply."""

    stage: str
    code: int
    text: str

    @property
    def accepted(self) -> bool:
        return self.stage == "END" and self.code == 250


@functools.lru_cache(maxsize=8)
def _attachment_b64(size: int) -> bytes:
    """``size`` bytes (rounded up to a whole base64 block), base64 in 76-column CRLF lines, built fast."""
    block = bytes(range(256)) * 57 * 3  # a multiple of 57 bytes: one block encodes to whole lines
    line = base64.encodebytes(block).replace(b"\n", b"\r\n")
    return line * -(-size // len(block))


def message(sender: str, rcpt: str, tag: str, attachment: int = 0) -> bytes:
    """A MIME message (CRLF) with a unique Subject ``tag`` and optionally an attachment of ``attachment`` bytes."""
    head = (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {tag}\r\nMessage-ID: <{tag}@test.cantho.gov.vn>\r\n"
            f"MIME-Version: 1.0\r\n").encode()
    if not attachment:
        return head + b"Content-Type: text/plain; charset=utf-8\r\n\r\nKinh gui.\r\n"
    return (head + b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
            b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nKinh gui bao cao.\r\n"
            b'--b1\r\nContent-Type: application/pdf; name="baocao.pdf"\r\nContent-Transfer-Encoding: base64\r\n'
            b'Content-Disposition: attachment; filename="baocao.pdf"\r\n\r\n'
            + _attachment_b64(attachment) + b"--b1--\r\n")


def _text(reply: bytes | str) -> str:
    return reply.decode() if isinstance(reply, bytes) else reply


def transact(s: smtplib.SMTP, sender: str, rcpt: str, body: bytes, *, declare_size: bool = True) -> Reply:
    """One mail transaction; never raises on a refusal, leaves the session ready for the next one."""
    code, text = s.mail(sender, [f"SIZE={len(body)}"] if declare_size else [])
    if code != 250:
        s.rset()
        return Reply("MAIL", code, text.decode())
    code, text = s.rcpt(rcpt)
    if code not in (250, 251):
        s.rset()
        return Reply("RCPT", code, text.decode())
    try:
        code, text = s.data(body)
    except smtplib.SMTPDataError as e:
        s.rset()
        return Reply("DATA", e.smtp_code, _text(e.smtp_error))
    if code != 250:
        s.rset()  # Postfix 3.7 keeps the transaction open after an END-OF-MESSAGE refusal ("nested MAIL")
    return Reply("END", code, text.decode())


def tag() -> str:
    return f"congvu-{uuid.uuid4().hex[:12]}"


def submission(pf: PostfixServer, login: str) -> smtplib.SMTP:
    """An authenticated session on the submission port (XCLIENT LOGIN)."""
    return pf.connect(pf.submission_port, login=login)


# --------------------------------------------------------------------------- the shipped snippets


def test_shipped_snippets_put_policyd_on_every_stage(postfix_server: PostfixServer) -> None:
    """The instance runs conf/postfix verbatim: policyd at RCPT, DATA and END-OF-MESSAGE, 4xx when it is down."""
    for param in ("smtpd_recipient_restrictions", "smtpd_data_restrictions", "smtpd_end_of_data_restrictions"):
        value = postfix_server.postconf_value(param)
        assert "check_policy_service { unix:congvu/policy" in value, (param, value)
        assert "default_action = 451 4.3.5" in value, (param, value)
    assert int(postfix_server.postconf_value("message_size_limit")) == 40 * MiB


# --------------------------------------------------------------------------- size (CT25-5.1, TH13-9)


def test_25mb_attachment_refused_with_the_article(cantho: Accounts, postfix_site: PostfixSite) -> None:
    """A 25 MB attachment is refused 552 5.3.4 citing CT25-5.1, on the declared SIZE and on the actual size."""
    pf = postfix_site.postfix
    sender = cantho.add(f"size25.{uuid.uuid4().hex[:6]}@cantho.gov.vn")
    rcpt = "nhan.size@cantho.gov.vn"
    t = tag()
    body = message(sender, rcpt, t, attachment=25 * MiB)
    with submission(pf, sender) as s:
        declared = transact(s, sender, rcpt, body)
        actual = transact(s, sender, rcpt, body, declare_size=False)
    assert (declared.stage, declared.code) == ("RCPT", 552), declared
    assert (actual.stage, actual.code) == ("END", 552), actual
    for r in (declared, actual):
        assert r.text.startswith("5.3.4 "), r
        assert "CT25-5.1" in r.text and "20 MB" in r.text, r
    assert pf.delivered(rcpt, t) == []


def test_15mb_attachment_accepted_and_delivered(cantho: Accounts, postfix_site: PostfixSite) -> None:
    """A 15 MB attachment is within CT25-5.1: accepted and delivered whole."""
    pf = postfix_site.postfix
    sender = cantho.add(f"size15.{uuid.uuid4().hex[:6]}@cantho.gov.vn")
    rcpt = "nhan.size@cantho.gov.vn"
    t = tag()
    body = message(sender, rcpt, t, attachment=15 * MiB)
    with submission(pf, sender) as s:
        r = transact(s, sender, rcpt, body)
    assert r.accepted, r
    (path,) = pf.wait_delivered(rcpt, 1, t)
    assert path.stat().st_size >= len(body.replace(b"\r\n", b"\n"))  # the Maildir stores LF line ends


def test_thanhhoa_refuses_12mb_and_accepts_9mb(thanhhoa: Accounts, postfix_site: PostfixSite) -> None:
    """Under thanhhoa-2013 the attachment limit is 10 MB (TH13-9): 12 MB refused, 9 MB delivered."""
    pf = postfix_site.postfix
    sender = thanhhoa.add(f"nvthu{uuid.uuid4().hex[:6]}.sonv@thanhhoa.gov.vn")
    rcpt = "nhan.sonv@thanhhoa.gov.vn"
    big, small = tag(), tag()
    with submission(pf, sender) as s:
        refused = transact(s, sender, rcpt, message(sender, rcpt, big, attachment=12 * MiB), declare_size=False)
        accepted = transact(s, sender, rcpt, message(sender, rcpt, small, attachment=9 * MiB))
    assert (refused.stage, refused.code) == ("END", 552), refused
    assert refused.text.startswith("5.3.4 ") and "TH13-9" in refused.text and "10 MB" in refused.text, refused
    assert accepted.accepted, accepted
    pf.wait_delivered(rcpt, 1, small)
    assert pf.delivered(rcpt, big) == []


# ------------------------------------------------------------------ who may send (CT25-3.2, CT25-6.4, CT25-5.2)


def test_forged_local_sender_from_outside_mynetworks_refused(cantho: Accounts, postfix_site: PostfixSite) -> None:
    """An unauthenticated outside client may not claim a cantho.gov.vn sender; outsiders and mynetworks may send."""
    pf = postfix_site.postfix
    rcpt = "nhan.forged@cantho.gov.vn"
    forged, dotted, foreign, inside = tag(), tag(), tag(), tag()
    with pf.connect(addr=OUTSIDE) as s:
        r_forged = transact(s, "giamdoc@cantho.gov.vn", rcpt, message("giamdoc@cantho.gov.vn", rcpt, forged))
        # Postfix strips a trailing dot and delivers as giamdoc@cantho.gov.vn: refused the same way.
        r_dotted = transact(s, "giamdoc@cantho.gov.vn.", rcpt, message("giamdoc@cantho.gov.vn", rcpt, dotted))
        r_foreign = transact(s, "ban@example.org", rcpt, message("ban@example.org", rcpt, foreign))
    with pf.connect() as s:  # 127.0.0.1: in mynetworks (e.g. the webmail host)
        r_inside = transact(s, "giamdoc@cantho.gov.vn", rcpt, message("giamdoc@cantho.gov.vn", rcpt, inside))
    assert (r_forged.stage, r_forged.code) == ("RCPT", 553), r_forged
    assert r_forged.text.startswith("5.7.1 ") and "CT25-3.2" in r_forged.text, r_forged
    assert (r_dotted.stage, r_dotted.code) == ("RCPT", 553), r_dotted
    assert r_foreign.accepted, r_foreign
    assert r_inside.accepted, r_inside
    pf.wait_delivered(rcpt, 1, foreign)
    pf.wait_delivered(rcpt, 1, inside)
    assert pf.delivered(rcpt, forged) == [] and pf.delivered(rcpt, dotted) == []


def test_locked_account_cannot_send(cantho: Accounts, postfix_site: PostfixSite) -> None:
    """A locked account is refused 550 5.7.1 with the reason and CT25-6.4a; an active one is not."""
    pf = postfix_site.postfix
    locked = cantho.add(f"locked.{uuid.uuid4().hex[:6]}@cantho.gov.vn", state="locked",
                        reason="canh bao an ninh 2026-11")
    active = cantho.add(f"active.{uuid.uuid4().hex[:6]}@cantho.gov.vn")
    rcpt = "nhan.lock@cantho.gov.vn"
    with submission(pf, locked) as s:
        r_locked = transact(s, locked, rcpt, message(locked, rcpt, tag()))
    with submission(pf, active) as s:
        r_active = transact(s, active, rcpt, message(active, rcpt, tag()))
    assert (r_locked.stage, r_locked.code) == ("RCPT", 550), r_locked
    assert r_locked.text.startswith("5.7.1 "), r_locked
    assert "CT25-6.4a" in r_locked.text and "canh bao an ninh 2026-11" in r_locked.text, r_locked
    assert r_active.accepted, r_active


def test_must_change_account_cannot_send(cantho: Accounts, postfix_site: PostfixSite) -> None:
    """A mailbox that must change its password is refused and told where to change it (CT25-5.2), seen by swaks."""
    pf = postfix_site.postfix
    fresh = cantho.add(f"moi.{uuid.uuid4().hex[:6]}@cantho.gov.vn", must_change=True)
    transcript = pf.swaks("--xclient-login", fresh, "--from", fresh, "--to", "nhan.lock@cantho.gov.vn",
                          "--quit-after", "RCPT", port=pf.submission_port)
    refusal = [line for line in transcript.splitlines() if line.startswith("<** ")]
    assert len(refusal) == 1, transcript
    assert refusal[0].startswith("<** 550 5.7.1 ") and "CT25-5.2" in refusal[0], refusal
    assert "https://mail.cantho.gov.vn/doimatkhau" in refusal[0], refusal


def test_sender_must_belong_to_login(cantho: Accounts, postfix_site: PostfixSite) -> None:
    """An authenticated user sending as another mailbox is refused 553 5.7.1 (CT25-3.2)."""
    pf = postfix_site.postfix
    user = cantho.add(f"mine.{uuid.uuid4().hex[:6]}@cantho.gov.vn")
    other = cantho.add(f"theirs.{uuid.uuid4().hex[:6]}@cantho.gov.vn")
    rcpt = "nhan.lock@cantho.gov.vn"
    with submission(pf, user) as s:
        r = transact(s, other, rcpt, message(other, rcpt, tag()))
    assert (r.stage, r.code) == ("RCPT", 553), r
    assert r.text.startswith("5.7.1 ") and "CT25-3.2" in r.text, r


# --------------------------------------------------------------------------- sending rates


def test_rate_limit_defers_the_101st_message_of_the_hour(cantho: Accounts, postfix_site: PostfixSite) -> None:
    """With the default 100 messages/hour, messages 1-100 are delivered and the 101st is deferred 450 4.7.1."""
    pf = postfix_site.postfix
    sender = cantho.add(f"rate.{uuid.uuid4().hex[:6]}@cantho.gov.vn")
    rcpt = f"nhan.{uuid.uuid4().hex[:6]}@cantho.gov.vn"
    run = tag()
    body = message(sender, rcpt, run)
    replies = []
    started = time.monotonic()
    with submission(pf, sender) as s:
        for _ in range(101):
            replies.append(transact(s, sender, rcpt, body))
    elapsed = time.monotonic() - started
    refused = [(i + 1, r) for i, r in enumerate(replies) if not r.accepted]
    assert [i for i, _ in refused] == [101], refused[:3]
    last = replies[-1]
    assert last.code == 450 and last.text.startswith("4.7.1 "), last
    assert "CT25-3.1" in last.text and "100" in last.text, last
    pf.wait_delivered(rcpt, 100, run)
    assert elapsed < 60, f"101 messages took {elapsed:.1f}s"


def test_redis_down_size_still_checked_rates_fail_open(cantho: Accounts, postfix_site: PostfixSite) -> None:
    """Without Redis the size limit still refuses, security checks still run, and rate limits let mail through."""
    pf, redis = postfix_site.postfix, postfix_site.redis
    sender = "rate1@cantho.gov.vn"  # rate_overrides: 1 message per hour
    cantho.add(sender)
    locked = cantho.add(f"locked.{uuid.uuid4().hex[:6]}@cantho.gov.vn", state="locked", reason="test")
    rcpt = "nhan.redis@cantho.gov.vn"
    first, second, during = tag(), tag(), tag()
    with submission(pf, sender) as s:
        r1 = transact(s, sender, rcpt, message(sender, rcpt, first))
        r2 = transact(s, sender, rcpt, message(sender, rcpt, second))
    assert r1.accepted, r1
    assert (r2.stage, r2.code) == ("DATA", 450) and "CT25-3.1" in r2.text, r2
    redis.stop()
    try:
        with submission(pf, sender) as s:
            r3 = transact(s, sender, rcpt, message(sender, rcpt, during))
            big = transact(s, sender, rcpt, message(sender, rcpt, tag(), attachment=25 * MiB))
        with submission(pf, locked) as s:
            r_locked = transact(s, locked, rcpt, message(locked, rcpt, tag()))
    finally:
        redis.start()
    assert r3.accepted, r3  # rate limit failed open
    assert (big.stage, big.code) == ("RCPT", 552) and "CT25-5.1" in big.text, big
    assert (r_locked.stage, r_locked.code) == ("RCPT", 550) and "CT25-6.4a" in r_locked.text, r_locked
    pf.wait_delivered(rcpt, 1, first)
    pf.wait_delivered(rcpt, 1, during)
    assert pf.delivered(rcpt, second) == []
    assert "fail_rates = dunno" in postfix_site.policyd.log_text()


# --------------------------------------------------------------------------- restarts


def test_nothing_lost_across_a_policyd_restart(cantho: Accounts, postfix_site: PostfixSite) -> None:
    """Mail accepted before a restart is delivered; while policyd is down Postfix answers 451 4.3.5, then accepts."""
    pf, policyd = postfix_site.postfix, postfix_site.policyd
    sender = cantho.add(f"restart.{uuid.uuid4().hex[:6]}@cantho.gov.vn")
    rcpt = "nhan.restart@cantho.gov.vn"
    before, inflight, during = tag(), tag(), tag()
    with submission(pf, sender) as s:
        r_before = transact(s, sender, rcpt, message(sender, rcpt, before))
        assert r_before.accepted, r_before
        # A transaction in flight when policyd goes away: RCPT passed, DATA cannot be checked.
        assert s.mail(sender)[0] == 250
        assert s.rcpt(rcpt)[0] == 250
        policyd.stop()
        try:
            s.data(message(sender, rcpt, inflight))
            raise AssertionError("DATA accepted without policyd")
        except smtplib.SMTPDataError as e:
            assert e.smtp_code == 451 and _text(e.smtp_error).startswith("4.3.5 "), e
        s.rset()
        r_during = transact(s, sender, rcpt, message(sender, rcpt, during))
    assert (r_during.stage, r_during.code) == ("RCPT", 451), r_during
    postfix_site.use("cantho")  # restart
    with submission(pf, sender) as s:  # the clients retry
        r_inflight = transact(s, sender, rcpt, message(sender, rcpt, inflight))
        r_retry = transact(s, sender, rcpt, message(sender, rcpt, during))
    assert r_inflight.accepted and r_retry.accepted, (r_inflight, r_retry)
    for t in (before, inflight, during):
        pf.wait_delivered(rcpt, 1, t)


def test_a_2000_character_state_reason_gives_a_short_reply(cantho: Accounts, postfix_site: PostfixSite) -> None:
    """Issue 4 audit: the reason is cut, the whole SMTP reply line stays under 512 octets, the article stays."""
    pf = postfix_site.postfix
    reason = "Khoa theo yeu cau cua So Noi vu " + "chi tiet " * 222  # 2,030 characters
    locked = cantho.add(f"long.{uuid.uuid4().hex[:6]}@cantho.gov.vn", state="locked", reason=reason[:2000])
    rcpt = "nhan.long@cantho.gov.vn"
    with submission(pf, locked) as s:
        r = transact(s, locked, rcpt, message(locked, rcpt, tag()))
    assert (r.stage, r.code) == ("RCPT", 550), r
    line = f"{r.code} {r.text}"
    assert len(line.encode()) + 2 <= 512, len(line.encode())  # RFC 5321 4.5.3.1.5, CRLF included
    assert "\n" not in r.text and "Khoa theo yeu cau cua So Noi vu" in r.text and "..." in r.text, r
    assert "CT25-6.4a" in r.text and r.text.rstrip().endswith(")"), r
