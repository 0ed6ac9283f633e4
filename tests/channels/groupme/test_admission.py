"""Rate limits on GroupMe commands: per sender and per group, each told once."""
from __future__ import annotations

from tests.channels.groupme.harness import ALICE, BOB, ROOT


async def test_flood_is_rate_limited(make_harness):
    h = await make_harness()
    for _ in range(20):
        await h.callback(h.message("/vpn help"))
    await h.settle()
    helps = [t for t in h.gm.post_texts() if "I hand out WireGuard" in t]
    assert len(helps) == h.channel.config.per_user_per_minute
    told = [t for t in h.gm.post_texts() if "more than 6 commands in a minute" in t]
    assert len(told) == 1, "a sender over the limit is told once, then not again"


async def test_group_limit_is_a_setting_and_told_once(make_harness):
    h = await make_harness(config={"per_group_per_minute": 3, "per_user_per_minute": 100})
    for user in (ALICE, BOB, ROOT, ALICE, BOB):
        assert await h.callback(h.message("/vpn help", user=user)) == 200
    await h.settle()
    assert len([t for t in h.gm.post_texts() if "I hand out WireGuard" in t]) == 3
    assert len([t for t in h.gm.post_texts() if "This group sent more than 3 commands" in t]) == 1
