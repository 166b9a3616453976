"""The content rules and the engine: the one order, per-profile citations, actions, failure policies, explain."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytest

from congvu.cli import main
from congvu.config import config_from_mapping
from congvu.directory.model import Account, DirectoryUnavailable
from congvu.output import Output
from congvu.policyd.milter.checks import RULE_NAMES, Envelope
from congvu.policyd.milter.engine import Engine, Outcome
from congvu.policyd.milter.mime import MessageFacts, Part
from congvu.rules.lifecycle import AccountState
from congvu.rules.units import MB
from tests.unit.policyd.conftest import Site

PDF = b"%PDF-1.4\n"
EXE = b"MZ\x90\x00"


def part(name: str = "", head: bytes = PDF, size: int = 1000, *, ctype: str = "application/pdf",
         members: tuple[str, ...] | None = None, charset: str = "", sample: bytes = b"") -> Part:
    return Part("1.2", ctype, charset, name, "attachment" if name else "", "base64", size, head, members, "",
                sample, False)


def text(sample: bytes, charset: str = "utf-8") -> Part:
    return Part("1.1", "text/plain", charset, "", "", "8bit", len(sample), sample[:512], None, "", sample, False)


def facts(*parts: Part, subject: str | None = "Báo cáo tháng 11", from_header: str | None = None,
          incomplete: tuple[str, ...] = ()) -> MessageFacts:
    files = [p for p in parts if p.is_attachment]
    return MessageFacts(subject, ("utf-8",) if subject else (), from_header, None,
                        (text("Kính gửi.".encode()), *parts), sum(p.size for p in files),
                        max((p.size for p in files), default=0), len(files), incomplete)


def nobody(address: str) -> Account | None:
    raise AssertionError(f"no lookup expected, got {address}")


def run(f: MessageFacts, profile: str = "thanhhoa-2013", *, login: str = "", client: str = "127.0.0.1",
        get: Any = nobody, **sections: dict[str, Any]) -> Outcome:
    """The engine on ``f``, sent by ``login`` from ``client`` (by default a host of the site, in mynetworks)."""
    cfg = config_from_mapping(dict(sections), profile=profile)
    return Engine(cfg).evaluate(Envelope("Q1", login, login, client), f, get)


def test_rules_are_for_the_sites_senders_unless_apply_to_all() -> None:
    """Mail from outside (not authenticated, not in mynetworks) is not held to the regulation's rules by default."""
    empty = facts(subject="")
    outside = run(empty, client="203.0.113.9")
    assert outside.action == "accept" and {s.outcome for s in outside.steps} == {"skipped"}
    assert outside.steps[0].note == "mail from outside (203.0.113.9, not authenticated): [milter] apply_to = senders"
    assert run(empty, client="203.0.113.9", login="user").action == "reject"  # a user sending from home
    assert run(empty, client="203.0.113.9", milter={"apply_to": "all"}).action == "reject"
    assert run(empty, client="").steps[0].outcome == "skipped"  # no connect macros: not known to be the site's


def test_the_one_order() -> None:
    """Structure first (size, type), then text, subject, and the header sender (the only rule that may need I/O)."""
    assert RULE_NAMES == ("attachment_size", "attachment_type", "unicode", "subject", "header_from")


# --------------------------------------------------------------------------- attachments per sending


def test_attachments_together_against_the_profile_limit_citing_its_article() -> None:
    """Two 6 MB files are 12 MB per sending: TH13-9 under thanhhoa-2013; under cantho-2025 (20 MB) they pass."""
    two = facts(part("a.pdf", size=6 * MB), part("b.pdf", size=6 * MB))
    out = run(two)
    assert (out.action, out.rule, out.rule_id) == ("reject", "attachment_size", "TH13-9")
    assert out.reply.startswith("552 5.3.4 Tập tin đính kèm 12 MB (2 tệp, lớn nhất 6 MB) vượt giới hạn 10 MB")
    assert out.reply.endswith("(TH13-9: QĐ 3380/2013/QĐ-UBND tỉnh Thanh Hóa, Điều 9)")
    assert run(two, "cantho-2025").action == "accept"
    big = run(facts(part("a.pdf", size=21 * MB)), "cantho-2025")
    assert big.rule_id == "CT25-5.1" and "20 MB" in big.reply


# --------------------------------------------------------------------------- formats (TH13-6.1)


@pytest.mark.parametrize(("p", "why"), [
    (part("setup.exe", EXE), "setup.exe is a program (exe)"),
    (part("congvan.pdf", EXE), "congvan.pdf is a program (exe) named .pdf"),
    (part("bang.xlsx", b"PK\x03\x04", members=("[Content_Types].xml", "xl/workbook.xml")),
     ".xlsx is not an allowed format"),
    (part("", EXE, ctype="application/octet-stream"), "an unnamed file is a program"),
])
def test_files_outside_the_allow_list_are_refused(p: Part, why: str) -> None:
    """By name and by content: a program is refused whatever it is called, and an unnamed one too."""
    out = run(facts(p))
    assert (out.action, out.rule_id) == ("reject", "TH13-6.1") and out.reply.startswith("550 5.7.1 ")
    assert why in out.steps[-1].note


def test_a_zip_is_looked_into_one_level_when_the_administrator_allows_zips() -> None:
    """extra_types = ["zip"]: a zip of PDFs passes, a zip holding an .exe or another archive is refused."""
    ok = part("hoso.zip", b"PK\x03\x04", members=("a.pdf", "thu muc/", "b.odt"))
    bad = part("hoso.zip", b"PK\x03\x04", members=("a.pdf", "setup.exe"))
    nested = part("hoso.zip", b"PK\x03\x04", members=("inner.zip",))
    content = {"extra_types": ["zip"]}
    assert run(facts(ok), content=content).action == "accept"
    assert "setup.exe: .exe is not an allowed format" in run(facts(bad), content=content).steps[-1].note
    assert "archive inside an archive" in run(facts(nested), content=content).steps[-1].note
    assert ".zip is not an allowed format" in run(facts(ok)).steps[-1].note  # not allowed by the profile alone


def test_no_allow_list_no_type_rule() -> None:
    """cantho-2025 regulates no format: the type rule is skipped (malware is rspamd's job)."""
    out = run(facts(part("setup.exe", EXE)), "cantho-2025")
    assert out.action == "accept" and ("attachment_type", "skipped") in [(s.rule, s.outcome) for s in out.steps]


def test_a_structure_not_seen_whole_applies_the_failure_policy() -> None:
    """More parts than max_parts: tempfail 451 4.3.0 by default, accept when fail_attachment_type = accept."""
    f = facts(part("a.pdf"), incomplete=("more than 1000 parts",))
    out = run(f)
    assert out.action == "tempfail" and out.reply.startswith("451 4.3.0 ") and "TH13-6.1" in out.reply
    assert out.steps[-1].note == "incomplete: more than 1000 parts; fail_attachment_type = tempfail"
    assert run(f, milter={"fail_attachment_type": "accept"}).action == "accept"


# --------------------------------------------------------------------------- Unicode (TH13-6.2), subject (TH13-7)


def test_vni_text_is_tagged_by_default_and_refused_when_configured() -> None:
    """unicode = tag adds X-Congvu-Check and accepts; unicode = reject refuses 550 5.6.0 citing TH13-6.2."""
    vni = facts(text("Kính göûi caùc ñoàng chí, Vieät Nam".encode()))
    tagged = run(vni)
    assert tagged.action == "accept" and tagged.rule_id == "TH13-6.2"
    (name, value), = tagged.headers
    assert name == "X-Congvu-Check" and value.startswith("TH13-6.2 unicode: part 1.1 (text/plain): UTF-8 text")
    refused = run(vni, milter={"unicode": "reject"})
    assert refused.action == "reject" and refused.reply.startswith("550 5.6.0 ")
    assert run(vni, "cantho-2025").headers == ()


def test_a_subject_is_required_under_thanhhoa_only() -> None:
    """An empty subject is refused citing TH13-7 under thanhhoa-2013, accepted under cantho-2025."""
    out = run(facts(subject=""))
    assert (out.action, out.rule_id) == ("reject", "TH13-7") and out.reply.startswith("550 5.7.1 ")
    assert run(facts(subject=None), "cantho-2025").action == "accept"


def test_actions_tempfail_and_off() -> None:
    """subject = tempfail answers 451 4.7.1 with the same text; subject = off takes the rule out."""
    out = run(facts(subject=""), milter={"subject": "tempfail"})
    assert out.action == "tempfail" and out.reply.startswith("451 4.7.1 Thư phải có tiêu đề")
    off = config_from_mapping({"milter": {"subject": "off"}}, profile="thanhhoa-2013")
    assert "subject" not in [r.name for r in Engine(off).rules] and Engine(off).off == ("subject",)


def test_a_refusal_after_a_tag_wins() -> None:
    """Tags add up, but the first refusal decides the answer."""
    out = run(facts(text("Vieät Nam caùc ñoàng chí".encode()), subject=""))
    assert out.action == "reject" and out.rule == "subject"
    assert [s.outcome for s in out.steps] == ["skipped", "skipped", "tagged", "refused"]


# --------------------------------------------------------------------------- header From (CT25-3.2)


@pytest.fixture
def accounts(site: Site) -> Site:
    site.add("nvminh", aliases=("minh.nv@cantho.gov.vn",))
    site.add("khac")
    site.add("vanphong.sonv", mailbox_type="unit", delegates=("nvminh@cantho.gov.vn",))
    site.add("ketoan.sonv", mailbox_type="unit", delegates=("nvminh@cantho.gov.vn",), state=AccountState.LOCKED)
    return site


@pytest.mark.parametrize(("from_header", "action"), [
    ("Nguyễn Văn Minh <NVMinh@CanTho.gov.vn>", "accept"),
    ("minh.nv@cantho.gov.vn", "accept"),
    ("Văn phòng <vanphong.sonv@cantho.gov.vn>", "accept"),
    ("khac@cantho.gov.vn", "reject"),
    ("nvminh@cantho.gov.vn, khac@cantho.gov.vn", "reject"),
    ("Giám đốc", "reject"),
    ("ketoan.sonv@cantho.gov.vn", "reject"),
])
def test_header_from_belongs_to_the_login(accounts: Site, from_header: str, action: str) -> None:
    """Own address, alias, or a delegating shared mailbox pass; another user, no address, a locked mailbox do not."""
    out = run(facts(from_header=from_header), "cantho-2025", login="nvminh", get=accounts.store.get)
    assert out.action == action, out.steps
    if action == "reject":
        assert out.reply.startswith("550 5.7.1 ") and ("CT25-3.2" in out.reply or "CT25-6.4a" in out.reply)


def test_unauthenticated_mail_is_not_checked() -> None:
    """Without {auth_authen} the header sender is policyd's forged_sender matter, not this rule's."""
    out = run(facts(from_header="giamdoc@cantho.gov.vn"), "cantho-2025")
    assert out.action == "accept" and out.steps[-1].outcome == "skipped"


def test_directory_down_tempfails_never_5xx(accounts: Site) -> None:
    """A directory outage is fail_header_from: 451 4.3.0 by default, accept when configured."""
    def down(address: str) -> Account | None:
        raise DirectoryUnavailable("ldap://10.0.0.5 timed out")

    f = facts(from_header="khac@cantho.gov.vn")
    out = run(f, "cantho-2025", login="nvminh", get=down)
    assert out.action == "tempfail" and out.reply.startswith("451 4.3.0 ") and "CT25-3.2" in out.reply
    assert out.steps[-1].note.startswith("unavailable: ldap://10.0.0.5 timed out")
    assert run(f, "cantho-2025", login="nvminh", get=down, milter={"fail_header_from": "accept"}).action == "accept"


def test_a_login_unknown_to_the_directory_is_deferred(accounts: Site) -> None:
    """Dovecot authenticated it, the directory does not know it: an inconsistency, 451 4.7.1, not a refusal."""
    out = run(facts(from_header="khac@cantho.gov.vn"), "cantho-2025", login="ghost", get=accounts.store.get)
    assert out.action == "tempfail" and out.reply.startswith("451 4.7.1 ")


# --------------------------------------------------------------------------- explain


def test_explain_prints_every_rule_and_the_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`congvu milter explain < message.eml` walks the message and says which rule decided, with the article."""
    eml = (b"From: a@thanhhoa.gov.vn\nSubject: \nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n"
           b"--b\nContent-Type: text/plain; charset=utf-8\n\nKinh gui\n--b\n"
           b"Content-Type: application/pdf; name=a.pdf\nContent-Transfer-Encoding: base64\n\nJVBERi0xLjQK\n--b--\n")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(eml)))
    conf = tmp_path / "congvu.toml"
    conf.write_text(f'profile = "thanhhoa-2013"\nstate_dir = "{tmp_path}"\n', encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    code = main(["milter", "explain", "--config", str(conf)], out=Output(out, err))
    text_out = out.getvalue()
    assert code == 0, err.getvalue()
    assert "1 attachment(s) (9 bytes decoded)" in text_out
    assert "attachment_type  passed" in text_out and "subject          refused  empty Subject" in text_out
    assert "action=reject 550 5.7.1 " in text_out
    assert "# TH13-7: QĐ 3380/2013/QĐ-UBND tỉnh Thanh Hóa, Điều 7" in text_out
