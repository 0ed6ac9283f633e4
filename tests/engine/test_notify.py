"""Notifications (issue 23) through the real engine on both stores: a signed webhook to a receiver on
loopback that verifies every signature, and a chat registered with /vpn notify here. Every event once
per target, retries with back-off, giving up, two replicas delivering at once, and no secret in any notice."""
from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta

import pytest

from bot.store.model import SessionState
from tests.fakes.webhook import WebhookReceiver
from tests.support.factories import incoming, traffic_during_teardown

pytestmark = pytest.mark.parametrize("store_backend", ["sqlite", "azure-tables"], indirect=True)
SECRET = "notify-secret-" + "s" * 24
KEY = re.compile(r"[A-Za-z0-9+/]{42,43}=")  # a WireGuard key (private, preshared or public): never in a notice


@pytest.fixture
async def hook():
    receiver = await WebhookReceiver(SECRET).start()
    yield receiver
    await receiver.stop()


async def settle(rt):
    await rt.runner.wait_idle(10)


async def say(rt, text, user="test:alice", **kw):
    await rt.dispatcher.handle(incoming(text, user=user, **kw))
    await settle(rt)


async def deliver(rt):
    await rt.service.sweeper.deliver_notifications()


def notify_env(hook, **env):
    return {"VPN_NOTIFY": hook.url, "VPN_NOTIFY_SECRET": SECRET, "VPN_DRYRUN_STEP_SECONDS": 0, **env}


def chat_notices(channel, user="test:root"):
    return [s.text for s in channel.sent if s.kind == "text" and s.conv.data.get("user") == user and s.text.startswith("VPN: ")]


async def test_each_event_reaches_each_target_once_signed_and_without_secrets(make_runtime, channel, hook, clock):
    async with make_runtime(**notify_env(hook, VPN_HOURLY_COST=0.6)) as rt:
        await say(rt, "/vpn notify here", "test:root")
        assert "Notifications now come to this chat too (test:test:root)" in channel.texts()[-1]
        await say(rt, "/vpn start 30 reason=the build server")
        config = next(s for s in channel.sent if s.kind == "config").text
        (s,) = await rt.store.sessions([SessionState.READY])
        await deliver(rt)
        clock.advance(minutes=10)
        await say(rt, "/vpn stop")
        await deliver(rt)
        await deliver(rt)  # nothing more: each went once
        assert hook.refused == []
        assert hook.types() == ["requested", "ready", "ended"] and set(hook.accepted.values()) == {1}
        ended = hook.received[-1]
        assert ended["id"] == f"{s.id}.ended" and ended["end_reason"] == "stopped" and ended["reason"] == "stopped by you"
        assert ended["minutes_used"] == 10.0 and ended["cost"] == 0.1 and ended["session"]["owner"] == "test:alice"
        assert hook.received[0]["request_reason"] == "the build server" and hook.received[0]["awaiting_approval"] is False
        texts = chat_notices(channel)
        assert texts == [
            f"VPN: test:alice requested session {s.id} (30 min, local) (the build server).",
            f"VPN: session {s.id} of test:alice is ready (dryrun / local, 30 min).",
            f"VPN: session {s.id} of test:alice ended (stopped: stopped by you) after 10 min, $0.1000.",
        ]
        # No key, config or token in any notice: the delivered config's secrets, the webhook secret, any WireGuard key.
        secrets = [line.split(" = ", 1)[1] for line in config.splitlines() if line.startswith(("PrivateKey", "PresharedKey"))]
        stored = json.dumps([n.payload for n in await rt.store.notifications()])
        for text in [*(b.decode() for b in hook.raw), *texts, stored]:
            assert not any(secret in text for secret in secrets) and SECRET not in text and not KEY.search(text), text
        for n in await rt.store.notifications():
            assert (n.state, n.attempts) == ("delivered", 1)


async def test_the_ended_event_carries_the_figures_written_during_the_teardown(make_runtime, hook, monkeypatch):
    """Traffic figures written while the teardown destroys (an Azure VM's last report, another replica's poll
    that listed the session before it began to end) reach the usage record; the `ended` event, queued before
    the last write, has the figures of the session as `begin` (or the latest lease renewal) wrote it.
    Before issue 25's change it was built from a read just before the last write."""
    async with make_runtime(**notify_env(hook)) as rt:
        await say(rt, "/vpn start")
        (s,) = await rt.store.sessions([SessionState.READY])
        traffic_during_teardown(rt, s.id, monkeypatch)
        await say(rt, "/vpn stop")
        await deliver(rt)
        ended = hook.received[-1]
        assert ended["type"] == "ended" and (ended["bytes_in"], ended["bytes_out"]) == (7_000_000, 3_000_000), ended


async def test_approvals_denials_and_failures_are_told(make_runtime, channel, hook):
    env = notify_env(hook, VPN_APPROVERS="test:bob", VPN_APPROVAL="always")
    async with make_runtime(**env) as rt:
        await say(rt, "/vpn start 60")
        (s,) = await rt.store.sessions([SessionState.AWAITING_APPROVAL])
        await say(rt, f"/vpn approve {s.id}", "test:bob")
        await say(rt, "/vpn stop")
        await say(rt, "/vpn start 20", "test:root")
        (t,) = await rt.store.sessions([SessionState.AWAITING_APPROVAL])
        await say(rt, f"/vpn deny {t.id} not today", "test:bob")
        await deliver(rt)
        by_id = {e["id"]: e for e in hook.received}
        assert by_id[f"{s.id}.requested"]["awaiting_approval"] is True
        assert by_id[f"{s.id}.approved"]["decided_by"] == "test:bob"
        assert by_id[f"{t.id}.denied"]["reason"] == "denied by test:bob: not today"
        assert sorted(e["type"] for e in hook.received) == sorted(["requested", "approved", "ready", "ended", "requested", "denied"])
    async with make_runtime(**notify_env(hook, VPN_DRYRUN_FAIL_STEP="starting WireGuard")) as rt:
        await say(rt, "/vpn start", "test:bob")
        await deliver(rt)
        (failed,) = [e for e in hook.received if e["type"] == "failed"]
        assert "failed while starting WireGuard" in failed["reason"]


async def test_a_failing_receiver_is_retried_with_back_off_then_given_up(make_runtime, channel, hook, clock):
    hook.fail["requested"] = 2
    async with make_runtime(**notify_env(hook)) as rt:
        await say(rt, "/vpn start")
        await deliver(rt)
        (n,) = await rt.store.notifications(next(e["id"] for e in hook.received))
        assert (n.state, n.attempts, n.last_error, n.due_at) == ("pending", 1, "HTTP 503", clock() + timedelta(seconds=5))
        await deliver(rt)
        assert len(hook.received) == 2 and hook.received[1]["type"] == "ready"  # the first is not due yet
        clock.advance(seconds=5)
        await deliver(rt)
        (n,) = await rt.store.notifications(n.event_id)
        assert (n.attempts, n.due_at) == (2, clock() + timedelta(seconds=10))
        clock.advance(seconds=10)
        await deliver(rt)
        (n,) = await rt.store.notifications(n.event_id)
        assert (n.state, n.attempts) == ("delivered", 3) and hook.accepted[n.event_id] == 1
        hook.fail["ended"] = 100
        await say(rt, "/vpn stop")
        for _ in range(12):
            await deliver(rt)
            clock.advance(hours=1)
        (gone,) = [x for x in await rt.store.notifications() if x.event_id.endswith(".ended")]
        assert (gone.state, gone.attempts) == ("failed", 10)


async def test_two_replicas_delivering_at_once_send_each_event_once(make_runtime, channel, hook):
    async with make_runtime(**notify_env(hook)) as a, make_runtime(**notify_env(hook)) as b:
        for user in ("test:alice", "test:bob", "test:root"):
            await say(a, "/vpn start", user)
            await say(b, "/vpn stop", user)  # another replica ends it: one "ended" event, however many emit it
        await settle(b)
        await asyncio.gather(*(rt.service.sweeper.deliver_notifications() for rt in (a, b, a, b)))
        assert hook.refused == [] and len(hook.accepted) == 9 and set(hook.accepted.values()) == {1}
        assert len(hook.received) == 9


async def test_admins_alone_register_and_unregister_a_chat(make_runtime, channel, hook):
    async with make_runtime(**notify_env(hook)) as rt:
        await say(rt, "/vpn notify here", "test:alice")
        assert channel.texts()[-1] == "Sorry, only admins can use /vpn notify."
        await say(rt, "/vpn notify here", "test:root")
        await say(rt, "/vpn notify", "test:root")
        assert channel.texts()[-1] == f"VPN_NOTIFY: {hook.base_url}/…. Registered with /vpn notify here: test:test:root."
        await say(rt, "/vpn notify off", "test:root")
        assert channel.texts()[-1] == "Notifications no longer come to this chat."
        await say(rt, "/vpn start")
        await deliver(rt)
        assert chat_notices(channel) == [] and hook.types() == ["requested", "ready"]
        await say(rt, "/vpn notify everywhere", "test:root")
        assert "notify takes here" in channel.texts()[-1]
