"""The page's approval flow as two people use it, in Debian's Chromium driven by Playwright: Alice asks
(with a reason) and waits; Bob, an approver, sees her request in his pending list and presses
Approve; Alice's page then shows her config. A second request is denied from the list, with a reason
typed into the prompt, and Alice's page says why."""
from __future__ import annotations

import os

import pytest

from tests.support.browser import ARGS, ARTIFACTS, CHROMIUM, skip_reason
from tests.support.qrtools import decode_qr
from tests.support.webharness import PASSWORD, WebApp

ALICE, BOB = "alice@example.org", "bob@example.org"


async def signed_in(browser, base: str, email: str):
    page = await (await browser.new_context(viewport={"width": 1280, "height": 900})).new_page()
    await page.goto(base + "/")
    await page.fill("#email", email)
    await page.fill("#password", PASSWORD)
    await page.press("#password", "Enter")
    await page.wait_for_selector("#who:not([hidden])")
    return page


async def test_an_approver_approves_and_denies_from_the_page(tmp_path):
    reason = skip_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test, but: {reason}")
        pytest.skip(reason)
    from playwright.async_api import async_playwright

    app = await WebApp(tmp_path / "data", VPN_USERS=f"local:{ALICE},local:{BOB}", VPN_APPROVERS=f"local:{BOB}", VPN_APPROVAL="always").start()
    for email in (ALICE, BOB):
        await app.add_user(email)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                alice = await signed_in(browser, app.base, ALICE)
                assert "Every session needs an approval first" in await alice.text_content("#limits")
                assert await alice.is_hidden("#pending")
                bob = await signed_in(browser, app.base, BOB)
                assert await bob.is_visible("#pending")

                await alice.fill("#reason", "restore the backup server")
                await alice.click("#start-button")
                await alice.wait_for_function("() => document.getElementById('s-state').textContent === 'awaiting_approval'")
                assert "Waiting for an approval" in await alice.text_content("#progress")
                await bob.wait_for_selector("#pending-rows tr")
                row = await bob.text_content("#pending-rows")
                assert ALICE in row and "restore the backup server" in row
                await bob.screenshot(path=str(ARTIFACTS / "web-page-pending.png"), full_page=True)
                await bob.click("#pending-rows button:has-text('Approve')")
                await bob.wait_for_function("() => document.querySelectorAll('#pending-rows tr').length === 0")
                await alice.wait_for_function("() => { const i = document.getElementById('qr'); return i.src && i.complete && i.naturalWidth > 0; }", timeout=30000)
                assert "PrivateKey" in decode_qr(await alice.locator("#qr").screenshot())
                assert await alice.text_content("#s-approval") == f"approved by {BOB}"
                await alice.click("#stop")
                await alice.wait_for_function("() => document.getElementById('s-state').textContent === 'ended'", timeout=30000)

                await alice.click("#start-button")
                await alice.wait_for_function("() => document.getElementById('s-state').textContent === 'awaiting_approval'")
                await bob.wait_for_selector("#pending-rows tr")
                bob.once("dialog", lambda dialog: dialog.accept("not this week"))
                await bob.click("#pending-rows button:has-text('Deny')")
                await alice.wait_for_function("() => document.getElementById('s-state').textContent === 'denied'", timeout=30000)
                assert await alice.text_content("#progress") == f"Not granted: denied by {BOB}: not this week"
                assert await alice.is_visible("#start")
            finally:
                await browser.close()
    finally:
        await app.close()
