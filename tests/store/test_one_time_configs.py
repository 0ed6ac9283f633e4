"""The one-time config port on both back ends: a held config is taken once, across replicas."""
from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from bot.one_time_configs import Claim
from tests.support.factories import T0

ROOT = Path(__file__).resolve().parents[2]


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


async def test_sealed_configs_are_erased_at_expiry_and_claims_forgotten_a_day_later(stores):
    """The sweeper's purge (Table Storage: a range of the minutes fallen due, issue 25), on both stores."""
    a, b = stores
    soon = Claim("01" * 32, "s1", "test:alice", "vpn-s1", T0, T0 + timedelta(minutes=10), sealed=b"one")
    later = Claim("02" * 32, "s2", "test:bob", "vpn-s2", T0, T0 + timedelta(minutes=20), sealed=b"two")
    for c in (soon, later):
        await a.add_claim(c)
    await b.purge_claims(T0 + timedelta(minutes=9))
    assert [(await a.get_claim(c.token_hash)).sealed for c in (soon, later)] == [b"one", b"two"]
    await b.purge_claims(T0 + timedelta(minutes=10))  # the first expires now
    assert [(await a.get_claim(c.token_hash)).sealed for c in (soon, later)] == [None, b"two"]
    assert (await a.get_claim(soon.token_hash)).expires_at == soon.expires_at  # still known (a link says "expired")
    await a.purge_claims(T0 + timedelta(days=1, minutes=11))
    assert await b.get_claim(soon.token_hash) is None  # a day past expiry: forgotten
    assert (await b.get_claim(later.token_hash)).sealed is None


async def test_an_ended_sessions_configs_are_erased_and_no_others(stores):
    a, b = stores
    mine = [Claim(f"{i:02x}" * 32, "ended", "test:alice", "vpn-ended", T0, T0 + timedelta(minutes=10), sealed=b"x") for i in (0xa1, 0xa2)]
    theirs = Claim("b1" * 32, "live", "test:bob", "vpn-live", T0, T0 + timedelta(minutes=10), sealed=b"y")
    for c in (*mine, theirs):
        await a.add_claim(c)
    await b.purge_claims(T0, session_id="ended")
    assert [(await a.get_claim(c.token_hash)).sealed for c in mine] == [None, None]
    assert (await a.get_claim(theirs.token_hash)).sealed == b"y"
    assert await b.consume_claim(mine[0].token_hash, T0) is None
    assert (await b.consume_claim(theirs.token_hash, T0)).sealed == b"y"
