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
