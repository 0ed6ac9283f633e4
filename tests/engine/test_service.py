"""The session engine end to end through the dispatcher: dryrun provider, real SQLite, a recording channel.

Time is a fake clock; sweeps are called by hand, so expiry, warnings and recovery are deterministic.
"""
import asyncio
import dataclasses
import json
from datetime import timedelta

import pytest

from bot.store.model import SessionState
from tests.support.factories import incoming
from tests.support.qrtools import decode_qr

# Every service test runs on both stores: the embedded SQLite file and Table Storage (Azurite).
pytestmark = pytest.mark.parametrize("store_backend", ["sqlite", "azure-tables"], indirect=True)


async def settle(rt):
    await rt.runner.wait_idle(10)


async def states(rt):
    return [s.state for s in await rt.store.sessions(list(SessionState))]


async def test_start_delivers_a_config_privately_and_the_qr_scans_to_it(make_runtime, channel):
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        assert "starting VPN session" in channel.texts("text")[0]  # the acknowledgement comes first
        await settle(rt)
        configs = [s for s in channel.sent if s.kind == "config"]
        assert len(configs) == 1
        delivery = configs[0].delivery
        assert str(configs[0].recipient.key) == "test:alice"
        assert decode_qr(delivery.qr_png) == delivery.config.reveal()
        assert "Endpoint = 192.0.2." in delivery.config.reveal()
        progress = channel.texts("progress")
        assert any("creating server" in p for p in progress) and "ready" in progress[-1]
        (s,) = await rt.store.sessions([SessionState.READY])
        assert s.owner == "test:alice" and s.endpoint.startswith("192.0.2.")


async def test_stranger_is_refused_politely_and_nothing_is_provisioned(make_runtime, channel):
    async with make_runtime() as rt:
        await rt.dispatcher.handle(incoming("/vpn start", user="test:mallory"))
        await settle(rt)
        assert "not allowed" in channel.all_text() and "test:mallory" in channel.all_text()
        assert await states(rt) == []
        log = await rt.store.audit_log()
        assert log[0].user == "test:mallory" and not log[0].allowed


async def test_every_decision_is_audited(make_runtime):
    async with make_runtime() as rt:
        await rt.dispatcher.handle(incoming("/vpn status"))
        await rt.dispatcher.handle(incoming("/vpn list"))
        await rt.dispatcher.handle(incoming("/vpn list", user="test:root"))
        entries = [(e.user, e.command, e.allowed) for e in reversed(await rt.store.audit_log())]
        assert entries == [("test:alice", "status", True), ("test:alice", "list", False), ("test:root", "list", True)]


async def test_help_is_answered_without_an_audit_row_but_a_strangers_is_refused_and_audited(make_runtime, channel):
    async with make_runtime() as rt:
        await rt.dispatcher.handle(incoming("/vpn help"))
        assert "/vpn start" in channel.all_text()
        await rt.dispatcher.handle(incoming("/vpn help", user="test:mallory"))
        entries = [(e.user, e.command, e.allowed) for e in await rt.store.audit_log()]
        assert entries == [("test:mallory", "help", False)]


async def test_unknown_and_malformed_commands_get_help(make_runtime, channel):
    async with make_runtime() as rt:
        for text in ("/vpn frobnicate", "hello", "/vpn start 99999", "/vpn start mars", "/vpn extend soon", "/vpn start\x07"):
            channel.sent.clear()
            await rt.dispatcher.handle(incoming(text))
            reply = channel.all_text()
            assert reply and "Traceback" not in reply
            assert "/vpn start" in reply or "out of range" in reply or "not available" in reply, (text, reply)
        assert await states(rt) == []


async def test_group_chatter_is_ignored_but_commands_answered(make_runtime, channel):
    async with make_runtime() as rt:
        await rt.dispatcher.handle(incoming("lunch anyone?", private=False))
        assert channel.sent == []
        await rt.dispatcher.handle(incoming("/vpn help", private=False))
        assert "/vpn start" in channel.all_text() and "/vpn list" not in channel.all_text()


async def test_only_messages_that_may_act_are_de_duplicated_in_the_store(make_runtime, channel):
    """A re-sent command runs once, recognised through the store (any replica). A re-sent private
    `/vpn help` (it only answers: Rule.repeatable) is recognised by this process alone, with no store
    write for its id; in a shared chat it is recorded as any command. Group chatter records nothing."""
    async with make_runtime() as rt:
        cases = (("/vpn status", "s-1", True), ("/vpn help", "h-1", True), ("/vpn help", "h-2", False), ("lunch anyone?", "g-1", False))
        for text, message_id, private in cases:
            channel.sent.clear()
            for _ in range(2):
                await rt.dispatcher.handle(incoming(text, message_id=message_id, private=private))
            assert len(channel.sent) == {"s-1": 1, "h-1": 1, "h-2": 1, "g-1": 0}[message_id], (text, channel.sent)
        now = rt.service.clock()
        assert [await rt.store.first_seen("test", m, now) for m in ("s-1", "h-1", "h-2", "g-1")] == [False, True, False, True]


async def test_admin_help_lists_admin_commands(make_runtime, channel):
    async with make_runtime() as rt:
        await rt.dispatcher.handle(incoming("/vpn help", user="test:root"))
        assert "/vpn list" in channel.all_text()


async def test_one_session_per_user_even_when_two_starts_race(make_runtime, channel):
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0.05) as rt:
        await asyncio.gather(*(rt.dispatcher.handle(incoming("/vpn start")) for _ in range(5)))
        await settle(rt)
        assert (await states(rt)).count(SessionState.READY) == 1
        assert sum("already have a VPN session" in t for t in channel.texts("text")) == 4
        assert len(json.loads((rt.settings.ops.data_dir / "dryrun-servers.json").read_text())) == 1


async def test_repeated_message_id_starts_one_session(make_runtime, channel):
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0) as rt:
        for _ in range(3):
            await rt.dispatcher.handle(incoming("/vpn start", message_id="activity-1"))
        await settle(rt)
        assert await states(rt) == [SessionState.READY]
        assert len(channel.texts("text")) == 2  # one ack, one "ready"; re-sends get silence


async def test_global_cap(make_runtime, channel):
    async with make_runtime(users="test:a,test:b,test:c", VPN_MAX_SESSIONS=2, VPN_DRYRUN_STEP_SECONDS=0) as rt:
        for user in ("test:a", "test:b", "test:c"):
            await rt.dispatcher.handle(incoming("/vpn start", user=user))
        await settle(rt)
        assert (await states(rt)).count(SessionState.READY) == 2
        assert "All 2 VPN slots are in use" in channel.all_text()


async def test_per_user_limit_is_configurable(make_runtime):
    async with make_runtime(VPN_MAX_SESSIONS_PER_USER=2, VPN_DRYRUN_STEP_SECONDS=0) as rt:
        for _ in range(3):
            await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        assert (await states(rt)).count(SessionState.READY) == 2


async def test_start_with_region_and_duration(make_runtime, channel):
    async with make_runtime(VPN_DRYRUN_REGIONS="eu,us", VPN_DRYRUN_STEP_SECONDS=0, VPN_MAX_SESSION_MINUTES=120) as rt:
        await rt.dispatcher.handle(incoming("/vpn start us 90"))
        await settle(rt)
        (s,) = await rt.store.sessions([SessionState.READY])
        assert s.region == "us" and s.minutes == 90
        assert (s.expires_at - s.ready_at).total_seconds() == 90 * 60
        await rt.dispatcher.handle(incoming("/vpn start 121", user="test:bob"))
        assert "1 to 120 minutes" in channel.all_text()
        await rt.dispatcher.handle(incoming("/vpn start mars", user="test:bob"))
        assert "Choose one of: eu, us" in channel.all_text()


async def test_warning_then_expiry_tears_down(make_runtime, channel, clock):
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        clock.advance(minutes=24)
        await rt.service.sweep()
        assert not any("ends in" in t for t in channel.texts())
        clock.advance(minutes=2)
        await rt.service.sweep()
        await rt.service.sweep()
        warnings = [t for t in channel.texts() if "ends in" in t]
        assert len(warnings) == 1 and "/vpn extend" in warnings[0]
        clock.advance(minutes=5)
        await rt.service.sweep()
        await settle(rt)
        assert await states(rt) == [SessionState.DELETED]
        assert "has ended (time is up)" in channel.all_text()
        assert json.loads((rt.settings.ops.data_dir / "dryrun-servers.json").read_text()) == {}


async def test_extend_within_the_maximum(make_runtime, channel, clock):
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0, VPN_MAX_SESSION_MINUTES=60) as rt:
        await rt.dispatcher.handle(incoming("/vpn extend"))
        assert "no running VPN session" in channel.all_text()
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        before = (await rt.store.sessions([SessionState.READY]))[0].expires_at
        await rt.dispatcher.handle(incoming("/vpn extend 20"))
        after = (await rt.store.sessions([SessionState.READY]))[0].expires_at
        assert (after - before).total_seconds() == 20 * 60
        await rt.dispatcher.handle(incoming("/vpn extend 20"))
        assert "at most 10 more minutes" in channel.all_text()
        await rt.dispatcher.handle(incoming("/vpn extend 10"))
        await rt.dispatcher.handle(incoming("/vpn extend 1"))
        assert "already at the maximum of 60 minutes" in channel.all_text()


async def test_stop_own_session(make_runtime, channel):
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0) as rt:
        await rt.dispatcher.handle(incoming("/vpn stop"))
        assert "no VPN session running" in channel.all_text()
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        await rt.dispatcher.handle(incoming("/vpn stop"))
        await settle(rt)
        assert await states(rt) == [SessionState.DELETED]
        assert "has ended (stopped by you)" in channel.all_text()


async def test_stop_during_provisioning_cleans_up(make_runtime, channel):
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0.3) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await asyncio.sleep(0.4)  # the simulated server exists now, the config is not delivered yet
        await rt.dispatcher.handle(incoming("/vpn stop"))
        await settle(rt)
        assert await states(rt) == [SessionState.DELETED]
        assert not any(s.kind == "config" for s in channel.sent)
        assert json.loads((rt.settings.ops.data_dir / "dryrun-servers.json").read_text()) == {}


async def test_only_admins_list_and_stop_others(make_runtime, channel, clock):
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0, VPN_HOURLY_COST="0.012") as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (s,) = await rt.store.sessions([SessionState.READY])
        channel.sent.clear()
        await rt.dispatcher.handle(incoming(f"/vpn stop {s.id}", user="test:bob"))
        assert "only admins can stop another person's session" in channel.all_text()
        await rt.dispatcher.handle(incoming("/vpn list", user="test:bob"))
        assert "only admins can use /vpn list" in channel.all_text()
        clock.advance(minutes=30)
        channel.sent.clear()
        await rt.dispatcher.handle(incoming("/vpn list", user="test:root"))
        listing = channel.all_text()
        assert s.id in listing and "test:alice" in listing and "dryrun/local" in listing and s.endpoint in listing
        assert "$0.0060" in listing  # 30 minutes at $0.012/h
        await rt.dispatcher.handle(incoming("/vpn stop test:alice", user="test:root"))
        await settle(rt)
        assert await states(rt) == [SessionState.DELETED]
        assert "stopped by an admin (test:root)" in channel.all_text()


async def test_failure_mid_provisioning_tells_the_user_and_cleans_up(make_runtime, channel):
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0, VPN_DRYRUN_FAIL_STEP="starting WireGuard") as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        assert await states(rt) == [SessionState.FAILED]
        text = channel.all_text()
        assert "could not set up your VPN" in text and "failed while starting WireGuard" in text
        assert "Nothing was left running" in text
        assert json.loads((rt.settings.ops.data_dir / "dryrun-servers.json").read_text()) == {}
        # a failed session does not block the next attempt
        rt.provider._fail_step = None
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        assert SessionState.READY in await states(rt)


async def test_delivery_failure_fails_the_session_and_cleans_up(make_runtime, channel):
    channel.fail_delivery = True
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        assert await states(rt) == [SessionState.FAILED]
        assert "could not deliver the config privately" in channel.all_text()
        assert json.loads((rt.settings.ops.data_dir / "dryrun-servers.json").read_text()) == {}


async def test_reconcile_removes_resources_no_session_owns(make_runtime):
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        state_file = rt.settings.ops.data_dir / "dryrun-servers.json"
        state = json.loads(state_file.read_text())
        state["orphan00001"] = dict(next(iter(state.values())), session_id="orphan00001", client_ip="10.77.0.9", client_public_key="x")
        state_file.write_text(json.dumps(state))
        assert await rt.service.reconcile() == 1
        assert set(json.loads(state_file.read_text())) == {s.id for s in await rt.store.sessions([SessionState.READY])}


async def leave_mid_provisioning(rt, clock, attempts: int) -> None:
    """What a process killed mid-provisioning leaves behind: its session, leased to a worker that is gone."""
    (s,) = await rt.store.sessions(list(SessionState))
    lease = clock.now + timedelta(seconds=rt.settings.sessions.lease_seconds)
    await rt.store.save(rt.service.schedule.apply(dataclasses.replace(s, state=SessionState.PROVISIONING, lease_owner="gone:1:x", lease_expires_at=lease, attempts=attempts)))


async def test_interrupted_provisioning_is_resumed_once_then_failed(make_runtime, channel, clock, tmp_path):
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (s,) = await rt.store.sessions([SessionState.READY])
        # Pretend a dead process left a session mid-provisioning with a server already created.
        await leave_mid_provisioning(rt, clock, attempts=1)
    channel.sent.clear()
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0) as rt:
        await rt.service.sweep()
        await settle(rt)
        assert await states(rt) == [SessionState.PROVISIONING]  # its lease has not expired: hands off
        assert channel.sent == []
        clock.advance(seconds=rt.settings.sessions.lease_seconds)
        await rt.service.sweep()
        await settle(rt)
        assert await states(rt) == [SessionState.READY]
        assert "restarted while setting up" in channel.all_text()
        assert len([x for x in channel.sent if x.kind == "config"]) == 1
        servers = json.loads((rt.settings.ops.data_dir / "dryrun-servers.json").read_text())
        assert list(servers) == [s.id]
        await leave_mid_provisioning(rt, clock, attempts=2)
    channel.sent.clear()
    clock.advance(seconds=rt.settings.sessions.lease_seconds)
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0) as rt:
        await rt.service.sweep()
        await settle(rt)
        assert await states(rt) == [SessionState.FAILED]
        assert "restarted while setting it up" in channel.all_text()
        assert json.loads((rt.settings.ops.data_dir / "dryrun-servers.json").read_text()) == {}


async def test_store_never_holds_a_private_key(make_runtime, channel, tmp_path):
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        config = next(s for s in channel.sent if s.kind == "config").text
    secrets = [line.split(" = ", 1)[1] for line in config.splitlines() if line.startswith(("PrivateKey", "PresharedKey"))]
    assert len(secrets) == 2
    for path in (tmp_path / "data").iterdir():
        blob = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in blob, f"{path.name} holds a secret"
    if rt.settings.store.kind == "azure-tables":
        async with make_runtime() as rt:
            for name, table in rt.store._t.items():  # every entity of every table, as text
                async for entity in table.list_entities():
                    for secret in secrets:
                        assert secret not in repr(dict(entity)), f"table {name} holds a secret"


async def test_bring_your_own_key_posts_only_peer_settings(make_runtime, channel):
    from provisioner.wireguard import generate_keypair

    mine = generate_keypair()
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0) as rt:
        await rt.dispatcher.handle(incoming(f"/vpn start key={mine.public}", private=False))
        await settle(rt)
        (s,) = await rt.store.sessions([SessionState.READY])
        assert s.own_key and s.client_public_key == mine.public
    assert not any(x.kind == "config" for x in channel.sent)  # nothing private to deliver
    settings = next(t for t in channel.texts("text") if "Peer settings" in t)
    assert not any(line.startswith("PrivateKey") for line in settings.splitlines()) and "# PrivateKey = (yours" in settings
    assert "PresharedKey" not in settings and "Endpoint = 192.0.2." in settings and "Address = 10.77.0." in settings


async def test_invalid_own_key_is_refused_clearly(make_runtime, channel):
    async with make_runtime() as rt:
        for bad in ("key=abc", "key=" + "A" * 44, "key="):
            channel.sent.clear()
            await rt.dispatcher.handle(incoming(f"/vpn start {bad}"))
            assert "not a WireGuard public key" in channel.all_text()
        assert await states(rt) == []


async def test_no_private_delivery_means_no_secret_sessions(make_runtime, channel):
    channel.private = False
    async with make_runtime() as rt:
        await rt.dispatcher.handle(incoming("/vpn start", private=False))
        await settle(rt)
        assert "cannot send you a config privately" in channel.all_text() and "key=" in channel.all_text()
        assert await states(rt) == []
