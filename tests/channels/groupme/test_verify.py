"""Re-fetch verification: only documented GroupMe behaviour (issue 9, items 10 and 11); forgeries reveal nothing."""
from __future__ import annotations

import pytest

from bot.store.model import SessionState
from tests.channels.groupme.harness import ALICE, BOB


async def test_forged_sender_is_caught_by_refetch(make_harness):
    h = await make_harness()
    real = h.message("/vpn start", user=BOB)
    forged = dict(real, user_id=ALICE, sender_id=ALICE)  # someone replays Bob's message as Alice
    assert await h.callback(forged) == 200
    unknown = h.message("/vpn start", store=False)  # never posted in the group at all
    assert await h.callback(unknown) == 200
    await h.settle()
    assert await h.runtime.store.sessions(list(SessionState)) == []
    # The forgery is dropped quietly; the unknown id is answered with the truth, nothing more.
    assert h.gm.post_texts() == ["I could not confirm that message with GroupMe, so I did nothing. Please send it again in a minute."]


async def test_verification_pages_back_with_before_id_in_a_busy_group(make_harness):
    """The command is 250 messages deep: found through the newest page and `before_id`, never
    through an id GroupMe was not asked about (the fake answers those 304)."""
    h = await make_harness()
    msg = h.message("/vpn status")
    for i in range(250):
        h.message(f"chatter {i}", user=BOB)
    assert await h.callback(msg) == 200
    await h.settle()
    assert "You have no VPN session running" in "\n".join(h.gm.post_texts())
    assert h.gm.requests.count(("GET", "groups/messages")) == 3


async def test_304_is_no_messages_and_the_sender_is_told(make_harness):
    h = await make_harness()
    assert await h.callback(h.message("/vpn status", store=False)) == 200  # GroupMe answers 304: nothing there
    await h.settle()
    (text,) = h.gm.post_texts()
    assert "could not confirm that message with GroupMe" in text


async def test_groupme_errors_during_verification_are_told_not_swallowed(make_harness):
    h = await make_harness()
    h.gm.message_faults = [401]
    await h.callback(h.message("/vpn start"))
    await h.settle()
    assert await h.runtime.store.sessions(list(SessionState)) == []
    assert any("could not confirm that message with GroupMe" in t for t in h.gm.post_texts())


async def test_messages_older_than_the_window_are_not_confirmed(make_harness, clock):
    h = await make_harness(config={"verify_window": 60})
    old = h.message("/vpn status")
    clock.advance(minutes=5)
    for i in range(120):
        h.message(f"chatter {i}", user=BOB)
    await h.callback(old)
    await h.settle()
    assert "could not confirm" in "\n".join(h.gm.post_texts())
    assert h.gm.requests.count(("GET", "groups/messages")) == 4  # two pages, then once more after the retry delay


async def test_forged_status_reveals_nothing(make_harness):
    h = await make_harness()
    await h.callback(h.message("/vpn start", user=BOB))
    await h.settle()
    (s,) = await h.runtime.store.sessions([SessionState.READY])
    before = len(h.gm.posts)
    for text in ("/vpn status", "/vpn list", "/vpn extend 10", "/vpn stop"):
        real = h.message("/vpn help", user=ALICE)  # Alice's real message, replayed with Bob as sender and another text
        assert await h.callback(dict(real, user_id=BOB, sender_id=BOB, text=text)) == 200
        assert await h.callback(h.message(text, user=BOB, store=False)) == 200  # never posted at all
    await h.settle()
    after = "\n".join(h.gm.post_texts()[before:])
    assert s.id not in after and (s.endpoint or "endpoint") not in after and "Your VPN session" not in after
    assert (await h.runtime.store.get(s.id)).state is SessionState.READY


@pytest.mark.parametrize("attachments", [5, True, "x", {"type": "mentions"}, [5, None, {"type": "mentions", "loci": "x"}]])
async def test_attachments_of_any_shape_are_not_a_500(make_harness, attachments):
    h = await make_harness()
    assert await h.callback(dict(h.message("/vpn help"), attachments=attachments)) == 200
    await h.settle()
    assert h.gm.posts == [] or "I hand out WireGuard" in h.gm.post_texts()[-1]
