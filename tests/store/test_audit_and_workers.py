"""The audit and worker ports on both back ends: the audit newest first, workers listed, one deployment id."""
from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from bot.store.ports import AuditEntry, Worker
from tests.support.factories import T0

ROOT = Path(__file__).resolve().parents[2]


async def test_audit_log_is_newest_first_and_workers_are_listed(stores):
    a, b = stores
    for i in range(3):
        await (a if i % 2 else b).audit(AuditEntry(T0 + timedelta(seconds=i), f"test:u{i}", "", "test", "start", True, "user"))
    assert [e.user for e in await a.audit_log(2)] == ["test:u2", "test:u1"]
    await a.heartbeat(Worker("host:1:aa", "host", 1, T0))
    await b.heartbeat(Worker("host:2:bb", "host", 2, T0))
    assert sorted(w.id for w in await a.workers()) == ["host:1:aa", "host:2:bb"]


async def test_one_deployment_id_for_every_replica(stores):
    a, b = stores
    ids = await asyncio.gather(*((a if i % 2 else b).deployment_id() for i in range(6)))
    assert len(set(ids)) == 1 and ids[0].startswith("d")
