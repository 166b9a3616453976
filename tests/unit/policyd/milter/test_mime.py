"""The streaming MIME walker: the facts the content rules need, the same however the body is split, within bounds."""

from __future__ import annotations

import io
import zipfile
from email.message import EmailMessage
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from congvu.policyd.milter.mime import DEFAULT_LIMITS, Limits, MessageFacts, MimeWalker, decode_words, zip_members


def _zip(*names: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n in names:
            z.writestr(n, b"x" * 100)
    return buf.getvalue()


def sample_message() -> EmailMessage:
    m = EmailMessage()
    m["From"] = "Nguyễn Văn Minh <nvminh@cantho.gov.vn>"
    m["Subject"] = "Báo cáo tháng 11"
    m.set_content("Kính gửi các đồng chí.\n")
    m.add_alternative("<p>Kính gửi</p>\n", subtype="html")
    m.add_attachment(b"%PDF-1.4\n" + bytes(30_000), maintype="application", subtype="pdf", filename="Báo cáo.pdf")
    m.add_attachment(_zip("a.txt", "b/virus.exe"), maintype="application", subtype="zip", filename="hoso.zip")
    inner = EmailMessage()
    inner["Subject"] = "chuyển tiếp"
    inner.set_content("bên trong\n")
    inner.add_attachment(b"MZ\x90\x00", maintype="application", subtype="octet-stream", filename="x.pdf")
    m.add_attachment(inner)
    return m


def split(m: EmailMessage) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body as Postfix hands them to a milter (CRLF body, header values without the leading space)."""
    raw = m.as_bytes().replace(b"\n", b"\r\n")
    head, body = raw.split(b"\r\n\r\n", 1)
    headers: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            headers[-1] = (headers[-1][0], headers[-1][1] + b"\r\n" + line)
        else:
            name, _, value = line.partition(b":")
            headers.append((name, value.lstrip(b" ")))
    return headers, body


def walk(headers: list[tuple[bytes, bytes]], chunks: list[bytes], limits: Limits = DEFAULT_LIMITS) -> MessageFacts:
    w = MimeWalker(limits)
    for name, value in headers:
        w.header(name, value)
    for c in chunks:
        w.body(c)
    return w.finish()


HEADERS, BODY = split(sample_message())
FACTS = walk(HEADERS, [BODY])


def test_leaf_parts_with_decoded_sizes_names_and_heads() -> None:
    """Every leaf part, nested ones too, with type, decoded name, exact decoded size and first bytes."""
    rows = [(p.path, p.content_type, p.filename, p.size, p.is_attachment) for p in FACTS.parts]
    assert rows == [
        ("1.1.1", "text/plain", "", len("Kính gửi các đồng chí.\r\n".encode()), False),
        ("1.1.2", "text/html", "", len("<p>Kính gửi</p>\r\n".encode()), False),
        ("1.2", "application/pdf", "Báo cáo.pdf", 30_009, True),
        ("1.3", "application/zip", "hoso.zip", len(_zip("a.txt", "b/virus.exe")), True),
        ("1.4.1.1", "text/plain", "", len("bên trong\r\n".encode()), False),
        ("1.4.1.2", "application/octet-stream", "x.pdf", 4, True),
    ]
    assert FACTS.parts[2].head.startswith(b"%PDF-1.4") and FACTS.parts[5].head == b"MZ\x90\x00"
    assert (FACTS.attachments_count, FACTS.attachments_total, FACTS.attachments_largest) == (
        3, 30_009 + FACTS.parts[3].size + 4, 30_009)
    assert FACTS.subject == "Báo cáo tháng 11" and FACTS.from_header == "Nguyễn Văn Minh <nvminh@cantho.gov.vn>"
    assert FACTS.incomplete == ()


def test_zip_members_come_from_the_central_directory() -> None:
    """A zip's member names are read from its end, without unpacking; body text is sampled, attachments are not."""
    assert FACTS.parts[3].members == ("a.txt", "b/virus.exe") and FACTS.parts[3].archive_error == ""
    assert FACTS.parts[0].sample == "Kính gửi các đồng chí.\r\n".encode() and FACTS.parts[2].sample == b""
    assert zip_members(b"PK\x05\x06" + bytes(10), 100) == (None, "no end-of-central-directory record")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(BODY) - 1), max_size=40))
def test_the_facts_do_not_depend_on_how_the_body_is_split(cuts: list[int]) -> None:
    """Fuzz: Postfix's chunks may cut a boundary, a base64 quantum or a CRLF anywhere; the facts are the same."""
    points = [0, *sorted(set(cuts)), len(BODY)]
    assert walk(HEADERS, [BODY[a:b] for a, b in pairwise(points)]) == FACTS


def test_quoted_printable_and_8bit_sizes_are_decoded_sizes() -> None:
    """QP is counted decoded; the CRLF before a boundary belongs to the boundary (RFC 2046), not to the part."""
    body = (b"--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            b"Vi=E1=BB=87t=\r\n Nam\r\n--b\r\nContent-Type: application/octet-stream; name=a.txt\r\n\r\n"
            b"12345\r\n--b--\r\n")
    facts = walk([(b"Content-Type", b"multipart/mixed; boundary=b")], [body])
    assert [p.size for p in facts.parts] == [len("Việt Nam".encode()), 5]
    assert facts.parts[0].sample == "Việt Nam".encode()


def test_a_message_without_mime_is_one_text_part() -> None:
    """No Content-Type: the whole body is one text/plain part (us-ascii by default)."""
    facts = walk([(b"Subject", b"=?utf-8?b?VGjGsA==?=")], [b"hello\r\n", b"world\r\n"])
    assert [(p.content_type, p.size, p.is_attachment) for p in facts.parts] == [("text/plain", 14, False)]
    assert facts.subject == "Thư" and facts.subject_charsets == ("utf-8",)


def test_encoded_words_are_decoded_and_their_charsets_named() -> None:
    """RFC 2047: B and Q words, adjacent words joined, the charsets kept for the TH13-6.2 check, garbage kept."""
    assert decode_words("=?UTF-8?Q?B=C3=A1o_c=C3=A1o?= =?utf-8?b?IHRow6FuZw==?= 11") == ("Báo cáo tháng 11", ("utf-8",))
    assert decode_words("Re: =?windows-1258?q?Vi=D2t?=")[1] == ("windows-1258",)
    assert decode_words("no words here") == ("no words here", ())
    assert decode_words("=?x-unknown?b?QUJD?=") == ("ABC", ("x-unknown",))


def test_bounds_are_recorded_not_exceeded() -> None:
    """Parts past max_parts are counted but not kept; nesting past max_depth is opaque; long header lines are cut."""
    many = b"".join(b"--b\r\nContent-Disposition: attachment; filename=p%d.pdf\r\n\r\n%%PDF\r\n" % i
                    for i in range(50)) + b"--b--\r\n"
    facts = walk([(b"Content-Type", b"multipart/mixed; boundary=b")], [many], Limits(max_parts=10))
    assert len(facts.parts) == 10 and facts.attachments_count == 50 and facts.incomplete == ("more than 10 parts",)
    deep = b"Content-Type: message/rfc822\r\n\r\n" * 20 + b"Content-Type: text/plain\r\n\r\nhi\r\n"
    facts = walk([(b"Content-Type", b"message/rfc822")], [deep], Limits(max_depth=5))
    assert facts.incomplete == ("parts nested deeper than 5 levels",) and len(facts.parts) == 1
    long = b"--b\r\nX-Long: " + b"x" * 5000 + b"\r\n\r\nbody\r\n--b--\r\n"
    facts = walk([(b"Content-Type", b"multipart/mixed; boundary=b")], [long], Limits(max_line=1024))
    assert facts.incomplete == ("header line longer than 1024 bytes",)


def test_garbage_base64_and_unterminated_parts_never_raise() -> None:
    """Undecodable base64 is counted leniently and marked damaged; an unclosed multipart ends with the message."""
    body = (b"--b\r\nContent-Type: application/pdf; name=a.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            b"!!!QUJD***R\r\n--b\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n--c\r\n\r\nunclosed")
    facts = walk([(b"Content-Type", b"multipart/mixed; boundary=b")], [body])
    assert [(p.path, p.size, p.damaged) for p in facts.parts] == [("1.1", 3, True), ("1.2.1", 8, False)]
