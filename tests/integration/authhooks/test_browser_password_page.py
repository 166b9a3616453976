"""The password page in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

A new account's holder opens the page, types a new password and watches the server-side
strength feedback change, submits, and sees the success message; the screenshots stay in
``tests/artifacts/`` (gitignored) for a human to look at.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.authhooks.webproc import ISSUED, STRONG, WebSite
from tests.integration.support import need, new_root

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def site() -> Iterator[WebSite]:
    s = WebSite(new_root("congvu-browser-"))
    try:
        s.start_web_alone()
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright; never a downloaded browser."""
    chromium = need("chromium", "chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def test_change_password_in_the_browser(site: WebSite, browser: Any) -> None:
    """Fill the form, see the strength go from weak to strong while typing, submit, see success; screenshot kept."""
    addr = site.add("trinhduyet")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1100, "height": 900}, locale="vi-VN")
    try:
        page.goto(site.url + "/")
        assert page.locator("h1").inner_text() == "Đổi mật khẩu thư điện tử công vụ"
        assert "CT25-5.3" in page.locator("aside.rules").inner_text()
        page.fill("#user", addr)
        page.fill("#curpass", ISSUED)
        strength = page.locator("#strength")
        page.locator("#newpass").press_sequentially("abc12", delay=40)
        page.wait_for_selector("#strength[data-accepted=no]")
        weak = int(strength.get_attribute("data-score") or "-1")
        assert 0 <= weak <= 1
        assert "ít nhất" in page.locator("#strength-reasons").inner_text()
        page.screenshot(path=str(ARTIFACTS / "password_page_weak.png"), full_page=True)

        page.fill("#newpass", "")
        page.locator("#newpass").press_sequentially(STRONG, delay=15)
        page.wait_for_selector("#strength[data-accepted=yes]")
        strong = int(strength.get_attribute("data-score") or "-1")
        assert strong >= 3 > weak
        assert "Mật khẩu đạt yêu cầu" in page.locator("#strength-reasons").inner_text()
        page.screenshot(path=str(ARTIFACTS / "password_page_strong.png"), full_page=True)

        page.fill("#newpass2", STRONG)
        page.click("#submit")
        page.wait_for_selector("#result.ok", timeout=15000)
        assert "Đã đổi mật khẩu" in page.locator("#result").inner_text()
        page.screenshot(path=str(ARTIFACTS / "password_page_success.png"), full_page=True)
    finally:
        page.close()
    acc = site.account(addr)
    assert acc.must_change is False and site.hasher.verify(STRONG, acc.password_hash)[0]
    assert (ARTIFACTS / "password_page_success.png").stat().st_size > 10_000


def test_english_page_and_wrong_password_in_the_browser(site: WebSite, browser: Any) -> None:
    """The English toggle switches the page; a wrong current password shows the refusal with its rule id."""
    addr = site.add("trinhduyet.en")
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    try:
        page.goto(site.url + "/")
        page.click("#langswitch")
        page.wait_for_selector("html[lang=en]")
        assert page.locator("h1").inner_text() == "Change your official e-mail password"
        page.fill("#user", addr)
        page.fill("#curpass", "Not-The-Password-1")
        page.fill("#newpass", STRONG)
        page.fill("#newpass2", STRONG)
        page.click("#submit")
        page.wait_for_selector("#result.error", timeout=15000)
        text = page.locator("#result").inner_text()
        assert "Wrong user name or current password" in text and "CT25-3.2" in text
        page.screenshot(path=str(ARTIFACTS / "password_page_en_error.png"), full_page=True)
    finally:
        page.close()
    assert site.account(addr).must_change is True
