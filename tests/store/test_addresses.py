"""The address port on both back ends: one holder per tunnel address, across replicas."""
from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.factories import T0

ROOT = Path(__file__).resolve().parents[2]


async def test_an_address_has_one_holder_across_replicas(stores):
    a, b = stores
    holders = await asyncio.gather(*((a if i % 2 else b).reserve_address("host", "10.77.0.2", f"s{i}", T0) for i in range(10)))
    assert len(set(holders)) == 1
    winner = holders[0]
    assert await a.reserve_address("host", "10.77.0.2", winner, T0) == winner  # a retry keeps it
    await b.release_address("host", "10.77.0.2", "someone-else")  # not theirs: stays
    assert await a.reserve_address("host", "10.77.0.2", "other", T0) == winner
    await b.release_addresses(winner)
    assert await a.reserve_address("host", "10.77.0.2", "other", T0) == "other"
