"""Approvals and groups through the HTTP API: real HTTP on loopback, local accounts and Entra tokens
(a fake tenant), a fake Microsoft Graph over https, the dryrun provider, a real store."""
from __future__ import annotations

import aiohttp
import pytest

from bot.channels.web.channel import WebChannel
from bot.settings import Settings
from bot.wiring import Runtime, build_http_app, make_provider
from tests.fakes.entra import API_CLIENT_ID, TENANT, FakeEntra
from tests.fakes.graph import FakeGraph, token
from tests.support.governance import APP, GROUP_STAFF
from tests.support.loopback import serve_on_loopback
from tests.support.webharness import SECRET, Client, WebApp

ALICE, BOB, CAROL = "alice@example.org", "bob@example.org", "carol@example.org"


class Replica(WebApp):
    """The web channel alone (no Teams, even with an app id set for Graph), with the fake Graph trusted."""

    def __init__(self, data_dir, graph: FakeGraph | None = None, **env: str) -> None:
        values = {"VPN_DATA_DIR": str(data_dir), "VPN_LOCAL_AUTH_SECRET": SECRET, "VPN_DRYRUN_STEP_SECONDS": "0", "VPN_METRICS_PORT": "0", **env}
        self.settings = Settings.from_env(values)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.provider = make_provider(self.settings)
        s = self.settings
        assert s.web is not None
        self.channels = [WebChannel(s.web)]
        self.graph_kw = {"graph_token": token, "graph_ssl": graph.trust()} if graph else {}
        self.runtime = Runtime(self.settings, self.provider, self.channels, background=False, **self.graph_kw)
        self.base = ""
        self._runner = None

    async def start(self) -> "Replica":
        self.app = build_http_app(self.runtime)
        self._runner, self.base = await serve_on_loopback(self.app)
        await self.runtime.opened()
        return self


@pytest.fixture
async def web(tmp_path):
    made, http = [], aiohttp.ClientSession()

    async def make(graph: FakeGraph | None = None, **env) -> tuple[Replica, dict[str, Client]]:
        env.setdefault("VPN_USERS", f"local:{ALICE},local:{BOB},local:{CAROL}")
        app = await Replica(tmp_path / "data", graph, **env).start()
        made.append(app)
        clients = {}
        for email in (ALICE, BOB, CAROL):
            await app.add_user(email)
            clients[email] = await Client(http, app.base).login(email)
        return app, clients

    make.http = http
    yield make
    await http.close()
    for app in made:
        await app.close()


async def test_request_approve_and_follow_through_the_api(web):
    app, c = await web(VPN_APPROVERS=f"local:{BOB}", VPN_APPROVAL="over:30")
    alice, bob, carol = c[ALICE], c[BOB], c[CAROL]
    status, _, me = await alice.json("GET", "/api/me")
    assert (me["approval"], me["approver"], me["max_session_minutes"], me["policy"]) == ("over:30", False, 240, "")
    assert (await bob.json("GET", "/api/me"))[2]["approver"] is True
    status, headers, s = await alice.json("POST", "/api/sessions", json={"minutes": 90, "reason": "  quarter-end   close "})
    assert status == 202 and s["state"] == "awaiting_approval" and s["reason"] == "quarter-end close" and s["decide_by"].endswith("Z")
    assert "owner_label" not in s and s["asked"] == ""  # nobody reachable privately: the page's pending list is how approvers see it

    status, _, listed = await bob.json("GET", "/api/sessions?state=awaiting_approval")
    (pending,) = listed["sessions"]
    assert pending["id"] == s["id"] and pending["owner_label"] == ALICE and pending["reason"] == "quarter-end close"
    assert (await carol.json("GET", "/api/sessions?state=awaiting_approval"))[2]["sessions"] == []
    assert [x["id"] for x in (await alice.json("GET", "/api/sessions?state=awaiting_approval"))[2]["sessions"]] == [s["id"]]
    assert (await alice.json("GET", "/api/sessions?state=nonsense"))[0] == 400

    status, _, body = await alice.json("POST", f"/api/sessions/{s['id']}/approve", json={})
    assert status == 403 and body["code"] == "self_approval"
    status, _, body = await carol.json("POST", f"/api/sessions/{s['id']}/approve")
    assert status == 403 and body["code"] == "not_approver"
    assert (await bob.json("POST", f"/api/sessions/{s['id']}/approve", json={"minutes": 0}))[0] == 400
    status, _, body = await bob.json("POST", f"/api/sessions/{s['id']}/approve", json={"minutes": 120})
    assert status == 400 and body["code"] == "minutes_out_of_range" and body["max"] == 90  # more than was asked
    status, _, body = await bob.json("POST", f"/api/sessions/{s['id']}/approve", json={"minutes": 45})
    assert status == 200 and body["decided_by"] == BOB and body["minutes"] == 45
    ready = await alice.wait_for(headers["Location"], lambda b: b["config_ready"])
    assert ready["state"] == "ready" and ready["decided_by"] == BOB
    assert (await alice.call("GET", f"/api/sessions/{s['id']}/config"))[0] == 200
    status, _, body = await bob.json("POST", f"/api/sessions/{s['id']}/deny", json={"reason": "changed my mind"})
    assert status == 409 and body["code"] == "already_decided" and body["decided_by"] == BOB
    audit = [(e.user, e.command, e.allowed) for e in await app.runtime.store.audit_log()]
    assert (f"local:{BOB}", f"approve {s['id']}", True) in audit and (f"local:{ALICE}", f"approve {s['id']}", False) in audit


async def test_deny_through_the_api_and_the_requester_sees_why(web):
    app, c = await web(VPN_APPROVERS=f"local:{BOB}", VPN_APPROVAL="always")
    status, headers, s = await c[ALICE].json("POST", "/api/sessions", json={})
    assert status == 202 and s["state"] == "awaiting_approval"
    assert (await c[ALICE].json("POST", "/api/sessions", json={"reason": "x" * 201}))[0] == 400
    status, _, body = await c[BOB].json("POST", f"/api/sessions/{s['id']}/deny", json={"reason": 5})
    assert status == 400
    status, _, body = await c[BOB].json("POST", f"/api/sessions/{s['id']}/deny", json={"reason": "not this week"})
    assert status == 200 and body["state"] == "denied"
    status, _, mine = await c[ALICE].json("GET", headers["Location"])
    assert (mine["state"], mine["decided_by"], mine["end_reason"]) == ("denied", BOB, f"denied by {BOB}: not this week")
    assert any("not granted (denied by" in m for m in mine["messages"])
    assert (await c[ALICE].json("GET", "/api/sessions"))[2]["sessions"] == []  # no longer live
    # Withdrawing is a stop: DELETE on a request still waiting.
    status, headers, s = await c[ALICE].json("POST", "/api/sessions", json={})
    status, _, body = await c[ALICE].json("DELETE", headers["Location"])
    assert status == 202 and body["state"] == "denied" and body["end_reason"] == "withdrawn by you"


@pytest.fixture
async def entra():
    fake = await FakeEntra().start()
    yield fake
    await fake.close()


@pytest.fixture
async def graph():
    fake = await FakeGraph().start()
    yield fake
    await fake.stop()


async def test_an_entra_tokens_groups_claim_answers_group_rules_and_an_overage_asks_graph(web, entra, graph):
    env = {**APP, "VPN_USERS": f"group:{GROUP_STAFF}", "VPN_ENTRA_TENANT_ID": TENANT, "VPN_ENTRA_API_AUDIENCE": API_CLIENT_ID,
           "VPN_ENTRA_AUTHORITY": entra.authority, "VPN_GRAPH_ENDPOINT": graph.base_url, "VPN_GROUP_CACHE_SECONDS": "0"}
    app, _ = await web(graph, **env)
    member = Client(web.http, app.base, entra.issue(groups=[GROUP_STAFF.upper(), "00000000-0000-4000-8000-000000000001"]))
    status, _, me = await member.json("GET", "/api/me")
    assert status == 200 and me["user"] == f"teams:{entra.user_oid}"
    assert graph.calls == []  # the signed claim answered
    outsider = Client(web.http, app.base, entra.issue(groups=["00000000-0000-4000-8000-000000000001"]))
    assert (await outsider.json("GET", "/api/me"))[0] == 403 and graph.calls == []
    # Too many groups for the token: Entra sends an overage marker instead, and the policy asks Graph.
    overage = Client(web.http, app.base, entra.issue(_claim_names={"groups": "src1"}, _claim_sources={"src1": {"endpoint": "https://graph"}}))
    assert (await overage.json("GET", "/api/me"))[0] == 403 and graph.checks_of(entra.user_oid) == 1
    graph.members[entra.user_oid] = {GROUP_STAFF}
    await graph.go_down()
    status, headers, body = await Client(web.http, app.base, entra.issue()).json("GET", "/api/me")  # no claim; Graph unreachable
    assert status == 503 and body["code"] == "groups_unavailable" and headers["Retry-After"] == "30"
    await graph.come_back()
    assert (await Client(web.http, app.base, entra.issue()).json("GET", "/api/me"))[0] == 200
    status, _, s = await Client(web.http, app.base, entra.issue()).json("POST", "/api/sessions", json={})
    assert status == 202 and s["state"] in ("requested", "provisioning", "ready")
