"""What the store keeps, and for how long (issue 18.11), on both stores.

Before: every refused request with a valid token wrote an audit row (500 requests, 500 rows, never
purged), and Table Storage never forgot a login attempt. Now a refusal is counted on one sampled row
per identity, reason and hour, and `purge_expired` (the sweeper calls it) forgets attempt counters,
remembered sign-ins and audit rows past their retention.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from bot.store.ports import AUDIT_RETENTION, SIGN_IN_MEMORY, AuditEntry

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
WINDOW = timedelta(minutes=15)


def entry(at: datetime, user: str = "test:alice", command: str = "status", allowed: bool = True, reason: str = "user") -> AuditEntry:
    return AuditEntry(at, user, "", "test", command, allowed, reason)


async def test_refusals_are_counted_on_one_row_per_identity_reason_and_hour(store, replica):
    for i in range(60):
        await (store if i % 2 else replica).audit(entry(T0 + timedelta(seconds=i), "test:mallory", "GET /api/sessions/{id}", False, "not on the allowlist"))
    (row,) = await store.audit_log()
    assert (row.user, row.allowed, row.reason, row.count) == ("test:mallory", False, "not on the allowlist", 60)
    assert row.at == T0 and row.command == "GET /api/sessions/{id}"  # the first refusal is the sample (the route, not the path)
    await store.audit(entry(T0 + timedelta(minutes=5), "test:eve", "start", False, "not on the allowlist"))  # another identity
    await store.audit(entry(T0 + timedelta(minutes=6), "test:mallory", "list", False, "admins only"))  # another reason
    await store.audit(entry(T0 + timedelta(hours=1), "test:mallory", "GET /api/sessions/{id}", False, "not on the allowlist"))  # the next hour
    log = await replica.audit_log()
    assert [(e.user, e.reason, e.count) for e in log] == [
        ("test:mallory", "not on the allowlist", 1), ("test:mallory", "admins only", 1), ("test:eve", "not on the allowlist", 1),
        ("test:mallory", "not on the allowlist", 60),
    ]


async def test_concurrent_refusals_make_one_row(store, replica):
    await asyncio.gather(*((store if i % 2 else replica).audit(entry(T0, "test:mallory", "start", False, "not on the allowlist")) for i in range(30)))
    (row,) = await store.audit_log()
    assert 1 <= row.count <= 30  # Table Storage counts with a few compare-and-set tries: a lower bound under a flood


async def test_refusals_keep_their_place_among_decisions(store):
    """The dispatcher's order (tests/engine/test_service.py): a refusal row sits where its first refusal happened."""
    await store.audit(entry(T0, "test:alice", "status"))
    await store.audit(entry(T0 + timedelta(seconds=1), "test:alice", "list", False, "admins only"))
    await store.audit(entry(T0 + timedelta(seconds=2), "test:root", "list", True, "admin"))
    await store.audit(entry(T0 + timedelta(seconds=3), "test:alice", "list", False, "admins only"))  # counted on the earlier row
    assert [(e.user, e.command, e.allowed, e.count) for e in reversed(await store.audit_log())] == [
        ("test:alice", "status", True, 1), ("test:alice", "list", False, 2), ("test:root", "list", True, 1),
    ]
    assert [e.command for e in await store.audit_log(2)] == ["list", "list"]
    assert await store.audit_log(0) == []


async def test_audit_rows_are_kept_for_their_retention(store, replica):
    await store.audit(entry(T0, "test:old"))
    await store.audit(entry(T0 + timedelta(days=1), "test:old", "status", False, "not on the allowlist"))
    await store.audit(entry(T0 + timedelta(days=300), "test:recent"))
    await store.purge_expired(T0 + timedelta(days=300))
    assert len(await replica.audit_log()) == 3  # nothing is 400 days old yet
    await replica.purge_expired(T0 + AUDIT_RETENTION + timedelta(hours=12))  # the first row is past 400 days, the refusal not yet
    assert [e.user for e in await store.audit_log()] == ["test:recent", "test:old"]
    await store.purge_expired(T0 + timedelta(days=310), audit_retention=timedelta(days=30))  # VPN_AUDIT_RETENTION_DAYS=30
    assert [e.user for e in await replica.audit_log()] == ["test:recent"]


async def test_attempt_counters_and_remembered_sign_ins_are_purged(store, replica):
    for i in range(3):
        await store.take_attempt(f"login-addr:192.0.2.{i}", T0, WINDOW, 5)
    await store.remember_sign_in("a@example.org", "192.0.2.1", T0)
    await store.remember_sign_in("b@example.org", "192.0.2.1", T0 + timedelta(days=20))
    assert await store.attempts("login-addr:192.0.2.0", T0, WINDOW) == 1
    await replica.take_attempt("login-addr:recent", T0 + timedelta(days=2) - timedelta(minutes=1), WINDOW, 5)
    await replica.purge_expired(T0 + timedelta(days=2))
    assert [await store.attempts(f"login-addr:192.0.2.{i}", T0, WINDOW) for i in range(3)] == [0, 0, 0]  # a past window: gone
    assert await store.attempts("login-addr:recent", T0 + timedelta(days=2) - timedelta(minutes=1), WINDOW) == 1  # a recent window stays
    assert await store.sign_in_addresses("a@example.org", T0 - timedelta(days=1)) == {"192.0.2.1"}
    await store.purge_expired(T0 + SIGN_IN_MEMORY + timedelta(days=1))
    assert await replica.sign_in_addresses("a@example.org", T0 - timedelta(days=1)) == frozenset()  # forgotten
    assert await replica.sign_in_addresses("b@example.org", T0) == {"192.0.2.1"}


async def test_purging_runs_at_most_every_few_minutes_per_process(store):
    await store.audit(entry(T0, "test:old"))
    await store.purge_expired(T0 + timedelta(days=10))
    await store.purge_expired(T0 + timedelta(days=10, minutes=1), audit_retention=timedelta(days=1))  # too soon: skipped
    assert len(await store.audit_log()) == 1
    await store.purge_expired(T0 + timedelta(days=10, minutes=11), audit_retention=timedelta(days=1))
    assert await store.audit_log() == []
