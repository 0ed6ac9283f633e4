"""Notifications to chats (issue 23), end to end: the real aiohttp app and channels, fake Teams Bot Connectors
and a fake GroupMe API on 127.0.0.1. An admin registers a chat with `/vpn notify here` (a non-admin is
refused), another user's session is started and ended, and each event's notice reaches the chat exactly
once, from two replicas delivering at once; after `/vpn notify off` nothing more comes, not even what was
queued before. `teams:<id>` and `groupme:<group id>` targets from VPN_NOTIFY go where the settings say.
Every notice is scanned for keys, configs and tokens (tests/support/secret_scan.py)."""
from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
from aiohttp.test_utils import TestServer

from bot.channels.groupme.channel import GroupMeChannel
from bot.channels.groupme.config import GroupMeConfig
from bot.engine.notices import event_text
from bot.engine.notify import NOT_A_TARGET
from bot.store.model import SessionState
from bot.wiring import build_http_app
from tests.channels.groupme.harness import ALICE, BOB, GROUP, ROOT, SECRET, Harness, free_port
from tests.channels.teams.harness import ALICE_AAD, ROOT_AAD, make_teams  # noqa: F401 - the fixture
from tests.fakes.connector import FakeConnector
from tests.fakes.groupme import FakeGroupMe
from tests.support.qrtools import decode_qr
from tests.support.secret_scan import leaks

GROUP_CHAT = "19:groupchat-abc@thread.v2"  # tests/channels/teams/payloads/groupchat_mention.json
OPS_ROOM = "19:ops-room@thread.tacv2"


async def deliver(*runtimes) -> None:
    """Every replica's sweeper delivering at once, twice over: each item must still go out once."""
    await asyncio.gather(*(rt.service.sweeper.deliver_notifications() for rt in runtimes * 2))


def posted(connector: FakeConnector, conversation: str) -> list[str]:
    return [(c.body or {}).get("text") or "" for c in connector.sent(conversation)]


def notices_in(connector: FakeConnector, conversation: str) -> list[str]:
    return [t for t in posted(connector, conversation) if t.startswith("VPN: ")]


async def expected_notices(rt, target: str) -> list[str]:
    """The line for each event queued for `target`, from the store's outbox (what the chat must show, once each)."""
    return sorted(event_text(json.loads(n.payload)) for n in await rt.store.notifications() if n.target == target)


def config_secrets(connector: FakeConnector) -> list[str]:
    """The private key and the file-consent token of every config delivered in Teams (the QR decoded)."""
    found = []
    for call in connector.sent():
        for attachment in (call.body or {}).get("attachments") or []:
            content = attachment.get("content") or {}
            if "file.consent" in attachment.get("contentType", ""):
                found.append(content["acceptContext"]["token"])
            for element in content.get("body") or []:
                if element.get("type") == "Image" and element.get("url", "").startswith("data:image/png;base64,"):
                    config = decode_qr(base64.b64decode(element["url"].split(",", 1)[1]))
                    found.append(config.split("PrivateKey = ")[1].split("\n")[0])
    return found


def test_the_scan_finds_what_a_leak_would_look_like():
    config = "[Interface]\nPrivateKey = " + "A" * 43 + "=\n"
    assert leaks(config) == ["PrivateKey", "[Interface]", "a WireGuard key"]
    assert leaks("VPN: session 0a1b2c3d4e of kim is ready.", ["tok-123"]) == []
    assert leaks("see http://x/claim/tok-123", ["tok-123"]) == ["/claim/", "known secret #0"]


# ----- Teams ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("store_backend", ["sqlite", "azure-tables"], indirect=True)
async def test_a_teams_chat_an_admin_registers_gets_each_event_once_until_notify_off(make_teams, clock):
    nowhere = await FakeConnector().start()  # where a teams:<id> would go without a registration: must see nothing
    try:
        h = await make_teams(VPN_NOTIFY_TEAMS_URL=nowhere.base_url)
        other = await make_teams(VPN_NOTIFY_TEAMS_URL=nowhere.base_url)  # a second replica on the same store
        rt, target = h.runtime, f"teams:{GROUP_CHAT}"

        await h.say("/vpn notify here", kind="groupchat_mention", aad=ALICE_AAD)
        await h.settle()
        assert posted(h.connector, GROUP_CHAT)[-1] == "Sorry, only admins can use /vpn notify."
        assert await rt.store.notify_targets() == {}
        await h.say("/vpn notify here", kind="groupchat_mention", aad=ROOT_AAD)
        await h.settle()
        assert f"Notifications now come to this chat too ({target})" in posted(h.connector, GROUP_CHAT)[-1]
        assert set(await rt.store.notify_targets()) == {target}

        await h.say("/vpn start")  # Alice, in her own chat with the bot
        await h.settle()
        (s,) = await rt.store.sessions([SessionState.READY])
        await deliver(rt, other.runtime)
        clock.advance(minutes=10)
        await h.say("/vpn stop")
        await h.settle()
        await deliver(rt, other.runtime)
        await deliver(rt, other.runtime)  # nothing more: each went once

        notices = notices_in(h.connector, GROUP_CHAT)
        assert sorted(notices) == await expected_notices(rt, target) and len(notices) == 3
        assert [n.split(s.id)[0] for n in notices] == ["VPN: alice@contoso.com requested session ", "VPN: session ", "VPN: session "]
        assert "is ready" in notices[1] and "ended (stopped: stopped by you) after 10 min" in notices[2]
        for n in await rt.store.notifications():
            assert (n.state, n.attempts) == ("delivered", 1)
        secrets = config_secrets(h.connector)
        assert len(secrets) == 2  # the private key and the consent token: the scan has something to look for
        for call in h.connector.sent(GROUP_CHAT):
            assert leaks(FakeConnector.text_of(call), secrets) == []
        assert leaks(json.dumps([n.payload for n in await rt.store.notifications()]), secrets) == []

        # Off: what was queued before it is not sent either, by this replica nor by one whose cache still has the chat.
        await h.say("/vpn start")
        await h.settle()
        await h.say("/vpn notify off", kind="groupchat_mention", aad=ROOT_AAD)
        await h.settle()
        assert posted(h.connector, GROUP_CHAT)[-1] == "Notifications no longer come to this chat."
        await deliver(other.runtime, rt)
        await h.say("/vpn stop")
        await h.settle()
        await deliver(rt, other.runtime)
        assert notices_in(h.connector, GROUP_CHAT) == notices and nowhere.calls == []
        pending = [n for n in await rt.store.notifications() if n.state == "pending"]
        assert {n.event_id.rsplit(".", 1)[1] for n in pending} == {"requested", "ready"}  # queued before the off
        assert {n.last_error for n in pending} == {NOT_A_TARGET}
        assert not [n for n in await rt.store.notifications() if n.event_id.endswith(".ended") and n.state != "delivered"]
    finally:
        await nowhere.stop()


async def test_a_teams_target_from_vpn_notify_goes_to_the_configured_service_url(make_teams, clock):
    """A teams:<id> in VPN_NOTIFY carries no service URL: it goes to VPN_NOTIFY_TEAMS_URL (Microsoft's global
    one by default, tests/settings/test_notify_settings.py), as a new message in that conversation."""
    ops = await FakeConnector().start()
    try:
        h = await make_teams(VPN_DEV_MODE=1, VPN_NOTIFY=f"teams:{OPS_ROOM}", VPN_NOTIFY_TEAMS_URL=ops.base_url)
        await h.say("/vpn start")
        await h.settle()
        clock.advance(minutes=5)
        await h.say("/vpn stop")
        await h.settle()
        await deliver(h.runtime)
        await deliver(h.runtime)

        notices = notices_in(ops, OPS_ROOM)
        assert sorted(notices) == await expected_notices(h.runtime, f"teams:{OPS_ROOM}") and len(notices) == 3
        assert [c.path for c in ops.sent()] == [f"/teams-prefix/v3/conversations/{OPS_ROOM}/activities"] * 3  # not a reply to anything
        assert all(c.body["type"] == "message" and c.body["conversation"] == {"id": OPS_ROOM} for c in ops.sent())
        assert notices_in(h.connector, OPS_ROOM) == [] and len(ops.calls) == 3
        secrets = config_secrets(h.connector)
        for call in ops.sent():
            assert leaks(FakeConnector.text_of(call), secrets) == []
    finally:
        await ops.stop()


async def test_a_send_never_outlives_its_lease(make_teams, clock):
    """A Teams that does not answer: the delivery gives up within its lease (VPN_LEASE_SECONDS=3: 2 s), so no
    other replica takes the item over while it is still being sent, and the sweep is not held up; it is
    retried after the back-off. The first POST may have arrived: the documented at-least-once duplicate."""
    ops = await FakeConnector().start()
    try:
        env = {"VPN_DEV_MODE": 1, "VPN_NOTIFY": f"teams:{OPS_ROOM}", "VPN_NOTIFY_TEAMS_URL": ops.base_url, "VPN_LEASE_SECONDS": 3,
               "VPN_APPROVERS": f"teams:{ROOT_AAD}", "VPN_APPROVAL": "always"}  # one event only: requested, awaiting approval
        h = await make_teams(**env)
        await h.say("/vpn start")
        await h.settle()
        ops.gate = asyncio.Event()  # Teams takes the request and never answers
        began = time.monotonic()
        async with asyncio.timeout(10):
            await h.runtime.service.sweeper.deliver_notifications()
        took = time.monotonic() - began
        assert 1.9 < took < 3, took
        (n,) = await h.runtime.store.notifications()
        assert (n.state, n.attempts, n.last_error, n.lease_owner) == ("pending", 1, "no answer in time", "")
        ops.gate.set()
        clock.advance(seconds=5)
        await h.runtime.service.sweeper.deliver_notifications()
        (n,) = await h.runtime.store.notifications()
        assert (n.state, n.attempts) == ("delivered", 2)
        assert len(notices_in(ops, OPS_ROOM)) == 2  # the unanswered one and the retry
    finally:
        if ops.gate is not None:
            ops.gate.set()
        await ops.stop()


# ----- GroupMe ----------------------------------------------------------------------------------------

OPS_GROUP = "5555"
BOTS = {GROUP: "bot-cmd-0123", OPS_GROUP: "bot-ops-4567"}  # each group posts through its own bot


@pytest.fixture
async def groupme(make_runtime):
    gm = await FakeGroupMe().start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    channel = GroupMeChannel(GroupMeConfig(
        bot_id="", bots=tuple(BOTS.items()), group_ids=(GROUP, OPS_GROUP), callback_secret=SECRET, access_token="service-token",
        api_url=gm.base_url, public_url=base, post_spacing=0.01, verify_retry_delay=0.01,
    ))
    env = {"GROUPME_BOT_ID": ",".join(f"{g}:{b}" for g, b in BOTS.items()), "GROUPME_CALLBACK_SECRET": SECRET,  # the settings' checks
           "VPN_NOTIFY": f"groupme:{OPS_GROUP}", "VPN_DRYRUN_STEP_SECONDS": 0}
    runtime = make_runtime(users=f"groupme:{ALICE},groupme:{BOB}", admins=f"groupme:{ROOT}", channels=[channel], **env)
    server = TestServer(build_http_app(runtime), host="127.0.0.1", port=port)
    await server.start_server()
    await runtime.opened()
    yield Harness(gm, server, channel, base, runtime)
    await server.close()
    await gm.stop()


def by_bot(h: Harness, group: str) -> list[str]:
    return [p["text"] for p in h.gm.posts if p["bot_id"] == BOTS[group]]


async def test_groupme_targets_get_each_event_once_through_their_own_bot(groupme, clock):
    h = groupme
    rt = h.runtime

    async def say(text, user=ALICE):
        assert await h.callback(h.message(text, user)) == 200
        await h.settle()

    await say("/vpn notify here")
    assert by_bot(h, GROUP)[-1] == "Sorry, only admins can use /vpn notify." and await rt.store.notify_targets() == {}
    await say("/vpn notify here", ROOT)
    assert f"Notifications now come to this chat too (groupme:{GROUP})" in by_bot(h, GROUP)[-1]

    await say("/vpn start")
    clock.advance(minutes=10)
    await say("/vpn stop")
    await deliver(rt)
    await deliver(rt)  # nothing more: each went once

    ops = by_bot(h, OPS_GROUP)  # the VPN_NOTIFY target: through group 5555's bot, the only posts there
    assert sorted(ops) == await expected_notices(rt, f"groupme:{OPS_GROUP}") and len(ops) == 3 and len(set(ops)) == 3
    assert "requested session" in ops[0] and "is ready" in ops[1] and "ended (stopped: stopped by you) after 10 min" in ops[2]
    registered = [t for t in by_bot(h, GROUP) if t.startswith("VPN: ")]
    assert registered == ops  # the registered group: the same lines, through its own bot
    for n in await rt.store.notifications():
        assert (n.state, n.attempts) == ("delivered", 1)
    link = h.link()  # Alice's one-time config link, DM'd to her: never in a group
    secrets = [link.rsplit("/", 1)[1], "service-token", SECRET, *BOTS.values()]
    for text in h.gm.post_texts():
        assert leaks(text, secrets) == [], text

    await say("/vpn notify off", ROOT)
    assert by_bot(h, GROUP)[-1] == "Notifications no longer come to this chat."
    await say("/vpn start", BOB)
    await deliver(rt)
    assert [t for t in by_bot(h, GROUP) if t.startswith("VPN: ")] == registered  # off: nothing more here
    assert len(by_bot(h, OPS_GROUP)) == 5  # VPN_NOTIFY's group still hears Bob's requested and ready
