"""Leases.update with a session a sweep has just read (`known`, issue 25: one read fewer per expiry):
the write is still a compare-and-set on that copy's version, and every "nothing to do" or refusal is
decided again on a fresh read, never on a copy that may be stale."""
from __future__ import annotations

from datetime import timedelta

import pytest

from bot.engine.leases import LeaseLost, Leases
from bot.store.model import Session, SessionState
from bot.store.ports import Worker
from bot.store.sqlite import SqliteStore
from tests.support.factories import T0, new_session


class CountingStore(SqliteStore):
    """A real SQLite store that counts its reads."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.reads = 0

    async def get(self, session_id: str) -> Session | None:
        self.reads += 1
        return await super().get(session_id)


@pytest.fixture
async def store(tmp_path):
    s = CountingStore(tmp_path / "db.sqlite3")
    await s.open()
    await s.create_session(new_session(session_id="s1"), per_user=5, total=10)
    yield s
    await s.close()


def leases(store, worker: str = "w1") -> Leases:
    return Leases(store, Worker(worker, "host", 1, T0), lambda: T0, lease_seconds=30)


async def test_a_fresh_known_copy_is_written_without_a_read(store):
    known = await store.get("s1")
    store.reads = 0
    saved = await leases(store).update("s1", lambda s: s.with_changes(T0, attempts=s.attempts + 1), known=known)
    assert saved.attempts == 1 and store.reads == 0


async def test_a_stale_known_copy_loses_its_write_and_the_change_is_decided_again(store):
    stale = await store.get("s1")
    await leases(store).update("s1", lambda s: s.with_changes(T0, attempts=5))  # another writer since
    seen: list[int] = []

    def bump(s: Session) -> Session:
        seen.append(s.attempts)
        return s.with_changes(T0, attempts=s.attempts + 1)

    saved = await leases(store).update("s1", bump, known=stale)
    assert seen == [0, 5] and saved.attempts == 6  # tried on the copy, refused by its version, decided on the stored one


async def test_nothing_to_do_on_a_stale_copy_is_decided_again_on_a_fresh_read(store):
    stale = await store.get("s1")
    await leases(store).update("s1", lambda s: s.with_changes(T0, warned=True))

    def unwarn(s: Session) -> Session | None:
        return s.with_changes(T0, warned=False) if s.warned else None  # the copy says: nothing to do

    saved = await leases(store).update("s1", unwarn, known=stale)
    assert saved is not None and saved.warned is False


async def test_a_refusal_on_a_stale_copy_is_decided_again_on_a_fresh_read(store):
    mine = leases(store, "w1")
    stale = await store.get("s1")  # not leased yet: the copy says the session is nobody's
    await mine.update("s1", lambda s: s.moved(SessionState.PROVISIONING, T0, **mine.lease(T0)))
    saved = await mine.owned("s1", (SessionState.PROVISIONING,), lambda s: s.with_changes(T0, attempts=3), known=stale)
    assert saved.attempts == 3 and saved.lease_owner == "w1"
    with pytest.raises(LeaseLost):  # and a true refusal still stands
        await leases(store, "w2").owned("s1", (SessionState.PROVISIONING,), lambda s: s, known=saved)
    assert (await store.get("s1")).lease_expires_at == T0 + timedelta(seconds=30)
