"""The account port on both back ends: local accounts, sign-in attempt counters, remembered sign-ins."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from bot.store.ports import LocalUser

T0 = datetime(2026, 11, 26, 12, 7, 30, tzinfo=timezone.utc)
WINDOW = timedelta(minutes=15)


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


async def test_attempt_counters_hold_their_limit_in_fixed_windows(store, replica):
    assert [await (store if i % 2 else replica).take_attempt("k", T0, WINDOW, 3) for i in range(5)] == [True, True, True, False, False]
    assert await store.attempts("k", T0 + timedelta(minutes=7), WINDOW) == 3  # same window (12:00-12:15); a refusal wrote nothing
    assert await store.attempts("other", T0, WINDOW) == 0
    assert await store.attempts("k", T0 + WINDOW, WINDOW) == 0  # the next window starts from nothing
    assert await replica.take_attempt("k", T0 + WINDOW, WINDOW, 3) is True
    await store.clear_attempts("k", T0 + WINDOW, WINDOW)
    assert await store.attempts("k", T0 + WINDOW, WINDOW) == 0
    assert await store.attempts("k", T0, WINDOW) == 3  # another window's count stays


async def test_a_concurrent_flood_on_one_counter_never_passes_its_limit(store, replica):
    results = await asyncio.gather(*((store if i % 2 else replica).take_attempt("flood", T0, WINDOW, 5) for i in range(40)))
    assert 1 <= results.count(True) <= 5
    assert await store.attempts("flood", T0, WINDOW) == results.count(True)
    while await store.take_attempt("flood", T0, WINDOW, 5):  # what contention left free is still there to take
        pass
    assert await replica.attempts("flood", T0, WINDOW) == 5


async def test_remembered_sign_ins(store, replica):
    month = T0 - timedelta(days=30)
    assert await store.sign_in_addresses("a@example.org", month) == frozenset()
    await store.remember_sign_in("a@example.org", "192.0.2.1", T0)
    await store.remember_sign_in("a@example.org", "2001:db8::/64", T0 - timedelta(days=2))
    assert await replica.sign_in_addresses("a@example.org", month) == {"192.0.2.1", "2001:db8::/64"}
    assert await replica.sign_in_addresses("a@example.org", T0 - timedelta(days=1)) == {"192.0.2.1"}  # since then only
    assert await replica.sign_in_addresses("a@example.org", T0 + timedelta(seconds=1)) == frozenset()
    assert await replica.sign_in_addresses("b@example.org", month) == frozenset()
    await replica.remember_sign_in("a@example.org", "192.0.2.1", T0 + timedelta(days=1))  # again, later
    assert await store.sign_in_addresses("a@example.org", T0 + timedelta(hours=1)) == {"192.0.2.1"}
