"""Issue 25.2, no hot partition: on Table Storage every cost follows the work, counted at the SDK's
transport (tests/support/table_recorder.py).

Before: a session's end filtered the whole `slots|global` partition, the whole addresses table and the
claims table three times; `sessions(owner=)` filtered the whole sessions table; every sweep filtered
the claims table twice; one partition took every create's global slot, a day's every audit row, a
month's every usage record, and every progress text. Rows of that layout are still read (last tests).
"""
from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from datetime import datetime, timedelta

import pytest

from bot.one_time_configs import Claim
from bot.store.codec import store_key
from bot.store.model import ACTIVE_STATES, SessionState, utcnow
from bot.store.ports import AuditEntry, CreateOutcome, UsageRecord
from bot.store.tables import _audit_day, _countdown, _entity
from tests.support.factories import T0, new_session
from tests.support.table_recorder import recorded_store

# The store's own clock (utcnow) decides a slot's grace: sessions here are created now, whatever T0 says.


@pytest.fixture
async def recorded(azurite):
    """A factory of recorded store instances on one fresh prefix (call it again for another replica)."""
    prefix = azurite.prefix()
    opened = []

    async def make():
        store, rec = recorded_store(azurite.connection_string, prefix)
        await store.open()
        opened.append(store)
        return store, rec

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def tables(recorded):
    return await recorded()


def claim(token: str, session_id: str, expires, sealed: bytes | None = b"sealed") -> Claim:
    return Claim(token, session_id, "test:alice", f"vpn-{session_id}", T0, expires, sealed=sealed)


async def test_ending_a_session_releases_what_it_held_by_key(tables):
    store, rec = tables
    for i in range(4):  # other sessions around, holding the same kinds of things
        other = new_session(owner=f"test:o{i}", session_id=f"other{i}")
        await store.create_session(other, per_user=2, total=100)
        await store.reserve_address("dryrun", f"10.0.0.{10 + i}", other.id, T0)
        await store.add_claim(claim(f"{i:02d}" * 32, other.id, T0 + timedelta(minutes=10)))
    await store.create_session(new_session(session_id="mine"), per_user=2, total=100)
    assert await store.reserve_address("dryrun", "10.0.0.2", "mine", T0) == "mine"
    await store.add_claim(claim("ab" * 32, "mine", T0 + timedelta(minutes=10)))
    s = await store.get("mine")
    assert await store.get_claim("cd" * 32) is None  # (and this process's one look for claims of the earlier layout: none)
    await store.release_addresses("nobody")  # (its one look for address index rows of the earlier layout: none)
    rec.clear()
    await store.save(s.moved(SessionState.FAILED, T0))  # its cap slots go with it
    await store.release_addresses("mine")
    await store.purge_claims(T0, session_id="mine")
    assert rec.scans() == [], rec.scans()
    assert not [r for r in rec.requests if r.kind == "query" and "global" in r.filter]  # the global slots are never listed
    # save 1 and its forget entry in the due index (the session had no due time: no live entry to drop); slots: the global and
    # the user slot deleted by the keys and ETags the session noted at create (no read); addresses: the session's index, the
    # reservation read and deleted, the index dropped; claims: the session's index, the claim erased by key (no read).
    assert len(rec.requests) == 2 + 2 + 4 + 2, rec.requests
    assert (await store.get_claim("ab" * 32)).sealed is None and (await store.get_claim("00" * 32)).sealed == b"sealed"
    assert await store.reserve_address("dryrun", "10.0.0.2", "next", T0) == "next"
    assert await store.reserve_address("dryrun", "10.0.0.10", "next", T0) == "other0"
    held = [e["session_id"] async for e in store._table("slots").list_entities()]
    assert sorted(Counter(held).items()) == [(f"other{i}", 2) for i in range(4)]  # a user slot and a global slot each


async def test_a_session_ended_on_one_replica_frees_its_place_on_another(recorded):
    a, _ = await recorded()
    b, _ = await recorded()
    await a.create_session(new_session(session_id="s1"), per_user=1, total=1)
    assert await b.create_session(new_session(owner="test:bob"), per_user=1, total=1) is CreateOutcome.GLOBAL_LIMIT
    s = await b.get("s1")
    await b.save(s.moved(SessionState.FAILED, T0))
    assert await a.create_session(new_session(owner="test:bob"), per_user=1, total=1) is CreateOutcome.CREATED
    assert await a.create_session(new_session(owner="test:carol"), per_user=1, total=1) is CreateOutcome.GLOBAL_LIMIT


async def test_a_late_release_leaves_a_slot_another_session_took_since(tables):
    """Released by the ETags noted at create: a slot reclaimed meanwhile (its session looked ended) and
    taken by another session is that session's; the late release must not free it."""
    store, _ = tables
    await store.create_session(new_session(session_id="s1"), per_user=1, total=1)
    s1 = await store.get("s1")
    slots = store._table("slots")
    (global_slot,) = [e async for e in slots.query_entities("PartitionKey ge 'global|' and PartitionKey lt 'global}'")]
    await slots.delete_entity(global_slot["PartitionKey"], global_slot["RowKey"])  # as a reclaim does
    assert await store.create_session(new_session(owner="test:bob", session_id="s2"), per_user=1, total=1) is CreateOutcome.CREATED
    await store.save(s1.moved(SessionState.FAILED, T0))  # s1's late release: its global slot is s2's now
    assert await store.create_session(new_session(owner="test:carol"), per_user=1, total=1) is CreateOutcome.GLOBAL_LIMIT
    assert [e["session_id"] async for e in slots.query_entities("PartitionKey eq 'user|test:alice'")] == []  # its own user slot went


async def test_near_a_full_cap_a_create_lists_one_shard_not_every_slot(tables, monkeypatch):
    """127 of 128 global slots held: the blind tries miss, then one shard (two slots) is listed, not all 128."""
    store, rec = tables
    slots = store._table("slots")
    await asyncio.gather(*(slots.create_entity({"PartitionKey": f"global|{n % 64:02d}", "RowKey": f"{n:05d}", "session_id": f"held{n}",
                                                "at": utcnow().isoformat()}) for n in range(128) if n != 69))
    picks = iter([3, 5])  # the first try (held), then the shard to list: 5 holds slots 5 (held) and 69 (free)
    monkeypatch.setattr("bot.store.tables.random.randrange", lambda *a: next(picks))
    monkeypatch.setattr("bot.store.tables.random.sample", lambda population, k: [1, 2, 4][:k])  # held too
    rec.clear()
    assert await store.create_session(new_session(session_id="s1"), per_user=1, total=128) is CreateOutcome.CREATED
    queries = [r.filter for r in rec.requests if r.kind == "query"]
    # (this process's look, once a minute, for workers of the earlier version; its look for the earlier layout's global slots)
    assert queries[1:] == ["PartitionKey eq 'global'", "PartitionKey eq 'global|05'"], queries
    assert queries[0].startswith("PartitionKey eq 'worker' and Timestamp ge "), queries
    assert (await slots.get_entity("global|05", "00069"))["session_id"] == "s1"


async def test_sessions_of_an_owner_read_that_owners_partition_only(tables):
    store, rec = tables
    for owner, n in (("test:alice", 3), ("test:bob", 2), ("test:carol", 1)):
        for i in range(n):
            await store.create_session(new_session(owner=owner, session_id=f"{owner[5:]}{i}"), per_user=5, total=100)
    ended = await store.get("alice2")
    await store.save(ended.moved(SessionState.FAILED, T0))
    rec.clear()
    mine = await store.sessions(ACTIVE_STATES, owner="test:alice")
    assert [s.id for s in mine] == ["alice0", "alice1"]
    (query,) = [r for r in rec.requests if r.kind == "query"]
    assert query.table == "slots" and query.filter == "PartitionKey eq 'user|test:alice'"
    assert sorted(r.partition for r in rec.requests if r.kind == "get") == ["alice0", "alice1"]
    assert len(rec.requests) == 3
    assert [s.id for s in await store.sessions([SessionState.FAILED], owner="test:alice")] == ["alice2"]  # ended ones: a filter on the table


async def test_the_owner_index_drops_what_is_stale_when_read(tables):
    store, _ = tables
    await store.create_session(new_session(session_id="live"), per_user=5, total=100)
    await store.create_session(new_session(session_id="ended"), per_user=5, total=100)
    slots, sessions = store._table("slots"), store._table("sessions")
    # A release that failed: the session is ended, its slots are still there.
    ended = await sessions.get_entity("ended", "ended")
    await sessions.update_entity({**ended, "state": "failed"}, mode="replace")
    # A create that crashed after taking its slots, long ago; and one in progress now.
    taken = {e["RowKey"] async for e in slots.query_entities("PartitionKey eq 'user|test:alice'")}
    free = [f"{n:05d}" for n in range(5) if f"{n:05d}" not in taken]
    await slots.create_entity({"PartitionKey": "user|test:alice", "RowKey": free[0], "session_id": "crashed", "at": (utcnow() - timedelta(hours=1)).isoformat()})
    await slots.create_entity({"PartitionKey": "user|test:alice", "RowKey": free[1], "session_id": "creating", "at": utcnow().isoformat()})
    assert [s.id for s in await store.sessions(ACTIVE_STATES, owner="test:alice")] == ["live"]
    left = sorted([e["session_id"] async for e in slots.query_entities("PartitionKey eq 'user|test:alice'")])
    assert left == ["creating", "live"]
    assert sorted([e["session_id"] async for e in slots.list_entities()]) == ["creating", "live", "live"]  # ended's global slot went too


async def test_a_purge_with_nothing_due_is_one_request_and_claims_go_on_time(tables):
    store, rec = tables
    for i in range(3):
        await store.add_claim(claim(f"{i:02d}" * 32, f"s{i % 2}", T0 + timedelta(minutes=10 + i)))
    await store.purge_claims(T0)  # housekeeping's first pass (then every 10 minutes), and the look for the earlier layout
    rec.clear()
    await store.purge_claims(T0 + timedelta(minutes=9))
    (request,) = rec.requests
    assert request.keyed and request.table == "claims", request
    await store.purge_claims(T0 + timedelta(minutes=11))  # two have expired, the third in a minute
    states = [await store.get_claim(f"{i:02d}" * 32) for i in range(3)]
    assert [c.sealed for c in states] == [None, None, b"sealed"]
    await store.purge_claims(T0 + timedelta(days=1, minutes=11))  # a day past expiry: forgotten, with their index rows
    assert [await store.get_claim(f"{i:02d}" * 32) is None for i in range(3)] == [True, True, False]
    await store.purge_claims(T0 + timedelta(days=1, minutes=13))
    assert [r for r in rec.scans() if r.table == "claims"] == []  # (housekeeping's, every 10 minutes, is the sweeper's concern)
    for table in ("claims", "claimindex"):
        assert [e async for e in store._table(table).list_entities()] == [], table  # nothing left behind, index rows included


@pytest.mark.slow
async def test_writes_spread_over_partitions(tables):
    """300 sessions' lives (create, an address, a claim, the end), an audit row, a usage record and a progress
    text each: no partition takes more than a few percent of its table's writes (before: the global cap's
    one partition took half the slots table's, a day's one audit partition all of them)."""
    store, rec = tables
    gate = asyncio.Semaphore(40)

    async def life(i: int) -> None:
        async with gate:
            s = new_session(owner=f"test:u{i}", session_id=f"s{i:04d}")
            assert await store.create_session(s, per_user=1, total=10_000) is CreateOutcome.CREATED
            await store.reserve_address("dryrun", f"10.{i // 250}.{i % 250}.2", s.id, T0)
            await store.add_claim(claim(f"{i:064x}", s.id, T0 + timedelta(minutes=10)))  # every claim expires in the same minute
            await store.save((await store.get(s.id)).moved(SessionState.FAILED, T0))
            await store.release_addresses(s.id)
            await store.purge_claims(T0, session_id=s.id)
            at = T0 + timedelta(seconds=i)
            await store.audit(AuditEntry(at, f"test:u{i}", "", "test", "start", True, "user"))
            await store.put_usage(UsageRecord(s.id, s.owner, s.owner, "test", "dryrun", "local", at, at, at, 1.0, 0.0, 0, 0, "stopped"))
            await store.set_progress(f"web:{i}", "working", at)

    await life(9999)  # this process's first looks (for rows of the earlier layout; the progress purge)
    rec.clear()
    await asyncio.gather(*(life(i) for i in range(300)))
    await store.purge_claims(T0 + timedelta(minutes=11))  # the 300 claims fall due at once
    await store.purge_claims(T0 + timedelta(days=1, minutes=11))  # and are forgotten at once
    assert [r for r in rec.scans() if r.table != "seen" and r.table != "workers" and r.table != "sessions"] == []  # (housekeeping's: the sweeper's)
    everything = rec.writes()
    busiest, most = everything.most_common(1)[0]
    assert most / sum(everything.values()) <= 0.02, (busiest, most, sum(everything.values()))
    for table in ("sessions", "slots", "addresses", "claims", "audit", "usage", "progress"):
        writes = rec.writes(table)
        busiest, most = writes.most_common(1)[0]
        assert most / sum(writes.values()) <= 0.08, (table, busiest, most, sum(writes.values()))


# ----- rows of the layout before issue 25 -----------------------------------------------------------


async def test_slots_of_the_earlier_layout_still_count_and_are_released(recorded):
    old, _ = await recorded()
    s = new_session(session_id="old1", owner="test:old")
    slots = old._table("slots")  # as an earlier version took them: the global cap in one partition, a user slot naming nothing
    await slots.create_entity({"PartitionKey": "user|test:old", "RowKey": "00000", "session_id": "old1", "at": T0.isoformat()})
    await slots.create_entity({"PartitionKey": "global", "RowKey": "00001", "session_id": "old1", "at": T0.isoformat()})
    await old._table("sessions").create_entity(_entity(s))
    new, _ = await recorded()  # a process started after the upgrade
    for _ in range(3):  # whichever slot it tries first, the earlier layout's slot 1 is held
        assert await new.create_session(new_session(owner="test:a"), per_user=1, total=2) is CreateOutcome.CREATED
        assert await new.create_session(new_session(owner="test:b"), per_user=1, total=2) is CreateOutcome.GLOBAL_LIMIT
        (mine,) = await new.sessions(ACTIVE_STATES, owner="test:a")
        await new.save(mine.moved(SessionState.FAILED, T0))
    assert await new.create_session(new_session(owner="test:a"), per_user=1, total=2) is CreateOutcome.CREATED
    assert [x.id for x in await new.sessions(ACTIVE_STATES, owner="test:old")] == ["old1"]
    await new.save((await new.get("old1")).moved(SessionState.FAILED, T0))
    assert [e async for e in slots.query_entities("PartitionKey eq 'global' and session_id eq 'old1'")] == []
    assert await new.create_session(new_session(owner="test:b"), per_user=1, total=2) is CreateOutcome.CREATED
    assert [e async for e in slots.query_entities("PartitionKey eq 'global'")] == []  # new slots never go there: it drains


async def test_claims_and_reservations_of_the_earlier_layout(recorded):
    old, _ = await recorded()
    claims, addresses = old._table("claims"), old._table("addresses")
    for token, expires in (("aa" * 32, T0 + timedelta(minutes=10)), ("bb" * 32, T0 - timedelta(days=2))):
        await claims.create_entity({"PartitionKey": token, "RowKey": "c", "session_id": "old1", "user": "test:alice", "tunnel_name": "vpn-old1",
                                    "created_at": T0.isoformat(), "expires_at": expires.isoformat(), "sealed_present": True, "sealed": b"x"})
    await addresses.create_entity({"PartitionKey": "dryrun", "RowKey": "10.0.0.2", "session_id": "old1", "reserved_at": T0.isoformat()})
    new, _ = await recorded()
    assert (await new.get_claim("aa" * 32)).sealed == b"x"
    assert await new.reserve_address("dryrun", "10.0.0.2", "new1", T0) == "old1"  # still held
    await new.purge_claims(T0)  # the earlier layout's expired and day-old claims
    assert await new.get_claim("bb" * 32) is None
    await new.purge_claims(T0, session_id="old1")
    assert (await new.get_claim("aa" * 32)).sealed is None
    await new.release_addresses("old1")
    assert await new.reserve_address("dryrun", "10.0.0.2", "new1", T0) == "new1"


async def test_sessions_and_claims_whose_row_keys_were_constants(recorded):
    """Before their RowKey was their id, a session's RowKey was "s" and a claim's "c", with the claims'
    by-session index in the claims table: a session of that layout is read, swept, saved where it is,
    ended and forgotten; its claim is read, erased with the session and forgotten."""
    old, _ = await recorded()
    s = new_session(session_id="old1", state=SessionState.READY, expires_at=T0 - timedelta(minutes=1), due_at=T0 - timedelta(minutes=1))
    await old._schedule_due(s)
    await old._table("sessions").create_entity({**_entity(s), "RowKey": "s"})
    token = "ab" * 32
    await old.add_claim(claim(token, "old1", T0 + timedelta(minutes=10)))
    claims, index = old._table("claims"), old._table("claimindex")
    written = await claims.get_entity("~c|" + token, token)
    await claims.delete_entity("~c|" + token, token)
    await claims.create_entity({**written, "RowKey": "c"})
    await index.delete_entity("~s|old1", token)
    await claims.create_entity({"PartitionKey": "~s|old1", "RowKey": token})
    async for e in claims.query_entities("PartitionKey ge '~f|' and PartitionKey lt '~f}'"):  # its steps where that version wrote them
        await claims.create_entity({**e, "PartitionKey": "~e|" + e["PartitionKey"][3:]})
        await claims.delete_entity(e["PartitionKey"], e["RowKey"])

    new, rec = await recorded()  # a process started after the upgrade
    (due,) = await new.due_sessions(T0)
    assert due.id == "old1" and (await new.get_claim(token)).sealed == b"sealed"
    expiring = await new.save(due.moved(SessionState.EXPIRING, T0))  # written in place: one row still
    marks = [e["pending"] async for e in new._table("due").list_entities() if e.get("pending")]
    assert marks and not [m for m in marks if m.startswith("s|")], marks  # the bare ETag, which that version compares too
    ended = await new.save(expiring.moved(SessionState.DELETED, T0))
    assert [e["RowKey"] async for e in new._table("sessions").list_entities()] == ["s"]
    await new.purge_claims(T0, session_id="old1")
    assert (await new.get_claim(token)).sealed is None
    assert (await new.get("old1")).state is SessionState.DELETED and ended.version == (await new.get("old1")).version
    await new.purge_claims(T0 + timedelta(days=1, minutes=11))  # the claim is forgotten with its index row
    await new.purge_claims(T0 + timedelta(days=8))  # the session a week after its end (housekeeping)
    await new.purge_claims(T0 + timedelta(days=9))
    assert await new.get("old1") is None and await new.get_claim(token) is None
    for table in ("sessions", "claims", "claimindex"):
        assert [e async for e in new._table(table).list_entities()] == [], table


async def test_while_a_worker_of_the_earlier_version_runs_new_sessions_keep_its_row_key(recorded, monkeypatch):
    """That version finds a session by row "s" only (and takes one it cannot find for one that is gone): while
    one was heard from lately (a rolling deploy's overlap), new sessions are written where it looks."""
    from bot.store import tables as tables_module
    from bot.store.ports import Worker

    store, _ = await recorded()
    await store.heartbeat(Worker("new", "h", 1, T0))  # this version's heartbeat carries its mark
    await store._table("workers").upsert_entity({"PartitionKey": "worker", "RowKey": "old", "id": "old", "host": "h", "pid": 2,
                                                 "heartbeat_at": T0.isoformat()})  # as that version writes it: no mark
    await store.create_session(new_session(session_id="s1"), per_user=5, total=10)
    assert [e["RowKey"] async for e in store._table("sessions").list_entities()] == ["s"]
    s1 = await store.save((await store.get("s1")).moved(SessionState.PROVISIONING, T0))
    assert (await store.get("s1")).state is SessionState.PROVISIONING and s1.version == (await store.get("s1")).version
    await store.add_claim(claim("ab" * 32, "s1", T0 + timedelta(minutes=10)))  # likewise a claim (row "c", its index in claims)
    assert await store._table("claims").get_entity("~c|" + "ab" * 32, "c") and await store._table("claims").get_entity("~s|s1", "ab" * 32)
    assert (await store.consume_claim("ab" * 32, T0)).sealed == b"sealed"
    assert await store.reserve_address("dryrun", "10.0.0.2", "s1", T0) == "s1"  # its index row where that version looks
    assert [e["PartitionKey"] async for e in store._table("addresses").query_entities("PartitionKey eq '~s|s1'")] == ["~s|s1"]
    monkeypatch.setattr(tables_module, "OLD_WORKER_WINDOW", timedelta(0))  # its last heartbeat is past the window now
    later, _ = await recorded()
    await later.release_addresses("s1")  # found where the earlier version's index keeps it (the look: such rows remain)
    assert await later.reserve_address("dryrun", "10.0.0.2", "s3", T0) == "s3"
    await later.create_session(new_session(session_id="s2"), per_user=5, total=10)
    assert sorted([(e["PartitionKey"], e["RowKey"]) async for e in later._table("sessions").list_entities()]) == [("s1", "s"), ("s2", "s2")]


async def test_claims_of_the_earlier_layout_written_during_a_deploy_are_found_by_a_replica_that_found_none(recorded):
    """A replica that looked for claims of the earlier layout and found none must not remember that while a
    worker of that version runs: it (and new replicas, for it) write that layout meanwhile."""
    from bot.store.ports import Worker

    b, _ = await recorded()
    await b._table("workers").upsert_entity({"PartitionKey": "worker", "RowKey": "old", "id": "old", "host": "h", "pid": 2,
                                             "heartbeat_at": T0.isoformat()})  # a replica of the earlier version, running
    await b.heartbeat(Worker("b", "h", 1, T0))
    await b.purge_claims(T0, session_id="other")  # b looks: none of that layout yet
    assert await b.get_claim("ab" * 32) is None
    a, _ = await recorded()
    await a.add_claim(claim("ab" * 32, "s1", T0 + timedelta(minutes=10)))  # written as that version would
    assert (await b.get_claim("ab" * 32)).sealed == b"sealed"
    await b.purge_claims(T0, session_id="s1")  # the session ends on b
    assert (await b.get_claim("ab" * 32)).sealed is None


async def test_a_session_and_a_claim_are_keyed_by_their_id_twice(tables):
    """Azurite finds an entity by its RowKey first: a constant RowKey made every keyed request a scan there."""
    store, _ = tables
    await store.create_session(new_session(session_id="s1"), per_user=1, total=1)
    await store.add_claim(claim("cd" * 32, "s1", T0 + timedelta(minutes=10)))
    assert [(e["PartitionKey"], e["RowKey"]) async for e in store._table("sessions").list_entities()] == [("s1", "s1")]
    assert ("~c|" + "cd" * 32, "cd" * 32) in [(e["PartitionKey"], e["RowKey"]) async for e in store._table("claims").list_entities()]
    assert [(e["PartitionKey"], e["RowKey"]) async for e in store._table("claimindex").list_entities()] == [("~s|s1", "cd" * 32)]
    await store.reserve_address("dryrun", "10.0.0.9", "s1", T0)
    assert [e["PartitionKey"] async for e in store._table("addressindex").list_entities()] == ["~s|s1"]
    assert not [e async for e in store._table("addresses").query_entities("PartitionKey eq '~s|s1'")]


async def test_audit_usage_and_progress_of_the_earlier_layout(recorded):
    old, _ = await recorded()
    audit = old._table("audit")
    for n, at in enumerate((T0 - timedelta(days=2), T0 - timedelta(hours=1))):  # as an earlier version wrote them: a partition per day
        await audit.create_entity({"PartitionKey": _audit_day(at), "RowKey": f"{_countdown(at)}-{10**20 - n:020d}-0000", "at": at.isoformat(),
                                   "user": f"test:old{n}", "email": "", "channel": "test", "command": "start", "allowed": True, "reason": "user"})
    record = UsageRecord("u1", "test:alice", "alice", "test", "dryrun", "local", T0, T0, T0, 1.0, 0.0, 0, 0, "stopped")
    await old._table("usage").create_entity({"PartitionKey": "2026-11", "RowKey": "u1", **{k: v for k, v in _usage(record).items() if v is not None}})
    await old._table("progress").create_entity({"PartitionKey": "progress", "RowKey": store_key("web:r1"), "text": "step 1", "updated_at": T0.isoformat()})
    new, _ = await recorded()
    await new.audit(AuditEntry(T0 - timedelta(days=1), "test:new0", "", "test", "stop", True, "user"))
    await new.audit(AuditEntry(T0, "test:new1", "", "test", "stop", True, "user"))
    assert [e.user for e in await new.audit_log()] == ["test:new1", "test:old1", "test:new0", "test:old0"]
    assert [e.user for e in await new.audit_log(2)] == ["test:new1", "test:old1"]
    assert [e.user for e in await new.audit_log(since=T0 - timedelta(hours=30), until=T0)] == ["test:old1", "test:new0"]
    await new.purge_expired(T0 + timedelta(days=1), audit_retention=timedelta(days=2, hours=12))
    assert [e.user for e in await new.audit_log()] == ["test:new1", "test:old1", "test:new0"]
    month = (T0.replace(day=1), T0.replace(month=12, day=1))
    assert await new.usage(*month) == [record]
    rewritten = dataclasses.replace(record, end_reason="expired")
    await new.put_usage(rewritten)  # a teardown taken over after the upgrade: one record still
    assert await new.usage(*month) == [rewritten]
    assert await new.get_progress("web:r1") == "step 1"
    await new.set_progress("web:r1", "step 2", T0)
    assert await new.get_progress("web:r1") == "step 2"


def _usage(record: UsageRecord) -> dict:
    from bot.store.usage_codec import encode_usage

    return encode_usage(record)


async def test_a_sweep_between_a_due_entry_and_its_save_keeps_the_entry(tables, monkeypatch):
    """A save writes its due entry first; a sweep that reads the session before the save lands sees the
    old version and must not drop the new entry as stale (found by the 10 % wave at 10,000 live: half of
    the rewritten sessions were never swept). Likewise for a create, whose session is not there yet."""
    from azure.core import MatchConditions
    from azure.data.tables import UpdateMode

    store, _ = tables
    minute = timedelta(minutes=1)
    assert await store.create_session(new_session(session_id="s1", due_at=T0 + 60 * minute), per_user=5, total=100) is CreateOutcome.CREATED
    s = await store.get("s1")
    moved = s.with_changes(T0, due_at=T0 + minute)
    await store._schedule_due(moved, pending=s.version)  # the writer's first step; its save has not landed
    assert await store.due_sessions(T0 + 2 * minute) == []  # read at the old version: not due, and the entry stays
    await store._table("sessions").update_entity(_entity(moved), mode=UpdateMode.REPLACE, etag=s.version, match_condition=MatchConditions.IfNotModified)
    assert [x.id for x in await store.due_sessions(T0 + 2 * minute)] == ["s1"]

    coming = new_session(session_id="s2", owner="test:bob", due_at=T0 + minute)
    await store._schedule_due(coming, pending="create")  # a create's first step
    assert await store.due_sessions(T0 + 2 * minute) == [await store.get("s1")]
    await store._table("sessions").create_entity(_entity(coming))
    assert sorted(x.id for x in await store.due_sessions(T0 + 2 * minute)) == ["s1", "s2"]

    await store._schedule_due(new_session(session_id="s3", due_at=T0 + minute), pending="create")  # a create that died
    await store.due_sessions(T0 + 2 * minute)
    assert "s3" in await store.live_ids()  # within the grace: left alone
    later = utcnow() + 6 * minute
    monkeypatch.setattr("bot.store.tables.utcnow", lambda: later)  # the grace runs from when the entry was written (the store's clock)
    await store.due_sessions(T0 + 7 * minute)
    assert "s3" not in await store.live_ids()  # past it: a writer that died, its hint dropped


async def test_a_save_in_flight_whose_due_time_passed_long_ago_keeps_its_entry(tables):
    """The grace of an entry whose save has not landed runs from when it was written, not from its due time:
    a save may well move a session to a time long past (a warning turned on: the index check reschedules every
    live session, even_if_due; its warning time passed 20 minutes ago). A sweep between that entry and its
    save reads the old version (not due for an hour) and must not drop the entry as stale, else the session
    is not looked at before its old time (the warning never sent)."""
    from azure.core import MatchConditions
    from azure.data.tables import UpdateMode

    store, _ = tables
    minute = timedelta(minutes=1)
    assert await store.create_session(new_session(session_id="s1", due_at=T0 + 60 * minute), per_user=5, total=100) is CreateOutcome.CREATED
    s = await store.get("s1")
    moved = s.with_changes(T0, due_at=T0 - 20 * minute)
    await store._schedule_due(moved, pending=s.version)  # the writer's first step; its save has not landed
    assert await store.due_sessions(T0) == []  # read at the old version: not due, and the entry stays
    await store._table("sessions").update_entity(_entity(moved), mode=UpdateMode.REPLACE, etag=s.version, match_condition=MatchConditions.IfNotModified)
    assert [x.id for x in await store.due_sessions(T0)] == ["s1"]


async def test_a_claim_erased_with_its_session_reads_as_expired_to_an_earlier_version(tables):
    """Erased by a merge, the config is an empty `sealed`, which a replica of an earlier version takes for a
    config (it tested `is not None`); the erase also marks the claim expired, which that version refuses."""
    store, _ = tables
    await store.add_claim(claim("ef" * 32, "gone", T0 + timedelta(minutes=10)))
    await store.purge_claims(T0 + timedelta(minutes=2), session_id="gone")
    raw = await store._table("claims").get_entity("~c|" + "ef" * 32, "ef" * 32)
    assert raw["sealed"] in (b"", None) and raw["sealed_present"] is False
    assert datetime.fromisoformat(raw["expires_at"]) <= T0 + timedelta(minutes=2)  # the earlier version's consume: "expired"
    assert (await store.get_claim("ef" * 32)).sealed is None
