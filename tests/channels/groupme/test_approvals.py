"""Approvals in GroupMe, end to end: real HTTP into the app, a fake GroupMe API on 127.0.0.1. A bot
cannot be written to privately, so the request is posted in the group it came from and an approver
answers there with `/vpn approve <id>` / `/vpn deny <id> [reason]` — each command re-fetched from
GroupMe before anything happens; the config still goes to the requester alone, by direct message."""
from __future__ import annotations

import itertools
import re

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bot.channels.groupme.channel import GroupMeChannel
from bot.channels.groupme.config import GroupMeConfig
from bot.store.model import SessionState
from bot.wiring import build_http_app
from tests.fakes.groupme import FakeGroupMe
from tests.support.loopback import free_port

GROUP, SECRET = "4242", "cb-secret-0123456789abcdef"
ALICE, BOB, CAROL = "111", "222", "333"
_ids = itertools.count(2_000_000)


class Group:
    def __init__(self, gm: FakeGroupMe, server: TestServer, base: str, runtime) -> None:
        self.gm, self.server, self.base = gm, server, base
        self.runtime = runtime

    async def post(self, text: str, user: str) -> None:
        """A member posts in the group: GroupMe stores it, then calls the bot back."""
        msg = {"attachments": [], "created_at": int(self.runtime.service.clock().timestamp()), "group_id": GROUP, "id": str(next(_ids)),
               "name": "Display Name", "sender_id": user, "sender_type": "user", "source_guid": "GUID", "system": False, "text": text, "user_id": user}
        self.gm.messages.append(msg)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{self.base}/api/groupme/{SECRET}", json=msg) as resp:
                assert resp.status == 200
        await self.runtime.runner.wait_idle(30)

    def said(self) -> str:
        return "\n".join(self.gm.post_texts())


@pytest.fixture
async def group(make_runtime):
    gm = await FakeGroupMe().start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    channel = GroupMeChannel(GroupMeConfig(bot_id="bot-1", group_ids=(GROUP,), callback_secret=SECRET, access_token="service-token",
                                           api_url=gm.base_url, public_url=base, post_spacing=0.01, verify_retry_delay=0.01))
    env = {"VPN_APPROVERS": f"groupme:{BOB},groupme:{CAROL}", "VPN_APPROVAL": "over:30", "VPN_DRYRUN_STEP_SECONDS": 0}
    runtime = make_runtime(users=f"groupme:{ALICE},groupme:{BOB},groupme:{CAROL}", channels=[channel], **env)
    server = TestServer(build_http_app(runtime), host="127.0.0.1", port=port)
    await server.start_server()
    await runtime.opened()
    yield Group(gm, server, base, runtime)
    await server.close()
    await gm.stop()


async def test_the_request_is_posted_in_the_group_and_an_approver_answers_there(group):
    await group.post("/vpn start 90 reason=on call tonight", ALICE)
    (s,) = await group.runtime.store.sessions([SessionState.AWAITING_APPROVAL])
    assert f"/vpn approve {s.id} or /vpn deny {s.id} [reason]" in group.said() and s.reason == "on call tonight"
    assert group.gm.dms == []  # nothing private exists yet: no key was made
    await group.post(f"/vpn approve {s.id}", ALICE)
    assert "cannot decide your own request" in group.said()
    await group.post("/vpn pending", BOB)
    assert s.id in group.said().split("VPN requests awaiting approval", 1)[1] and "on call tonight" in group.said()
    await group.post(f"/vpn approve {s.id} 60", BOB)  # a shorter grant
    s = await group.runtime.store.get(s.id)
    assert s.state is SessionState.READY and s.minutes == 60 and s.decided_by == f"groupme:{BOB}"
    assert f"was approved by groupme:{BOB} for 1 h 00 min" in group.said()
    (dm,) = group.gm.dms
    assert dm["recipient_id"] == ALICE and re.search(r"/claim/[A-Za-z0-9_-]+", dm["text"])
    await group.post(f"/vpn deny {s.id} too late", CAROL)
    assert f"was already decided by groupme:{BOB}" in group.said()


async def test_a_short_session_needs_no_approval_and_a_denial_gives_the_reason(group):
    await group.post("/vpn start 30", ALICE)
    assert len(await group.runtime.store.sessions([SessionState.READY])) == 1 and len(group.gm.dms) == 1
    await group.post("/vpn stop", ALICE)
    await group.post("/vpn start 2h", CAROL)
    (s,) = await group.runtime.store.sessions([SessionState.AWAITING_APPROVAL])
    await group.post(f"/vpn deny {s.id} reason=please use the jump host", BOB)
    s = await group.runtime.store.get(s.id)
    assert s.state is SessionState.DENIED and s.end_reason == f"denied by groupme:{BOB}: please use the jump host"
    assert "please use the jump host" in group.said() and len(group.gm.dms) == 1  # Carol got no DM: nothing to deliver
