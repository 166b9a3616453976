"""The first-login circle through a real Dovecot: NO [EXPIRED] → change over HTTP → the IMAP login works at once.

Dovecot 2.3 with the shipped checkpassword snippet (tests/integration/servers/dovecot.py)
asks ``congvu authd``; the password page answers on loopback.  Two deployments, both
with the default directory cache (``[directory] cache_ttl`` 30 s):

* the page inside ``congvu authd`` (one AuthService, one cache): the change invalidates
  the very cache entry the next login reads;
* the page in its own process: authd's cache must not keep serving the old hash.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.integration.authhooks.webproc import ISSUED, STRONG, WebSite, post
from tests.integration.servers.dovecot import DovecotServer, shipped
from tests.integration.support import new_root


def _site(dovecot_factory: Callable[[str], DovecotServer], *, page_inside: bool) -> Iterator[
        tuple[WebSite, DovecotServer]]:
    site = WebSite(new_root("congvu-webdc-"), lockout_exempt=["127.0.0.1/32"])
    try:
        site.start_authd(with_web=page_inside)
        if not page_inside:
            site.start_web_alone()
        dovecot = dovecot_factory(shipped("congvu-checkpassword.conf.ext", socket_path=site.socket))
        yield site, dovecot
    finally:
        site.close()


@pytest.fixture(scope="module")
def inside(dovecot_factory: Callable[[str], DovecotServer]) -> Iterator[tuple[WebSite, DovecotServer]]:
    """``congvu authd`` with the page started inside it (start_web with authd's service and pool)."""
    yield from _site(dovecot_factory, page_inside=True)


@pytest.fixture(scope="module")
def separate(dovecot_factory: Callable[[str], DovecotServer]) -> Iterator[tuple[WebSite, DovecotServer]]:
    """``congvu authd`` and ``python -m authhooks.web`` as two processes over one directory."""
    yield from _site(dovecot_factory, page_inside=False)


def _first_login_circle(site: WebSite, dovecot: DovecotServer, local: str) -> None:
    addr = site.add(local)
    ok, text = dovecot.imap_login(addr, ISSUED)
    assert not ok and "[EXPIRED]" in text and site.cfg.change_url in text, text + dovecot.log_tail()
    r = post(site.url + "/api/password", {"user": addr, "curpass": ISSUED, "newpass": STRONG})
    assert (r.status, r.body) == (200, b"OK"), r
    assert dovecot.imap_login(addr, STRONG) == (True, "OK"), dovecot.log_tail() + site.log_tail()
    ok, text = dovecot.imap_login(addr, ISSUED)
    assert not ok and "[AUTHENTICATIONFAILED]" in text, text
    assert dovecot.pop3_login(addr, STRONG) == (True, "OK")


def test_new_account_changes_its_password_then_logs_in(inside: tuple[WebSite, DovecotServer]) -> None:
    """Page inside authd: NO [EXPIRED] for the issued password; after POST /api/password the new one logs in."""
    _first_login_circle(*inside, "moi.trongauthd")


def test_change_from_another_process_is_seen_at_once(separate: tuple[WebSite, DovecotServer]) -> None:
    """Page in its own process: authd does not serve its cached old hash; the new password logs in at once."""
    _first_login_circle(*separate, "moi.tientrinhrieng")


def test_wrong_current_password_on_the_page_counts_towards_the_imap_lockout(
        inside: tuple[WebSite, DovecotServer]) -> None:
    """Guessing through the page is no way around the lockout: wrong curpass attempts lock IMAP too."""
    site, dovecot = inside
    addr = site.add("doan.quatrang", must_change=False)
    n = site.cfg.authhooks.lockout_failures
    for i in range(n):
        r = post(site.url + "/api/password", {"user": addr, "curpass": f"Đoán-{i}", "newpass": STRONG},
                 {"X-Forwarded-For": f"198.51.100.{i + 1}"})
        assert r.status in (403, 429), r
    ok, text = dovecot.imap_login(addr, ISSUED)
    assert not ok and text.startswith("[ALERT] Đăng nhập sai quá nhiều lần"), (
        "the right password must be refused while locked out, saying until when", text)
