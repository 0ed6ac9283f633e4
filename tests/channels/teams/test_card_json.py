"""A card sent again is not encoded again (activities.py CardJson; issue 25 goal 4): what Teams gets
is the activity `card_activity` describes, addressing included, whether the card's JSON was kept or not."""
from __future__ import annotations

import json

from bot.channels.teams.activities import CardJson, card_activity
from bot.channels.teams.connector import _json_body
from cards.model import Action, Card, Table


def test_kept_json_is_the_cards_attachments_and_an_equal_card_reuses_it():
    cards = CardJson(size=2)
    card = Card(title="VPN bot", lines=("one", "two — é"), actions=(Action("Stop", "/vpn stop"),))
    first = cards.attachments(card)
    assert json.loads(first) == card_activity(card)["attachments"]
    assert cards.attachments(Card(title="VPN bot", lines=("one", "two — é"), actions=(Action("Stop", "/vpn stop"),))) is first
    other = Card(title="VPN bot", lines=("one", "three"))
    assert json.loads(cards.attachments(other)) == card_activity(other)["attachments"]
    cards.attachments(Card(title="x"))  # a third card: the first is forgotten (size 2)
    assert cards.attachments(card) is not first and cards.attachments(card) == first


def test_a_card_that_cannot_be_hashed_is_encoded_every_time():
    cards = CardJson()
    card = Card(title="Live", lines=["a list"], table=Table(["User"], [["alice"]]))
    assert json.loads(cards.attachments(card)) == card_activity(card)["attachments"]
    assert len(cards._recent) == 0


def test_members_encoded_before_join_the_body():
    assert json.loads(_json_body({"type": "message", "id": "1"}, '"attachments": [{"a": "é"}]')) == {
        "type": "message", "id": "1", "attachments": [{"a": "é"}]}
    assert json.loads(_json_body({}, '"attachments": []')) == {"attachments": []}
    assert json.loads(_json_body({"type": "message"}, "")) == {"type": "message"}


async def test_help_twice_posts_the_same_activity_as_without_the_kept_json(make_teams):
    h = await make_teams()
    for _ in range(2):
        await h.say("/vpn help")
        await h.settle()
    first, second = [c.body for c in h.connector.sent()][-2:]
    assert first is not None and second is not None
    assert {k: v for k, v in first.items() if k != "replyToId"} == {k: v for k, v in second.items() if k != "replyToId"}
    card = Card(title="VPN bot", lines=tuple(block["text"] for block in first["attachments"][0]["content"]["body"][1:]))
    assert first["attachments"] == card_activity(card)["attachments"]
    assert first["type"] == "message" and first["conversation"] and first["recipient"] and first["from"]
