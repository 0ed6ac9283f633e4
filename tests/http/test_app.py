"""The HTTP service: `vpn-bot serve` on a loopback port, probed with real HTTP."""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import aiohttp

from tests.support.apprun import APP, app_env
from tests.support.loopback import free_port


async def test_serve_answers_healthz_and_shuts_down_cleanly(tmp_path):
    port = free_port()
    env = app_env(tmp_path / "data", PORT=str(port))
    proc = subprocess.Popen([sys.executable, APP, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    async with http.get(f"{base}/healthz") as resp:
                        assert resp.status == 200
                        assert (await resp.json()) == {"status": "ok", "provider": "dryrun"}
                        break
                except aiohttp.ClientConnectionError:
                    assert time.monotonic() < deadline, "serve did not come up"
                    await asyncio.sleep(0.1)
            async with http.get(f"{base}/nope") as resp:
                assert resp.status == 404
            async with http.post(f"{base}/healthz", data=b"x") as resp:
                assert resp.status == 405
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "shutting down" in err and "Traceback" not in err


async def test_serve_binds_loopback_by_default(tmp_path):
    from bot.settings import Settings

    settings = Settings.from_env({})
    assert (settings.ops.host, settings.ops.port) == ("127.0.0.1", 3978)


async def test_serve_wires_groupme_from_the_environment(tmp_path):
    """`vpn-bot serve` with GROUPME_* set answers a callback by posting through the GroupMe API."""
    from tests.fakes.groupme import FakeGroupMe

    gm = await FakeGroupMe().start()
    port = free_port()
    env = app_env(
        tmp_path / "data", PORT=str(port), VPN_USERS="groupme:111", VPN_PUBLIC_URL=f"http://127.0.0.1:{port}",
        GROUPME_BOT_ID="bot-1", GROUPME_GROUP_ID="4242", GROUPME_CALLBACK_SECRET="s" * 20,
        GROUPME_ACCESS_TOKEN="service-token", GROUPME_API_URL=gm.base_url,
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, APP, "serve", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    msg = {"group_id": "4242", "id": "5001", "sender_type": "user", "system": False, "text": "/vpn help", "user_id": "111", "attachments": [],
           "created_at": int(time.time())}
    gm.messages.append(msg)  # GroupMe holds it: the bot verifies every command before answering
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    async with http.post(f"http://127.0.0.1:{port}/api/groupme/{'s' * 20}", json=msg) as resp:
                        assert resp.status == 200
                        break
                except aiohttp.ClientConnectionError:
                    assert time.monotonic() < deadline, "serve did not come up"
                    await asyncio.sleep(0.1)
        for _ in range(100):
            if gm.posts:
                break
            await asyncio.sleep(0.05)
        assert "I hand out WireGuard VPN access" in gm.posts[0]["text"] and gm.posts[0]["bot_id"] == "bot-1"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        await gm.stop()
    assert proc.returncode == 0, err.decode()
    assert "channels: groupme" in err.decode() and "service-token" not in err.decode()


async def test_readyz_fails_when_the_store_does_not_answer_while_healthz_stays_cheap(make_runtime):
    from bot.wiring import build_http_app
    from tests.support.loopback import serve_on_loopback

    runtime = make_runtime()
    runner, base = await serve_on_loopback(build_http_app(runtime))
    await runtime.opened()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/readyz") as resp:
                assert resp.status == 200
            calls = []

            async def unreachable(*args, **kwargs):
                calls.append(args)
                raise ConnectionError("store unreachable")

            runtime.store.sessions = unreachable
            async with http.get(f"{base}/readyz") as resp:
                assert resp.status == 503 and (await resp.json()) == {"status": "unavailable"}
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200
            assert len(calls) == 1  # /healthz never touched the store
    finally:
        await runner.cleanup()
