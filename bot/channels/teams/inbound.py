"""A person's message, read straight from the JSON Teams posts: the hot path, without the SDK's models.

botbuilder turns each activity into msrest models (`Activity().deserialize` walks some 50 attributes
with two key extractors each), runs its turn pipeline, and the channel serialised the conversation
reference back with msrest: together more CPU than a whole request costs an aiohttp bot that acks and
replies (bench/bench_chat.py's floor). For the common case, a plain Teams message without an
@mention, `plain_message` reads what the channel uses from the dict and builds exactly what the SDK
would (tests/channels/teams/test_inbound.py compares the two over the recorded payloads and odd
variants). Anything else (invokes, conversation updates, @mentions, a field of a type the SDK would
convert) gives None and goes through the SDK as before. Either way the SDK's authentication checks
the token (`auth_view`: the activity fields it reads).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botbuilder.schema import Activity, ChannelAccount, ConversationAccount, ConversationReference

from bot.channels.teams.activities import conversation_of, tenant_of
from bot.messages import ConversationRef

# (JSON key, msrest type) of the models a conversation reference is made of, in the SDK's order.
_ACCOUNT = tuple((a["key"], a["type"]) for a in ChannelAccount._attribute_map.values())
_CONVERSATION = tuple((a["key"], a["type"]) for a in ConversationAccount._attribute_map.values())
_REFERENCE = tuple(a["key"] for a in ConversationReference._attribute_map.values())
_AS_IS = {"str": str, "bool": bool}  # msrest types whose JSON values the SDK keeps unchanged


@dataclass(frozen=True)
class Message:
    """What the channel needs of a person's message, from the SDK's Activity or from the JSON."""

    id: str | None
    text: str
    value: Any
    conversation: ConversationRef
    tenant: str
    service_url: str
    conversation_id: str
    sender_id: str
    sender_name: str
    aad_object_id: str | None


def message_of(activity: Activity) -> Message:
    """The SDK's path (@mentions removed by the caller, card actions)."""
    sender = activity.from_property
    return Message(
        id=activity.id,
        text=activity.text or "",
        value=activity.value,
        conversation=conversation_of(activity),
        tenant=tenant_of(activity),
        service_url=activity.service_url or "",
        conversation_id=activity.conversation.id if activity.conversation else "",
        sender_id=sender.id if sender else "",
        sender_name=(sender.name if sender else "") or "",
        aad_object_id=getattr(sender, "aad_object_id", None) if sender else None,
    )


def _account(part: Any, fields: tuple[tuple[str, str], ...]) -> dict | None:
    """A ChannelAccount or ConversationAccount as the SDK serialises it (known keys, None left out); None
    when a value has a type the SDK would convert or a key the plain path does not read (`properties`)."""
    if not isinstance(part, dict):
        return None
    out = {}
    for key, kind in fields:
        value = part.get(key)
        if value is None:
            continue
        if type(value) is not _AS_IS.get(kind):
            return None
        out[key] = value
    return out


def plain_message(data: dict) -> Message | None:
    """A Teams message activity without an @mention, read from its JSON (already through check_activity);
    None for anything the SDK should read."""
    if data.get("type") != "message" or data.get("channelId") != "msteams":
        return None
    entities = data.get("entities")
    if entities is not None:
        if not isinstance(entities, list):
            return None
        for entity in entities:  # an @mention is removed from the text by the SDK's own rules
            if not isinstance(entity, dict) or not isinstance(entity.get("type"), str) or entity["type"].lower() == "mention":
                return None
    if any(data.get(key) is not None and type(data[key]) is not str for key in ("id", "text", "locale")):
        return None
    user, bot, conversation = _account(data["from"], _ACCOUNT), _account(data["recipient"], _ACCOUNT), _account(data["conversation"], _CONVERSATION)
    if user is None or bot is None or conversation is None:
        return None
    channel_data = data.get("channelData")
    tenant = channel_data.get("tenant") if isinstance(channel_data, dict) else None
    tenant_id = str(tenant.get("id") or "") if isinstance(tenant, dict) else ""
    kind = conversation.get("conversationType")
    private = kind == "personal" and conversation.get("isGroup") is not True  # activities.is_personal
    values = (data.get("id"), user, bot, conversation, "msteams", data.get("locale"), data["serviceUrl"])
    reference = {key: value for key, value in zip(_REFERENCE, values) if value is not None}
    ref = ConversationRef("teams", {
        "reference": reference,
        "tenant_id": tenant_id,
        "user_id": user.get("id", ""),
        "conversation_type": "personal" if private else kind if kind in ("groupChat", "channel") else "unknown",
    })
    return Message(
        id=data.get("id"),
        text=data.get("text") or "",
        value=data.get("value"),
        conversation=ref,
        tenant=tenant_id,
        service_url=data["serviceUrl"],
        conversation_id=conversation.get("id", ""),
        sender_id=user.get("id", ""),
        sender_name=user.get("name", ""),
        aad_object_id=user.get("aadObjectId"),
    )


def auth_view(data: dict) -> Activity:
    """The fields of an activity botbuilder's authentication reads (channel, service URL, recipient role,
    relatesTo), for checking a plain message's token without deserialising all of it."""
    recipient = data["recipient"]
    return Activity(type=data["type"], id=data.get("id"), channel_id=data["channelId"], service_url=data["serviceUrl"],
                    recipient=ChannelAccount(id=recipient["id"], role=recipient.get("role")))
