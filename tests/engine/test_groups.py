"""`group:` rules through a fake Microsoft Graph over https on 127.0.0.1 (its own certificate, trusted
only by the client context the test hands in): membership, the cache, failing closed, and revocation
when someone leaves the group mid-session."""
from __future__ import annotations

import aiohttp
import pytest

from bot.engine.groups import GroupsUnavailable
from bot.graph import GraphClient
from bot.store.model import SessionState
from tests.fakes.graph import FakeGraph, token
from tests.support.factories import incoming
from tests.support.governance import ALICE_OID, BOB_OID, CAROL_OID, GROUP_ADMINS, GROUP_APPROVERS, GROUP_STAFF, CardChannel, graph_env


@pytest.fixture
async def graph():
    fake = await FakeGraph(members={ALICE_OID: {GROUP_STAFF}, BOB_OID: {GROUP_STAFF, GROUP_APPROVERS}, CAROL_OID: set()}).start()
    yield fake
    await fake.stop()


def teams(oid: str) -> str:
    return f"teams:{oid}"


async def say(rt, text, oid, **kw):
    await rt.dispatcher.handle(incoming(text, user=teams(oid), **kw))
    await rt.runner.wait_idle(30)


def build(make_runtime, graph, ch, **env):
    values = graph_env(graph, VPN_DRYRUN_STEP_SECONDS=0, VPN_GROUP_CACHE_SECONDS=300, **env)
    return make_runtime(users=f"group:{GROUP_STAFF}", admins=f"group:{GROUP_ADMINS}", channels=[ch], **values)


async def test_members_are_let_in_strangers_are_not_and_answers_are_cached(make_runtime, graph, clock):
    ch = CardChannel()
    async with build(make_runtime, graph, ch) as rt:
        await say(rt, "/vpn status", ALICE_OID)
        assert "no VPN session running" in ch.to(teams(ALICE_OID))[-1]
        await say(rt, "/vpn status", CAROL_OID)
        assert "not allowed to use this VPN bot" in ch.to(teams(CAROL_OID))[-1]
        await say(rt, "/vpn status", "ffffffff-0000-0000-0000-000000000000")  # not in the directory at all: 404, a member of nothing
        assert "not allowed" in ch.all_text().splitlines()[-1]
        # One question per person answers every group the rules name, with the bot's own token, in one call.
        assert graph.checks_of(ALICE_OID) == 1 and sorted(graph.calls[0]["groupIds"]) == sorted([GROUP_STAFF, GROUP_ADMINS])
        await say(rt, "/vpn help", ALICE_OID)
        assert graph.checks_of(ALICE_OID) == 1  # cached
        clock.advance(seconds=301)
        await say(rt, "/vpn help", ALICE_OID)
        assert graph.checks_of(ALICE_OID) == 2
        # Someone with no Entra object id (a GroupMe user) is in no group, and Graph is not asked.
        await rt.dispatcher.handle(incoming("/vpn status", user="groupme:12345"))
        assert "not allowed" in ch.all_text().splitlines()[-1] and not any(c["user"] == "12345" for c in graph.calls)


async def test_graph_unreachable_or_refusing_refuses(make_runtime, graph, clock):
    ch = CardChannel()
    async with build(make_runtime, graph, ch) as rt:
        await graph.go_down()
        await say(rt, "/vpn start", ALICE_OID)
        assert "cannot check your group memberships" in ch.to(teams(ALICE_OID))[-1]
        assert await rt.store.sessions(list(SessionState)) == []
        await graph.come_back()
        graph.faults.append((403, {"error": {"code": "Authorization_RequestDenied", "message": "Insufficient privileges"}}, {}))
        await say(rt, "/vpn start", ALICE_OID)
        assert "cannot check your group memberships" in ch.to(teams(ALICE_OID))[-1]
        assert await rt.store.sessions(list(SessionState)) == []
        refused = [e.reason for e in await rt.store.audit_log() if not e.allowed]
        assert any("403 Authorization_RequestDenied" in r for r in refused) and any("unreachable" in r for r in refused)
        # A throttled answer is waited out (Retry-After) and retried; a failure is never cached.
        graph.faults.append((429, {"error": {"code": "TooManyRequests"}}, {"Retry-After": "0"}))
        await say(rt, "/vpn start", ALICE_OID)
        assert len(await rt.store.sessions([SessionState.READY])) == 1


async def test_someone_who_leaves_the_group_loses_the_session_within_the_cache_time_and_one_sweep(make_runtime, graph, clock):
    ch = CardChannel()
    async with build(make_runtime, graph, ch, VPN_SESSION_MINUTES=120) as rt:
        await say(rt, "/vpn start", ALICE_OID)
        (s,) = await rt.store.sessions([SessionState.READY])
        graph.members[ALICE_OID] = set()  # removed from the group in Entra, mid-session
        clock.advance(seconds=200)
        await rt.service.sweep()
        await rt.runner.wait_idle(30)
        assert (await rt.store.get(s.id)).state is SessionState.READY  # the cached answer still holds
        clock.advance(seconds=101)  # the cache time has passed: the next sweep asks Graph again
        await graph.go_down()
        await rt.service.sweep()  # Graph cannot say: nothing is revoked on a guess
        await rt.runner.wait_idle(30)
        assert (await rt.store.get(s.id)).state is SessionState.READY
        await graph.come_back()
        await rt.service.sweep()
        await rt.runner.wait_idle(30)
        assert (await rt.store.get(s.id)).state is SessionState.DELETED
        assert any(f"session {s.id} has ended (your access was withdrawn" in t for t in ch.to(teams(ALICE_OID)))
        (entry,) = [e for e in await rt.store.audit_log() if e.command == f"revoke {s.id}"]
        assert entry.user == teams(ALICE_OID) and not entry.allowed and entry.channel == "engine"
        await say(rt, "/vpn start", ALICE_OID)
        assert "not allowed" in ch.to(teams(ALICE_OID))[-1]


async def test_group_approvers_get_the_request_and_decide(make_runtime, graph):
    ch = CardChannel()
    env = {"VPN_APPROVERS": f"group:{GROUP_APPROVERS}", "VPN_APPROVAL": "always"}
    async with build(make_runtime, graph, ch, **env) as rt:
        await say(rt, "/vpn help", BOB_OID)  # an approver, by group
        assert "/vpn approve" in ch.to(teams(BOB_OID), "card")[-1]
        await say(rt, "/vpn help", ALICE_OID)
        assert "/vpn approve" not in ch.to(teams(ALICE_OID), "card")[-1]
        assert "Every session needs an approval first" in ch.to(teams(ALICE_OID), "card")[-1]
        await say(rt, "/vpn start", ALICE_OID)
        (s,) = await rt.store.sessions([SessionState.AWAITING_APPROVAL])
        assert s.asked == teams(BOB_OID) and s.id in ch.to(teams(BOB_OID), "card")[-1]
        graph.members[BOB_OID] = {GROUP_STAFF}  # no longer an approver; the cache still says he is
        graph.members[CAROL_OID] = {GROUP_STAFF}
        await say(rt, f"/vpn approve {s.id}", CAROL_OID)
        assert "not one of the approvers" in ch.to(teams(CAROL_OID))[-1]
        await say(rt, f"/vpn approve {s.id}", BOB_OID)
        assert (await rt.store.get(s.id)).state is SessionState.READY


async def test_more_than_twenty_groups_are_asked_twenty_at_a_time(graph):
    groups = [f"00000000-0000-4000-8000-{i:012d}" for i in range(45)]
    graph.members[ALICE_OID] = {groups[3], groups[44]}
    async with aiohttp.ClientSession() as http:
        client = GraphClient(http, graph.base_url, token, ssl_context=graph.trust())
        assert await client.member_groups(ALICE_OID, groups) == {groups[3], groups[44]}
        assert [len(c["groupIds"]) for c in graph.calls] == [20, 20, 5]
        # Without trusting its certificate, the fake is not Graph: refused, never believed.
        untrusting = GraphClient(http, graph.base_url, token)
        with pytest.raises(GroupsUnavailable, match="unreachable"):
            await untrusting.member_groups(ALICE_OID, groups[:2])
        graph.faults.append((200, {"value": "not a list"}, {}))
        with pytest.raises(GroupsUnavailable, match="without a list"):
            await client.member_groups(ALICE_OID, groups[:2])

        async def wrong() -> str:
            return "someone-elses-token"

        with pytest.raises(GroupsUnavailable, match="401"):
            await GraphClient(http, graph.base_url, wrong, ssl_context=graph.trust()).member_groups(ALICE_OID, groups[:2])
