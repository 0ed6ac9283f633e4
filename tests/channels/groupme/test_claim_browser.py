"""The claim page as a person sees it: headless Chromium (Debian's) driven by Playwright.

The test starts the browser itself with background networking off, and only ever loads pages from
the bot on 127.0.0.1. A screenshot of the revealed page is kept in test-artifacts/.
"""
from __future__ import annotations

import base64
import os

import pytest

from tests.support.browser import ARGS, ARTIFACTS, CHROMIUM, skip_reason
from tests.support.qrtools import decode_qr


async def test_reveal_in_a_real_browser(make_harness):
    reason = skip_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test, but: {reason}")
        pytest.skip(reason)
    from playwright.async_api import async_playwright

    h = await make_harness()
    await h.callback(h.message("/vpn start"))
    await h.settle()
    link = h.link()
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)  # a phone
            blocked = []
            page.on("request", lambda r: None if r.url.startswith((h.base, "data:")) else blocked.append(r.url))
            await page.goto(link)
            assert await page.title() == "Your VPN config"
            await page.click("#reveal")
            qr = page.locator("#qr")
            await qr.wait_for(state="visible")
            width = await qr.evaluate("img => img.naturalWidth")
            assert width >= 300 and await qr.is_visible()
            box = await qr.bounding_box()
            assert box and box["width"] >= 300  # large on a phone screen: easy to scan
            await page.screenshot(path=str(ARTIFACTS / "claim-page.png"), full_page=True)
            src = await qr.get_attribute("src")
            href = await page.get_attribute("#download", "href")
            config = base64.b64decode(href.split(",", 1)[1]).decode()
            assert decode_qr(base64.b64decode(src.split(",", 1)[1])) == config
            # What the screen shows scans too, as a phone camera would see it.
            assert decode_qr(await qr.screenshot()) == config
            await page.goto(link)
            assert "already been used" in await page.content() or "not valid" in await page.content()
            assert blocked == []  # the page loads nothing from anywhere else
        finally:
            await browser.close()
