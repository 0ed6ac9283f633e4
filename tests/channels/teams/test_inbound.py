"""The plain-message path (bot/channels/teams/inbound.py) reads exactly what the SDK would, or declines."""
from __future__ import annotations

import copy

import pytest
from botbuilder.core import TurnContext
from botbuilder.schema import Activity

from bot.channels.teams.inbound import message_of, plain_message
from tests.channels.teams.harness import ALICE_AAD, FIXTURES, TENANT, activity

SERVICE = "https://smba.trafficmanager.net/emea/"


def sdk_message(data: dict):
    """What the SDK's path gives the channel: the Activity model, @mention removed (channel.on_message)."""
    act = Activity().deserialize(copy.deepcopy(data))
    TurnContext.remove_recipient_mention(act)
    return message_of(act)


def fixture(name: str, **values) -> dict:
    return activity(name, serviceUrl=SERVICE, aadObjectId=ALICE_AAD, tenantId=TENANT, text="/vpn help", **values)


def variants() -> list[tuple[str, dict]]:
    base = fixture("personal_message")
    out = [("as recorded", base)]

    def edit(label: str, fn) -> None:
        data = copy.deepcopy(base)
        fn(data)
        out.append((label, data))

    edit("no locale", lambda d: d.pop("locale"))
    edit("no id", lambda d: d.pop("id"))
    edit("empty id", lambda d: d.update(id=""))
    edit("no text", lambda d: d.pop("text"))
    edit("null text", lambda d: d.update(text=None))
    edit("card button value", lambda d: (d.pop("text"), d.update(value={"command": "/vpn status"})))
    edit("no entities", lambda d: d.pop("entities"))
    edit("no channelData", lambda d: d.pop("channelData"))
    edit("channelData without tenant", lambda d: d.update(channelData={"team": {"id": "x"}}))
    edit("tenant id null", lambda d: d.update(channelData={"tenant": {"id": None}}))
    edit("isGroup false", lambda d: d["conversation"].update(isGroup=False))
    edit("isGroup true", lambda d: d["conversation"].update(isGroup=True))
    edit("group chat", lambda d: d["conversation"].update(conversationType="groupChat", isGroup=True))
    edit("channel", lambda d: d["conversation"].update(conversationType="channel"))
    edit("odd conversation type", lambda d: d["conversation"].update(conversationType="meeting"))
    edit("no conversation type", lambda d: d["conversation"].pop("conversationType"))
    edit("conversation name and tenantID", lambda d: d["conversation"].update(name="Ops", tenantID=TENANT))
    edit("unknown keys everywhere", lambda d: (d["from"].update(userPrincipalName="a@b.c"), d["recipient"].update(x=1),
                                               d["conversation"].update(extra={"a": 1}), d.update(somethingNew=[1, 2])))
    edit("sender without name", lambda d: d["from"].pop("name"))
    edit("sender without aadObjectId", lambda d: d["from"].pop("aadObjectId"))
    edit("sender with role", lambda d: d["from"].update(role="user"))
    edit("empty strings", lambda d: (d["from"].update(name=""), d.update(locale="", text="")))
    edit("null name", lambda d: d["from"].update(name=None))
    # Declined: the SDK reads these its own way.
    edit("@mention", lambda d: d["entities"].append({"type": "mention", "text": "<at>VPN Bot</at>",
                                                     "mentioned": {"id": d["recipient"]["id"], "name": "VPN Bot"}}))
    edit("@Mention, other case", lambda d: d["entities"].append({"type": "Mention", "text": "<at>X</at>", "mentioned": {"id": "29:x", "name": "X"}}))
    edit("entity without type", lambda d: d["entities"].append({"x": 1}))
    edit("entities not a list", lambda d: d.update(entities={"type": "clientInfo"}))
    edit("isGroup as a string", lambda d: d["conversation"].update(isGroup="true"))
    edit("name as a number", lambda d: d["from"].update(name=5))
    edit("locale as a number", lambda d: d.update(locale=5))
    edit("text as a number", lambda d: d.update(text=5))
    edit("account properties", lambda d: d["from"].update(properties={"a": 1}))
    edit("another channel", lambda d: d.update(channelId="webchat"))
    edit("a conversation update", lambda d: d.update(type="conversationUpdate"))
    for name in sorted(p.stem for p in FIXTURES.glob("*.json")):
        if name != "personal_message":
            out.append((name, fixture(name)))
    return out


@pytest.mark.parametrize("label,data", variants(), ids=[label for label, _ in variants()])
def test_a_plain_message_reads_as_the_sdk_reads_it(label, data):
    fast = plain_message(copy.deepcopy(data))
    if fast is not None:
        assert fast == sdk_message(data), label


def test_plain_personal_and_group_messages_take_the_plain_path_and_the_rest_the_sdk():
    taken = {label for label, data in variants() if plain_message(copy.deepcopy(data)) is not None}
    assert {"as recorded", "no locale", "group chat", "card button value", "unknown keys everywhere", "null name"} <= taken
    declined = {"@mention", "@Mention, other case", "entity without type", "entities not a list", "isGroup as a string", "name as a number",
                "locale as a number", "text as a number", "account properties", "another channel", "a conversation update",
                "channel_mention", "groupchat_mention", "installed", "invoke_file_consent"}
    assert not declined & taken


def test_the_reference_is_the_one_the_sdk_stores():
    data = fixture("personal_message")
    fast = plain_message(copy.deepcopy(data))
    assert fast is not None
    reference = fast.conversation.data["reference"]
    assert reference == TurnContext.get_conversation_reference(Activity().deserialize(data)).serialize()
    assert list(reference) == ["activityId", "user", "bot", "conversation", "channelId", "locale", "serviceUrl"]
    assert fast.conversation.to_json() == sdk_message(data).conversation.to_json()
