"""Sweeps that cost what is due (issue 25), end to end through the dispatcher on both stores: a pass
with nothing due makes the same few Table requests with one live session or thirty, an expiry reads
no listing of the sessions, settings that change under live sessions are healed by the sweep, and a
session that reached the store without a due time (an earlier version) is still swept."""
from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
from azure.data.tables.aio import TableServiceClient

from bot.store.model import SessionState
from tests.support.factories import incoming
from tests.support.table_recorder import TableRecorder

pytestmark = pytest.mark.parametrize("store_backend", ["sqlite", "azure-tables"], indirect=True)
USERS = ",".join(f"test:u{n:02d}" for n in range(40))


@pytest.fixture
def requests(store_backend, store_env, monkeypatch):
    """Records the Table requests of the runtime's store (nothing to record on SQLite)."""
    rec = TableRecorder(store_env.get("VPN_TABLE_PREFIX", ""))
    if store_backend == "azure-tables":
        from bot.store.tables import TableStore

        def counted(cls, conn, *, prefix="vpn"):
            return cls(TableServiceClient.from_connection_string(conn, raw_request_hook=rec), prefix=prefix)

        monkeypatch.setattr(TableStore, "from_connection_string", classmethod(counted))
    return rec


async def start(rt, n: int) -> None:
    await rt.dispatcher.handle(incoming("/vpn start", user=f"test:u{n:02d}"))


async def test_a_pass_with_nothing_due_costs_the_same_with_one_or_thirty_live_sessions(make_runtime, clock, requests, store_backend):
    async with make_runtime(users=USERS, VPN_MAX_SESSIONS=100, VPN_DRYRUN_STEP_SECONDS=0, VPN_SESSION_MINUTES=60) as rt:
        await start(rt, 0)
        await rt.runner.wait_idle(10)
        clock.advance(seconds=5)
        await rt.service.sweep()  # the first pass of this process takes its turns (traffic, index check)
        clock.advance(seconds=5)
        requests.clear()
        await rt.service.sweep()
        one = list(requests.requests)
        for n in range(1, 30):
            await start(rt, n)
        await rt.runner.wait_idle(10)
        assert len(await rt.store.sessions([SessionState.READY])) == 30
        clock.advance(seconds=5)
        requests.clear()
        await rt.service.sweep()
        thirty = list(requests.requests)
        if store_backend == "azure-tables":
            assert 0 < len(thirty) == len(one) <= 6, thirty  # (0 <: the recorder sees the store)
            assert [r for r in requests.requests if r.table == "sessions" and r.kind == "query"] == []  # the due index is read, never the sessions


async def test_an_expiry_reads_no_listing_of_the_sessions(make_runtime, clock, requests, channel, store_backend):
    async with make_runtime(users=USERS, VPN_MAX_SESSIONS=100, VPN_DRYRUN_STEP_SECONDS=0, VPN_SESSION_MINUTES=30, VPN_WARN_MINUTES=5,
                            VPN_TRAFFIC_SECONDS=3600) as rt:  # the fleet-wide turns (which do list) are not due in these passes
        await rt.service.sweep()  # this process's first pass: its turns
        for n in range(12):
            await start(rt, n)
        await rt.runner.wait_idle(10)
        clock.advance(minutes=26)
        requests.clear()
        await rt.service.sweep()
        await rt.runner.wait_idle(10)
        assert channel.all_text().count(" ends in ") == 12
        warning_pass = list(requests.requests)
        clock.advance(minutes=5)
        requests.clear()
        await rt.service.sweep()
        await rt.runner.wait_idle(10)
        listings = [r for r in warning_pass + requests.requests if r.table == "sessions" and r.kind == "query"]
        assert [s.state for s in await rt.store.sessions(list(SessionState))] == [SessionState.DELETED] * 12
        assert listings == []
        if store_backend == "azure-tables":
            # Each session read once per expiry, by the pass that found it due: every write after it is tried
            # on the copy last read or written (a compare-and-set by its ETag all the same). Four times before.
            reads = Counter(r.partition for r in requests.requests if r.table == "sessions" and r.kind == "get")
            assert len(reads) == 12 and set(reads.values()) == {1}, reads


async def test_a_warning_turned_on_reaches_sessions_already_live(make_runtime, clock, channel):
    """A deploy that turns the warning on: the first pass under the new settings reschedules every live
    session (a fleet-wide turn), and the warning comes on time."""
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0, VPN_SESSION_MINUTES=60, VPN_WARN_MINUTES=0) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await rt.runner.wait_idle(10)
        (s,) = await rt.store.sessions([SessionState.READY])
        assert s.due_at == s.expires_at
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0, VPN_SESSION_MINUTES=60, VPN_WARN_MINUTES=10) as rt:
        clock.advance(minutes=51)  # its stored due time is the expiry; the warning is due now
        for _ in range(2):  # rescheduled, then warned
            await rt.service.sweep()
            await rt.runner.wait_idle(10)
        (s,) = await rt.store.sessions([SessionState.READY])
        assert s.warned and " ends in " in channel.all_text()


async def test_a_session_written_without_a_due_time_is_still_swept(make_runtime, clock, channel):
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0, VPN_SESSION_MINUTES=30) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await rt.runner.wait_idle(10)
        (s,) = await rt.store.sessions([SessionState.READY])
        await rt.store.save(dataclasses.replace(s, due_at=None))  # as an earlier version wrote it
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0, VPN_SESSION_MINUTES=30) as rt:  # a new process: its index check
        clock.advance(minutes=31)
        await rt.service.sweep()
        await rt.runner.wait_idle(10)
        assert [x.state for x in await rt.store.sessions(list(SessionState))] == [SessionState.DELETED]
        assert "ended" in channel.all_text()


async def test_reap_reports_what_it_ended_without_listing_the_live_sessions(make_runtime, clock):
    async with make_runtime(users=USERS, VPN_MAX_SESSIONS=100, VPN_DRYRUN_STEP_SECONDS=0, VPN_SESSION_MINUTES=30) as rt:
        for n in range(3):
            await start(rt, n)
        await rt.runner.wait_idle(10)
        clock.advance(minutes=31)
        done = await rt.service.reap_once()
        assert (done.ended, done.warned, done.removed) == (3, 0, 0)
        assert (await rt.service.reap_once()).ended == 0


async def test_reap_goes_on_while_a_pass_was_full(make_runtime, clock, monkeypatch):
    """One pass takes SWEEP_BATCH due sessions; reap, run once a minute, must not leave the rest for later runs."""
    from bot.engine import sweeper

    monkeypatch.setattr(sweeper, "SWEEP_BATCH", 3)
    async with make_runtime(users=USERS, VPN_MAX_SESSIONS=100, VPN_DRYRUN_STEP_SECONDS=0, VPN_SESSION_MINUTES=30) as rt:
        for n in range(8):
            await start(rt, n)
        await rt.runner.wait_idle(10)
        clock.advance(minutes=31)
        done = await rt.service.reap_once()
        assert done.ended == 8
        assert {s.state for s in await rt.store.sessions(list(SessionState))} == {SessionState.DELETED}
