"""Approvals in Teams, end to end: the real aiohttp app and botbuilder adapter, a fake Bot Connector on
127.0.0.1. Approvers get an Adaptive Card privately; a button press arrives as a message activity
(Action.Submit) or an `adaptiveCard/action` invoke (Action.Execute); once decided, every approver's
card is updated in place (PUT on its activity) — from whichever replica decided."""
from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bot.channels.teams.channel import TeamsChannel
from bot.channels.teams.config import TeamsConfig
from bot.store.model import SessionState
from bot.wiring import build_http_app
from tests.fakes.connector import FakeConnector

pytestmark = pytest.mark.parametrize("store_backend", ["sqlite", "azure-tables"], indirect=True)

PAYLOADS = Path(__file__).parent / "payloads"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
AAD = {"alice": "00000000-0000-0000-0000-00000000a11c", "bob": "00000000-0000-0000-0000-000000000b0b", "carol": "00000000-0000-0000-0000-0000000ca201"}
ADAPTIVE = "application/vnd.microsoft.card.adaptive"
_ids = iter(range(10_000, 99_999))


def personal(connector: FakeConnector, who: str, text: str | None, value: dict | None = None) -> dict:
    """A message in `who`'s 1:1 chat with the bot (a typed command, or a card button's Action.Submit)."""
    data = json.loads((PAYLOADS / "personal_message.json").read_text()
                      .replace("{serviceUrl}", connector.base_url).replace("{aadObjectId}", AAD[who]).replace("{tenantId}", TENANT))
    data["id"] = f"msg-{next(_ids)}"
    data["from"] = {"id": f"29:{who}", "name": who.title(), "aadObjectId": AAD[who]}
    data["conversation"]["id"] = f"a:1personal-{who}"
    if text is None:
        data.pop("text")
        data["value"] = value
    else:
        data["text"] = text
    return data


def execute(connector: FakeConnector, who: str, command: str) -> dict:
    """Action.Execute: an invoke named adaptiveCard/action carrying the button's data."""
    data = personal(connector, who, "")
    data.pop("text")
    data.update(type="invoke", name="adaptiveCard/action",
                value={"action": {"type": "Action.Execute", "verb": "decide", "data": {"command": command}}, "trigger": "manual"})
    return data


class Replica:
    def __init__(self, server: TestServer, runtime) -> None:
        self.server = server
        self.runtime = runtime
        self.url = str(server.make_url("/api/messages"))

    async def post(self, data: dict) -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as http:
            async with http.post(self.url, data=json.dumps(data).encode(), headers={"Content-Type": "application/json"}) as resp:
                return resp.status, await resp.read()

    async def settle(self) -> None:
        await self.runtime.runner.wait_idle(30)


@pytest.fixture
async def teams(make_runtime):
    connector = await FakeConnector().start()
    servers = []

    async def replica() -> Replica:
        channel = TeamsChannel(TeamsConfig(dev_mode=True, backoff=0.01))
        users = ",".join(f"teams:{a}" for a in AAD.values())
        env = {"VPN_APPROVERS": f"teams:{AAD['bob']},teams:{AAD['carol']}", "VPN_APPROVAL": "always", "VPN_DRYRUN_STEP_SECONDS": 0}
        runtime = make_runtime(users=users, channels=[channel], **env)
        server = TestServer(build_http_app(runtime), host="127.0.0.1")
        await server.start_server()
        await runtime.opened()
        servers.append(server)
        return Replica(server, runtime)

    replica.connector = connector
    yield replica
    for server in servers:
        await server.close()
    await connector.stop()


def cards_to(connector: FakeConnector, who: str) -> list:
    return [c for c in connector.sent(f"a:1personal-{who}") if any(a["contentType"] == ADAPTIVE for a in (c.body or {}).get("attachments") or [])]


def texts_to(connector: FakeConnector, who: str) -> str:
    return "\n".join(FakeConnector.text_of(c) for c in connector.sent(f"a:1personal-{who}"))


async def test_approvers_get_a_card_and_every_card_is_updated_from_the_replica_that_decided(teams):
    connector = teams.connector
    one, two = await teams(), await teams()
    for who in ("bob", "carol"):  # approvers say something privately once: the bot can reach them there
        await one.post(personal(connector, who, "/vpn help"))
    await one.settle()
    status, _ = await one.post(personal(connector, "alice", "/vpn start 45 reason=patching the build agents"))
    assert status == 201
    await one.settle()
    (s,) = await one.runtime.store.sessions([SessionState.AWAITING_APPROVAL])
    assert "needs an approval first" in texts_to(connector, "alice") and not connector.configs()
    request_cards = {}
    for who in ("bob", "carol"):
        (call,) = [c for c in cards_to(connector, who) if "VPN access request" in json.dumps(c.body)]
        card = call.body["attachments"][0]["content"]
        assert "patching the build agents" in json.dumps(card) and "Alice" not in json.dumps(card)  # labels, never display names
        assert [a["data"] for a in card["actions"]] == [{"command": f"/vpn approve {s.id}"}, {"command": f"/vpn deny {s.id}"}]
        assert all(a["type"] == "Action.Submit" for a in card["actions"])
        request_cards[who] = (call.answered_id, card["actions"][0]["data"])

    # Bob presses Approve — on the other replica, which never saw the request.
    status, _ = await two.post(personal(connector, "bob", None, value=request_cards["bob"][1]))
    assert status == 201
    await two.settle()
    await one.settle()
    s = await two.runtime.store.get(s.id)
    assert s.state is SessionState.READY and s.decided_by == f"teams:{AAD['bob']}"
    assert len(connector.configs()) == 1 and connector.configs()[0].path.startswith("/teams-prefix/v3/conversations/a:1personal-alice/")
    assert "was approved by" in texts_to(connector, "alice")
    for who in ("bob", "carol"):  # every approver's card, replaced in place
        (update,) = [u for u in connector.updates() if u.path.endswith(f"/conversations/a:1personal-{who}/activities/{request_cards[who][0]}")]
        assert "approved" in json.dumps(update.body) and f"Approved by teams:{AAD['bob']}" in json.dumps(update.body)

    # Carol presses Approve too, as an Action.Execute invoke: answered at once, then told it was decided.
    status, body = await one.post(execute(connector, "carol", request_cards["carol"][1]["command"]))
    assert status == 200 and json.loads(body) == {"statusCode": 200, "type": "application/vnd.microsoft.activity.message", "value": "Working on it…"}
    await one.settle()
    assert "was already decided by" in texts_to(connector, "carol")
    assert len(connector.configs()) == 1


async def test_a_deny_button_and_the_requester_hears_why(teams):
    connector = teams.connector
    one = await teams()
    await one.post(personal(connector, "carol", "/vpn help"))
    await one.settle()
    await one.post(personal(connector, "alice", "/vpn start"))
    await one.settle()
    (s,) = await one.runtime.store.sessions([SessionState.AWAITING_APPROVAL])
    await one.post(personal(connector, "carol", f"/vpn deny {s.id} use the office network today"))
    await one.settle()
    assert (await one.runtime.store.get(s.id)).state is SessionState.DENIED
    assert "use the office network today" in texts_to(connector, "alice") and not connector.configs()
    (update,) = connector.updates()
    assert "closed" in json.dumps(update.body) and "use the office network today" in json.dumps(update.body)
    # Alice presses Approve on a forwarded card: nobody decides their own request (refused, audited).
    await one.post(execute(connector, "alice", f"/vpn approve {s.id}"))
    await one.settle()
    assert "cannot decide your own request" in texts_to(connector, "alice")
    assert any(e.reason == "self-approval refused" for e in await one.runtime.store.audit_log())
