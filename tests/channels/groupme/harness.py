"""The GroupMe harness: real HTTP into the aiohttp app, real HTTP out to a fake GroupMe API."""
from __future__ import annotations

import itertools
import re
import socket

import aiohttp
from aiohttp.test_utils import TestServer

from bot.channels.groupme.channel import GroupMeChannel
from tests.fakes.groupme import FakeGroupMe

GROUP = "4242"
SECRET = "cb-secret-0123456789abcdef"
ALICE, BOB, ROOT = "111", "222", "999"
_ids = itertools.count(1_000_000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Harness:
    def __init__(self, gm: FakeGroupMe, server: TestServer, channel: GroupMeChannel, base: str, runtime) -> None:
        self.gm, self.server, self.channel, self.base = gm, server, channel, base
        self.runtime = runtime

    def message(self, text, user=ALICE, *, group=GROUP, sender_type="user", system=False, msg_id=None, store=True) -> dict:
        created = int(self.runtime.service.clock().timestamp())
        msg = {"attachments": [], "avatar_url": "https://i.groupme.com/x", "created_at": created, "group_id": group,
               "id": str(msg_id or next(_ids)), "name": "Display Name", "sender_id": user, "sender_type": sender_type,
               "source_guid": "GUID", "system": system, "text": text, "user_id": user}
        if store:
            self.gm.messages.append(msg)
        return msg

    async def callback(self, msg, secret=SECRET, raw: bytes | None = None) -> int:
        async with aiohttp.ClientSession() as http:
            kwargs = {"data": raw, "headers": {"Content-Type": "application/json"}} if raw is not None else {"json": msg}
            async with http.post(f"{self.base}/api/groupme/{secret}", **kwargs) as resp:
                return resp.status

    async def settle(self) -> None:
        await self.runtime.runner.wait_idle(30)

    def link(self) -> str:
        (dm,) = self.gm.dms
        return re.search(r"(http://\S+/claim/[A-Za-z0-9_-]+)", dm["text"]).group(1)
