"""The web page where it used to lose things or say the wrong thing (issues 19.9-19.11, 21.5, 21.7,
20.9), in Debian's Chromium driven by Playwright, at desktop size and at 390×844 (a phone):

* a sign-in that ends (a new password; a Microsoft token that expires) keeps the config on screen
  and asks to sign in again; Microsoft tokens renew silently with a refresh token;
* the authorization code comes back in the fragment and never reaches a server;
* a misconfigured tenant is named (a v1.0 token, a redirect URI registered as "Web");
* a reload keeps the config, another tab is told it was handed out, "Start over" gets a new one;
* on a phone nothing scrolls sideways, an Extend error shows in view, Extend moves the end time;
* the page served from a static host talks to the API on another origin under a strict CSP.

The bot runs in-process (tests/support/webharness.py, the dryrun provider); Entra is the fake tenant
(tests/fakes/entra.py). Screenshots go to test-artifacts/.
"""
from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp import web

from bot.channels.web import signin_entra
from bot.channels.web.config import STATIC_DIR
from bot.channels.web.page import page_csp, page_headers
from bot.store.model import SessionState
from tests.fakes.entra import API_CLIENT_ID, SPA_CLIENT_ID, TENANT, FakeEntra
from tests.support.browser import ARGS, ARTIFACTS, CHROMIUM
from tests.support.loopback import serve_on_loopback
from tests.support.pagetools import (
    PHONE,
    VIEWPORTS,
    assert_in_view,
    assert_no_sideways_scroll,
    download_text,
    local_sign_in,
    need_browser,
    new_page,
    qr_text,
)
from tests.support.webharness import PASSWORD, WebApp

ALICE = "alice@example.org"
ROOT = "a-rather-long-mailbox-name.for-testing@operations.example.org"  # an admin whose name is long


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
async def entra():
    fake = await FakeEntra().start()
    yield fake
    await fake.close()


@pytest.fixture
async def make_app(tmp_path):
    apps = []

    async def make(**env) -> WebApp:
        env = {"VPN_USERS": f"local:{ALICE}", "VPN_ADMINS": f"email:{ROOT}", "VPN_DRYRUN_STEP_SECONDS": "0.2", "VPN_METRICS_PORT": "0", **env}
        app = await WebApp(tmp_path / f"data{len(apps)}", **env).start()
        apps.append(app)
        return app

    yield make
    for app in apps:
        await app.close()


def entra_env(entra: FakeEntra, **more) -> dict:
    return dict(VPN_ENTRA_TENANT_ID=TENANT, VPN_ENTRA_API_AUDIENCE=API_CLIENT_ID, VPN_ENTRA_SPA_CLIENT_ID=SPA_CLIENT_ID,
                VPN_ENTRA_AUTHORITY=entra.authority, VPN_USERS=f"local:{ALICE},domain:contoso.example", **more)


async def signed_in_with_a_config(page, app: WebApp, email: str = ALICE) -> str:
    """Local sign-in, Start, the QR on screen: what it decodes to."""
    await app.add_user(email)
    await page.goto(app.base + "/")
    await local_sign_in(page, email, PASSWORD)
    await page.wait_for_selector("#start:not([hidden])")
    await page.click("#start-button")
    return await qr_text(page)


# ----- 19.9: a sign-in that ends keeps the config on screen ---------------------------------------

@pytest.mark.parametrize("size", ["desktop", "phone"])
async def test_a_sign_in_that_ends_keeps_the_config_on_screen_and_asks_again(browser, make_app, size):
    app = await make_app()
    page = await new_page(browser, VIEWPORTS[size])
    scanned = await signed_in_with_a_config(page, app)
    await page.wait_for_function("() => document.getElementById('s-state').textContent === 'ready'")
    await app.add_user(ALICE)  # a new password: every token issued before ends (the next poll gets 401)
    await page.wait_for_selector("#reauth:not([hidden])", timeout=10000)
    banner = await page.text_content("#reauth")
    assert "Sign in again" in banner and "changed" in banner and "stay on this page" in banner
    await assert_in_view(page, "#reauth")
    assert await qr_text(page) == scanned  # the QR is still there, and still the same config
    assert await page.is_visible("#download")
    await assert_no_sideways_scroll(page)
    await page.screenshot(path=str(ARTIFACTS / f"web-reauth-{size}.png"), full_page=False)
    await page.click("#reauth-button")
    await local_sign_in(page, ALICE, PASSWORD)
    await page.wait_for_selector("#reauth", state="hidden")
    assert await page.is_hidden("#signin")
    assert await qr_text(page) == scanned and await download_text(page) == scanned
    before = await page.text_content("#s-left")
    await page.wait_for_function("(t) => document.getElementById('s-left').textContent !== t", arg=before)  # following again


async def test_microsoft_tokens_renew_silently_and_the_code_stays_in_the_fragment(browser, make_app, entra, monkeypatch):
    """A 4-second access token (no clock-skew leeway here): the page renews it with its refresh token,
    unseen; once renewal is refused it asks to sign in again, and the config survives the round trip."""
    monkeypatch.setattr(signin_entra, "LEEWAY", 0)
    entra.token_lifetime = 4
    app = await make_app(**entra_env(entra, VPN_ADMINS="domain:contoso.example"))
    page = await new_page(browser, PHONE)
    to_app = []
    page.on("request", lambda r: to_app.append(r.url) if r.url.startswith(app.base) else None)
    await page.goto(app.base + "/")
    await page.click("#entra")
    await page.wait_for_selector("#start:not([hidden])")
    asked = entra.authorize_requests[-1]
    assert asked["response_mode"] == "fragment" and "offline_access" in asked["scope"].split()
    assert to_app and not [u for u in to_app if "code=" in u], to_app  # the code never reached the bot (nor a proxy's log)
    assert "code=" not in page.url and "#" not in page.url
    await page.click("#start-button")
    scanned = await qr_text(page)
    deadline = time.monotonic() + 20
    while entra.fetches["refresh"] < 2:  # two expiries, two silent renewals
        assert time.monotonic() < deadline, entra.fetches
        await asyncio.sleep(0.2)
    await page.wait_for_selector("#admin-rows tr")
    await asyncio.sleep(1.5)
    assert await page.is_hidden("#reauth") and await page.is_hidden("#signin")
    assert await qr_text(page) == scanned
    entra.refuse_refresh = True  # the refresh token's life is over
    await page.wait_for_selector("#reauth:not([hidden])", timeout=15000)
    assert "expired" in await page.text_content("#reauth")
    assert await qr_text(page) == scanned
    await page.click("#reauth-button")
    await page.click("#entra")  # away to Microsoft and back: the config waits in the tab's storage
    await page.wait_for_selector("#reauth", state="hidden")
    await page.wait_for_function("() => document.getElementById('s-state').textContent === 'ready'")
    assert await qr_text(page) == scanned and await download_text(page) == scanned
    assert entra.fetches["token"] == 2
    assert not [u for u in to_app if "code=" in u]


# ----- 19.11: a misconfiguration reads as what it is ----------------------------------------------

@pytest.mark.parametrize("mistake, size, where, words", [
    ("v1 tokens", "desktop", "#reauth", "requestedAccessTokenVersion"),
    ("redirect URI registered as Web", "phone", "#alert", "must be registered as a Single-page application"),
])
async def test_a_misconfigured_tenant_is_named(browser, make_app, entra, mistake, size, where, words):
    if mistake == "v1 tokens":
        entra.token_claims = {"ver": "1.0", "iss": f"https://sts.windows.net/{TENANT}/", "aud": f"api://{API_CLIENT_ID}"}
    else:
        entra.platform = "web"
    app = await make_app(**entra_env(entra))
    page = await new_page(browser, VIEWPORTS[size])
    await page.goto(app.base + "/")
    await page.click("#entra")
    await page.wait_for_selector(f"{where}:not([hidden])", timeout=10000)
    text = await page.text_content(where)
    assert words in text, text
    assert "expired" not in text and "Failed to fetch" != text.strip()
    await assert_in_view(page, where)
    await assert_no_sideways_scroll(page)
    await page.screenshot(path=str(ARTIFACTS / f"web-misconfigured-{size}.png"))


# ----- 21.5: a reload keeps the config; elsewhere the page says it was handed out ------------------

@pytest.mark.parametrize("size", ["desktop", "phone"])
async def test_a_reload_keeps_the_config_and_another_tab_can_start_over(browser, make_app, size):
    app = await make_app()
    page = await new_page(browser, VIEWPORTS[size])
    scanned = await signed_in_with_a_config(page, app)
    old_id = await page.text_content("#s-id")
    await page.reload()
    assert await qr_text(page) == scanned  # the same config, after a reload
    assert await page.is_visible("#download") and await page.is_hidden("#config-gone")
    assert "only copy" in await page.text_content("#config")
    await page.screenshot(path=str(ARTIFACTS / f"web-reloaded-{size}.png"), full_page=True)
    other = await new_page(browser, VIEWPORTS[size])  # another window: the server handed the config out already
    await other.goto(app.base + "/")
    await local_sign_in(other, ALICE, PASSWORD)
    await other.wait_for_selector("#config-gone:not([hidden])")
    assert "already handed out" in await other.text_content("#config-gone")
    assert await other.is_hidden("#config")
    await assert_no_sideways_scroll(other)
    await other.screenshot(path=str(ARTIFACTS / f"web-handed-out-{size}.png"), full_page=True)
    await other.click("#start-over")  # stops this session and starts a new one
    await other.wait_for_function("(old) => { const t = document.getElementById('s-id').textContent; return t && t !== old; }", arg=old_id, timeout=30000)
    fresh = await qr_text(other)
    assert fresh != scanned and "PrivateKey" in fresh
    assert await other.is_hidden("#config-gone")
    # The first window follows its session to the end, and the dead config leaves it.
    await page.wait_for_function("() => document.getElementById('s-state').textContent === 'ended'", timeout=30000)
    assert await page.is_hidden("#config")
    assert await page.evaluate("sessionStorage.getItem('vpn.config')") is None
    await other.close()


# ----- issue 25.6: an end the engine never got to tell (its replica was killed) -------------------

async def test_an_ended_session_says_so_even_when_its_notice_never_came(browser, make_app):
    """The engine writes a session's end, then tells its owner; a replica SIGKILLed in between (the
    failover soak, bench/bench_soak.py, loses such notices) left the page on "Your VPN is ready" under
    a session it showed as ended, and polling stops at the end."""
    app = await make_app()
    page = await new_page(browser, VIEWPORTS["desktop"])
    await signed_in_with_a_config(page, app)
    await page.wait_for_function("() => document.getElementById('s-state').textContent === 'ready'")
    store, clock = app.runtime.store, app.runtime.service.clock
    s = await store.get(await page.text_content("#s-id"))
    s = await store.save(s.moved(SessionState.EXPIRING, clock(), end_reason="time is up", ending="expired"))
    await store.save(s.moved(SessionState.DELETED, clock(), ended_at=clock()))  # ...and the replica dies before the notice
    await page.wait_for_function("() => document.getElementById('s-state').textContent === 'ended'", timeout=10000)
    line = await page.text_content("#progress")
    assert line == f"Your VPN session {s.id} has ended (time is up).", line


# ----- 21.7: a phone ------------------------------------------------------------------------------

@pytest.mark.parametrize("size", ["desktop", "phone"])
async def test_admin_table_extend_error_and_end_time(browser, make_app, size):
    app = await make_app()
    page = await new_page(browser, VIEWPORTS[size])
    await signed_in_with_a_config(page, app, ROOT)
    await page.wait_for_selector("#admin-rows tr")
    await page.wait_for_function("() => document.getElementById('s-state').textContent === 'ready'")
    await assert_no_sideways_scroll(page)
    await page.screenshot(path=str(ARTIFACTS / f"web-admin-{size}.png"), full_page=True)
    await page.fill("#extend-minutes", "1000")  # more than the maximum allows
    await page.click("#extend")
    await page.wait_for_selector("#session-alert:not([hidden])")
    assert "extended by at most" in await page.text_content("#session-alert")
    await assert_in_view(page, "#session-alert")
    await assert_no_sideways_scroll(page)
    await page.screenshot(path=str(ARTIFACTS / f"web-extend-error-{size}.png"))
    before = await page.text_content("#progress")
    await page.fill("#extend-minutes", "15")
    async with page.expect_response(lambda r: r.url.endswith("/extend")) as answer:
        await page.click("#extend")
    ends = (await (await answer.value).json())["expires_at"]
    shown = await page.evaluate("(iso) => new Date(iso).toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'})", ends)
    await page.wait_for_function("(t) => document.getElementById('progress').textContent.includes(t)", arg=shown)
    assert shown not in before  # the status line moved with the end
    assert await page.is_hidden("#session-alert")


# ----- 20.9: the page from a static host ----------------------------------------------------------

async def static_host(state: dict) -> tuple[web.AppRunner, str, list]:
    """A static host like the Static Web App: web/ as files, plus config.json and the headers the
    deployment writes (`state`: {"config": ..., "connect": CSP connect-src})."""
    files = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "application/javascript"), "/style.css": ("style.css", "text/css")}
    served: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        served.append(request.path)
        headers = page_headers(page_csp(state["connect"]))
        if request.path == "/config.json":
            return web.Response(text=json.dumps(state["config"]), content_type="application/json", headers=headers)
        name, ctype = files[request.path]
        return web.Response(body=(STATIC_DIR / name).read_bytes(), content_type=ctype, headers=headers)

    app = web.Application()
    for path in (*files, "/config.json"):
        app.router.add_get(path, serve)
    runner, base = await serve_on_loopback(app)
    return runner, base, served


async def test_the_page_from_a_static_host_uses_the_api_on_its_origin(browser, make_app, entra):
    state: dict = {}
    runner, site, served = await static_host(state)
    try:
        app = await make_app(**entra_env(entra, VPN_CORS_ORIGINS=site, VPN_ADMINS="domain:contoso.example"))
        state["config"] = {"api": app.base, "entra": {"client_id": SPA_CLIENT_ID, "authority": f"{entra.authority}/{TENANT}", "scope": f"api://{API_CLIENT_ID}/access_as_user"}}
        state["connect"] = f"'self' {app.base} {entra.base}"  # what staticwebapp.config.json allows (docs/deploy.md)
        page = await new_page(browser, VIEWPORTS["desktop"])
        problems, to_app = [], []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("request", lambda r: to_app.append(r.url[len(app.base):]) if r.url.startswith(app.base) else None)
        await page.goto(site + "/")
        await page.click("#entra")
        await page.wait_for_selector("#start:not([hidden])")
        assert "erin@contoso.example (admin)" in await page.text_content("#who")
        await page.click("#start-button")
        scanned = await qr_text(page)
        assert "PrivateKey" in scanned and await download_text(page) == scanned
        await page.wait_for_selector("#admin-rows tr")
        await page.click("#stop")
        await page.wait_for_function("() => document.getElementById('s-state').textContent === 'ended'", timeout=30000)
        assert to_app and all(p.startswith("/api/") for p in to_app), to_app  # the bot serves the API only
        assert set(served) == {"/", "/app.js", "/style.css", "/config.json"}
        assert not [p for p in problems if "Content Security Policy" in p or "CORS" in p], problems
        await page.screenshot(path=str(ARTIFACTS / "web-static-host.png"), full_page=True)
    finally:
        await runner.cleanup()


async def test_a_static_host_whose_csp_leaves_out_entra_is_named(browser, make_app, entra):
    """The host's connect-src without Entra's origin: the page says which origin the CSP must allow."""
    state: dict = {}
    runner, site, _ = await static_host(state)
    try:
        app = await make_app(**entra_env(entra, VPN_CORS_ORIGINS=site))
        state["config"] = {"api": app.base, "entra": {"client_id": SPA_CLIENT_ID, "authority": f"{entra.authority}/{TENANT}", "scope": f"api://{API_CLIENT_ID}/access_as_user"}}
        state["connect"] = f"'self' {app.base}"  # Entra left out
        page = await new_page(browser, PHONE)
        await page.goto(site + "/")
        await page.click("#entra")
        await page.wait_for_selector("#alert:not([hidden])", timeout=10000)
        text = await page.text_content("#alert")
        assert "Content-Security-Policy does not allow" in text and entra.base in text, text
        await assert_in_view(page, "#alert")
    finally:
        await runner.cleanup()
