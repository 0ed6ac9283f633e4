"""What Teams sends the bot, checked and read; and the shape of the activities the bot sends back.

`check_activity` refuses what Teams never sends before the SDK or our handlers choke on it (the
caller answers 400 with one log line). The rest reads an activity: its tenant, whether its
conversation is private, the reference to reply to, and who sent it (`Members`: the sender's id,
and the email or UPN Teams has for them).
"""
from __future__ import annotations

import fnmatch
import json
import logging
import re
import time
from typing import Any
from urllib.parse import quote, urlsplit

from botbuilder.core import TurnContext
from botbuilder.schema import Activity

from bot.channels.teams.config import TeamsConfig
from bot.channels.teams.connector import ConnectorClient, ConnectorError
from bot.messages import ConversationRef, Identity, InvalidIdentity, UserKey
from bot.recent import Recent
from cards.adaptive import render_adaptive
from cards.model import Card
from cards.text import render_card_text

log = logging.getLogger(__name__)
ADAPTIVE = "application/vnd.microsoft.card.adaptive"
FILE_CONSENT = "application/vnd.microsoft.teams.card.file.consent"
FILE_INFO = "application/vnd.microsoft.teams.card.file.info"


class BadActivity(ValueError):
    """A request body the SDK must never see; the text is logged (one line) and answered with 400."""


_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_surrogate(data: Any) -> bool:
    """Lone surrogates (JSON `\\ud800`) anywhere: they break every encoder downstream."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def may_hold_surrogates(body: bytes) -> bool:
    """Whether json.loads(body) can give a lone surrogate: only through a `\\u` escape or non-ASCII
    bytes (UTF-8 read with surrogatepass, UTF-16/32), so an ASCII body without `\\u` cannot."""
    return not body.isascii() or b"\\u" in body


def check_activity(data: Any, *, surrogates_possible: bool = True) -> None:
    """Refuse what Teams never sends before the SDK or our handlers choke on it. `surrogates_possible`
    False (may_hold_surrogates of the body) skips looking for lone surrogates in every string."""
    if not isinstance(data, dict) or not isinstance(data.get("type"), str) or not data.get("type"):
        raise BadActivity("not an activity")
    if surrogates_possible and _has_surrogate(data):
        raise BadActivity("lone surrogate in a string")
    for key in ("from", "recipient", "conversation"):
        part = data.get(key)
        if not isinstance(part, dict) or not isinstance(part.get("id"), str) or not part["id"]:
            raise BadActivity(f"missing or malformed {key!r}")
    service_url = data.get("serviceUrl")
    if not isinstance(service_url, str) or not service_url.startswith(("http://", "https://")) or not host_of(service_url):
        raise BadActivity("missing or malformed serviceUrl")  # botbuilder would fall back to the public connector
    if "id" in data and not isinstance(data["id"], str):
        raise BadActivity("malformed activity id")
    if data.get("channelData") is not None and not isinstance(data["channelData"], dict):
        raise BadActivity("malformed channelData")
    if data["type"] == "invoke" and data.get("name") == "fileConsent/invoke":
        value = data.get("value")
        if not isinstance(value, dict) or value.get("action") not in ("accept", "decline") or not isinstance(value.get("context"), dict):
            raise BadActivity("malformed fileConsent/invoke value")
        if not isinstance(value["context"].get("token", ""), str):
            raise BadActivity("malformed fileConsent/invoke token")
        if value["action"] == "accept":
            info = value.get("uploadInfo")
            if not isinstance(info, dict) or not all(isinstance(info.get(k), str) and info.get(k) for k in ("uploadUrl", "name")):
                raise BadActivity("malformed fileConsent/invoke uploadInfo")
            if any(k in info and not isinstance(info[k], str) for k in ("contentUrl", "uniqueId", "fileType")):
                raise BadActivity("malformed fileConsent/invoke uploadInfo")


def host_of(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def tenant_of(activity: Activity) -> str:
    data = activity.channel_data or {}
    tenant = data.get("tenant") if isinstance(data, dict) else None
    return str((tenant or {}).get("id") or "") if isinstance(tenant, dict) else ""


def is_personal(activity: Activity) -> bool:
    """Fail closed: only a conversation Teams calls personal, and not a group, is private."""
    conversation = activity.conversation
    if conversation is None:
        return False
    return conversation.conversation_type == "personal" and conversation.is_group is not True


def _shared_type(activity: Activity) -> str:
    kind = activity.conversation.conversation_type if activity.conversation else None
    return kind if kind in ("groupChat", "channel") else "unknown"


def conversation_of(activity: Activity) -> ConversationRef:
    reference = TurnContext.get_conversation_reference(activity).serialize()
    return ConversationRef(
        "teams",
        {
            "reference": reference,
            "tenant_id": tenant_of(activity),
            "user_id": activity.from_property.id if activity.from_property else "",
            "conversation_type": "personal" if is_personal(activity) else _shared_type(activity),
        },
    )


def upload_url_allowed(url: str, hosts: tuple[str, ...], *, dev_mode: bool = False) -> bool:
    """https on an allowed OneDrive/SharePoint host (`*.sharepoint.com` matches its subdomains);
    dev mode also takes http to a loopback host on the list (a local fake)."""
    host = host_of(url)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if not host or not any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in hosts):
        return False
    if scheme == "https":
        return True
    return dev_mode and scheme == "http" and host in ("127.0.0.1", "localhost", "::1")


def card_activity(card: Card) -> dict:
    content = render_adaptive(card)
    content["fallbackText"] = render_card_text(card)
    return {"type": "message", "attachments": [{"contentType": ADAPTIVE, "content": content}]}


class CardJson:
    """A card's `attachments` as JSON, kept for the `size` cards sent most recently: a card sent again
    (the help card is the same for everyone with one role and one set of limits) is not rendered and
    encoded again (~30 us of a 2 KB card). Keyed by the card's value, so a hit is the same JSON; a
    card that cannot be hashed (a list in it) is encoded every time."""

    def __init__(self, size: int = 64) -> None:
        self._recent: Recent[Card, str] = Recent(size)

    def attachments(self, card: Card) -> str:
        try:
            known = self._recent.get(card)
        except TypeError:  # not hashable
            return self._encode(card)
        if known is None:
            known = self._recent[card] = self._encode(card)
        return known

    @staticmethod
    def _encode(card: Card) -> str:
        return json.dumps(card_activity(card)["attachments"])


class Members:
    """Who sent an activity: their Entra object id, and the email or UPN Teams has for them (cached),
    trusted only for a member of a served tenant who is not a guest."""

    def __init__(self, config: TeamsConfig, client: ConnectorClient) -> None:
        self.config, self.client = config, client
        # (tenant of the activity, member id) -> (until, email or None)
        self._emails: Recent[tuple[str, str], tuple[float, str | None]] = Recent(config.remembered)

    async def identity_of(self, activity: Activity) -> Identity | None:
        sender = activity.from_property
        aad = getattr(sender, "aad_object_id", None) if sender else None
        if not sender or not aad:
            return None
        return await self.identity(aad, sender.id, sender.name or "", tenant_of(activity), activity.service_url, activity.conversation.id)

    async def identity(self, aad: str | None, member_id: str, name: str, tenant: str, service_url: str, conversation_id: str) -> Identity | None:
        """The sender (`aad`: their Entra object id, `member_id`: their Teams id) of an activity in this conversation."""
        if not aad:
            return None
        try:
            key = UserKey("teams", aad.lower())
        except InvalidIdentity:
            return None
        return Identity(key, email=await self._email(tenant, service_url, conversation_id, member_id), display_name=name)

    async def _email(self, tenant: str, service_url: str, conversation_id: str, member_id: str) -> str | None:
        """The verified email or UPN from Teams (cached); guests and anonymous users have none."""
        key = (tenant, member_id)
        cached = self._emails.get(key)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        email = None
        try:
            path = f"conversations/{quote(conversation_id, safe='')}/members/{quote(member_id, safe='')}"
            member = await self.client.call("GET", service_url, path, idempotent=True)
            if isinstance(member, dict):
                email = self._verified_email(member, key[0])
        except ConnectorError as exc:  # a lookup failure must not lock the user out of id-based rules
            log.info("Teams: member lookup failed (%s); matching by id only", exc)
        self._emails[key] = (time.monotonic() + self.config.member_cache_seconds, email)
        return email

    def _verified_email(self, member: dict, activity_tenant: str) -> str | None:
        """The roster's email (or UPN) only for a member (`userRole` "user") of a served tenant: a
        guest's, or another tenant's, is whatever their home directory says, unchecked by ours.
        Served = TEAMS_ALLOWED_TENANTS or the bot's own tenant, else the tenant the activity came from."""
        role = str(member.get("userRole") or "").lower()
        tenant = str(member.get("tenantId") or "").lower()
        served = {t.lower() for t in (self.config.tenants or (activity_tenant,)) if t}
        if role != "user" or not tenant or tenant not in served:
            log.info("Teams: member is %s of tenant %s: matching by id only", role or "of unknown role", tenant[:40] or "?")
            return None
        email = member.get("email") or member.get("userPrincipalName") or None
        return str(email) if email else None
