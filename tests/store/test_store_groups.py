"""Grouped store calls (bot/store/thread.py `run_grouped`, bot/store/sqlite.py `_group`; issue 25 goal
4): grouped calls handed over together share one SQLite transaction, each in its own savepoint; order,
errors and the other calls are as before."""
from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime

import pytest

from bot.store.sqlite import SqliteStore
from bot.store.thread import StoreThread, run_alone

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


async def test_neighbouring_grouped_calls_go_to_the_group_in_order_and_a_plain_call_splits_them():
    groups: list[list[int]] = []

    def group(calls):
        outcomes = run_alone(calls)
        groups.append([value for _, value in outcomes])
        return outcomes

    worker = StoreThread("test-store", group)
    ran: list[int] = []

    def op(i: int) -> int:
        ran.append(i)
        return i

    futures = [worker.run_grouped(op, 0), worker.run_grouped(op, 1), worker.run(op, 2), worker.run_grouped(op, 3),
               worker.run_grouped(op, 4), worker.run_grouped(op, 5), worker.run(op, 6), worker.run_grouped(op, 7)]
    assert await asyncio.gather(*futures) == list(range(8))
    worker.shutdown()
    assert ran == list(range(8))
    assert groups == [[0, 1], [3, 4, 5]]  # a group of one runs alone, as a plain call


async def test_a_group_that_fails_as_a_whole_fails_each_of_its_calls():
    def group(calls):
        run_alone(calls)
        raise sqlite3.OperationalError("disk I/O error")

    worker = StoreThread("test-store", group)
    results = await asyncio.gather(worker.run_grouped(lambda: 1), worker.run_grouped(lambda: 2), worker.run(lambda: 3),
                                   return_exceptions=True)
    worker.shutdown()
    assert [type(r) for r in results[:2]] == [sqlite3.OperationalError] * 2 and results[2] == 3


@pytest.fixture
async def store(tmp_path):
    s = SqliteStore(tmp_path / "db.sqlite3")
    await s.open()
    yield s
    await s.close()


def _trace(store: SqliteStore) -> list[str]:
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    return statements


async def test_messages_seen_in_one_turn_are_one_transaction_and_a_repeat_inside_it_is_a_duplicate(store):
    statements = _trace(store)
    ids = [f"m{i}" for i in range(20)] + ["m3"]
    seen = await asyncio.gather(*(store.first_seen("teams", i, NOW) for i in ids))
    assert seen == [True] * 20 + [False]
    assert statements.count("BEGIN IMMEDIATE") == 1 and statements.count("COMMIT") == 1
    other = SqliteStore(store._path)  # another replica sees them committed
    await other.open()
    try:
        assert [await other.first_seen("teams", i, NOW) for i in ("m0", "m19", "m20")] == [False, False, True]
    finally:
        await other.close()


async def test_a_failing_call_in_a_group_undoes_only_its_own_writes(store):
    def write(message_id: str, fail: bool):
        def op():
            store.conn.execute("INSERT INTO seen_messages (channel, message_id, seen_at) VALUES ('t', ?, ?)", (message_id, NOW.isoformat()))
            if fail:
                raise ValueError("after writing")
            return message_id
        return op

    results = await asyncio.gather(*(store._run_grouped(write(m, m == "b")) for m in ("a", "b", "c")), return_exceptions=True)
    assert results[0] == "a" and isinstance(results[1], ValueError) and results[2] == "c"
    assert not store.conn.in_transaction
    rows = store.conn.execute("SELECT message_id FROM seen_messages ORDER BY message_id").fetchall()
    assert [r[0] for r in rows] == ["a", "c"]


async def test_a_grouped_call_next_to_a_transaction_of_its_own_runs_outside_the_group(store):
    """A call that opens its own transaction (take_turn: BEGIN IMMEDIATE) is never grouped: it runs between groups."""
    statements = _trace(store)
    results = await asyncio.gather(store.first_seen("teams", "x", NOW), store.first_seen("teams", "y", NOW),
                                   store.take_turn("job", "me", NOW, every=NOW - NOW), store.first_seen("teams", "z", NOW))
    assert results == [True, True, True, True]
    assert statements.count("BEGIN IMMEDIATE") == 2  # the group of two, and take_turn's own; z alone: autocommit


async def test_a_grouped_call_that_ends_the_transaction_fails_the_group_loudly(store):
    """The rule of a grouped call: it never commits or rolls back itself (a review found nothing checked it)."""
    from bot.store.thread import StoreThread

    def commits() -> None:
        store.conn.execute("COMMIT")

    worker = StoreThread("test-rule", store._group)
    results = await asyncio.gather(worker.run_grouped(lambda: store.conn.execute("SELECT 1").fetchone()[0]), worker.run_grouped(commits),
                                   return_exceptions=True)
    worker.shutdown()
    assert all(isinstance(r, RuntimeError) and "committed or rolled back" in str(r) for r in results), results
    assert not store.conn.in_transaction
