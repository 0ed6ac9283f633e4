"""A message that arrives during a cold start is handled exactly once.

With zero replicas, Container Apps holds the first request while a replica starts; Teams gives up
after ~15 s and re-sends the same activity (same id). Both copies then reach the bot. Here: the real
`app.py serve` (Teams in dev mode, a fake Bot Connector on 127.0.0.1) is spawned, the activity is
posted from the moment the process exists (retrying while nothing listens, as the platform's proxy
holds it), and the re-send races the first copy. One session, one acknowledgement.
"""
from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
import time

import aiohttp

from tests.channels.teams.test_channel import ALICE_AAD, TENANT, activity
from tests.fakes.connector import FakeConnector
from tests.support.apprun import APP, app_env
from tests.support.loopback import free_port


async def post_when_up(url: str, data: dict, deadline: float) -> int:
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.post(url, json=data) as resp:
                    await resp.read()
                    return resp.status
            except aiohttp.ClientConnectionError:
                assert time.monotonic() < deadline, "serve did not come up"
                await asyncio.sleep(0.01)


async def test_a_message_resent_during_a_cold_start_starts_one_session(tmp_path):
    connector = await FakeConnector().start()
    port = free_port()
    env = app_env(tmp_path / "data", PORT=str(port), VPN_DEV_MODE="1", VPN_USERS=f"teams:{ALICE_AAD}", VPN_METRICS_PORT="0")
    message = activity("personal_message", serviceUrl=connector.base_url, aadObjectId=ALICE_AAD, tenantId=TENANT, text="vpn start")
    proc = await asyncio.create_subprocess_exec(sys.executable, APP, "serve", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/api/messages"
        deadline = time.monotonic() + 30
        # The held request and Teams' re-send of the same activity, both waiting for the replica.
        statuses = await asyncio.gather(*(post_when_up(url, message, deadline) for _ in range(3)))
        assert all(s < 500 for s in statuses), statuses
        while "Your VPN is ready" not in json.dumps([c.body for c in connector.sent() + connector.updates()]):
            assert time.monotonic() < deadline, "no config delivered"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # room for a second copy to show itself
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        await connector.stop()
    log = err.decode()
    assert proc.returncode == 0, log
    assert "Traceback" not in log
    with sqlite3.connect(tmp_path / "data" / "vpn-bot.sqlite3") as db:
        assert db.execute("select count(*) from sessions").fetchone()[0] == 1
        assert db.execute("select count(*) from audit where command like 'start%'").fetchone()[0] == 1  # run once, not refused twice
    everything = [json.dumps(c.body) for c in connector.sent() + connector.updates()]
    assert len([c for c in connector.sent() if "Setting up your VPN" in json.dumps(c.body)]) == 1  # one progress card
    assert not any("already have a VPN session" in t for t in everything)
