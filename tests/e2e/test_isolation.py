"""Isolation between channels (issue 10, item 4): a backlog in one channel must not hold up another.

The real numbers (acks under a 50/s Teams burst) are in bench/bench_isolation.py; this test holds
a generous functional bound: GroupMe's ack never waits for its own work, let alone Teams'.
"""
from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp.test_utils import TestServer

from bot.channels.groupme.channel import GroupMeChannel
from bot.channels.groupme.config import GroupMeConfig
from bot.channels.teams.channel import TeamsChannel
from bot.channels.teams.config import TeamsConfig
from bot.store.model import SessionState
from bot.wiring import build_http_app
from tests.channels.teams.test_channel import TENANT, activity
from tests.fakes.connector import FakeConnector
from tests.fakes.groupme import FakeGroupMe

SECRET = "iso-secret-0123456789abc"
GROUP = "4242"


async def test_groupme_is_acked_quickly_during_a_teams_start_burst(make_runtime):
    """Dev-mode Teams and GroupMe in one app: while 30 Teams users start sessions at once, GroupMe
    callbacks are acknowledged within a generous bound and answered; every Teams user gets a config."""
    connector = await FakeConnector(members={}).start()
    gm = await FakeGroupMe().start()
    teams = TeamsChannel(TeamsConfig(dev_mode=True, backoff=0.01))
    groupme = GroupMeChannel(GroupMeConfig(bot_id="bot-1", group_ids=(GROUP,), callback_secret=SECRET, access_token="service-token",
                                           api_url=gm.base_url, public_url="http://127.0.0.1:1", post_spacing=0.0, verify_retry_delay=0.01))
    aads = [f"00000000-0000-0000-0000-{i:012d}" for i in range(1, 31)]
    users = ",".join([f"teams:{a}" for a in aads] + ["groupme:111"])
    runtime = make_runtime(users=users, VPN_DRYRUN_STEP_SECONDS=0, VPN_MAX_SESSIONS=100, channels=[teams, groupme])
    server = TestServer(build_http_app(runtime), host="127.0.0.1")
    await server.start_server()
    await runtime.opened()
    try:
        async with aiohttp.ClientSession() as http:
            async def teams_start(i: int, aad: str) -> int:
                data = activity("personal_message", serviceUrl=connector.base_url, aadObjectId=aad, tenantId=TENANT, text="/vpn start")
                data["from"]["id"] = f"29:user-{i}"
                data["conversation"]["id"] = f"a:1personal-{i}"
                async with http.post(server.make_url("/api/messages"), json=data) as resp:
                    return resp.status

            async def groupme_help(i: int) -> float:
                clock = runtime.service.clock
                msg = {"attachments": [], "created_at": int(clock().timestamp()), "group_id": GROUP, "id": str(7_000_000 + i),
                       "sender_type": "user", "system": False, "text": "/vpn help", "user_id": "111", "sender_id": "111"}
                gm.messages.append(msg)
                t = time.perf_counter()
                async with http.post(server.make_url(f"/api/groupme/{SECRET}"), json=msg) as resp:
                    assert resp.status == 200
                return time.perf_counter() - t

            burst = [asyncio.create_task(teams_start(i, a)) for i, a in enumerate(aads)]
            acks = []
            for i in range(5):
                await asyncio.sleep(0.05)
                acks.append(await groupme_help(i))
            assert all(s < 300 for s in await asyncio.gather(*burst))
        await runtime.runner.wait_idle(120)
        assert max(acks) < 5.0, f"GroupMe acks during the Teams burst: {acks}"
        assert len([p for p in gm.posts if "I hand out WireGuard" in p["text"]]) == 5
        assert len(await runtime.store.sessions([SessionState.READY])) == 30
    finally:
        await server.close()
        await connector.stop()
        await gm.stop()
