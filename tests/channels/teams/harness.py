"""The Teams test harness: the real aiohttp app with the real botbuilder CloudAdapter, a fake Bot
Connector on 127.0.0.1, the recorded activities (payloads/) and the helpers the Teams tests share."""
from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bot.channels.teams.channel import TeamsChannel
from bot.channels.teams.config import TeamsConfig
from bot.wiring import build_http_app
from tests.fakes.connector import FakeConnector

FIXTURES = Path(__file__).parent / "payloads"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
ALICE_AAD = "00000000-0000-0000-0000-00000000a11c"
BOB_AAD = "00000000-0000-0000-0000-000000000b0b"
ROOT_AAD = "00000000-0000-0000-0000-0000000000ff"
_ids = iter(range(10_000, 99_999))
# The fake OneDrive upload URL is http on 127.0.0.1: dev mode accepts that host when it is listed.
LOCAL_UPLOADS = ("*.sharepoint.com", "127.0.0.1")


def dev_config(**kw) -> TeamsConfig:
    return TeamsConfig(**{"dev_mode": True, "backoff": 0.01, "upload_hosts": LOCAL_UPLOADS, **kw})


def activity(fixture: str, **values) -> dict:
    text = (FIXTURES / f"{fixture}.json").read_text()
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    data = json.loads(text)
    data["id"] = values.get("id", f"{data['id']}-{next(_ids)}")
    return data


class Harness:
    def __init__(self, connector: FakeConnector, server: TestServer, runtime) -> None:
        self.connector, self.server = connector, server
        self.runtime = runtime
        self.url = str(server.make_url("/api/messages"))

    async def post(self, data, *, headers=None, raw: bytes | None = None) -> aiohttp.ClientResponse:
        async with aiohttp.ClientSession() as http:
            hdrs = {"Content-Type": "application/json", **(headers or {})}
            payload = raw if raw is not None else json.dumps(data).encode()
            async with http.post(self.url, data=payload, headers=hdrs) as resp:
                await resp.read()
                return resp

    async def say(self, text: str, *, kind: str = "personal_message", aad: str = ALICE_AAD, **extra) -> aiohttp.ClientResponse:
        return await self.post(activity(kind, serviceUrl=self.connector.base_url, aadObjectId=aad, tenantId=TENANT, text=text, **extra))

    async def settle(self) -> None:
        await self.runtime.runner.wait_idle(30)

    def everything_sent(self, conversation: str | None = None) -> str:
        return "\n".join(FakeConnector.text_of(c) for c in self.connector.sent(conversation) + self.connector.updates())


@pytest.fixture
async def make_teams(make_runtime):
    made = []

    async def build(*, users: str = f"teams:{ALICE_AAD},teams:{BOB_AAD}", admins: str = f"teams:{ROOT_AAD}", config: TeamsConfig | None = None, **env) -> Harness:
        connector = await FakeConnector(members={
            "29:1alice-teams-user-id": {"id": "29:1alice-teams-user-id", "name": "Alice", "aadObjectId": ALICE_AAD,
                                        "email": "alice@contoso.com", "userPrincipalName": "alice@contoso.com", "tenantId": TENANT,
                                        "userRole": "user"},
        }).start()
        channel = TeamsChannel(config or dev_config())
        runtime = make_runtime(users=users, admins=admins, VPN_DRYRUN_STEP_SECONDS=0, channels=[channel], **env)
        server = TestServer(build_http_app(runtime), host="127.0.0.1")
        await server.start_server()
        await runtime.opened()
        made.append((connector, server))
        return Harness(connector, server, runtime)

    yield build
    for connector, server in made:
        await server.close()
        await connector.stop()


async def started_then_second_replica(connector: FakeConnector, make_runtime) -> tuple[Harness, TestServer]:
    """Alice's `/vpn start` served by one replica, which then goes away; a harness on a second, fresh
    replica of the same store (a restart, or another replica behind the same endpoint)."""
    server = None
    for first in (True, False):
        channel = TeamsChannel(dev_config())
        rt = make_runtime(users=f"teams:{ALICE_AAD}", VPN_DRYRUN_STEP_SECONDS=0, channels=[channel])
        server = TestServer(build_http_app(rt), host="127.0.0.1")
        await server.start_server()
        await rt.opened()
        h = Harness(connector, server, rt)
        if first:
            await h.say("/vpn start")
            await h.settle()
            await server.close()
    return h, server


def consent_of(h: Harness, conv: str | None = None) -> dict:
    return next(a for c in h.connector.sent(conv) for a in (c.body.get("attachments") or []) if a["contentType"].endswith("file.consent"))


def local_upload_url(h: Harness) -> str:
    return h.connector.base_url.split("/teams-prefix/")[0] + "/upload/vpn.conf"


async def accept(h: Harness, token: str, *, aad: str = ALICE_AAD, tenant: str = TENANT, upload_url: str | None = None, **extra) -> aiohttp.ClientResponse:
    data = activity("invoke_file_consent", serviceUrl=h.connector.base_url, aadObjectId=aad, tenantId=tenant, conversationId="a:1personal-alice",
                    action="accept", token=token, session="s", name="vpn.conf", uploadUrl=upload_url or local_upload_url(h))
    for key, value in extra.items():
        data["value"][key] = value
    return await h.post(data)
