"""The due index on both back ends (issue 25): a sweep asks for what is due and gets exactly that, however
many sessions are live; a due time moved later or earlier, an ended session, a lost compare-and-set and
a session written before the index existed all come out right. And `take_turn`: one caller per period."""
from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

import pytest

from bot.store.model import ACTIVE_STATES, Conflict, SessionState
from bot.store.ports import CreateOutcome
from tests.support.factories import T0, new_session

MIN = timedelta(minutes=1)


async def make(store, sid: str, due, **changes):
    s = new_session(session_id=sid, owner=f"test:{sid}", due_at=due, **changes)
    assert await store.create_session(s, per_user=5, total=1000) is CreateOutcome.CREATED
    return await store.get(sid)


def ids(sessions) -> list[str]:
    return [s.id for s in sessions]


async def test_only_what_is_due_comes_back_earliest_first(store):
    await make(store, "late", T0 + 30 * MIN)
    await make(store, "soon", T0 + 2 * MIN + timedelta(seconds=5))
    await make(store, "now", T0 - timedelta(seconds=1))
    await make(store, "same-minute-later", T0 + timedelta(seconds=30))
    assert ids(await store.due_sessions(T0)) == ["now"]
    assert ids(await store.due_sessions(T0 + timedelta(seconds=30))) == ["now", "same-minute-later"]
    assert ids(await store.due_sessions(T0 + 3 * MIN)) == ["now", "same-minute-later", "soon"]
    assert ids(await store.due_sessions(T0 + 3 * MIN, limit=2)) == ["now", "same-minute-later"]


async def test_next_due_is_never_later_than_the_earliest_due_time(store):
    assert await store.next_due(T0) is None
    await make(store, "a", T0 + 30 * MIN)
    await make(store, "b", T0 + 2 * MIN + timedelta(seconds=5))
    await make(store, "c", T0 - MIN)  # due already: not "next"
    nxt = await store.next_due(T0)
    assert nxt is not None and T0 < nxt <= T0 + 2 * MIN + timedelta(seconds=5)
    nxt = await store.next_due(T0 + 3 * MIN)
    assert nxt is not None and T0 + 3 * MIN < nxt <= T0 + 30 * MIN
    # Up to a horizon (the sweeper's next planned look): what falls due within it is found, nothing past it.
    nxt = await store.next_due(T0, within=5 * MIN)
    assert nxt is not None and T0 < nxt <= T0 + 2 * MIN + timedelta(seconds=5)
    assert await store.next_due(T0 + 3 * MIN, within=5 * MIN) is None


async def test_a_due_time_moved_later_or_earlier_or_cleared_is_followed(store):
    s = await make(store, "s1", T0 + 10 * MIN)
    s = await store.save(s.with_changes(T0, due_at=T0 + 40 * MIN))  # extended
    assert await store.due_sessions(T0 + 20 * MIN) == []  # its old entry is a stale hint, dropped
    assert ids(await store.due_sessions(T0 + 41 * MIN)) == ["s1"]
    s = await store.save(s.with_changes(T0, due_at=T0 + 5 * MIN))  # stopped: due at its lease's end
    assert ids(await store.due_sessions(T0 + 6 * MIN)) == ["s1"]
    ended = s.moved(SessionState.PROVISIONING, T0).moved(SessionState.EXPIRING, T0).moved(SessionState.DELETED, T0, due_at=None)
    await store.save(ended)
    assert await store.due_sessions(T0 + 60 * MIN) == [] and await store.next_due(T0) is None


async def test_ended_sessions_are_never_due(store):
    s = await make(store, "s1", T0)
    await store.save(s.moved(SessionState.FAILED, T0, due_at=T0))  # even with a time left on it
    assert await store.due_sessions(T0 + MIN) == []


async def test_a_lost_compare_and_set_leaves_the_winners_time(stores):
    a, b = stores
    await make(a, "s1", T0 + 10 * MIN)
    mine, theirs = await a.get("s1"), await b.get("s1")
    await b.save(theirs.with_changes(T0, due_at=T0 + 2 * MIN))  # the winner: due soon
    with pytest.raises(Conflict):
        await a.save(mine.with_changes(T0, due_at=T0 + 2 * MIN + timedelta(seconds=50)))  # same minute, later: lost
    assert ids(await a.due_sessions(T0 + 2 * MIN + timedelta(seconds=1))) == ["s1"]


async def test_two_sweepers_see_the_same_due_sessions(stores):
    a, b = stores
    for n in range(20):
        await make(a, f"s{n:02d}", T0 - timedelta(seconds=n))
    seen_a, seen_b = await asyncio.gather(a.due_sessions(T0), b.due_sessions(T0))
    assert sorted(ids(seen_a)) == sorted(ids(seen_b)) == [f"s{n:02d}" for n in range(20)]


async def test_a_live_session_without_a_due_time_is_due_and_the_index_check_finds_it(store):
    """Written before due times existed (or by an earlier version during a rolling deploy)."""
    await make(store, "old", None, state=SessionState.AWAITING_APPROVAL)
    await store.check_due_index(T0, {s.id: s.due_at for s in await store.sessions(ACTIVE_STATES)})
    assert ids(await store.due_sessions(T0)) == ["old"]
    assert "old" in await store.live_ids()


async def test_live_ids_hold_every_live_session(store):
    for n in range(5):
        await make(store, f"s{n}", T0 + n * MIN)
    s = await store.get("s0")
    await store.save(dataclasses.replace(s.moved(SessionState.FAILED, T0), due_at=None))
    assert {f"s{n}" for n in range(1, 5)} <= await store.live_ids()


async def test_a_turn_goes_to_one_caller_per_period(stores):
    a, b = stores
    every = timedelta(minutes=5)
    won = await asyncio.gather(*(s.take_turn("job", f"w{i}", T0, every) for i, s in enumerate([a, b, a, b])))
    assert won.count(True) == 1
    assert not await a.take_turn("job", "w0", T0 + MIN, every)
    assert await b.take_turn("other-job", "w1", T0 + MIN, every)  # jobs are apart
    assert await a.take_turn("job", "w0", T0 + every, every)
    assert await b.take_turn("job", "w1", T0 + every + MIN, every, mark="changed")  # a new mark: at once
    assert not await a.take_turn("job", "w0", T0 + every + MIN, every, mark="changed")


async def test_table_storage_forgets_a_session_a_week_after_it_ended_by_its_own_entry(store):
    """SQLite keeps ended sessions (a local file); Table Storage forgets them after ENDED_RETENTION, found by
    the entry written with the ending (a range read), not by filtering the whole sessions table."""
    if type(store).__name__ != "TableStore":
        pytest.skip("Table Storage only")
    old = await make(store, "old", T0)
    await store.save(old.moved(SessionState.FAILED, T0, ended_at=T0, due_at=None))
    recent = await make(store, "recent", T0)
    await store.save(recent.moved(SessionState.FAILED, T0, ended_at=T0 + timedelta(days=3), due_at=None))
    await store.purge_claims(T0 + timedelta(days=7, minutes=5))  # the sweeper's call; housekeeping rides on it
    assert await store.get("old") is None and await store.get("recent") is not None


async def test_a_busy_minute_is_looked_at_again_within_a_second_not_at_once(store):
    """More entries in the next minute than one page: the answer may be early, but not `now` (a sweeper
    waking every 50 ms until the minute ends), and never later than the earliest."""
    start = T0 + timedelta(seconds=3)
    for n in range(130):
        await make(store, f"s{n:03d}", T0 + timedelta(seconds=50, milliseconds=n))
    nxt = await store.next_due(start)
    assert nxt is not None and start < nxt <= T0 + timedelta(seconds=50)
    assert nxt >= min(start + timedelta(seconds=1), T0 + timedelta(seconds=50))
