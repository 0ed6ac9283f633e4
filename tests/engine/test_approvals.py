"""Approvals end to end through the dispatcher: real stores (SQLite and Table Storage on Azurite), the
dryrun provider behind a spy, a channel whose cards can be updated, a fake clock.

Bob and Carol are approvers; they tell the bot where they are by speaking to it privately once.
"""
from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from bot.settings import Settings
from bot.store.model import SessionState
from bot.wiring import make_provider
from tests.support.factories import incoming
from tests.support.governance import CardChannel, SpyProvider

pytestmark = pytest.mark.parametrize("store_backend", ["sqlite", "azure-tables"], indirect=True)

USERS = "test:alice,test:bob,test:carol,test:dave"
APPROVERS = "test:bob,test:carol"


@pytest.fixture
def spy(tmp_path):
    """One provider per runtime, all counting into the same lists."""
    made: list[SpyProvider] = []

    def build(**env) -> SpyProvider:
        settings = Settings.from_env({"VPN_DATA_DIR": str(tmp_path / "data"), "VPN_DRYRUN_STEP_SECONDS": "0", **env})
        settings.ops.data_dir.mkdir(parents=True, exist_ok=True)
        made.append(SpyProvider(make_provider(settings)))
        return made[-1]

    build.created = lambda: [s for p in made for s in p.created]
    build.destroyed = lambda: [s for p in made for s in p.destroyed]
    return build


def runtime(make_runtime, spy, channel, **env):
    values = {"VPN_APPROVERS": APPROVERS, "VPN_APPROVAL": "always", "VPN_DRYRUN_STEP_SECONDS": 0, **env}
    return make_runtime(users=USERS, provider=spy(), channels=[channel], **values)


async def settle(*rts):
    for rt in rts:
        await rt.runner.wait_idle(30)


async def say(rt, text, user):
    await rt.dispatcher.handle(incoming(text, user=user))
    await settle(rt)


async def only(rt):
    (s,) = await rt.store.sessions(list(SessionState))
    return s


async def test_a_request_waits_touching_nothing_and_one_approval_starts_it_once(make_runtime, spy):
    ch = CardChannel()
    async with runtime(make_runtime, spy, ch) as rt:
        await say(rt, "/vpn help", "test:bob")  # the approvers speak to the bot privately once
        await say(rt, "/vpn help", "test:carol")
        await say(rt, "/vpn start 45 reason=deploying the hotfix", "test:alice")
        s = await only(rt)
        assert s.state is SessionState.AWAITING_APPROVAL and s.reason == "deploying the hotfix"
        assert s.client_public_key == "" and s.endpoint == "" and not s.lease_owner  # no key, nothing made
        assert spy.created() == [] and not [x for x in ch.sent if x.kind == "config"]
        reply = ch.to("test:alice")[-1]
        assert "needs an approval first" in reply and "I asked test:bob, test:carol privately" in reply
        for approver in ("test:bob", "test:carol"):
            (card,) = ch.to(approver, "card")[-1:]
            assert "VPN access request" in card and "deploying the hotfix" in card and f"/vpn approve {s.id}" in card
        assert ch.to("test:dave") == []

        await say(rt, f"/vpn approve {s.id}", "test:bob")
        assert "Approved: session" in ch.to("test:bob", "text")[-1]
        s = await only(rt)
        assert s.state is SessionState.READY and s.decided_by == "test:bob" and s.minutes == 45
        assert spy.created() == [s.id]
        assert [str(x.recipient.key) for x in ch.sent if x.kind == "config"] == ["test:alice"]
        assert any("was approved by test:bob" in t for t in ch.to("test:alice"))
        # Every approver's card now says who decided.
        updated = [text for _, text in ch.updates]
        assert len(updated) == 2 and all("Approved by test:bob" in t for t in updated)
        # Carol is too late: told, and nothing starts twice.
        await say(rt, f"/vpn approve {s.id}", "test:carol")
        assert "was already decided by test:bob" in ch.to("test:carol", "text")[-1]
        assert spy.created() == [s.id]
        log = [(e.user, e.command, e.allowed) for e in await rt.store.audit_log()]
        assert ("test:alice", f"request {s.id}", True) in log and ("test:bob", f"approve {s.id}", True) in log


async def test_a_denied_request_never_calls_the_provider(make_runtime, spy):
    ch = CardChannel()
    async with runtime(make_runtime, spy, ch) as rt:
        await say(rt, "/vpn help", "test:bob")
        await say(rt, "/vpn start", "test:alice")
        s = await only(rt)
        await say(rt, f"/vpn deny {s.id} not during the freeze, sorry", "test:bob")
        s = await only(rt)
        assert s.state is SessionState.DENIED and s.decided_by == "test:bob" and s.end_reason == "denied by test:bob: not during the freeze, sorry"
        assert s.ended_at is not None
        assert any("not granted (denied by test:bob: not during the freeze, sorry)" in t for t in ch.to("test:alice"))
        assert "closed" in ch.updates[-1][1] and "not during the freeze" in ch.updates[-1][1]
        await rt.service.sweep()
        await rt.service.reconcile()
        await settle(rt)
        assert spy.created() == [] and spy.destroyed() == []  # not even a destroy for nothing
        # The request held a place under the caps until it was decided: a new one may start.
        await say(rt, "/vpn start", "test:alice")
        assert len(await rt.store.sessions([SessionState.AWAITING_APPROVAL])) == 1


async def test_nobody_approves_their_own_request_and_only_approvers_decide(make_runtime, spy):
    ch = CardChannel()
    async with runtime(make_runtime, spy, ch) as rt:
        await say(rt, "/vpn help", "test:carol")
        await say(rt, "/vpn start", "test:bob")  # an approver asks for himself
        s = await only(rt)
        assert "I asked test:carol" in ch.to("test:bob")[-1] and ch.to("test:bob", "card") == []  # not asked to approve his own
        await say(rt, f"/vpn approve {s.id}", "test:bob")
        assert "cannot decide your own request" in ch.to("test:bob", "text")[-1]
        await say(rt, f"/vpn deny {s.id}", "test:bob")
        await say(rt, f"/vpn approve {s.id}", "test:dave")
        assert "not one of the approvers" in ch.to("test:dave", "text")[-1]
        await say(rt, f"/vpn approve {s.id}", "test:root")  # admins are not approvers unless named
        assert (await only(rt)).state is SessionState.AWAITING_APPROVAL and spy.created() == []
        refused = [(e.user, e.command, e.reason) for e in await rt.store.audit_log() if not e.allowed]
        assert ("test:bob", f"approve {s.id}", "self-approval refused") in refused
        assert ("test:bob", f"deny {s.id}", "self-approval refused") in refused
        assert ("test:dave", f"approve {s.id}", "not an approver of this request") in refused
        assert ("test:root", f"approve {s.id}", "not an approver of this request") in refused
        await say(rt, "/vpn pending", "test:bob")
        assert "No request is waiting for your approval" in ch.to("test:bob", "text")[-1]
        await say(rt, "/vpn pending", "test:carol")
        assert s.id in ch.to("test:carol", "card")[-1]


async def test_only_longer_sessions_wait_and_extending_past_the_threshold_is_refused(make_runtime, spy):
    ch = CardChannel()
    async with runtime(make_runtime, spy, ch, VPN_APPROVAL="over:60") as rt:
        await say(rt, "/vpn start 30", "test:alice")
        s = await only(rt)
        assert s.state is SessionState.READY and spy.created() == [s.id]
        await say(rt, "/vpn extend 20", "test:alice")
        await say(rt, "/vpn extend 20", "test:alice")
        assert "at most 10 more minutes (the maximum is 60). Longer needs an approval" in ch.to("test:alice", "text")[-1]
        await say(rt, "/vpn help", "test:alice")
        assert "Sessions longer than 1 h 00 min need an approval first" in ch.to("test:alice", "card")[-1]


async def test_an_approver_may_grant_less_and_that_is_the_cap(make_runtime, spy):
    ch = CardChannel()
    async with runtime(make_runtime, spy, ch) as rt:
        await say(rt, "/vpn start 120", "test:alice")
        s = await only(rt)
        await say(rt, f"/vpn approve {s.id} 180", "test:bob")
        assert "1 to 120 minutes" in ch.to("test:bob", "text")[-1]
        await say(rt, "/vpn approve test:alice 45", "test:bob")  # by the requester's name
        s = await only(rt)
        assert s.state is SessionState.READY and s.minutes == 45 and s.max_minutes == 45
        await say(rt, "/vpn extend 10", "test:alice")
        assert "already at the maximum of 45 minutes. Longer needs an approval" in ch.to("test:alice", "text")[-1]


async def test_the_requester_withdraws_and_every_card_says_so(make_runtime, spy):
    ch = CardChannel()
    async with runtime(make_runtime, spy, ch) as rt:
        await say(rt, "/vpn help", "test:bob")
        await say(rt, "/vpn help", "test:carol")
        await say(rt, "/vpn start", "test:alice")
        await say(rt, "/vpn status", "test:alice")
        assert "awaiting_approval" in ch.to("test:alice", "card")[-1] and "test:bob, test:carol" in ch.to("test:alice", "card")[-1]
        await say(rt, "/vpn stop", "test:alice")
        s = await only(rt)
        assert s.state is SessionState.DENIED and s.end_reason == "withdrawn by you"
        texts = ch.to("test:alice", "text")
        assert any(t.startswith("Withdrawn:") for t in texts) and any("not granted (withdrawn by you)" in t for t in texts)
        assert len(ch.updates) == 2 and all("withdrawn" in t for _, t in ch.updates)
        assert spy.created() == spy.destroyed() == []


async def test_an_undecided_request_lapses_in_the_sweep(make_runtime, spy, clock):
    ch = CardChannel()
    async with runtime(make_runtime, spy, ch, VPN_APPROVAL_TIMEOUT_MINUTES=30) as rt:
        await say(rt, "/vpn help", "test:bob")
        await say(rt, "/vpn start", "test:alice")
        s = await only(rt)
        assert s.decide_by == s.created_at + timedelta(minutes=30)
        clock.advance(minutes=29, seconds=55)
        assert await rt.service.sweep() == s.decide_by  # the sweeper plans to look then (within its next planned look)
        assert (await only(rt)).state is SessionState.AWAITING_APPROVAL
        clock.advance(minutes=1)
        await rt.service.sweep()
        await settle(rt)
        s = await only(rt)
        assert s.state is SessionState.DENIED and s.end_reason == "no approver decided within 30 min" and s.decided_by == ""
        assert any("not granted (no approver decided within 30 min)" in t for t in ch.to("test:alice"))
        assert ch.updates and "no approver decided" in ch.updates[-1][1]
        (entry,) = [e for e in await rt.store.audit_log() if e.command == f"approval timeout {s.id}"]
        assert entry.user == "test:alice" and not entry.allowed and entry.channel == "engine"
        await say(rt, f"/vpn approve {s.id}", "test:bob")
        assert "already decided" in ch.to("test:bob", "text")[-1] and spy.created() == []


async def test_with_zero_replicas_reap_decides_the_timeout(make_runtime, spy, clock):
    ch = CardChannel()
    async with runtime(make_runtime, spy, ch) as rt:
        await say(rt, "/vpn help", "test:bob")
        await say(rt, "/vpn start", "test:alice")
    clock.advance(minutes=61)  # every replica is gone; the scheduler runs `reap`
    reaper = CardChannel()
    async with runtime(make_runtime, spy, reaper) as rt:
        await rt.service.reap_once()
        s = await only(rt)
        assert s.state is SessionState.DENIED and "no approver decided within 1 h 00 min" in s.end_reason
        assert any("not granted" in t for t in reaper.to("test:alice"))  # told through the stored conversation
        assert reaper.updates and "closed" in reaper.updates[0][1]  # the approver's card, from the stored handle
        assert spy.created() == []


@pytest.mark.parametrize("second", ["approve", "deny"])
async def test_two_replicas_two_approvers_one_instant_one_outcome(make_runtime, spy, second):
    one, two = CardChannel(), CardChannel()
    async with runtime(make_runtime, spy, one) as rt1, runtime(make_runtime, spy, two) as rt2:
        await say(rt1, "/vpn help", "test:bob")
        await say(rt2, "/vpn help", "test:carol")
        await say(rt1, "/vpn start", "test:alice")
        s = await only(rt1)
        for _ in range(3):  # the same instant, several times over: the compare-and-set decides
            await asyncio.gather(
                rt1.dispatcher.handle(incoming(f"/vpn approve {s.id}", user="test:bob")),
                rt2.dispatcher.handle(incoming(f"/vpn {second} {s.id}", user="test:carol")),
            )
        await settle(rt1, rt2)
        s = await only(rt1)
        winners = [t for ch in (one, two) for t in ch.texts("text") if t.startswith(("Approved: session", "Denied: session"))]
        told = [t for ch in (one, two) for t in ch.texts("text") if "was already decided" in t]
        assert len(winners) == 1 and len(told) == 5
        if s.state is SessionState.DENIED:
            assert spy.created() == [] and winners[0].startswith("Denied")
        else:
            assert s.state is SessionState.READY and spy.created() == [s.id] and winners[0].startswith("Approved")
            assert len([x for ch in (one, two) for x in ch.sent if x.kind == "config"]) == 1
        # Each approver's card was updated exactly once, by whichever replica decided.
        assert len(one.updates) + len(two.updates) == 2


async def test_only_the_approvers_named_decide(make_runtime, spy):
    """The rules that applied are kept with the request (tests/engine/test_policy_file.py: a policy entry's own)."""
    ch = CardChannel()
    async with runtime(make_runtime, spy, ch, VPN_APPROVERS="test:carol") as rt:
        await say(rt, "/vpn start", "test:alice")
        s = await only(rt)
        assert s.approvers == "test:carol"
        await say(rt, f"/vpn approve {s.id}", "test:bob")
        assert "not one of the approvers" in ch.to("test:bob", "text")[-1]
        await say(rt, f"/vpn approve {s.id}", "test:carol")
        assert (await only(rt)).state is SessionState.READY


async def test_removed_from_the_allowlist_loses_the_session_at_the_restart(make_runtime, spy):
    ch = CardChannel()
    async with runtime(make_runtime, spy, ch, VPN_APPROVAL="never") as rt:
        await say(rt, "/vpn start", "test:alice")
        await say(rt, "/vpn start", "test:dave")
        assert len(await rt.store.sessions([SessionState.READY])) == 2
    after = CardChannel()
    async with make_runtime(users="test:alice", provider=spy(), channels=[after], VPN_DRYRUN_STEP_SECONDS=0) as rt:
        await rt.service.sweep()
        await settle(rt)
        by_owner = {s.owner: s for s in await rt.store.sessions(list(SessionState))}
        assert by_owner["test:alice"].state is SessionState.READY
        assert by_owner["test:dave"].state is SessionState.DELETED
        assert any("has ended (your access was withdrawn" in t for t in after.to("test:dave"))
        assert by_owner["test:dave"].id in spy.destroyed()
        assert [e.user for e in await rt.store.audit_log() if e.command.startswith("revoke ")] == ["test:dave"]
