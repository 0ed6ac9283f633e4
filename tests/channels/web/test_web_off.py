"""Without VPN_LOCAL_AUTH_SECRET, `/` says the web sign-in is off and how to turn it on (issue 21.6),
under the page's CSP: `vpn-bot serve` as run, real HTTP on loopback."""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import aiohttp

from tests.support.apprun import APP, app_env
from tests.support.loopback import free_port


async def test_without_the_secret_the_page_says_how_to_turn_it_on(tmp_path):
    port = free_port()
    env = app_env(tmp_path / "data", PORT=str(port))
    proc = subprocess.Popen([sys.executable, APP, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    async with http.get(f"{base}/") as resp:
                        status, headers, body = resp.status, resp.headers, await resp.text()
                        break
                except aiohttp.ClientConnectionError:
                    assert time.monotonic() < deadline and proc.poll() is None, "serve did not come up"
                    await asyncio.sleep(0.1)
            async with http.get(f"{base}/style.css") as resp:
                assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/css")
            async with http.get(f"{base}/api/me") as resp:
                assert resp.status == 404  # no API: only the explanation
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert status == 200 and headers["Content-Type"].startswith("text/html"), (status, body[:200])
    assert "not configured" in body and "VPN_LOCAL_AUTH_SECRET" in body
    assert "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'" in body and "openssl rand -base64 32" in body
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
    assert "<script" not in body and "style=" not in body
    assert "Traceback" not in err


async def test_the_page_served_by_the_bot_reads_its_sign_in_settings_from_config_json(tmp_path):
    """One code path in the page: the bot answers config.json as the deployment writes it for a static host."""
    from tests.fakes.entra import API_CLIENT_ID, SPA_CLIENT_ID, TENANT
    from tests.support.webharness import WebApp

    async with aiohttp.ClientSession() as http:
        for env, entra in (
            ({}, None),
            ({"VPN_ENTRA_TENANT_ID": TENANT, "VPN_ENTRA_API_AUDIENCE": API_CLIENT_ID, "VPN_ENTRA_SPA_CLIENT_ID": SPA_CLIENT_ID},
             {"client_id": SPA_CLIENT_ID, "authority": f"https://login.microsoftonline.com/{TENANT}", "scope": f"api://{API_CLIENT_ID}/access_as_user"}),
        ):
            app = await WebApp(tmp_path / "data", VPN_METRICS_PORT="0", **env).start()
            try:
                async with http.get(f"{app.base}/config.json") as resp:
                    assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/json")
                    assert await resp.json() == {"api": "", "entra": entra}
                async with http.get(f"{app.base}/") as resp:
                    assert "{{" not in await resp.text()  # nothing filled in: the same file a static host serves
            finally:
                await app.close()
