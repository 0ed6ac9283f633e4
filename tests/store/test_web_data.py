"""The store methods the web channel added (accounts, attempt counters, progress text): a contract any back end passes."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from bot.store.sqlite import SqliteStore
from bot.store.ports import LocalUser

T0 = datetime(2026, 11, 26, 12, 7, 30, tzinfo=timezone.utc)
WINDOW = timedelta(minutes=15)


@pytest.fixture(params=["sqlite", "azure-tables"])
async def store(request, tmp_path):
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "db.sqlite3")
    else:
        from bot.store.tables import TableStore

        server = request.getfixturevalue("azurite")
        s = TableStore.from_connection_string(server.connection_string, prefix=server.prefix())
    await s.open()
    yield s
    await s.close()


async def test_accounts(store):
    assert await store.get_user("a@example.org") is None and await store.list_users() == []
    await store.put_user(LocalUser("b@example.org", "hash-b", T0))
    await store.put_user(LocalUser("a@example.org", "hash-a", T0))
    await store.put_user(LocalUser("a@example.org", "hash-a2", T0 + WINDOW))  # a new password keeps the account
    assert [u.email for u in await store.list_users()] == ["a@example.org", "b@example.org"]
    got = await store.get_user("a@example.org")
    assert got.password_hash == "hash-a2" and got.created_at == T0
    assert await store.delete_user("a@example.org") is True
    assert await store.delete_user("a@example.org") is False
    assert await store.get_user("a@example.org") is None


async def test_attempt_counters_are_atomic_fixed_windows(store):
    counts = await asyncio.gather(*(store.count_attempt("k", T0, WINDOW) for _ in range(10)))
    assert sorted(counts) == list(range(1, 11))
    assert await store.attempts("k", T0 + timedelta(minutes=7), WINDOW) == 10  # same window (12:00-12:15)
    assert await store.attempts("other", T0, WINDOW) == 0
    assert await store.attempts("k", T0 + WINDOW, WINDOW) == 0  # the next window starts from nothing
    assert await store.count_attempt("k", T0 + WINDOW, WINDOW) == 1
    await store.clear_attempts("k")
    assert await store.attempts("k", T0 + WINDOW, WINDOW) == 0


async def test_progress_text(store):
    assert await store.get_progress("web:r1") == ""
    await store.set_progress("web:r1", "step 1", T0)
    await store.set_progress("web:r1", "step 2", T0)
    await store.set_progress("web:r2", "x" * 5000, T0)  # stored whole: the web channel keeps notes under 15k
    assert await store.get_progress("web:r1") == "step 2"
    assert await store.get_progress("web:r2") == "x" * 5000
    await store.set_progress("web:r3", "later", T0 + timedelta(days=3))  # old texts are forgotten
    assert await store.get_progress("web:r1") == ""
