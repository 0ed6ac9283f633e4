"""The web page's admin view (issue 23) in Debian's Chromium: sessions and cost per day as inline-SVG
charts, the per-user table, the CSV download (read back with the csv module), the audit list with its
filter, at desktop size and on a phone (nothing scrolls sideways), under the page's strict CSP.
Screenshots go to test-artifacts/admin-usage-<size>.png."""
from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bot.store.ports import AuditEntry, UsageRecord
from bot.store.usage_codec import USAGE_FIELDS
from tests.support.browser import ARGS, ARTIFACTS, CHROMIUM
from tests.support.pagetools import VIEWPORTS, assert_no_sideways_scroll, local_sign_in, need_browser, new_page
from tests.support.webharness import PASSWORD, WebApp

ROOT = "root@example.org"
PEOPLE = ["alice@example.org", "bob@example.org", "carol@example.org", "a-rather-long-mailbox-name.for-testing@operations.example.org"]


@pytest.fixture
async def browser():
    need_browser()
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def app(tmp_path):
    app = await WebApp(tmp_path / "data", VPN_USERS=",".join(f"local:{p}" for p in PEOPLE), VPN_ADMINS=f"email:{ROOT}",
                       VPN_METRICS_PORT="0").start()
    yield app
    await app.close()


async def seed(app: WebApp) -> int:
    """A month of sessions: every person most days, more on weekdays; costs by the hour at $0.0208."""
    store, now = app.runtime.store, datetime.now(timezone.utc)
    first_day = (now - timedelta(days=29)).replace(hour=0, minute=0, second=0, microsecond=0)
    n = 0
    for back in range(29, -1, -1):
        for i, person in enumerate(PEOPLE):
            if (back + i) % (3 if i == 3 else 2) and back % 7 not in (1, 2):
                continue
            # Inside the page's 30 UTC days whatever the time of day (at 00:30, "29 days and 2 hours
            # ago" is the 31st day back, outside the chart).
            at = max(now - timedelta(days=back, hours=i + 1), first_day + timedelta(minutes=5 * (i + 1)))
            minutes = 20.0 + 15 * ((back + i) % 5)
            await store.put_usage(UsageRecord(
                session_id=f"{back:02d}{i:02d}000000"[:10], owner=f"local:{person}", owner_label=person, channel="web", provider="azure",
                region="westeurope", requested_at=at, ready_at=at + timedelta(seconds=70), ended_at=at + timedelta(minutes=minutes + 1.2),
                minutes=minutes, cost=round((minutes + 1.2) / 60 * 0.0208, 6), bytes_in=int(minutes * 600_000), bytes_out=int(minutes * 150_000),
                end_reason=("expired", "stopped", "idle")[(back + i) % 3], detail="",
            ))
            n += 1
    for i, person in enumerate(PEOPLE):
        await store.audit(AuditEntry(now - timedelta(minutes=30 - i), f"local:{person}", person, "web", "start 30", True, "user"))
    await store.audit(AuditEntry(now - timedelta(minutes=5), "local:mallory@elsewhere.example", "mallory@elsewhere.example", "web",
                                 "GET /api/sessions", False, "not on the allowlist"))
    return n


@pytest.mark.parametrize("size", ["desktop", "phone"])
async def test_admins_see_charts_the_per_user_table_and_a_filtered_audit_list(browser, app, size, tmp_path):
    sessions = await seed(app)
    await app.add_user(ROOT)
    page = await new_page(browser, VIEWPORTS[size])
    violations = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    await page.goto(app.base + "/")
    await local_sign_in(page, ROOT, PASSWORD)
    await page.wait_for_selector("#usage:not([hidden])")
    await page.wait_for_function("() => document.querySelectorAll('#usage-rows tr').length === 4")

    # The charts: a bar per day of the 30, the tallest labelled with its value; a tooltip per bar.
    assert await page.locator("#chart-sessions rect").count() == 30 and await page.locator("#chart-cost rect").count() == 30
    tips = await page.locator("#chart-sessions rect title").all_text_contents()
    assert len(tips) == 30 and all(": " in t for t in tips)
    total = sum(int(t.rsplit(": ", 1)[1]) for t in tips)
    assert total == sessions
    assert (await page.text_content("#usage-totals")).startswith(f"{sessions} session(s)")
    heights = [float(h) for h in await page.eval_on_selector_all("#chart-cost rect", "els => els.map(e => e.getAttribute('height'))")]
    assert max(heights) > 100 and min(heights) >= 0

    # The per-user table: most expensive first, every person once.
    users = await page.eval_on_selector_all("#usage-rows tr td:first-child", "tds => tds.map(td => td.textContent)")
    assert sorted(users) == sorted(PEOPLE)

    # The audit list with its filter.
    await page.wait_for_function("() => document.querySelectorAll('#audit-rows tr').length >= 6")
    assert "mallory@elsewhere.example" in await page.text_content("#audit-rows")
    assert await page.locator("#audit-rows tr.refused").count() >= 1
    await page.fill("#audit-user", "bob@example.org")
    await page.click("#audit-form button[type=submit]")
    await page.wait_for_function("() => [...document.querySelectorAll('#audit-rows tr td[data-label=Who]')].every(td => td.textContent === 'bob@example.org')")
    assert await page.locator("#audit-rows tr").count() == 1

    if size == "phone":
        await assert_no_sideways_scroll(page)
    await page.locator("#usage").scroll_into_view_if_needed()
    await page.screenshot(path=str(ARTIFACTS / f"admin-usage-{size}.png"), full_page=True)

    # The CSV behind "Download CSV": the same rows, read back with the csv module.
    async with page.expect_download() as info:
        await page.click("#usage-csv")
    download = await info.value
    assert download.suggested_filename.startswith("vpn-usage-") and download.suggested_filename.endswith(".csv")
    rows = list(csv.reader(io.StringIO(Path(await download.path()).read_text(), newline="")))
    assert tuple(rows[0]) == USAGE_FIELDS and len(rows) == sessions + 1

    # A user filter redraws everything for that person.
    await page.fill("#usage-user", "carol@example.org")
    await page.click("#usage-form button[type=submit]")
    await page.wait_for_function("() => document.querySelectorAll('#usage-rows tr').length === 1")
    assert await page.text_content("#usage-rows td") == "carol@example.org"
    assert violations == []


async def test_the_admin_view_stays_hidden_from_users(browser, app):
    await app.add_user(PEOPLE[0])
    page = await new_page(browser, VIEWPORTS["desktop"])
    await page.goto(app.base + "/")
    await local_sign_in(page, PEOPLE[0], PASSWORD)
    await page.wait_for_selector("#start:not([hidden])")
    assert await page.is_hidden("#usage") and await page.is_hidden("#audit")
