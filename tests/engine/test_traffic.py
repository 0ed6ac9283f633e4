"""Live traffic (issue 23) through the real engine: the dryrun provider's simulated client, a fake clock,
both stores. /vpn status and /vpn list show the tunnel; VPN_IDLE_MINUTES ends an unused session after a
warning, a handshake takes the warning back; VPN_MAX_MB ends a heavy one; each ending is a usage record."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bot.store.model import SessionState
from provisioner.base import Traffic
from tests.support.factories import incoming

pytestmark = pytest.mark.parametrize("store_backend", ["sqlite", "azure-tables"], indirect=True)
EVER = (datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc))


async def settle(rt):
    await rt.runner.wait_idle(10)


async def say(rt, text, user="test:alice"):
    await rt.dispatcher.handle(incoming(text, user=user))
    await settle(rt)


async def sweep(rt):
    await rt.service.sweep()
    await settle(rt)


def runtime(make_runtime, clock, *, clients: bool, **env):
    rt = make_runtime(VPN_DRYRUN_STEP_SECONDS=0, VPN_SESSION_MINUTES=120, VPN_TRAFFIC_SECONDS=1, **env)
    rt.provider.clock = clock  # the simulated client lives on the test's clock
    rt.provider.simulate_clients = clients
    return rt


async def test_status_and_list_show_the_tunnel(make_runtime, channel, clock):
    async with runtime(make_runtime, clock, clients=True) as rt:
        await say(rt, "/vpn start")
        channel.sent.clear()
        await say(rt, "/vpn status")
        assert "Tunnel     not connected yet" in channel.all_text()  # nothing measured yet
        await sweep(rt)
        channel.sent.clear()
        await say(rt, "/vpn status")
        assert "Tunnel     connected — handshake 0 s ago, ↓ 0.0 MB ↑ 0.0 MB" in channel.all_text()
        clock.advance(seconds=620)  # 20 kB/s down, 5 kB/s up; a handshake every two minutes
        await sweep(rt)
        channel.sent.clear()
        await say(rt, "/vpn status")
        assert "connected — handshake 20 s ago, ↓ 12.4 MB ↑ 3.1 MB" in channel.all_text()
        channel.sent.clear()
        await say(rt, "/vpn list", "test:root")
        assert "connected — handshake 20 s ago, ↓ 12.4 MB ↑ 3.1 MB" in channel.all_text()
        (s,) = await rt.store.sessions([SessionState.READY])
        assert (s.bytes_in, s.bytes_out, s.handshake_at) == (12_400_000, 3_100_000, clock() - timedelta(seconds=20))
        await say(rt, "/vpn stop")
        (r,) = await rt.store.usage(*EVER)
        assert (r.bytes_in, r.bytes_out) == (12_400_000, 3_100_000)


async def test_an_unused_session_is_warned_then_ends(make_runtime, channel, clock):
    async with runtime(make_runtime, clock, clients=False, VPN_IDLE_MINUTES=30, VPN_WARN_MINUTES=5) as rt:
        await say(rt, "/vpn start")
        channel.sent.clear()
        await say(rt, "/vpn status")
        assert "not connected yet" in channel.all_text()
        clock.advance(minutes=24)
        await sweep(rt)
        assert not any("not been used" in t for t in channel.texts())
        clock.advance(minutes=1, seconds=30)
        await sweep(rt)
        await sweep(rt)  # another pass (or replica) warns no twice
        warnings = [t for t in channel.texts() if "has not been used" in t]
        assert len(warnings) == 1 and "ends in 4 min" in warnings[0] and "unless your device connects" in warnings[0]
        clock.advance(minutes=5)
        await sweep(rt)
        (s,) = await rt.store.sessions(list(SessionState))
        assert s.state is SessionState.DELETED
        assert f"Your VPN session {s.id} has ended (unused for 30 min)" in channel.all_text()
        (r,) = await rt.store.usage(*EVER)
        assert (r.end_reason, r.detail, r.bytes_in) == ("idle", "unused for 30 min", 0)


async def test_a_handshake_after_the_warning_keeps_the_session(make_runtime, channel, clock):
    async with runtime(make_runtime, clock, clients=False, VPN_IDLE_MINUTES=30, VPN_WARN_MINUTES=5) as rt:
        await say(rt, "/vpn start")
        clock.advance(minutes=26)
        await sweep(rt)
        assert any("has not been used" in t for t in channel.texts())
        (s,) = await rt.store.sessions([SessionState.READY])
        # The device connects: an Azure VM would report it over its callback, on any replica.
        await rt.service.record_traffic(s.id, Traffic(clock(), 1_000, 2_000))
        assert (await rt.store.get(s.id)).idle_warned is False
        clock.advance(minutes=10)
        await sweep(rt)
        assert (await rt.store.get(s.id)).state is SessionState.READY
        clock.advance(minutes=21)  # 31 minutes after that handshake
        await sweep(rt)
        assert (await rt.store.get(s.id)).state is SessionState.DELETED


async def test_a_session_past_its_traffic_limit_ends(make_runtime, channel, clock):
    async with runtime(make_runtime, clock, clients=True, VPN_MAX_MB=10) as rt:
        await say(rt, "/vpn start")
        clock.advance(minutes=5)  # 7.5 MB
        await sweep(rt)
        (s,) = await rt.store.sessions(list(SessionState))
        assert s.state is SessionState.READY
        clock.advance(minutes=2)  # 10.5 MB
        await sweep(rt)
        assert (await rt.store.get(s.id)).state is SessionState.DELETED
        assert f"Your VPN session {s.id} has ended (past its traffic limit of 10 MB)" in channel.all_text()
        (r,) = await rt.store.usage(*EVER)
        assert r.end_reason == "cap" and r.bytes_in + r.bytes_out == 10_500_000


async def test_limits_are_off_by_default(make_runtime, channel, clock):
    async with runtime(make_runtime, clock, clients=False) as rt:
        await say(rt, "/vpn start")
        clock.advance(minutes=119)
        await sweep(rt)
        assert [s.state for s in await rt.store.sessions(list(SessionState))] == [SessionState.READY]
