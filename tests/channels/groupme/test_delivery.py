"""Delivering a config by direct message (issue 19, item 4): a retry GroupMe answers 409 was delivered.

The `source_guid` stays the same across retries of one DM, so GroupMe recognises a retry of a DM it
already stored (within about a minute) and answers 409. That is "sent": the session stays ready and
the link the user already has keeps working. The fake GroupMe stores the DM and then loses the
answer, the way a timeout or a reset after delivery looks from here.
"""
from __future__ import annotations

import aiohttp
import pytest

from bot.store.model import SessionState


@pytest.mark.parametrize("fault", ["stall", "drop"])
async def test_a_retried_dm_that_was_already_delivered_counts_as_sent(make_harness, fault):
    h = await make_harness(config={"request_timeout": 0.3})
    h.gm.dm_faults, h.gm.dm_stall_seconds = [fault], 1.0
    assert await h.callback(h.message("/vpn start")) == 200
    await h.settle()
    assert h.gm.requests.count(("POST", "direct_messages")) == 2  # the first answer was lost, the retry got 409
    (dm,) = h.gm.dms  # delivered once, not twice
    (s,) = await h.runtime.store.sessions(list(SessionState))
    assert s.state is SessionState.READY
    assert "direct message" in "\n".join(h.gm.post_texts()) and "could not" not in "\n".join(h.gm.post_texts())
    async with aiohttp.ClientSession() as http:
        async with http.post(h.link()) as resp:
            assert resp.status == 200 and "data:image/png;base64," in await resp.text()


async def test_a_409_to_a_first_attempt_is_still_an_error(make_harness):
    """A fresh `source_guid` GroupMe says it has seen is not a delivery we made: the session is not
    left ready with a link nobody received."""
    h = await make_harness()
    h.gm.dm_faults = [409]
    assert await h.callback(h.message("/vpn start")) == 200
    await h.settle()
    assert h.gm.dms == []
    assert await h.runtime.store.sessions([SessionState.READY]) == []
