"""Usage records (issue 23): one row after every kind of ending, on both stores, through the real engine
(dispatcher, dryrun provider, a fake clock); and the admins' /vpn report and /vpn audit in chat."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bot.store.model import SessionState
from tests.support.factories import incoming, traffic_during_teardown

pytestmark = pytest.mark.parametrize("store_backend", ["sqlite", "azure-tables"], indirect=True)

EVER = (datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc))


async def settle(rt):
    await rt.runner.wait_idle(10)


async def say(rt, text, user="test:alice"):
    await rt.dispatcher.handle(incoming(text, user=user))
    await settle(rt)


async def records(rt):
    return {r.session_id: r for r in await rt.store.usage(*EVER)}


async def only_session(rt):
    (s,) = await rt.store.sessions(list(SessionState))
    return s


async def test_stopped_and_expired_sessions_leave_a_record_each(make_runtime, clock):
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0, VPN_HOURLY_COST=0.6) as rt:
        await say(rt, "/vpn start 45")
        first = await only_session(rt)
        clock.advance(minutes=20)
        await say(rt, "/vpn stop")
        await say(rt, "/vpn start", "test:bob")
        clock.advance(minutes=31)
        await rt.service.sweep()
        await settle(rt)
        got = await records(rt)
        assert len(got) == 2
        stopped = got[first.id]
        assert (stopped.end_reason, stopped.detail, stopped.owner, stopped.channel, stopped.provider) == \
            ("stopped", "stopped by you", "test:alice", "test", "dryrun")
        assert stopped.requested_at == first.created_at and stopped.ready_at == first.ready_at
        assert stopped.ended_at == first.created_at + timedelta(minutes=20) and stopped.minutes == pytest.approx(20, abs=0.1)
        assert stopped.cost == pytest.approx(0.6 / 3, rel=0.01)
        (expired,) = [r for r in got.values() if r.owner == "test:bob"]
        assert (expired.end_reason, expired.detail) == ("expired", "time is up")


async def test_an_admin_stop_and_a_failure_say_so(make_runtime):
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0) as rt:
        await say(rt, "/vpn start")
        s = await only_session(rt)
        await say(rt, f"/vpn stop {s.id}", "test:root")
        assert (await records(rt))[s.id].end_reason == "stopped" and "admin" in (await records(rt))[s.id].detail
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0, VPN_DRYRUN_FAIL_STEP="starting WireGuard") as rt:
        await say(rt, "/vpn start", "test:bob")
        failed = [s for s in await rt.store.sessions([SessionState.FAILED])][0]
        r = (await records(rt))[failed.id]
        assert r.end_reason == "failed" and "starting WireGuard" in r.detail and r.ready_at is None and r.minutes == 0


async def test_denied_timed_out_and_withdrawn_requests_leave_records_with_the_approval_facts(make_runtime, clock):
    env = dict(users="test:alice,test:bob,test:carol", VPN_APPROVERS="test:carol", VPN_APPROVAL="always", VPN_DRYRUN_STEP_SECONDS=0,
               VPN_APPROVAL_TIMEOUT_MINUTES=10)
    async with make_runtime(**env) as rt:
        await say(rt, "/vpn start 30 reason=the build server")
        denied = await only_session(rt)
        await say(rt, f"/vpn deny {denied.id} not today", "test:carol")
        await say(rt, "/vpn start", "test:bob")
        timed_out = [s for s in await rt.store.sessions([SessionState.AWAITING_APPROVAL])][0]
        clock.advance(minutes=11)
        await rt.service.sweep()
        await settle(rt)
        await say(rt, "/vpn start")
        withdrawn = [s for s in await rt.store.sessions([SessionState.AWAITING_APPROVAL])][0]
        await say(rt, "/vpn stop")
        got = await records(rt)
        r = got[denied.id]
        assert (r.end_reason, r.decided_by, r.approvers, r.request_reason, r.cost) == ("denied", "test:carol", "test:carol", "the build server", 0.0)
        assert "not today" in r.detail and r.decided_at is not None
        assert got[timed_out.id].end_reason == "denied" and "no approver decided" in got[timed_out.id].detail
        assert got[withdrawn.id].end_reason == "stopped" and got[withdrawn.id].detail == "withdrawn by you"


async def test_a_revoked_session_says_revoked(make_runtime):
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0) as rt:
        await say(rt, "/vpn start", "test:bob")
        s = await only_session(rt)
    async with make_runtime(users="test:alice", VPN_DRYRUN_STEP_SECONDS=0) as rt:  # bob left VPN_USERS
        await rt.service.sweep()
        await settle(rt)
        assert (await records(rt))[s.id].end_reason == "revoked"


async def test_a_teardown_finished_by_another_worker_is_one_record(make_runtime, clock):
    """The record is written before the last compare-and-set: a teardown that crashed after writing it is
    finished by the sweeper, which writes the same row again."""
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0) as rt:
        await say(rt, "/vpn start")
        s = await only_session(rt)
        await rt.service.teardown.begin(s.id, "stopped by you", "stopped")
        await rt.runner.cancel(f"teardown:{s.id}")  # as if the process died mid-teardown
        from bot.engine.usage import write_usage
        await write_usage(rt.store, await rt.store.get(s.id), clock())  # it got as far as the record
    clock.advance(seconds=60)  # its lease ran out
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0) as rt:
        await rt.service.sweep()
        await settle(rt)
        assert (await rt.store.get(s.id)).state is SessionState.DELETED
        (r,) = (await records(rt)).values()
        assert r.session_id == s.id and r.end_reason == "stopped"


async def test_figures_written_during_a_teardown_reach_its_record(make_runtime, monkeypatch):
    """The teardown's last write is tried on the session as it last wrote it; another replica's write of
    traffic figures in between makes it read again, and the record follows the session as it ended."""
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0) as rt:
        await say(rt, "/vpn start")
        s = await only_session(rt)
        traffic_during_teardown(rt, s.id, monkeypatch)
        await say(rt, "/vpn stop")
        assert (await only_session(rt)).state is SessionState.DELETED
        record = (await records(rt))[s.id]
        assert (record.bytes_in, record.bytes_out, record.end_reason) == (7_000_000, 3_000_000, "stopped")


async def test_a_failed_second_record_after_the_last_write_still_tells_the_owner(make_runtime, channel, monkeypatch):
    """The record written again after the last compare-and-set (figures changed meanwhile) comes after the
    session is gone for good: nobody finishes it again, so a store hiccup there must not skip what follows
    (the owner's notice, its addresses and sealed configs released). Before that write, a failure leaves
    the session `expiring` for the sweeper; after it, nothing would."""
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0) as rt:
        await say(rt, "/vpn start")
        s = await only_session(rt)
        traffic_during_teardown(rt, s.id, monkeypatch)
        put_usage, puts = rt.store.put_usage, []

        async def second_fails(record):
            puts.append(record)
            if len(puts) == 2:
                raise ConnectionError("store hiccup")
            return await put_usage(record)

        monkeypatch.setattr(rt.store, "put_usage", second_fails)
        channel.sent.clear()
        await say(rt, "/vpn stop")
        assert (await only_session(rt)).state is SessionState.DELETED
        assert len(puts) == 2  # the second write was tried (and failed)
        assert f"Your VPN session {s.id} has ended" in channel.all_text()


async def test_admins_read_the_report_and_the_audit_log_in_chat(make_runtime, channel, clock):
    async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0, VPN_HOURLY_COST=1.2) as rt:
        await say(rt, "/vpn start")
        clock.advance(minutes=30)
        await say(rt, "/vpn stop")
        await say(rt, "/vpn start", "test:bob")
        await say(rt, "/vpn stop", "test:bob")
        channel.sent.clear()
        await say(rt, "/vpn report", "test:alice")
        assert channel.texts() == ["Sorry, only admins can use /vpn report."]
        await say(rt, "/vpn audit", "test:alice")
        assert channel.texts()[-1] == "Sorry, only admins can use /vpn audit."
        channel.sent.clear()
        await say(rt, "/vpn report 7d", "test:root")
        card = channel.all_text()
        assert "VPN usage: the last 7 days" in card and "Total: 2 session(s)" in card and "2 stopped" in card
        assert "test:alice" in card and "test:bob" in card and "$0.6000" in card
        channel.sent.clear()
        await say(rt, f"/vpn report {clock():%Y-%m} test:bob", "test:root")
        assert "Total: 1 session(s)" in channel.all_text() and "test:alice" not in channel.all_text()
        channel.sent.clear()
        await say(rt, "/vpn report 2026-13", "test:root")
        assert channel.texts() == ["Sorry, 2026-13 is not a month."]
        channel.sent.clear()
        await say(rt, "/vpn audit 3 test:alice", "test:root")
        card = channel.all_text()
        assert "Audit log (test:alice)" in card and "report" in card and "admin only" in card
        assert card.count("test:alice") >= 3 and "test:bob" not in card
        channel.sent.clear()
        await say(rt, "/vpn audit 1000", "test:root")
        assert "1 to 100 entries" in channel.all_text()
        await say(rt, "/vpn help", "test:root")
        assert "/vpn report [7d|30d|YYYY-MM] [user]" in channel.all_text()
