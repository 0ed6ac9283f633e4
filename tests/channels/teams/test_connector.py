"""The Bot Connector client (bot/channels/teams/connector.py): one retry rule for every call, pacing."""
from __future__ import annotations

import asyncio
import time

import pytest

from bot.messages import ConversationRef
from bot.store.model import SessionState
from tests.channels.teams.harness import TENANT, dev_config
from tests.fakes.connector import FakeConnector


async def test_retries_429_and_stops_on_403(make_teams, caplog):
    h = await make_teams()
    h.connector.faults.append(("POST", "/activities", 429, {"error": {"code": "TooManyRequests"}}))
    await h.say("/vpn help")
    await h.settle()
    assert "I hand out WireGuard" in h.everything_sent()
    assert len([c for c in h.connector.calls if c.method == "POST" and "/activities" in c.path]) == 2
    h.connector.faults.append(("POST", "/activities", 403, {"error": {"code": "MessageWritesBlocked", "message": "blocked"}}))
    before = len(h.connector.calls)
    await h.say("/vpn help")
    await h.settle()
    assert len(h.connector.calls) - before == 1  # the member lookup is cached; the one send is not retried
    assert "403" in caplog.text and "not retrying" in caplog.text


async def test_one_retry_rule(make_teams):
    h = await make_teams()
    # A message POST that may have arrived (502) is not repeated: it could post twice.
    h.connector.faults.append(("POST", "/activities", 502, {}))
    await h.say("/vpn help")
    await h.settle()
    assert len([c for c in h.connector.calls if c.method == "POST" and "/activities" in c.path]) == 1
    # Member lookups (GET), updates (PUT) and deletes are safe to repeat.
    channel = h.runtime.channels[0]
    channel.members._emails.clear()  # forget the cached lookup
    h.connector.faults += [("GET", "/members/", 504, {}), ("GET", "/members/", 503, {})]
    await h.say("/vpn help")
    await h.settle()
    assert len([c for c in h.connector.calls if c.method == "GET"]) == 1 + 3
    assert channel.members._emails[(TENANT, "29:1alice-teams-user-id")][1] == "alice@contoso.com"
    from bot.messages import ConversationRef

    conv = ConversationRef("teams", {"reference": {"conversation": {"id": "a:1personal-alice"}, "serviceUrl": h.connector.base_url,
                                                   "channelId": "msteams", "bot": {"id": "28:vpn-bot-app-id"}}, "conversation_type": "personal"})
    h.connector.faults += [("PUT", "/activities/", 502, {}), ("PUT", "/activities/", 504, {})]
    await channel.send_progress(conv, "step", "1:act-1")
    await h.settle()
    assert len(h.connector.updates()) == 3


# ----- issue 19: Retry-After, send limits, locks --------------------------------------------------------

def personal(h) -> ConversationRef:
    return ConversationRef("teams", {"reference": {"conversation": {"id": "a:1personal-alice"}, "serviceUrl": h.connector.base_url,
                                                   "channelId": "msteams", "bot": {"id": "28:vpn-bot-app-id"}}, "conversation_type": "personal"})


def sends(h, conversation: str = "a:1personal-alice") -> list:
    return [c for c in h.connector.calls if "/activities" in c.path and f"/conversations/{conversation}/" in c.path]


async def test_retry_after_is_waited_in_full(make_teams):
    """19.3: Retry-After is a minimum (RFC 9110); the wait was drawn between half of it and all of it."""
    h = await make_teams()
    h.connector.retry_after = "1"
    h.connector.faults += [("POST", "/activities", 429, {"error": {"code": "TooManyRequests"}})] * 2
    await h.say("/vpn help")
    await h.settle()
    assert "I hand out WireGuard" in h.everything_sent()
    first, second, third = [c.at for c in h.connector.sent()][:3]
    assert second - first >= 1.0 and third - second >= 1.0


def test_retry_after_reads_seconds_and_dates():
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    from bot.channels.teams.connector import retry_after_seconds

    assert retry_after_seconds("3") == 3.0 and retry_after_seconds(" 0 ") == 0.0 and retry_after_seconds("-5") == 0.0
    assert retry_after_seconds("") is None and retry_after_seconds("soon") is None and retry_after_seconds("nan") is None
    assert retry_after_seconds("inf") == float("inf")
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    assert 100 < retry_after_seconds(later) <= 120


async def test_a_retry_after_past_the_cap_fails_the_delivery_at_once_and_says_so(make_teams):
    """19.3: Teams asks for ten minutes: the session fails now, with words the user can act on."""
    h = await make_teams()  # waits at most 30 s (TeamsConfig.max_retry_wait)
    h.connector.retry_after = "600"
    h.connector.body_faults.append(("POST", "data:image/png;base64,", 429, {"error": {"code": "TooManyRequests"}}))
    started = time.monotonic()
    await h.say("/vpn start")
    assert await h.runtime.runner.wait_idle(20), "the bot waited for Teams' Retry-After"
    assert time.monotonic() - started < 10
    assert [s.state for s in await h.runtime.store.sessions(list(SessionState))] == [SessionState.FAILED]
    assert "Teams is limiting messages to this chat right now; please try again in 10 minutes" in h.everything_sent()


async def test_no_lock_is_held_while_a_retry_waits(make_teams):
    """19.3: a progress update waiting to retry a 503 held every other send to the conversation."""
    h = await make_teams(config=dev_config(backoff=1.5))  # the first retry waits 0.75 to 1.5 s
    channel = h.runtime.channels[0]
    conv = personal(h)
    h.connector.faults.append(("PUT", "/activities/", 503, {}))
    await channel.send_progress(conv, "step 1", "1:act-1")
    while not h.connector.updates():
        await asyncio.sleep(0.01)
    started = time.monotonic()
    await channel.send_text(conv, "meanwhile")
    assert time.monotonic() - started < 0.5
    await h.settle()
    first_put, second_put = h.connector.updates()
    (text,) = [c for c in h.connector.sent() if "meanwhile" in FakeConnector.text_of(c)]
    assert first_put.at < text.at < second_put.at


async def test_sends_to_one_conversation_keep_teams_limits_and_their_order(make_teams):
    """19.6: 7 per second, 8 per 2 s (and 60 per 30 s, 1,800 per hour: see the pacer test below)."""
    h = await make_teams()
    channel = h.runtime.channels[0]
    conv = personal(h)
    await asyncio.gather(*(channel.send_text(conv, f"message {i}") for i in range(10)))
    calls = sends(h)
    assert [json_text(c) for c in calls] == [f"message {i}" for i in range(10)]
    times = [c.at for c in calls]
    assert within(times, 1.0) <= 7 and within(times, 2.0) <= 8
    # Another conversation is not held up by this one.
    other = ConversationRef("teams", {**conv.data, "reference": {**conv.data["reference"], "conversation": {"id": "a:1personal-bob"}}})
    started = time.monotonic()
    await asyncio.gather(*(channel.send_text(other, f"message {i}") for i in range(7)))
    assert time.monotonic() - started < 1.0


def json_text(call) -> str:
    return (call.body or {}).get("text", "")


def within(times: list[float], seconds: float) -> int:
    """The most sends in any window of `seconds`."""
    times = sorted(times)
    return max(sum(1 for t in times if start <= t < start + seconds) for start in times)


@pytest.mark.parametrize("n, seconds", [(7, 1.0), (8, 2.0), (60, 30.0), (1800, 3600.0)])
def test_the_pacer_keeps_every_window(n, seconds):
    """19.6, on a clock of its own: 2,000 sends as fast as allowed, every window within Teams' limit."""
    from bot.channels.teams.connector import Pacer

    now = [0.0]
    pacer = Pacer(10, clock=lambda: now[0])
    times = []
    for _ in range(2000):
        now[0] += pacer.reserve("conversation")  # the caller waits its turn, then sends
        times.append(now[0])
    assert max(bisect_count(times, t, t + seconds) for t in times) <= n
    assert times[1800] - times[0] >= 3600  # the 1,801st send waits for the hour


def bisect_count(times: list[float], start: float, end: float) -> int:
    import bisect

    return bisect.bisect_left(times, end) - bisect.bisect_left(times, start)


async def test_429_after_the_pacer_still_retries_and_holds_the_conversation(make_teams):
    """19.6: the limits are kept per process; another replica's sends still earn a 429, which is retried,
    and the conversation's other sends wait out the Retry-After too."""
    h = await make_teams()
    h.connector.retry_after = "1"
    h.connector.faults.append(("POST", "/activities", 429, {"error": {"code": "TooManyRequests"}}))
    channel = h.runtime.channels[0]
    conv = personal(h)
    first = asyncio.ensure_future(channel.send_text(conv, "first"))
    while not h.connector.calls:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # the 429 is in
    await channel.send_text(conv, "second")
    await first
    throttled, *rest = sends(h)
    assert all(c.at - throttled.at >= 1.0 for c in rest) and [json_text(c) for c in rest] == ["first", "second"]
