"""The usage port (issue 23) and the audit log's filtered read, on both stores: a record per ended
session, written twice is one row, read by time range and user, kept for its retention; on Table
Storage a month's report reads one partition."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from bot.store.ports import USAGE_RETENTION, AuditEntry, UsageRecord

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


def record(session_id: str, at: datetime, owner: str = "test:alice", **changes) -> UsageRecord:
    values = dict(
        session_id=session_id, owner=owner, owner_label=owner.replace("test:", "") + "@example.org", channel="test", provider="dryrun",
        region="local", requested_at=at, ready_at=at + timedelta(seconds=40), ended_at=at + timedelta(minutes=31), minutes=30.3,
        cost=0.0125, bytes_in=12_400_000, bytes_out=3_100_000, end_reason="expired", detail="time is up",
    )
    values.update(changes)
    return UsageRecord(**values)


async def test_a_record_round_trips_with_every_field(store, replica):
    full = record("s1", T0, decided_by="root@example.org", decided_at=T0 + timedelta(minutes=2), approvers="email:root@example.org",
                  request_reason="client visit, ünïcode", end_reason="stopped", detail="stopped by you")
    bare = record("s2", T0 + timedelta(minutes=1), ready_at=None, minutes=0.0, cost=0.0, bytes_in=0, bytes_out=0, end_reason="denied")
    await store.put_usage(full)
    await store.put_usage(bare)
    assert await replica.usage(T0, T0 + timedelta(days=1)) == [full, bare]


async def test_writing_a_record_twice_leaves_one_row(store, replica):
    first = record("s1", T0, ended_at=T0 + timedelta(minutes=10))
    again = record("s1", T0, ended_at=T0 + timedelta(minutes=11), end_reason="stopped")  # a teardown taken over by another replica
    await asyncio.gather(store.put_usage(first), replica.put_usage(again))
    (row,) = await store.usage(T0 - timedelta(days=1), T0 + timedelta(days=1))
    assert row in (first, again)
    await store.put_usage(again)
    assert await replica.usage(T0 - timedelta(days=1), T0 + timedelta(days=1)) == [again]


async def test_reads_by_time_range_across_months_and_by_user(store):
    rows = [
        record("oct", datetime(2026, 10, 31, 23, 59, tzinfo=timezone.utc)),
        record("nov1", datetime(2026, 11, 1, tzinfo=timezone.utc), owner="test:bob"),
        record("nov2", T0),
        record("dec", datetime(2026, 12, 1, tzinfo=timezone.utc)),
    ]
    for r in reversed(rows):
        await store.put_usage(r)
    november = (datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 12, 1, tzinfo=timezone.utc))
    assert [r.session_id for r in await store.usage(*november)] == ["nov1", "nov2"]  # since inclusive, until exclusive
    assert [r.session_id for r in await store.usage(datetime(2026, 10, 1, tzinfo=timezone.utc), datetime(2027, 1, 1, tzinfo=timezone.utc))] == \
        ["oct", "nov1", "nov2", "dec"]
    assert [r.session_id for r in await store.usage(*november, user="test:bob")] == ["nov1"]  # the key
    assert [r.session_id for r in await store.usage(*november, user="alice@example.org")] == ["nov2"]  # or the label
    assert await store.usage(*november, user="test:nobody") == []
    assert await store.usage(T0 + timedelta(days=30), T0 + timedelta(days=60)) == []


async def test_usage_records_are_kept_for_their_retention(store, replica):
    await store.put_usage(record("old", T0))
    await store.put_usage(record("newer", T0 + timedelta(days=40)))
    await store.purge_expired(T0 + timedelta(days=300))
    assert len(await replica.usage(T0 - timedelta(days=1), T0 + timedelta(days=400))) == 2
    await replica.purge_expired(T0 + USAGE_RETENTION + timedelta(days=1))  # 401 days after the first: it goes
    assert [r.session_id for r in await store.usage(T0 - timedelta(days=1), T0 + timedelta(days=400))] == ["newer"]
    await store.purge_expired(T0 + timedelta(days=400), usage_retention=timedelta(days=30))  # VPN_USAGE_RETENTION_DAYS=30
    assert await replica.usage(T0 - timedelta(days=1), T0 + timedelta(days=400)) == []


def entry(at: datetime, user: str = "test:alice", command: str = "status", allowed: bool = True, reason: str = "user", email: str = "") -> AuditEntry:
    return AuditEntry(at, user, email, "test", command, allowed, reason)


async def test_the_audit_log_reads_a_time_range_and_a_user(store, replica):
    await store.audit(entry(T0 - timedelta(days=3), "test:alice", "start"))
    await store.audit(entry(T0 - timedelta(days=1), "test:bob", "stop", email="bob@example.org"))
    await store.audit(entry(T0, "test:alice", "list", False, "admin only"))
    await store.audit(entry(T0 + timedelta(hours=2), "test:root", "list", True, "admin"))
    everything = await replica.audit_log()
    assert [e.command for e in everything] == ["list", "list", "stop", "start"]
    assert [e.user for e in await replica.audit_log(since=T0 - timedelta(days=2))] == ["test:root", "test:alice", "test:bob"]
    assert [e.user for e in await replica.audit_log(until=T0)] == ["test:bob", "test:alice"]
    assert [e.user for e in await replica.audit_log(since=T0 - timedelta(days=2), until=T0 + timedelta(hours=1))] == ["test:alice", "test:bob"]
    assert [e.command for e in await replica.audit_log(user="test:alice")] == ["list", "start"]
    assert [e.command for e in await replica.audit_log(user="bob@example.org")] == ["stop"]  # by email too
    assert [e.command for e in await replica.audit_log(1, user="test:alice")] == ["list"]
    assert await replica.audit_log(user="test:nobody") == []


@pytest.mark.parametrize("backend", ["azure-tables"], indirect=True)
async def test_a_months_report_reads_one_partition(backend, azurite):
    """Counted at the SDK's transport: the month's report is one query over that month's partitions (its
    shards, issue 25: `2026-11` up to `2026-11}`), whatever else the table holds."""
    from azure.data.tables.aio import TableServiceClient

    from bot.store.tables import TableStore

    urls: list[str] = []
    store = TableStore(TableServiceClient.from_connection_string(azurite.connection_string, raw_request_hook=lambda r: urls.append(r.http_request.url)),
                       prefix=azurite.prefix())
    await store.open()
    try:
        for month in (10, 11, 12):
            await store.put_usage(record(f"m{month}", datetime(2026, month, 15, tzinfo=timezone.utc)))
        urls.clear()
        rows = await store.usage(datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 12, 1, tzinfo=timezone.utc))
        assert [r.session_id for r in rows] == ["m11"]
        (url,) = urls
        assert "PartitionKey%20ge%20%272026-11%27%20and%20PartitionKey%20lt%20%272026-11%7D%27" in url, url
    finally:
        await store.close()
