"""The twisted.web wrapper of the password page (authhooks.web.WebResource): bytes in, bytes out.

Real ``twisted.web.server.Request`` objects on Twisted's DummyChannel; the thread pool
is replaced by a synchronous runner, so each request is answered before render returns.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.web.server import Request, Site
from twisted.web.test.requesthelper import DummyChannel

from congvu.authhooks.web import WebResource, WebResponse
from tests.unit.authhooks.test_web import NEW, OLD, make_site
from tests.unit.authhooks.test_web import Site as WebSite


def run_now(fn: Any, *args: Any) -> defer.Deferred[WebResponse]:
    d: defer.Deferred[WebResponse] = defer.maybeDeferred(fn, *args)
    return d


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebSite]:
    s = make_site(tmp_path)
    yield s
    s.close()


def http(web: WebSite, method: bytes, uri: bytes, body: bytes = b"", headers: dict[bytes, bytes] | None = None,
         peer: str = "127.0.0.1") -> tuple[int, dict[bytes, list[bytes]], bytes]:
    """One request through Site + WebResource; (status, response headers, body)."""
    channel: Any = DummyChannel(IPv4Address("TCP", peer, 40000))
    channel.site = Site(WebResource(web.app, run_now))  # type: ignore[no-untyped-call]
    req = Request(channel, False)
    for k, v in {b"host": b"127.0.0.1:8080", **(headers or {})}.items():
        req.requestHeaders.setRawHeaders(k, [v])
    req.gotLength(len(body))
    req.handleContentChunk(body)
    req.requestReceived(method, uri, b"HTTP/1.1")
    raw = channel.transport.written.getvalue()
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    out: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        k, _, v = line.partition(b": ")
        out.setdefault(k.lower(), []).append(v)
    if out.get(b"transfer-encoding") == [b"chunked"]:
        payload = _unchunk(payload)
    return status, out, payload


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, rest = data.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out += rest[:n]
        data = rest[n + 2:]
    return out


FORM = {b"content-type": b"application/x-www-form-urlencoded"}


def test_roundcube_post_gets_200_ok(web: WebSite) -> None:
    """A Roundcube-style form POST is answered 200 with the body OK and the security headers."""
    web.add("nvminh")
    body = f"user=nvminh&curpass={quote(OLD)}&newpass={quote(NEW)}".encode()
    status, headers, payload = http(web, b"POST", b"/api/password", body, FORM)
    assert (status, payload) == (200, b"OK")
    assert headers[b"x-frame-options"] == [b"DENY"]
    assert b"frame-ancestors 'none'" in headers[b"content-security-policy"][0]
    assert web.account("nvminh@cantho.gov.vn").must_change is False


def test_refusal_is_json_4xx(web: WebSite) -> None:
    """A wrong current password comes back as 403 application/json."""
    web.add("nvminh")
    status, headers, payload = http(web, b"POST", b"/api/password", b"user=nvminh&curpass=x&newpass=y", FORM)
    assert status == 403 and headers[b"content-type"][0].startswith(b"application/json")
    assert b'"wrong_password"' in payload


def test_page_sets_cookie_and_head_has_no_body(web: WebSite) -> None:
    """GET / sets the CSRF cookie; HEAD answers the same status with an empty body."""
    status, headers, payload = http(web, b"GET", b"/?lang=en")
    assert status == 200 and headers[b"set-cookie"][0].startswith(b"congvu_csrf=") and b"Change your" in payload
    status, _, payload = http(web, b"HEAD", b"/")
    assert status == 200 and payload == b""


def test_https_proxy_gets_a_secure_cookie(web: WebSite) -> None:
    """Behind the trusted nginx (X-Forwarded-Proto: https) the cookie is marked Secure; from elsewhere not."""
    _, headers, _ = http(web, b"GET", b"/", headers={b"x-forwarded-proto": b"https"})
    assert b"; Secure" in headers[b"set-cookie"][0]
    _, headers, _ = http(web, b"GET", b"/", headers={b"x-forwarded-proto": b"https"}, peer="203.0.113.5")
    assert b"Secure" not in headers[b"set-cookie"][0]


def test_forwarded_client_is_rate_limited_not_the_proxy(tmp_path: Path) -> None:
    """Through the trusted proxy, the per-IP limit applies to the X-Forwarded-For client."""
    s = make_site(tmp_path, web_rate_ip=1, lockout_failures=0)
    s.add("nvminh")
    first = {**FORM, b"x-forwarded-for": b"198.51.100.20"}
    second = {**FORM, b"x-forwarded-for": b"198.51.100.21"}
    assert http(s, b"POST", b"/api/password", b"user=nvminh&curpass=x&newpass=y", first)[0] == 403
    assert http(s, b"POST", b"/api/password", b"user=nvminh&curpass=x&newpass=y", first)[0] == 429
    assert http(s, b"POST", b"/api/password", b"user=nvminh&curpass=x&newpass=y", second)[0] == 403


def test_oversized_body_is_413(web: WebSite) -> None:
    """A body over 64 KiB is refused before anything is parsed or verified."""
    status, _, payload = http(web, b"POST", b"/api/password", b"user=a&newpass=" + b"x" * 70000, FORM)
    assert status == 413 and b"too_large" in payload
