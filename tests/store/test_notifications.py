"""The notification outbox port (issue 23) on both stores: an item per (event, target) however many
workers enqueue it, due items oldest first, every change a compare-and-set, registered chats, purging."""
from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime, timedelta, timezone

import pytest

from bot.messages import ConversationRef
from bot.store.model import Conflict
from bot.store.ports import NOTIFICATION_MEMORY, Notification

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
HOOK = "https://hooks.example.org/vpn?x=1#frag"


def item(event: str, target: str = HOOK, at: datetime = T0, **changes) -> Notification:
    return dataclasses.replace(Notification(event, target, '{"type": "ended"}', at, at), **changes)


async def test_an_event_is_enqueued_once_per_target_however_many_workers_emit_it(store, replica):
    one = [item("s1.ended"), item("s1.ended", "teams:19:abc@thread.tacv2")]
    added = await asyncio.gather(*((store if i % 2 else replica).enqueue(one) for i in range(6)))
    assert sum(added) == 2
    got = await replica.notifications("s1.ended")
    assert sorted(n.target for n in got) == sorted([HOOK, "teams:19:abc@thread.tacv2"])
    assert all(n.state == "pending" and n.attempts == 0 and n.version for n in got)
    assert await store.notifications("s2.ended") == []


async def test_due_items_come_oldest_first_and_saving_is_a_compare_and_set(store, replica):
    await store.enqueue([item("late", due_at=T0 + timedelta(minutes=5)), item("b", at=T0 + timedelta(seconds=1)), item("a")])
    assert [n.event_id for n in await replica.due_notifications(T0 + timedelta(seconds=1))] == ["a", "b"]
    assert [n.event_id for n in await replica.due_notifications(T0 + timedelta(minutes=5))] == ["a", "b", "late"]
    assert [n.event_id for n in await replica.due_notifications(T0 + timedelta(minutes=5), limit=1)] == ["a"]
    assert await store.next_notification_due() == T0
    (mine,) = [n for n in await store.due_notifications(T0) if n.event_id == "a"]
    (theirs,) = [n for n in await replica.due_notifications(T0) if n.event_id == "a"]
    claimed = await store.save_notification(dataclasses.replace(mine, lease_owner="w1", lease_expires_at=T0 + timedelta(seconds=30), attempts=1))
    assert claimed.version != mine.version
    with pytest.raises(Conflict):
        await replica.save_notification(dataclasses.replace(theirs, lease_owner="w2"))  # read before the claim: stale
    done = await store.save_notification(dataclasses.replace(claimed, state="delivered", delivered_at=T0, lease_owner=""))
    assert [n.event_id for n in await replica.due_notifications(T0 + timedelta(minutes=5))] == ["b", "late"]
    (back,) = await replica.notifications("a")
    assert (back.state, back.attempts, back.delivered_at, back.version) == ("delivered", 1, T0, done.version)
    with pytest.raises(Conflict):
        await store.save_notification(item("never-stored"))


async def test_registered_chats_are_shared(store, replica):
    conv = ConversationRef("teams", {"reference": {"conversation": {"id": "19:abc@thread.tacv2"}}})
    await store.put_notify_target("teams:19:abc@thread.tacv2", conv)
    await store.put_notify_target("groupme:4242", ConversationRef("groupme", {"group_id": "4242"}))
    assert await replica.notify_targets() == {"teams:19:abc@thread.tacv2": conv, "groupme:4242": ConversationRef("groupme", {"group_id": "4242"})}
    assert await replica.delete_notify_target("groupme:4242") is True
    assert await store.delete_notify_target("groupme:4242") is False
    assert list(await store.notify_targets()) == ["teams:19:abc@thread.tacv2"]


async def test_delivered_items_are_forgotten_after_a_week_pending_ones_never(store, replica):
    await store.enqueue([item("old-done"), item("old-pending"), item("recent", at=T0 + timedelta(days=6))])
    (done,) = await store.notifications("old-done")
    await store.save_notification(dataclasses.replace(done, state="delivered", delivered_at=T0))
    await replica.purge_expired(T0 + NOTIFICATION_MEMORY + timedelta(hours=1))
    assert sorted(n.event_id for n in await store.notifications()) == ["old-pending", "recent"]


async def test_a_pending_item_without_a_due_entry_is_found_by_the_index_check(store):
    """Table Storage finds pending items through its due index; one queued by an earlier version has no entry
    until the fleet-wide index check (SQLite reads its own column: nothing to repair)."""
    from datetime import timedelta

    from bot.store.ports import Notification
    from tests.support.factories import T0

    item = Notification("s1.ready", "https://hooks.example/x", "{}", T0, T0)
    await store.enqueue([item])
    if type(store).__name__ == "TableStore":  # as an earlier version left it: the item without its entry
        async for e in store._table("due").list_entities():
            await store._table("due").delete_entity(e["PartitionKey"], e["RowKey"])
        assert await store.due_notifications(T0 + timedelta(seconds=1)) == []
    await store.check_due_index(T0, {})
    assert [n.key for n in await store.due_notifications(T0 + timedelta(seconds=1))] == [item.key]
