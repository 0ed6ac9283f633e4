"""The `make_harness` fixture for the GroupMe tests (the harness itself is in harness.py)."""
from __future__ import annotations

import pytest
from aiohttp.test_utils import TestServer

from bot.channels.groupme.channel import GroupMeChannel
from bot.channels.groupme.config import GroupMeConfig
from bot.wiring import build_http_app
from tests.channels.groupme.harness import ALICE, BOB, GROUP, ROOT, SECRET, Harness, free_port
from tests.fakes.groupme import FakeGroupMe


@pytest.fixture
async def make_harness(make_runtime):
    made = []

    async def build(*, token: str = "service-token", oauth: str = "", config: dict | None = None, **env) -> Harness:
        gm = await FakeGroupMe().start()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        channel = GroupMeChannel(GroupMeConfig(**{
            "bot_id": "bot-1", "group_ids": (GROUP,), "callback_secret": SECRET, "access_token": token, "oauth_client_id": oauth,
            "api_url": gm.base_url, "oauth_url": f"{gm.base_url}/fake-oauth", "public_url": base, "post_spacing": 0.01,
            "verify_retry_delay": 0.01, **(config or {}),
        }))
        users = env.pop("users", f"groupme:{ALICE},groupme:{BOB}")
        runtime = make_runtime(users=users, admins=f"groupme:{ROOT}", VPN_DRYRUN_STEP_SECONDS=0, channels=[channel], **env)
        server = TestServer(build_http_app(runtime), host="127.0.0.1", port=port)
        await server.start_server()
        await runtime.opened()
        made.append((gm, server))
        return Harness(gm, server, channel, base, runtime)

    yield build
    for gm, server in made:
        await server.close()
        await gm.stop()
