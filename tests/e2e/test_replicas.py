"""Several replicas on one store, in one test process: each its own Runtime, worker id and channel.

Whatever replica received the message, progress, warnings, expiry and teardown happen exactly once,
from whichever replica gets there first, through the conversation reference in the store.
"""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from bot.store.model import SessionState, utcnow
from tests.support.factories import RecordingChannel, incoming

pytestmark = pytest.mark.parametrize("store_backend", ["sqlite", "azure-tables"], indirect=True)


async def settle(*rts):
    for rt in rts:
        await rt.runner.wait_idle(30)


async def test_a_replica_that_never_saw_the_message_warns_and_ends_the_session(make_runtime, clock):
    one, two = RecordingChannel(), RecordingChannel()
    async with make_runtime(channels=[one], VPN_DRYRUN_STEP_SECONDS=0) as rt1, make_runtime(channels=[two], VPN_DRYRUN_STEP_SECONDS=0) as rt2:
        await rt1.dispatcher.handle(incoming("/vpn start"))
        await settle(rt1)
        assert [s.kind for s in one.sent].count("config") == 1
        clock.advance(minutes=26)
        await asyncio.gather(rt2.service.sweep(), rt1.service.sweep(), rt2.service.sweep())
        warnings = [t for ch in (one, two) for t in ch.texts() if "ends in" in t]
        assert len(warnings) == 1
        clock.advance(minutes=5)
        await rt2.service.sweep()
        await settle(rt2)
        await rt1.service.sweep()
        await settle(rt1)
        assert "has ended (time is up)" in two.all_text() and "has ended" not in one.all_text()
        assert [s.state for s in await rt1.store.sessions(list(SessionState))] == [SessionState.DELETED]
        assert json.loads((rt1.settings.ops.data_dir / "dryrun-servers.json").read_text()) == {}


async def test_a_stop_on_one_replica_wins_over_provisioning_on_another(make_runtime, clock):
    one, two = RecordingChannel(), RecordingChannel()
    async with make_runtime(channels=[one], VPN_DRYRUN_STEP_SECONDS=0.3) as rt1, make_runtime(channels=[two]) as rt2:
        await rt1.dispatcher.handle(incoming("/vpn start"))
        await asyncio.sleep(0.45)  # rt1 is mid-provisioning: the simulated server exists
        await rt2.dispatcher.handle(incoming("/vpn stop"))
        await settle(rt2, rt1)
        await rt1.service.sweep()
        await rt2.service.sweep()
        await settle(rt1, rt2)
        assert [s.state for s in await rt1.store.sessions(list(SessionState))] == [SessionState.DELETED]
        assert "has ended (stopped by you)" in two.all_text()
        assert json.loads((rt1.settings.ops.data_dir / "dryrun-servers.json").read_text()) == {}
        assert not any("ready" in t for t in one.texts("progress"))


async def test_busy_replicas_never_take_live_work_for_an_orphan(make_runtime):
    """Issue 10: a task that has just finished, or whose lease renewal is late on a blocked loop, is
    never provisioned again. Real clock, 3 s leases, a loop that stalls 1.2 s every 2 s, and two
    replicas sweeping all the time while 60 users start from either of them."""
    users = [f"test:u{i}" for i in range(60)]
    one, two = RecordingChannel(), RecordingChannel()
    settings = dict(users=",".join(users), VPN_DRYRUN_STEP_SECONDS=0.2, VPN_LEASE_SECONDS=3, VPN_MAX_SESSIONS=100)
    async with make_runtime(channels=[one], clock_fn=utcnow, **settings) as rt1, make_runtime(channels=[two], clock_fn=utcnow, **settings) as rt2:
        stop = asyncio.Event()

        async def sweep_forever(rt):
            while not stop.is_set():
                await rt.service.sweep()
                await asyncio.sleep(0.05)

        async def stall_the_loop():
            while not stop.is_set():
                await asyncio.sleep(2)
                time.sleep(1.2)  # a busy loop: every renewal due now is late

        background = [asyncio.create_task(f) for f in (sweep_forever(rt1), sweep_forever(rt2), stall_the_loop())]
        try:
            await asyncio.gather(*((rt1 if i % 2 else rt2).dispatcher.handle(incoming("/vpn start", user=u)) for i, u in enumerate(users)))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(await rt1.store.sessions([SessionState.READY])) < len(users):
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await asyncio.gather(*background)
        await settle(rt1, rt2)
        configs = [s.recipient.key for ch in (one, two) for s in ch.sent if s.kind == "config"]
        assert sorted(str(k) for k in configs) == sorted(users)  # exactly one config per user
        assert not any("restarted" in t for ch in (one, two) for t in ch.texts())
        ready = await rt1.store.sessions([SessionState.READY])
        assert len(ready) == len(users) and all(s.attempts == 1 for s in ready)
        assert len({s.client_address for s in ready}) == len(users)  # two replicas, no address twice
