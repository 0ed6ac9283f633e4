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


async def test_an_ended_session_releases_all_its_addresses_and_no_others(stores):
    a, b = stores
    assert await a.reserve_address("host", "10.77.0.2", "ended", T0) == "ended"
    assert await a.reserve_address("host", "10.77.0.3", "ended", T0) == "ended"  # a retry that moved
    assert await b.reserve_address("dryrun", "10.77.0.2", "ended", T0) == "ended"  # another scope
    assert await b.reserve_address("host", "10.77.0.4", "live", T0) == "live"
    assert await a.reserve_address("host", "10.77.0.4", "ended", T0) == "live"  # lost: nothing of it to release
    await b.release_addresses("ended")
    for scope, address in (("host", "10.77.0.2"), ("host", "10.77.0.3"), ("dryrun", "10.77.0.2")):
        assert await a.reserve_address(scope, address, "next", T0) == "next"
    assert await a.reserve_address("host", "10.77.0.4", "next", T0) == "live"
    await a.release_addresses("ended")  # again: nothing left to do
    assert await b.reserve_address("host", "10.77.0.2", "other", T0) == "next"
