"""The Bot Connector client (bot/channels/teams/connector.py): one retry rule for every call, pacing."""
from __future__ import annotations


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
    assert channel.members._emails["29:1alice-teams-user-id"][1] == "alice@contoso.com"
    from bot.messages import ConversationRef

    conv = ConversationRef("teams", {"reference": {"conversation": {"id": "a:1personal-alice"}, "serviceUrl": h.connector.base_url,
                                                   "channelId": "msteams", "bot": {"id": "28:vpn-bot-app-id"}}, "conversation_type": "personal"})
    h.connector.faults += [("PUT", "/activities/", 502, {}), ("PUT", "/activities/", 504, {})]
    await channel.send_progress(conv, "step", "1:act-1")
    await h.settle()
    assert len(h.connector.updates()) == 3
