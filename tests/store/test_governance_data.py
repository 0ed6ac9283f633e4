"""What issue 22 keeps in the store, on both back ends: approvers' private chats (ContactStore), the
new states with their fields through the codec, a denied request freeing its place under the caps,
and the first of two concurrent decisions winning."""
from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import timedelta

import pytest

from bot.messages import ConversationRef
from bot.store.model import ACTIVE_STATES, TERMINAL_STATES, Conflict, InvalidTransition, SessionState
from bot.store.ports import Contact, CreateOutcome
from tests.support.factories import T0, new_session


async def test_contacts_are_one_per_person_and_shared_by_every_replica(stores):
    one, two = stores
    teams = ConversationRef("teams", {"reference": {"serviceUrl": "https://smba/", "conversation": {"id": "a:1personal-bob"}}, "user_id": "29:bob"})
    await one.put_contact(Contact("teams:bob", "bob@contoso.com", teams, T0))
    await one.put_contact(Contact("groupme:7", "groupme:7", ConversationRef("groupme", {"group_id": "4242"}), T0))
    newer = ConversationRef("teams", {"reference": {"serviceUrl": "https://smba/", "conversation": {"id": "a:1personal-bob-2"}}})
    await two.put_contact(Contact("teams:bob", "bob@contoso.com", newer, T0 + timedelta(hours=1)))
    found = await one.contacts()
    assert [c.user for c in found] == ["groupme:7", "teams:bob"]
    assert found[1].conversation == newer and found[1].updated_at == T0 + timedelta(hours=1)
    assert await one.deployment_id() == await two.deployment_id()  # the meta table keeps its own row apart


async def test_awaiting_and_denied_round_trip_and_denied_frees_the_place(stores):
    one, two = stores
    waiting = new_session(state=SessionState.AWAITING_APPROVAL, reason="on call", approvers="teams:bob, group:6f1c0000-0000-4000-8000-00000000aaaa",
                          asked="bob@contoso.com", decide_by=T0 + timedelta(minutes=60), max_minutes=30, allowed_ips="10.0.0.0/8",
                          approval_cards=json.dumps([{"conversation": "{}", "id": "1:act-1"}]))
    assert await one.create_session(waiting, per_user=1, total=1) is CreateOutcome.CREATED
    assert await one.create_session(new_session(owner="test:bob"), per_user=1, total=1) is CreateOutcome.GLOBAL_LIMIT  # it holds its place
    stored = await two.get(waiting.id)
    assert dataclasses.replace(stored, version="", held_slots="") == waiting
    assert [s.id for s in await two.sessions([SessionState.AWAITING_APPROVAL])] == [waiting.id]
    denied = await two.save(stored.moved(SessionState.DENIED, T0, end_reason="denied by bob", decided_by="bob", decided_at=T0, ended_at=T0))
    assert denied.state in TERMINAL_STATES and denied.state not in ACTIVE_STATES
    with pytest.raises(InvalidTransition):
        denied.moved(SessionState.REQUESTED, T0)
    assert await one.create_session(new_session(owner="test:bob"), per_user=1, total=1) is CreateOutcome.CREATED


async def test_two_decisions_at_once_one_wins(stores):
    one, two = stores
    s = new_session(state=SessionState.AWAITING_APPROVAL)
    await one.create_session(s, per_user=1, total=10)
    a, b = await one.get(s.id), await two.get(s.id)
    results = await asyncio.gather(
        one.save(a.moved(SessionState.REQUESTED, T0, decided_by="bob")),
        two.save(b.moved(SessionState.DENIED, T0, decided_by="carol", end_reason="no")),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "Session"]
    won = next(r for r in results if not isinstance(r, Conflict))
    assert (await one.get(s.id)).decided_by == won.decided_by
