"""The session port on both back ends: every write a compare-and-set, the caps atomic across processes."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from bot.store.model import ACTIVE_STATES, Conflict, SessionState, new_session_id
from bot.store.ports import CreateOutcome
from tests.support.factories import T0, new_session

ROOT = Path(__file__).resolve().parents[2]


async def test_save_is_a_compare_and_set(stores):
    a, b = stores
    assert await a.create_session(new_session(session_id="s1"), per_user=1, total=10) is CreateOutcome.CREATED
    mine = await a.get("s1")
    theirs = await b.get("s1")
    assert mine == dataclasses.replace(theirs) and mine.version
    saved = await a.save(mine.moved(SessionState.PROVISIONING, T0, attempts=1))
    assert saved.version != mine.version and (await b.get("s1")).version == saved.version
    with pytest.raises(Conflict):
        await b.save(theirs.moved(SessionState.FAILED, T0))  # read before a's save: stale
    assert (await b.get("s1")).state is SessionState.PROVISIONING
    with pytest.raises(Conflict):
        await a.save(new_session(session_id="never-stored"))


async def test_every_field_round_trips(stores):
    a, b = stores
    s = new_session(
        session_id="s2", own_key=True, warned=True, hourly_cost=0.012, attempts=2, lease_owner="w1",
        lease_expires_at=T0 + timedelta(seconds=30), ready_at=T0, endpoint="192.0.2.1:51820", end_reason="stopped by you",
    )
    await a.create_session(s, per_user=1, total=10)
    got = await b.get("s2")
    assert dataclasses.replace(got, version="", held_slots="") == s  # (the store notes where its cap slots are)
    cleared = await b.save(dataclasses.replace(got, lease_owner="", lease_expires_at=None, ready_at=None))
    again = await a.get("s2")
    assert again.lease_expires_at is None and again.ready_at is None and again.version == cleared.version


async def test_concurrent_writers_on_one_session_lose_no_update(stores):
    a, b = stores
    await a.create_session(new_session(session_id="s3"), per_user=1, total=10)
    conflicts = 0

    async def bump(store) -> None:
        nonlocal conflicts
        while True:
            s = await store.get("s3")
            try:
                await store.save(dataclasses.replace(s, attempts=s.attempts + 1))
                return
            except Conflict:
                conflicts += 1

    await asyncio.gather(*(bump(a if i % 2 else b) for i in range(30)))
    assert (await a.get("s3")).attempts == 30
    assert conflicts > 0  # they really raced


async def test_a_deleted_session_never_comes_back(stores):
    a, b = stores
    await a.create_session(new_session(session_id="s4"), per_user=1, total=10)
    stale = await b.get("s4")
    s = await a.get("s4")
    s = await a.save(s.moved(SessionState.EXPIRING, T0))
    await a.save(s.moved(SessionState.DELETED, T0))
    with pytest.raises(Conflict):
        await b.save(stale.moved(SessionState.PROVISIONING, T0))
    assert (await b.get("s4")).state is SessionState.DELETED


def _race_from_two_processes(spec: dict, owners: list[str], per_user: int, total: int) -> list[str]:
    """Half the creates in this process's child, half in another child: two OS processes, one store."""
    ids = [new_session_id() for _ in owners]
    start_at = time.time() + 2.0
    procs = []
    for half in (slice(0, None, 2), slice(1, None, 2)):
        job = dict(spec, op="create", owners=owners[half], ids=ids[half], per_user=per_user, total=total, start_at=start_at)
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.support.store_worker", json.dumps(job)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outcomes = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outcomes += json.loads(out)
    return outcomes


async def test_global_cap_holds_under_50_concurrent_creates_from_two_processes(spec, stores):
    a, _ = stores  # creates the tables / schema first
    outcomes = await asyncio.to_thread(_race_from_two_processes, spec, [f"test:u{i}" for i in range(50)], 1, 10)
    assert outcomes.count("created") == 10 and outcomes.count("global_limit") == 40
    assert len(await a.sessions([SessionState.REQUESTED])) == 10


async def test_user_cap_holds_under_50_concurrent_creates_from_two_processes(spec, stores):
    a, _ = stores
    outcomes = await asyncio.to_thread(_race_from_two_processes, spec, ["test:alice"] * 50, 2, 100)
    assert outcomes.count("created") == 2 and outcomes.count("user_limit") == 48
    assert len(await a.sessions([SessionState.REQUESTED], owner="test:alice")) == 2


async def test_an_ended_session_frees_its_place_under_the_caps(stores):
    a, b = stores
    first = new_session(session_id="s5")
    assert await a.create_session(first, per_user=1, total=1) is CreateOutcome.CREATED
    assert await b.create_session(new_session(session_id="s6"), per_user=1, total=1) is CreateOutcome.USER_LIMIT
    assert await b.create_session(new_session(owner="test:bob", session_id="s7"), per_user=1, total=1) is CreateOutcome.GLOBAL_LIMIT
    s = await a.get("s5")
    await a.save(s.moved(SessionState.FAILED, T0))
    assert await b.create_session(new_session(owner="test:bob", session_id="s8"), per_user=1, total=1) is CreateOutcome.CREATED


async def test_a_record_older_than_a_field_reads_with_its_default(spec, stores):
    """A store written before a field existed keeps working: SQLite gains the column, Tables the property."""
    from tests.support.store_worker import open_store

    a, b = stores
    await a.create_session(new_session(session_id="s10", server_size="B1ls", own_key=True), per_user=1, total=10)
    if spec["store"] == "sqlite":
        db = sqlite3.connect(spec["path"])
        db.execute("ALTER TABLE sessions DROP COLUMN server_size")
        db.execute("ALTER TABLE sessions DROP COLUMN own_key")
        db.commit()
        db.close()
        await b.close()
        a = open_store(spec)  # a process started after the upgrade: it adds the columns on open
        stores[1] = a
        await a.open()
    else:
        table = a._t["sessions"]
        entity = await table.get_entity("s10", "s10")
        await table.upsert_entity({k: v for k, v in entity.items() if k not in ("server_size", "own_key")}, mode="replace")
    s = await a.get("s10")
    assert s.server_size == "" and s.own_key is False
    await a.save(dataclasses.replace(s, server_size="B2s"))
    assert (await a.get("s10")).server_size == "B2s"


async def test_table_storage_forgets_long_ended_sessions(spec, stores):
    if spec["store"] != "azure-tables":
        pytest.skip("SQLite keeps its history: a local file has no per-listing cost")
    a, _ = stores
    for sid, ended in (("old", T0 - timedelta(days=8)), ("recent", T0 - timedelta(days=1))):
        await a.create_session(new_session(session_id=sid), per_user=5, total=10)
        s = await a.get(sid)
        await a.save(s.moved(SessionState.FAILED, ended, ended_at=ended))
    await a.create_session(new_session(session_id="live"), per_user=5, total=10)
    await a.purge_claims(T0)  # the sweep's housekeeping
    assert await a.get("old") is None and await a.get("recent") is not None and await a.get("live") is not None


async def test_an_owners_sessions_are_theirs_and_live_unless_ended_ones_are_asked(stores):
    """`sessions(owner=)` (behind /vpn status, extend, stop and the web list): Table Storage reads the owner's index (issue 25)."""
    a, b = stores
    for owner, sid in (("test:alice", "a1"), ("test:alice", "a2"), ("test:alice", "a3"), ("test:bob", "b1")):
        await a.create_session(new_session(owner=owner, session_id=sid), per_user=5, total=10)
    s = await b.get("a2")
    await b.save(s.moved(SessionState.FAILED, T0))
    s = await a.get("a3")
    await a.save(s.moved(SessionState.PROVISIONING, T0))
    assert sorted(x.id for x in await b.sessions(list(ACTIVE_STATES), owner="test:alice")) == ["a1", "a3"]
    assert [x.id for x in await b.sessions([SessionState.PROVISIONING], owner="test:alice")] == ["a3"]
    assert [x.id for x in await a.sessions([SessionState.FAILED], owner="test:alice")] == ["a2"]
    assert sorted(x.id for x in await a.sessions([SessionState.REQUESTED, SessionState.FAILED], owner="test:alice")) == ["a1", "a2"]
    assert [x.id for x in await a.sessions(list(ACTIVE_STATES), owner="test:bob")] == ["b1"]
    assert await a.sessions(list(ACTIVE_STATES), owner="test:nobody") == []


async def test_each_session_streams_every_session_in_the_states_asked(stores, monkeypatch):
    """The fleet-wide turns read every live session one at a time (never all decoded at once): more than a
    page of them, each once, whatever their order; none of another state."""
    from bot.store import sqlite

    monkeypatch.setattr(sqlite, "EACH_PAGE", 3)  # SQLite reads pages by id: several pages here
    a, b = stores
    ids = [f"s{i:02d}" for i in range(8)]
    for i, sid in enumerate(ids):
        await a.create_session(new_session(owner=f"test:u{i}", session_id=sid), per_user=5, total=20)
    for sid in ("s02", "s05"):
        s = await a.get(sid)
        await a.save(s.moved(SessionState.FAILED, T0))
    live = [s.id async for s in b.each_session(ACTIVE_STATES)]
    assert sorted(live) == [sid for sid in ids if sid not in ("s02", "s05")]
    assert sorted([s.id async for s in b.each_session([SessionState.FAILED])]) == ["s02", "s05"]
    assert [s async for s in b.each_session([])] == []
    assert all(s.version for s in [s async for s in a.each_session(ACTIVE_STATES)])
