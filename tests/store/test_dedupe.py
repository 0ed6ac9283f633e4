"""The de-duplication port on both back ends: a platform's re-send is seen once, whichever replica gets it."""
from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from tests.support.factories import T0

ROOT = Path(__file__).resolve().parents[2]


async def test_a_message_id_is_first_seen_once_across_replicas(stores):
    a, b = stores
    results = await asyncio.gather(*((a if i % 2 else b).first_seen("teams", "activity/1?#x", T0) for i in range(20)))
    assert results.count(True) == 1
    assert await a.first_seen("groupme", "activity/1?#x", T0) is True  # per channel
    assert await b.first_seen("teams", "activity/1?#x", T0 + timedelta(days=3)) is True  # past its TTL: new again
