"""The web page as a person uses it, in Debian's Chromium driven by Playwright (no downloaded browser).

1. A local account, the `host` provider in the namespace lab: sign in, start, watch progress, the QR
   on screen decodes (zxing) to a config that carries traffic through the tunnel, stop, peer gone.
   The bot and the browser both run inside the server's namespace (the browser through a wrapper
   that enters it), so the page is on that namespace's loopback.
2. Microsoft sign-in against the fake Entra tenant (authorization code + PKCE), the dryrun provider,
   the admin list.
Screenshots go to test-artifacts/.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.netns import POOL, SERVER_LAN
from tests.support.apprun import APP, app_env
from tests.support.browser import ARGS, ARTIFACTS, CHROMIUM, skip_reason
from tests.support.qrtools import decode_qr
from tests.support.webharness import PASSWORD, SECRET, WebApp

ALICE = "alice@example.org"


def _need_browser() -> None:
    reason = skip_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test, but: {reason}")
        pytest.skip(reason)


RECORD_PROGRESS = """() => {
  window.__progress = [];
  const el = document.getElementById('progress');
  new MutationObserver(() => window.__progress.push(el.textContent)).observe(el, {childList: true, characterData: true, subtree: true});
}"""


async def _qr_and_file(page) -> tuple[str, str]:
    """What the screen shows, decoded as a phone camera would, and the file behind the download button."""
    qr = page.locator("#qr")
    await page.wait_for_function("() => { const i = document.getElementById('qr'); return i.src && i.complete && i.naturalWidth > 0; }", timeout=30000)
    box = await qr.bounding_box()
    assert box and box["width"] >= 300  # large enough to scan from a laptop screen
    scanned = decode_qr(await qr.screenshot())
    href = await page.get_attribute("#download", "href")
    assert href.startswith("blob:")
    async with page.expect_download() as info:
        await page.click("#download")
    download = await info.value
    assert download.suggested_filename.endswith(".conf")
    downloaded = Path(await download.path()).read_text()
    return scanned, downloaded


@pytest.mark.netns
async def test_local_account_host_provider_config_carries_traffic(lab, tmp_path):
    _need_browser()
    from playwright.async_api import async_playwright

    port = 8480
    env = app_env(
        tmp_path / "data", VPN_PROVIDER="host", WG_INTERFACE=lab.server_if, WG_ENDPOINT=SERVER_LAN, WG_POOL=POOL,
        VPN_LOCAL_AUTH_SECRET=SECRET, VPN_USERS=f"local:{ALICE}", PORT=str(port),
    )
    added = subprocess.run(lab.in_server(sys.executable, APP, "users", "add", ALICE), input=PASSWORD + "\n", env=env, capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    server = subprocess.Popen(lab.in_server(sys.executable, APP, "serve"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wrapper = tmp_path / "chromium-in-netns"
    wrapper.write_text(f"#!/bin/sh\nexec ip netns exec {lab.server_ns} {CHROMIUM} \"$@\"\n")
    wrapper.chmod(0o755)
    base = f"http://127.0.0.1:{port}"
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(wrapper), args=ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
                for _ in range(200):  # the bot is starting in the namespace
                    try:
                        await page.goto(base + "/")
                        break
                    except Exception:
                        await asyncio.sleep(0.1)
                api_calls = []
                page.on("request", lambda r: api_calls.append(r.url) if "/api/" in r.url else None)
                await page.wait_for_selector("#local")
                await asyncio.sleep(0.3)
                assert api_calls == []  # nothing before sign-in
                await page.fill("#email", ALICE)
                await page.fill("#password", PASSWORD)
                await page.press("#password", "Enter")  # the keyboard is enough
                await page.wait_for_selector("#start:not([hidden])")
                await page.evaluate(RECORD_PROGRESS)
                await page.click("#start-button")
                scanned, downloaded = await _qr_and_file(page)
                await page.wait_for_function("() => document.getElementById('s-state').textContent === 'ready'")
                await page.screenshot(path=str(ARTIFACTS / "web-page-host.png"), full_page=True)
                progress = await page.evaluate("window.__progress")
                assert progress and any(p for p in progress)
                assert scanned == downloaded and "PrivateKey" in scanned and f"Endpoint = {SERVER_LAN}:{lab.port}" in scanned
                conf = tmp_path / "web.conf"
                conf.write_text(scanned)
                lab.apply_client_config(conf)
                assert lab.tcp_through_tunnel() == "echo:through the tunnel"
                assert "min" in await page.text_content("#s-left")
                await page.click("#stop")
                await page.wait_for_function("() => document.getElementById('s-state').textContent === 'ended'", timeout=30000)
                assert await page.is_hidden("#config")  # the secret leaves the page with the session
                assert lab.server_peers() == []
                assert lab.tcp_through_tunnel(timeout=3).startswith("FAILED")
            finally:
                await browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        _, err = server.communicate(timeout=20)
    assert "Traceback" not in err, err
    private = scanned.split("PrivateKey = ", 1)[1].split()[0]
    assert private not in err
    for path in (tmp_path / "data").iterdir():
        assert private.encode() not in path.read_bytes()


async def test_microsoft_sign_in_start_scan_stop_and_the_admin_list(tmp_path):
    _need_browser()
    from playwright.async_api import async_playwright

    from tests.fakes.entra import API_CLIENT_ID, SPA_CLIENT_ID, TENANT, FakeEntra

    entra = await FakeEntra().start()
    app = await WebApp(
        tmp_path / "data", VPN_ENTRA_TENANT_ID=TENANT, VPN_ENTRA_API_AUDIENCE=API_CLIENT_ID, VPN_ENTRA_SPA_CLIENT_ID=SPA_CLIENT_ID,
        VPN_ENTRA_AUTHORITY=entra.authority, VPN_ADMINS="domain:contoso.example", VPN_DRYRUN_STEP_SECONDS="0.2",
    ).start()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = await browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2, accept_downloads=True)  # a phone
                elsewhere = []
                page.on("request", lambda r: None if r.url.startswith((app.base, entra.base, "blob:", "data:")) else elsewhere.append(r.url))
                await page.goto(app.base + "/")
                await page.click("#entra")
                await page.wait_for_selector("#start:not([hidden])")
                assert "erin@contoso.example (admin)" in await page.text_content("#who")
                assert "code=" not in page.url  # the code does not linger in the address bar
                await page.click("#start-button")
                await page.wait_for_function("() => document.getElementById('progress').textContent.includes('Setting up')")
                scanned, downloaded = await _qr_and_file(page)
                assert scanned == downloaded and "PrivateKey" in scanned
                await page.wait_for_selector("#admin-rows tr")
                assert "erin@contoso.example" in await page.text_content("#admin-rows")
                await page.screenshot(path=str(ARTIFACTS / "web-page-entra-phone.png"), full_page=True)
                await page.fill("#extend-minutes", "15")
                await page.click("#extend")
                await page.wait_for_function("() => parseInt(document.getElementById('s-left').textContent) >= 44")
                await page.click("#stop")
                await page.wait_for_function("() => document.getElementById('s-state').textContent === 'ended'", timeout=30000)
                assert entra.fetches["token"] == 1
                assert elsewhere == []
            finally:
                await browser.close()
    finally:
        await app.close()
        await entra.close()
