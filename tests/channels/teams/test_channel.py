"""Teams end to end (bot/channels/teams/channel.py): real aiohttp app, real botbuilder CloudAdapter, a
fake Bot Connector on 127.0.0.1. The harness is in harness.py (re-exported here for other test folders)."""
from __future__ import annotations

import asyncio
import base64
import json

import pytest
from aiohttp.test_utils import TestServer

from bot.channels.teams.channel import TeamsChannel
from bot.channels.teams.config import TeamsConfig
from bot.store.model import SessionState
from bot.wiring import build_http_app
from tests.channels.teams.harness import (
    ALICE_AAD,
    BOB_AAD,
    ROOT_AAD,
    TENANT,
    Harness,
    activity,
    dev_config,
)
from tests.fakes.connector import FakeConnector
from tests.support.qrtools import decode_qr


def __getattr__(name: str):
    """Tests in other folders import the harness from here (`from …test_channel import make_teams`); it
    lives in harness.py. (A plain re-import would shadow the fixture parameter below: ruff F811.)"""
    if name == "make_teams":
        from tests.channels.teams import harness

        return harness.make_teams
    raise AttributeError(name)


async def test_stranger_is_refused(make_teams):
    h = await make_teams()
    await h.say("/vpn start", aad="00000000-0000-0000-0000-0000000bad00")
    await h.settle()
    text = h.everything_sent()
    assert "not allowed" in text and await h.runtime.store.sessions(list(SessionState)) == []


async def test_admin_list_card_with_stop_buttons_and_card_actions_are_authorised(make_teams):
    h = await make_teams()
    await h.say("/vpn start")
    await h.settle()
    (s,) = await h.runtime.store.sessions([SessionState.READY])
    await h.say("/vpn list", aad=ROOT_AAD)
    await h.settle()
    card = next(c.body["attachments"][0]["content"] for c in reversed(h.connector.sent()) if "Live VPN sessions" in json.dumps(c.body))
    stop = next(a for el in card["body"] if el["type"] == "Container" for item in el["items"] if item["type"] == "ActionSet" for a in item["actions"])
    assert stop["data"] == {"command": f"/vpn stop {s.id}"}
    # Bob presses the Stop button on a forwarded card: a card action is authorised like typed text.
    pressed = activity("personal_message", serviceUrl=h.connector.base_url, aadObjectId=BOB_AAD, tenantId=TENANT, text="")
    pressed.pop("text")
    pressed["value"] = stop["data"]
    await h.post(pressed)
    await h.settle()
    assert "only admins can stop another person's session" in h.everything_sent()
    assert (await h.runtime.store.sessions([SessionState.READY]))
    pressed = activity("personal_message", serviceUrl=h.connector.base_url, aadObjectId=ROOT_AAD, tenantId=TENANT, text="")
    pressed.pop("text")
    pressed["value"] = stop["data"]
    await h.post(pressed)
    await h.settle()
    assert [x.state for x in await h.runtime.store.sessions(list(SessionState))] == [SessionState.DELETED]


async def test_welcome_on_install(make_teams):
    h = await make_teams()
    resp = await h.post(activity("installed", serviceUrl=h.connector.base_url, aadObjectId=ALICE_AAD, tenantId=TENANT))
    assert resp.status in (200, 201)
    await h.settle()
    text = h.everything_sent()
    assert "Hi! I hand out short-lived WireGuard VPN access" in text and "/vpn start" in text and "/vpn list" not in text


async def test_duplicate_activity_starts_one_session(make_teams):
    h = await make_teams()
    data = activity("personal_message", serviceUrl=h.connector.base_url, aadObjectId=ALICE_AAD, tenantId=TENANT, text="/vpn start")
    await asyncio.gather(*(h.post(data) for _ in range(3)))
    await h.settle()
    assert len(await h.runtime.store.sessions(list(SessionState))) == 1


async def test_the_same_message_id_in_two_chats_is_two_messages(make_teams):
    """Teams' message ids are unique within a conversation (epoch milliseconds in a chat): two people
    writing in the same millisecond each get their session; a re-send in one chat is still one."""
    h = await make_teams()
    sent = []
    for aad, conversation in ((ALICE_AAD, "a:1alice-chat"), (BOB_AAD, "a:1bob-chat")):
        data = activity("personal_message", serviceUrl=h.connector.base_url, aadObjectId=aad, tenantId=TENANT, text="/vpn start", id="1700000000000")
        data["conversation"]["id"] = conversation
        sent += [data, data]
    await asyncio.gather(*(h.post(data) for data in sent))
    await h.settle()
    assert sorted(s.owner for s in await h.runtime.store.sessions(list(SessionState))) == sorted(f"teams:{a}" for a in (ALICE_AAD, BOB_AAD))


async def test_tenant_restriction(make_teams):
    h = await make_teams(config=TeamsConfig(dev_mode=True, allowed_tenants=("11111111-1111-1111-1111-111111111111",), backoff=0.01))
    await h.say("/vpn start")
    await h.settle()
    assert h.connector.sent() == [] and await h.runtime.store.sessions(list(SessionState)) == []


async def test_acks_do_not_wait_for_teams(make_teams):
    """Teams gets its answer while every outbound call is still unanswered; the reply follows."""
    h = await make_teams()
    h.connector.gate = asyncio.Event()
    resp = await asyncio.wait_for(h.say("/vpn help"), 10)  # before: the turn waited for the lookup and the reply
    assert resp.status == 201
    assert h.connector.sent() == [] or all(c.answered_id == "" for c in h.connector.sent())
    h.connector.gate.set()
    await h.settle()
    assert "I hand out WireGuard" in h.everything_sent()


async def test_progress_updates_are_coalesced(make_teams):
    from bot.messages import ConversationRef

    h = await make_teams()
    await h.say("/vpn help")
    await h.settle()
    channel = h.runtime.channels[0]
    conv = ConversationRef("teams", {"reference": {"conversation": {"id": "a:1personal-alice"}, "serviceUrl": h.connector.base_url,
                                                   "channelId": "msteams", "bot": {"id": "28:vpn-bot-app-id"}}, "conversation_type": "personal"})
    handle = await channel.send_progress(conv, "step 0", None)
    for i in range(1, 8):  # as fast as a provider with 0 s steps: none of these waits for Teams
        assert await channel.send_progress(conv, f"step {i}", handle) == handle
    await h.settle()
    updates = h.connector.updates()
    assert 1 <= len(updates) < 7 and "step 7" in FakeConnector.text_of(updates[-1])


async def test_restart_between_ack_and_delivery_still_delivers(make_runtime, tmp_path):
    """The first process acknowledges, then dies; the next one resumes and its proactive messages arrive."""
    connector = await FakeConnector(members={}).start()
    try:
        first = TeamsChannel(TeamsConfig(dev_mode=True, backoff=0.01))
        rt = make_runtime(users=f"teams:{ALICE_AAD}", VPN_DRYRUN_STEP_SECONDS=5, channels=[first])
        server = TestServer(build_http_app(rt), host="127.0.0.1")
        await server.start_server()
        h = Harness(connector, server, rt)
        await h.say("/vpn start")
        await asyncio.sleep(0.5)
        assert "starting VPN session" in h.everything_sent()
        await server.close()  # shutdown mid-provisioning: the session stays in the store, unfinished
        assert [s.state for s in await _sessions(tmp_path)] == ["provisioning"]
        before = len(connector.sent())

        second = TeamsChannel(TeamsConfig(dev_mode=True, backoff=0.01))
        rt = make_runtime(users=f"teams:{ALICE_AAD}", VPN_DRYRUN_STEP_SECONDS=0, channels=[second])
        server = TestServer(build_http_app(rt), host="127.0.0.1")
        await server.start_server()
        try:
            await rt.opened()
            await rt.service.sweep()  # what start-up does
            await rt.runner.wait_idle(30)
            later = "\n".join(FakeConnector.text_of(c) for c in connector.sent("a:1personal-alice")[before:])
            assert "restarted while setting up" in later and "data:image/png;base64," in later and "file.consent" in later
        finally:
            await server.close()
    finally:
        await connector.stop()


async def _sessions(tmp_path):
    import sqlite3
    from types import SimpleNamespace

    db = sqlite3.connect(tmp_path / "data" / "vpn-bot.sqlite3")
    rows = db.execute("SELECT state FROM sessions").fetchall()
    db.close()
    return [SimpleNamespace(state=r[0]) for r in rows]


def test_refuses_to_start_with_half_configured_credentials(tmp_path):
    import subprocess
    import sys

    from tests.support.apprun import APP, app_env

    for extra, expect in [
        ({"MicrosoftAppPassword": "x"}, "MicrosoftAppId is missing"),
        ({"MicrosoftAppId": "11111111-2222-3333-4444-555555555555", "MicrosoftAppPassword": "x"}, "MicrosoftAppTenantId is required"),
        ({"MicrosoftAppId": "11111111-2222-3333-4444-555555555555", "MicrosoftAppTenantId": TENANT}, "MicrosoftAppPassword is required"),
        ({"MicrosoftAppType": "Nonsense"}, "MicrosoftAppType='Nonsense' is not valid"),
        ({"MicrosoftAppId": "11111111-2222-3333-4444-555555555555", "MicrosoftAppType": "MultiTenant"}, "MicrosoftAppPassword is required with MicrosoftAppType=MultiTenant"),
    ]:
        result = subprocess.run([sys.executable, APP, "serve"], env=app_env(tmp_path / "data", PORT="1", **extra), capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and expect in result.stderr, result.stderr


async def test_dev_mode_serve_binds_loopback_and_says_so(tmp_path):
    import signal
    import sys

    from tests.support.apprun import APP, app_env
    from tests.support.loopback import free_port

    port = free_port()
    proc = await asyncio.create_subprocess_exec(sys.executable, APP, "serve", env=app_env(tmp_path / "data", PORT=str(port), HOST="0.0.0.0", VPN_DEV_MODE="1"),
                                                stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    text = err.decode()
    assert "NOT authenticated" in text and "serving on http://127.0.0.1:" in text and "channels: teams" in text


@pytest.mark.slow
async def test_a_thousand_starts_give_each_user_exactly_one_config(tmp_path, caplog):
    """1,000 `/vpn start` from distinct users through the Teams endpoint, with the sweeper running on
    the real clock: each user gets exactly one config, and no session is ever "started over"."""
    import logging

    from bot.settings import Settings
    from bot.wiring import Runtime, make_provider

    caplog.set_level(logging.INFO)
    n = 1000
    users = [f"00000000-0000-0000-0001-{i:012d}" for i in range(n)]
    connector = await FakeConnector(member_domain="contoso.com").start()
    settings = Settings.from_env({"VPN_DATA_DIR": str(tmp_path / "data"), "VPN_USERS": ",".join(f"teams:{u}" for u in users),
                                  "VPN_DRYRUN_STEP_SECONDS": "0", "VPN_MAX_SESSIONS": "10000", "WG_POOL": "10.64.0.0/12",
                                  "VPN_SWEEP_SECONDS": "0.5"})
    settings.ops.data_dir.mkdir(parents=True, exist_ok=True)
    channel = TeamsChannel(dev_config())
    runtime = Runtime(settings, make_provider(settings), [channel])
    server = TestServer(build_http_app(runtime), host="127.0.0.1")
    await server.start_server()
    try:
        h = Harness(connector, server, runtime)
        gate = asyncio.Semaphore(50)
        statuses = []

        async def start(user: str) -> None:
            data = activity("personal_message", serviceUrl=connector.base_url, aadObjectId=user, tenantId=TENANT, text="/vpn start")
            data["from"]["id"] = f"29:{user}"
            data["conversation"]["id"] = f"a:1personal-{user}"
            async with gate:
                statuses.append((await h.post(data)).status)

        await asyncio.gather(*(start(u) for u in users))
        assert statuses == [201] * n
        for _ in range(600):  # the sweeper keeps the runner busy: wait for the configs instead
            configs = connector.configs()
            if len(configs) >= n and not h.runtime.runner.names()[1:]:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1)  # a duplicate would come after the first config
        configs = connector.configs()
        per_user: dict[str, int] = {}
        for c in configs:
            user = c.path.split("/conversations/a:1personal-", 1)[1].split("/", 1)[0]
            per_user[user] = per_user.get(user, 0) + 1
        assert sorted(per_user) == sorted(users), f"{n - len(per_user)} users got no config"
        assert [u for u, k in per_user.items() if k != 1] == []
        assert "starting over" not in caplog.text
        assert len(await h.runtime.store.sessions([SessionState.READY])) == n
        card = configs[0].body["attachments"][0]["content"]
        image = next(el for el in card["body"] if el["type"] == "Image")
        private = decode_qr(base64.b64decode(image["url"].split(",", 1)[1])).split("PrivateKey = ")[1].split("\n")[0]
        assert private not in caplog.text
    finally:
        await server.close()
        await connector.stop()


# ----- issue 19.8: bounded memory, the manifest's pages ---------------------------------------------------

async def test_what_the_channel_remembers_per_conversation_and_person_is_bounded(make_teams):
    """`_private_chats`, `_send_locks`, `_last_send` (and the member cache) grew with every conversation."""
    from bot.messages import ConversationRef, Identity, UserKey

    h = await make_teams(users=",".join(f"teams:00000000-0000-0000-0000-{i:012d}" for i in range(10)), config=dev_config(remembered=3))
    h.connector.member_domain, h.connector.member_tenant = "contoso.com", TENANT
    channel = h.runtime.channels[0]
    for i in range(10):
        data = activity("personal_message", serviceUrl=h.connector.base_url, aadObjectId=f"00000000-0000-0000-0000-{i:012d}", tenantId=TENANT,
                        text="/vpn help")
        data["from"]["id"] = f"29:user{i}"
        data["conversation"]["id"] = f"a:1personal-user{i}"
        await h.post(data)
        group = ConversationRef("teams", {"reference": {"serviceUrl": h.connector.base_url, "channelId": "msteams", "bot": {"id": "28:vpn-bot-app-id"},
                                                        "conversation": {"id": "19:groupchat-abc@thread.v2"}},
                                          "tenant_id": TENANT, "user_id": f"29:user{i}", "conversation_type": "groupChat"})
        assert await channel.check_private_delivery(group, Identity(UserKey("teams", f"00000000-0000-0000-0000-{i:012d}"))) is None
    await h.settle()
    assert len(h.connector.sent()) == 10 and len([c for c in h.connector.calls if c.path.endswith("/v3/conversations")]) == 10
    assert len(channel.client.pacer) <= 3 and len(channel.members._emails) <= 3 and len(channel.delivery._private_chats) <= 3


async def test_the_manifests_privacy_and_terms_pages_are_served(make_teams):
    """The manifest links {website}/privacy and {website}/terms; both answered 404."""
    import aiohttp

    from bot.channels.teams.manifest import manifest

    h = await make_teams()
    base = str(h.server.make_url("/")).rstrip("/")
    developer = manifest("11111111-2222-3333-4444-555555555555", website=base)["developer"]
    async with aiohttp.ClientSession() as http:
        for url, words in ((developer["privacyUrl"], "privacy"), (developer["termsOfUseUrl"], "terms of use")):
            async with http.get(url) as resp:
                assert resp.status == 200 and resp.content_type == "text/plain"
                assert words in (await resp.text()).lower()
