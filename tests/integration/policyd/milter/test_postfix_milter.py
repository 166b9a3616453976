"""The content milter behind a real Postfix with the shipped snippets: what senders see, what recipients get (issue 14).

Postfix is ``milter_postfix`` (conf/postfix/main.cf verbatim: rspamd first, then congvu's
milter on ``unix:congvu/milter``); ``congvu policyd`` and ``congvu milter`` run on
one site config.  Authenticated senders come in on the submission port with XCLIENT
LOGIN (the milter sees it as ``{auth_authen}``); delivery is read from the instance's
Maildir (``Delivered-To``), as in tests/integration/policyd/test_postfix_policy.py.
"""

from __future__ import annotations

import base64
import functools
import uuid
from email.header import Header

from tests.integration.policyd.conftest import Accounts
from tests.integration.policyd.milter.conftest import MilterSite
from tests.integration.policyd.test_postfix_policy import OUTSIDE, Reply, submission, tag, transact
from tests.integration.servers.postfix import PostfixServer
from tests.integration.support import wait_for

MiB = 1024 * 1024
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@functools.lru_cache(maxsize=16)
def _b64_file(head: bytes, size: int) -> bytes:
    """A file of at least ``size`` bytes starting with ``head``, as base64 in 76-column CRLF lines, built fast."""
    first = base64.encodebytes(head + bytes(-len(head) % 57 or 57)).replace(b"\n", b"\r\n")
    block = bytes(range(256)) * 57  # 57 bytes per line: whole lines
    lines = base64.encodebytes(block).replace(b"\n", b"\r\n")
    return first + lines * max(0, -(-(size - len(head) - 57) // len(block)))


def mail(sender: str, rcpt: str, subject: str, files: tuple[tuple[str, bytes, int], ...] = (), *,
         text: bytes = "Kính gửi các đồng chí báo cáo tháng 11.".encode(), charset: str = "utf-8",
         from_header: str | None = None, tag: str = "") -> bytes:
    """A MIME message (CRLF): a text part and ``files`` as (name, first bytes, size) attachments.

    ``X-Tag`` carries ``tag`` (by default the subject's last word, the test's tag) in plain
    ASCII, so a delivery is found (``PostfixServer.delivered``) whatever encoding the subject gets.
    """
    subj = Header(subject, "utf-8").encode() if subject else ""
    head = (f"From: {from_header or sender}\r\nTo: {rcpt}\r\nSubject: {subj}\r\n"
            f"X-Tag: {tag or subject.rpartition(' ')[2]}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@test.thanhhoa.gov.vn>\r\nMIME-Version: 1.0\r\n").encode()
    body_part = (f"Content-Type: text/plain; charset={charset}\r\nContent-Transfer-Encoding: 8bit\r\n\r\n").encode() \
        + text + b"\r\n"
    if not files:
        return head + body_part
    out = head + b'Content-Type: multipart/mixed; boundary="=b1"\r\n\r\n--=b1\r\n' + body_part
    for name, first, size in files:
        out += (f'--=b1\r\nContent-Type: application/octet-stream; name="{name}"\r\n'
                f'Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename="{name}"\r\n\r\n'
                ).encode() + _b64_file(first, size)
    return out + b"--=b1--\r\n"


def send(pf: PostfixServer, login: str, rcpt: str, body: bytes, sender: str | None = None) -> Reply:
    with submission(pf, login) as s:
        return transact(s, sender or login, rcpt, body, declare_size=False)


def refused(r: Reply, code: int, enhanced: str, rule_id: str) -> bool:
    return r.stage == "END" and r.code == code and r.text.startswith(enhanced + " ") and rule_id in r.text


def test_shipped_snippet_puts_rspamd_then_congvu(milter_postfix: PostfixServer) -> None:
    """The shipped main.cf puts rspamd first and congvu second, for smtpd and non-smtpd mail; tempfail when down."""
    milters = milter_postfix.postconf_value("smtpd_milters")
    assert milters == f"{milter_postfix.rspamd_milter}, unix:congvu/milter", milters
    assert milter_postfix.postconf_value("non_smtpd_milters") == milters
    assert milter_postfix.postconf_value("milter_default_action") == "tempfail"
    assert milter_postfix.postconf_value("milter_protocol") == "6"


# --------------------------------------------------------------------------- attachments (TH13-9, CT25-5.1)


def test_thanhhoa_12mb_pdf_refused_9mb_delivered(thanhhoa_milter: Accounts, milter_site: MilterSite) -> None:
    """Under thanhhoa-2013 a 12 MB PDF is refused 552 5.3.4 citing TH13-9; a 9 MB PDF is delivered."""
    pf = milter_site.postfix
    user = thanhhoa_milter.add(f"tuan{uuid.uuid4().hex[:6]}.sonv@thanhhoa.gov.vn")
    rcpt = "nhan.sonv@thanhhoa.gov.vn"
    big, small = tag(), tag()
    r_big = send(pf, user, rcpt, mail(user, rcpt, f"Báo cáo {big}", (("baocao.pdf", PDF, 12 * MiB),)))
    r_small = send(pf, user, rcpt, mail(user, rcpt, f"Báo cáo {small}", (("baocao.pdf", PDF, 9 * MiB),)))
    assert refused(r_big, 552, "5.3.4", "TH13-9") and "10 MB" in r_big.text, r_big
    assert r_small.accepted, r_small
    pf.wait_delivered(rcpt, 1, small)
    assert pf.delivered(rcpt, big) == []


def test_two_6mb_attachments_are_one_sending(thanhhoa_milter: Accounts, milter_site: MilterSite) -> None:
    """Two 6 MB attachments are 12 MB "per sending": refused citing TH13-9, nothing delivered."""
    pf = milter_site.postfix
    user = thanhhoa_milter.add(f"hai{uuid.uuid4().hex[:6]}.sonv@thanhhoa.gov.vn")
    rcpt = "nhan.sonv@thanhhoa.gov.vn"
    t = tag()
    r = send(pf, user, rcpt, mail(user, rcpt, f"Hai tệp {t}", (("a.pdf", PDF, 6 * MiB), ("b.pdf", PDF, 6 * MiB))))
    assert refused(r, 552, "5.3.4", "TH13-9") and "2 tệp" in r.text, r
    assert pf.delivered(rcpt, t) == []


def test_cantho_25mb_message_with_18mb_attachment_delivered(cantho_milter: Accounts, milter_site: MilterSite) -> None:
    """Under cantho-2025 (20 MB per sending, CT25-5.1) a 25 MB message carrying an 18 MB attachment is delivered."""
    pf = milter_site.postfix
    user = cantho_milter.add(f"lon.{uuid.uuid4().hex[:6]}@cantho.gov.vn")
    rcpt = "nhan.lon@cantho.gov.vn"
    t = tag()
    body = mail(user, rcpt, f"Hồ sơ {t}", (("hoso.pdf", PDF, 18 * MiB),))
    assert 24 * MiB < len(body) < 26 * MiB
    r = send(pf, user, rcpt, body)
    assert r.accepted, r
    pf.wait_delivered(rcpt, 1, t)


# --------------------------------------------------------------------------- formats (TH13-6.1)


def test_exe_and_renamed_exe_refused(thanhhoa_milter: Accounts, milter_site: MilterSite) -> None:
    """A .exe, and the same program renamed .pdf, are refused 550 5.7.1 citing TH13-6.1; a real .odt is delivered."""
    pf = milter_site.postfix
    user = thanhhoa_milter.add(f"exe{uuid.uuid4().hex[:6]}.sonv@thanhhoa.gov.vn")
    rcpt = "nhan.sonv@thanhhoa.gov.vn"
    plain, renamed, odt = tag(), tag(), tag()
    odt_head = b"PK\x03\x04" + bytes(26) + b"mimetypeapplication/vnd.oasis.opendocument.text"
    r_plain = send(pf, user, rcpt, mail(user, rcpt, f"Phần mềm {plain}", (("setup.exe", EXE, 40_000),)))
    r_renamed = send(pf, user, rcpt, mail(user, rcpt, f"Công văn {renamed}", (("congvan.pdf", EXE, 40_000),)))
    r_odt = send(pf, user, rcpt, mail(user, rcpt, f"Văn bản {odt}", (("vanban.odt", odt_head, 40_000),)))
    assert refused(r_plain, 550, "5.7.1", "TH13-6.1"), r_plain
    assert refused(r_renamed, 550, "5.7.1", "TH13-6.1") and "congvan.pdf" in r_renamed.text, r_renamed
    assert r_odt.accepted, r_odt
    pf.wait_delivered(rcpt, 1, odt)
    assert pf.delivered(rcpt, plain) == [] and pf.delivered(rcpt, renamed) == []


# --------------------------------------------------------------------------- subject (TH13-7), text (TH13-6.2)


def test_empty_subject_refused(thanhhoa_milter: Accounts, milter_site: MilterSite) -> None:
    """An empty subject is refused 550 5.7.1 citing TH13-7 under thanhhoa-2013."""
    pf = milter_site.postfix
    user = thanhhoa_milter.add(f"tieude{uuid.uuid4().hex[:6]}.sonv@thanhhoa.gov.vn")
    rcpt = "nhan.sonv@thanhhoa.gov.vn"
    t = tag()
    r = send(pf, user, rcpt, mail(user, rcpt, "", tag=t))
    assert refused(r, 550, "5.7.1", "TH13-7"), r
    assert pf.delivered(rcpt, t) == []


def test_vni_body_is_flagged(thanhhoa_milter: Accounts, milter_site: MilterSite) -> None:
    """A body typed in VNI inside UTF-8 is delivered tagged X-Congvu-Check citing TH13-6.2 ([milter] unicode = tag)."""
    pf = milter_site.postfix
    user = thanhhoa_milter.add(f"vni{uuid.uuid4().hex[:6]}.sonv@thanhhoa.gov.vn")
    rcpt = "nhan.sonv@thanhhoa.gov.vn"
    vni, utf8 = tag(), tag()
    r_vni = send(pf, user, rcpt, mail(user, rcpt, f"Thông báo {vni}",
                                      text="Kính göûi caùc ñoàng chí, Vieät Nam".encode()))
    r_utf8 = send(pf, user, rcpt, mail(user, rcpt, f"Thông báo {utf8}"))
    assert r_vni.accepted and r_utf8.accepted, (r_vni, r_utf8)
    (flagged,) = pf.wait_delivered(rcpt, 1, vni)
    head = flagged.read_bytes().split(b"\n\n", 1)[0].decode()
    assert "X-Congvu-Check: TH13-6.2 unicode:" in head and "VNI" in head, head
    (clean,) = pf.wait_delivered(rcpt, 1, utf8)
    assert b"X-Congvu-Check" not in clean.read_bytes().split(b"\n\n", 1)[0]


# --------------------------------------------------------------------------- header From (CT25-3.2)


def test_header_from_of_another_user_refused_delegate_allowed(cantho_milter: Accounts,
                                                              milter_site: MilterSite) -> None:
    """From: another user is refused 550 5.7.1 citing CT25-3.2; a shared mailbox delegating to the login passes."""
    pf = milter_site.postfix
    u = uuid.uuid4().hex[:6]
    user = cantho_milter.add(f"nv.{u}@cantho.gov.vn")
    other = cantho_milter.add(f"khac.{u}@cantho.gov.vn")
    shared = cantho_milter.add(f"vanphong{u}.sonv@cantho.gov.vn", kind="unit")
    cantho_milter.congvu("account", "set", shared, "--delegate", user)
    rcpt = "nhan.from@cantho.gov.vn"
    forged, delegated = tag(), tag()
    r_forged = send(pf, user, rcpt, mail(user, rcpt, f"Giả {forged}", from_header=other))
    r_shared = send(pf, user, rcpt, mail(user, rcpt, f"Thay {delegated}", from_header=f"Văn phòng <{shared}>"))
    assert refused(r_forged, 550, "5.7.1", "CT25-3.2") and other in r_forged.text, r_forged
    assert r_shared.accepted, r_shared
    pf.wait_delivered(rcpt, 1, delegated)
    assert pf.delivered(rcpt, forged) == []


# --------------------------------------------------------------------------- spam (rspamd) and outages


def test_gtube_rejected_by_rspamd(cantho_milter: Accounts, milter_site: MilterSite) -> None:
    """rspamd, first in smtpd_milters with the shipped conf/rspamd, refuses GTUBE 554 5.7.1; nothing is delivered."""
    pf = milter_site.postfix
    user = cantho_milter.add(f"spam.{uuid.uuid4().hex[:6]}@cantho.gov.vn")
    rcpt = "nhan.spam@cantho.gov.vn"
    t = tag()
    r = send(pf, user, rcpt, mail(user, rcpt, f"Thư {t}", text=GTUBE.encode()))
    assert r.stage == "END" and r.code == 554 and r.text.startswith("5.7.1 "), r
    assert pf.delivered(rcpt, t) == []


def test_milter_down_tempfails_and_nothing_is_lost(cantho_milter: Accounts, milter_site: MilterSite) -> None:
    """With congvu's milter stopped Postfix answers 4xx (milter_default_action = tempfail); the retry after a restart is delivered."""  # noqa: E501
    pf = milter_site.postfix
    user = cantho_milter.add(f"down.{uuid.uuid4().hex[:6]}@cantho.gov.vn")
    rcpt = "nhan.down@cantho.gov.vn"
    t = tag()
    body = mail(user, rcpt, f"Thư {t}")
    milter_site.milter.stop()
    try:
        r_down = send(pf, user, rcpt, body)
    finally:
        milter_site.use("cantho")
    assert 400 <= r_down.code < 500, r_down
    assert pf.delivered(rcpt, t) == []
    r_retry = send(pf, user, rcpt, body)
    assert r_retry.accepted, r_retry
    pf.wait_delivered(rcpt, 1, t)


def test_each_decision_is_one_log_line_with_queue_id_and_article(thanhhoa_milter: Accounts,
                                                                 milter_site: MilterSite) -> None:
    """The milter logs a refusal once: queue id, login, rule, requirement id and the reply."""
    pf = milter_site.postfix
    user = thanhhoa_milter.add(f"log{uuid.uuid4().hex[:6]}.sonv@thanhhoa.gov.vn")
    r = send(pf, user, "nhan.sonv@thanhhoa.gov.vn", mail(user, "nhan.sonv@thanhhoa.gov.vn", ""))
    assert r.code == 550, r

    def line() -> list[str]:
        return [ln for ln in milter_site.milter.log_text().splitlines() if f"login={user}" in ln]

    wait_for(line, "the milter's decision line")
    (found,) = line()
    assert "rule=subject id=TH13-7 (QĐ 3380/2013/QĐ-UBND tỉnh Thanh Hóa, Điều 7) action=reject" in found, found
    assert "queue_id=-" not in found and "client=127.0.0.1" in found, found


def test_mail_from_outside_is_not_held_to_the_senders_rules(thanhhoa_milter: Accounts,
                                                             milter_site: MilterSite) -> None:
    """Inbound mail (an outside client, no login) without a subject is delivered: [milter] apply_to = senders."""
    pf = milter_site.postfix
    rcpt = "nhan.sonv@thanhhoa.gov.vn"
    t = tag()
    with pf.connect(addr=OUTSIDE) as s:
        r = transact(s, "ban@example.org", rcpt, mail("ban@example.org", rcpt, "", tag=t))
    assert r.accepted, r
    pf.wait_delivered(rcpt, 1, t)
