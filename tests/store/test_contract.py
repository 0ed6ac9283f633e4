"""The store contract, run against both back ends: SQLite (a file) and Table Storage (Azurite).

Races are real: two store instances (two clients, as two replicas would have) or two OS processes
on one store, many concurrent writers.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bot.one_time_configs import Claim
from bot.messages import ConversationRef
from bot.store.model import Conflict, Session, SessionState, new_session_id
from bot.store.ports import AuditEntry, CreateOutcome, Worker

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


def new_session(owner: str = "test:alice", session_id: str | None = None, **changes) -> Session:
    s = Session(
        id=session_id or new_session_id(), owner=owner, owner_label=owner, conversation=ConversationRef("test", {"user": owner}),
        state=SessionState.REQUESTED, provider="dryrun", region="local", created_at=T0, expires_at=T0 + timedelta(minutes=30),
        minutes=30, updated_at=T0,
    )
    return dataclasses.replace(s, **changes)


@pytest.fixture(params=["sqlite", "azure-tables"])
def spec(request, tmp_path) -> dict:
    """How to reach one fresh store, for this process and for a second one."""
    if request.param == "sqlite":
        return {"store": "sqlite", "path": str(tmp_path / "store.sqlite3")}
    server = request.getfixturevalue("azurite")
    return {"store": "azure-tables", "conn": server.connection_string, "prefix": server.prefix()}


@pytest.fixture
async def stores(spec):
    """Two open instances of one store, as two replicas would hold."""
    from tests.support.store_worker import open_store

    pair = [open_store(spec), open_store(spec)]
    for s in pair:
        await s.open()
    yield pair
    for s in pair:
        await s.close()


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
    assert dataclasses.replace(got, version="") == s
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


async def test_a_message_id_is_first_seen_once_across_replicas(stores):
    a, b = stores
    results = await asyncio.gather(*((a if i % 2 else b).first_seen("teams", "activity/1?#x", T0) for i in range(20)))
    assert results.count(True) == 1
    assert await a.first_seen("groupme", "activity/1?#x", T0) is True  # per channel
    assert await b.first_seen("teams", "activity/1?#x", T0 + timedelta(days=3)) is True  # past its TTL: new again


async def test_a_claim_is_consumed_once_across_replicas(stores):
    a, b = stores
    claim = Claim("ab" * 32, "s9", "test:alice", "vpn-s9", T0, T0 + timedelta(minutes=10), sealed=b"\x00sealed\xff")
    await a.add_claim(claim)
    assert (await b.get_claim(claim.token_hash)) == claim
    taken = await asyncio.gather(*((a if i % 2 else b).consume_claim(claim.token_hash, T0) for i in range(10)))
    won = [t for t in taken if t is not None]
    assert len(won) == 1 and won[0].sealed == b"\x00sealed\xff"
    left = await a.get_claim(claim.token_hash)
    assert left.used_at == T0 and left.sealed is None
    late = Claim("cd" * 32, "s9", "test:alice", "vpn-s9", T0, T0 + timedelta(minutes=10), sealed=b"x")
    await b.add_claim(late)
    assert await a.consume_claim(late.token_hash, T0 + timedelta(minutes=11)) is None  # expired
    await a.purge_claims(T0, session_id="s9")
    assert (await b.get_claim(late.token_hash)).sealed is None


async def test_an_address_has_one_holder_across_replicas(stores):
    a, b = stores
    holders = await asyncio.gather(*((a if i % 2 else b).reserve_address("host", "10.77.0.2", f"s{i}", T0) for i in range(10)))
    assert len(set(holders)) == 1
    winner = holders[0]
    assert await a.reserve_address("host", "10.77.0.2", winner, T0) == winner  # a retry keeps it
    await b.release_address("host", "10.77.0.2", "someone-else")  # not theirs: stays
    assert await a.reserve_address("host", "10.77.0.2", "other", T0) == winner
    await b.release_addresses(winner)
    assert await a.reserve_address("host", "10.77.0.2", "other", T0) == "other"


async def test_audit_log_is_newest_first_and_workers_are_listed(stores):
    a, b = stores
    for i in range(3):
        await (a if i % 2 else b).audit(AuditEntry(T0 + timedelta(seconds=i), f"test:u{i}", "", "test", "start", True, "user"))
    assert [e.user for e in await a.audit_log(2)] == ["test:u2", "test:u1"]
    await a.heartbeat(Worker("host:1:aa", "host", 1, T0))
    await b.heartbeat(Worker("host:2:bb", "host", 2, T0))
    assert sorted(w.id for w in await a.workers()) == ["host:1:aa", "host:2:bb"]


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
        entity = await table.get_entity("s10", "s")
        await table.upsert_entity({k: v for k, v in entity.items() if k not in ("server_size", "own_key")}, mode="replace")
    s = await a.get("s10")
    assert s.server_size == "" and s.own_key is False
    await a.save(dataclasses.replace(s, server_size="B2s"))
    assert (await a.get("s10")).server_size == "B2s"


def test_store_settings_are_validated_and_select_the_back_end(tmp_path):
    from bot.wiring import make_store
    from bot.store.sqlite import SqliteStore
    from bot.store.tables import TableStore
    from bot.settings import Settings, SettingsError

    base = {"VPN_DATA_DIR": str(tmp_path)}
    assert isinstance(make_store(Settings.from_env(base).store), SqliteStore)
    with pytest.raises(SettingsError, match="AZURE_STORAGE_CONNECTION_STRING"):
        Settings.from_env({**base, "VPN_STORE": "azure-tables"})
    for bad in ("1vpn", "vpn-bot", "x" * 31):
        with pytest.raises(SettingsError, match="VPN_TABLE_PREFIX"):
            Settings.from_env({**base, "VPN_TABLE_PREFIX": bad})
    with pytest.raises(SettingsError, match="AZURE_TABLES_ENDPOINT"):
        Settings.from_env({**base, "VPN_STORE": "azure-tables", "AZURE_TABLES_ENDPOINT": "http://example.org"})
    settings = Settings.from_env({**base, "VPN_STORE": "azure-tables", "AZURE_TABLES_ENDPOINT": "https://acct.table.core.windows.net"})
    class Credential:  # never DefaultAzureCredential in tests
        async def get_token(self, *scopes, **kw):
            raise AssertionError("not called: nothing is sent")

    store = make_store(settings.store, credential=Credential())
    assert isinstance(store, TableStore) and store._credential is None  # injected: not ours to close
    assert repr(Settings.from_env({**base, "AZURE_STORAGE_CONNECTION_STRING": "AccountKey=sekrit"})).count("sekrit") == 0


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


async def test_one_deployment_id_for_every_replica(stores):
    a, b = stores
    ids = await asyncio.gather(*((a if i % 2 else b).deployment_id() for i in range(6)))
    assert len(set(ids)) == 1 and ids[0].startswith("d")
