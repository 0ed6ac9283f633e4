"""What the Chromium tests of the web page check on screen: the viewports, nothing sideways, a
message in view, the QR as a phone camera reads it and the file behind the download button."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.support.browser import skip_reason
from tests.support.qrtools import decode_qr

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
VIEWPORTS = {"desktop": DESKTOP, "phone": PHONE}


def need_browser() -> None:
    reason = skip_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests, but: {reason}")
        pytest.skip(reason)


async def new_page(browser, viewport: dict):
    page = await browser.new_page(viewport=viewport, device_scale_factor=2 if viewport == PHONE else 1, accept_downloads=True)
    page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))  # "Start over?", "Sign out?": yes
    return page


async def overflow(page) -> tuple[int, int]:
    """(scrollWidth, innerWidth) of the page: the first must not exceed the second (no sideways scroll)."""
    return tuple(await page.evaluate("[document.scrollingElement.scrollWidth, innerWidth]"))


async def assert_no_sideways_scroll(page) -> None:
    width, inner = await overflow(page)
    assert width <= inner, f"the page scrolls sideways: {width} px wide in a {inner} px viewport"


async def assert_in_view(page, selector: str) -> None:
    box = await page.evaluate(
        "(sel) => { const r = document.querySelector(sel).getBoundingClientRect(); return [r.top, r.bottom, r.left, r.right, innerHeight, innerWidth]; }",
        selector,
    )
    top, bottom, left, right, height, width = box
    # within a pixel: scrolling lands on whole pixels, boxes end on fractions
    assert bottom > top and top >= -1 and bottom <= height + 1 and left >= -1 and right <= width + 1, f"{selector} is not in view: {box}"


async def qr_text(page) -> str:
    await page.wait_for_function(
        "() => { const i = document.getElementById('qr'); return !i.hidden && i.src && i.complete && i.naturalWidth > 0; }", timeout=30000
    )
    return decode_qr(await page.locator("#qr").screenshot())


async def download_text(page) -> str:
    async with page.expect_download() as info:
        await page.click("#download")
    download = await info.value
    assert download.suggested_filename.endswith(".conf")
    return Path(await download.path()).read_text()


async def local_sign_in(page, email: str, password: str) -> None:
    await page.fill("#email", email)
    await page.fill("#password", password)
    await page.press("#password", "Enter")
