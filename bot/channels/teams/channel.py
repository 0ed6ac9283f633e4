"""Microsoft Teams through the Bot Framework SDK: the channel (botbuilder is imported only in this package).

Inbound: `CloudAdapter` at `POST /api/messages` checks the token (auth.py) and parses the activity
(checked first in activities.py); a `TeamsActivityHandler` hands it to this channel, which answers
the HTTP request at once and does the work (member lookup, command, replies) in a tracked task, so
an ack never waits on Teams.

Outbound: every call goes through connector.py's client on the app's own aiohttp session; configs
go privately (delivery.py).
"""
from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import jwt
from aiohttp import web
from botbuilder.core import InvokeResponse, TurnContext
from botbuilder.core.teams import TeamsActivityHandler
from botbuilder.integration.aiohttp import CloudAdapter
from botbuilder.schema import Activity, ActivityTypes, AdaptiveCardInvokeResponse

from bot.channels.deps import ChatDeps
from bot.channels.teams.activities import (
    BadActivity,
    CardJson,
    Members,
    card_activity,
    check_activity,
    conversation_of,
    host_of,
    is_personal,
    may_hold_surrogates,
    tenant_of,
    upload_url_allowed,
)
from bot.channels.teams.auth import BotToken, InboundTokens, build_adapter
from bot.channels.teams.config import TeamsConfig
from bot.channels.teams.connector import ConnectorClient, ConnectorError, Sender
from bot.channels.teams.delivery import Delivery
from bot.channels.teams.inbound import Message, message_of, plain_message
from bot.messages import ConversationRef, Identity, Incoming
from bot.replies import ChannelDefaults, ConfigDelivery
from cards.model import Card

log = logging.getLogger(__name__)
__all__ = ["TeamsChannel", "upload_url_allowed"]
PRIVACY = """VPN Bot: privacy

This bot is run by your organisation. To hand out short-lived VPN access it keeps, in your
organisation's own storage: your Microsoft Entra object id, and the email or user name Teams
reports for you (members of the organisation only, never guests); each session's times, region,
state and the chat it was asked from; and an audit record of each command. The private key of a
VPN configuration is sent to you only: in the QR card, and, if you allow it, as a file in your
OneDrive. Nothing is kept after the session ends except the session and audit records.
Questions go to your organisation's IT team.
"""
TERMS = """VPN Bot: terms of use

This bot is provided by your organisation for its own people. Use of the VPN access it hands out is
governed by your organisation's acceptable-use policy. Keep your configuration to yourself; it
stops working when its session ends. Questions go to your organisation's IT team.
"""


def _page(text: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=text, content_type="text/plain", headers={"Cache-Control": "public, max-age=3600"})

    return page


def activity_key(conversation_id: str, activity_id: str | None) -> str | None:
    """What tells an activity from a re-send of it: Teams' ids are unique within a conversation (epoch
    milliseconds in a chat), so two people writing in the same millisecond share one."""
    return f"{conversation_id}|{activity_id}" if activity_id else None


class TeamsChannel(ChannelDefaults):
    name = "teams"

    def __init__(self, config: TeamsConfig) -> None:
        self.config = config
        self._deps: ChatDeps | None = None
        self._adapter: CloudAdapter | None = None
        self._inbound: InboundTokens | None = None
        self._client: ConnectorClient | None = None
        self._sender: Sender | None = None
        self._members: Members | None = None
        self._delivery: Delivery | None = None
        self._bot_token = BotToken(config)
        self._handler = _Handler(self)
        self._latest_progress: dict[str, tuple[ConversationRef, str]] = {}
        self._card_json = CardJson()

    # ----- lifecycle and route ------------------------------------------------------------------------

    async def attach(self, deps: ChatDeps) -> None:
        self._deps = deps
        self._adapter = build_adapter(self.config)
        self._adapter.on_turn_error = self._on_turn_error
        self._inbound = InboundTokens(self.config, self._adapter.bot_framework_authentication)
        self._client = ConnectorClient(deps.http, self._token, self.config, forget_token=self._bot_token.forget)
        self._sender = Sender(self._client)
        self._members = Members(self.config, self._client)
        self._delivery = Delivery(self.config, deps, self._client, self._sender)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/messages", self._messages)
        # The manifest's privacyUrl and termsOfUseUrl (manifest.py): Teams links to them from the app's page.
        app.router.add_get("/privacy", _page(PRIVACY))
        app.router.add_get("/terms", _page(TERMS))

    @property
    def deps(self) -> ChatDeps:
        assert self._deps is not None, "Teams channel used before it was attached"
        return self._deps

    @property
    def client(self) -> ConnectorClient:
        assert self._client is not None, "Teams channel used before the runtime started"
        return self._client

    @property
    def sender(self) -> Sender:
        assert self._sender is not None, "Teams channel used before the runtime started"
        return self._sender

    @property
    def members(self) -> Members:
        assert self._members is not None, "Teams channel used before the runtime started"
        return self._members

    @property
    def delivery(self) -> Delivery:
        assert self._delivery is not None, "Teams channel used before the runtime started"
        return self._delivery

    async def _token(self) -> str | None:
        """The bot's token for the Bot Connector (auth.py caches it)."""
        return await self._bot_token.get()

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        """Invalid or oversized requests get 4xx before the SDK sees them; the SDK checks the token."""
        if "application/json" not in request.headers.get("Content-Type", ""):
            return web.Response(status=415, text="expected application/json")
        # read() caches the body for the SDK's own request.json(), and the app's client_max_size
        # (bot/http/app.py, 256 KiB) answers anything larger with 413.
        body = await request.read()
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            log.warning("Teams: malformed JSON (%d bytes) refused", len(body))
            return web.Response(status=400, text="malformed JSON")
        try:
            check_activity(data, surrogates_possible=may_hold_surrogates(body))
            value = data.get("value")
            if data.get("name") == "fileConsent/invoke" and value["action"] == "accept":
                url = value["uploadInfo"]["uploadUrl"]
                if not upload_url_allowed(url, self.config.upload_hosts, dev_mode=self.config.dev_mode):
                    host = host_of(url) or "?"
                    raise BadActivity(f"file upload URL on {host[:80]} refused (https on TEAMS_UPLOAD_HOSTS only)")
        except BadActivity as exc:
            log.warning("Teams: activity refused: %s", exc)
            return web.Response(status=400, text=str(exc))
        assert self._adapter is not None
        try:
            message = plain_message(data)
            if message is not None:  # a person's plain message: read without the SDK's models (inbound.py)
                return await self._plain_message(request, data, message)
            return await self._adapter.process(request, self._handler)
        except web.HTTPException:
            raise
        except jwt.PyJWTError:
            return web.Response(status=401, text="invalid token")  # a malformed bearer token
        except Exception as exc:  # the bot's own errors end in on_turn_error: what is left is bad input
            log.warning("Teams: activity refused (%s)", type(exc).__name__)
            return web.Response(status=400, text="invalid activity")

    async def _plain_message(self, request: web.Request, data: dict, message: Message) -> web.Response:
        """What the SDK and on_message do for a message, without the SDK's models: its authentication
        checks the token (401 as its adapter answers; a token it verified before, for this channel and
        service URL, is not verified again: auth.py InboundTokens), then the tenant, then the work runs after the ack."""
        assert self._inbound is not None
        try:
            await self._inbound.check(data, request.headers.get("Authorization", ""))
        except PermissionError:
            raise web.HTTPUnauthorized() from None
        if not self._tenant_allowed(message.tenant):
            log.warning("Teams: message from tenant %s ignored (not allowed)", message.tenant[:40])
        else:
            self._run_later("message", activity_key(message.conversation_id, message.id), lambda: self._handle_message(message))
        return web.Response(status=201)

    async def _on_turn_error(self, turn_context: TurnContext, error: Exception) -> None:
        log.error("Teams turn failed", exc_info=error)

    def _later(self, activity: Activity, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Answer Teams now; the work (lookups, the command, replies) runs as a tracked task."""
        self._run_later(activity.type, activity_key(activity.conversation.id if activity.conversation else "", activity.id), work)

    def _run_later(self, kind: str, activity_id: str | None, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            self.deps.runner.start(f"teams:{kind}:{activity_id or uuid.uuid4().hex}", work)
        except RuntimeError:
            log.warning("Teams: shutting down; activity %s dropped", (activity_id or "")[:40])

    # ----- sending ----------------------------------------------------------------------------------

    async def send_text(self, conv: ConversationRef, text: str) -> None:
        await self.sender.post(conv, {"type": "message", "text": text})

    async def send_card(self, conv: ConversationRef, card: Card) -> str | None:
        # the activity id: update_card replaces it. A card sent before is not encoded again (CardJson).
        return await self.sender.post(conv, {"type": "message"}, attachments=self._card_json.attachments(card))

    async def update_card(self, conv: ConversationRef, handle: str, card: Card) -> bool:
        """PUT the activity (issue 22: every approver's card becomes the outcome), from any replica."""
        await self.sender.post(conv, card_activity(card), update_id=handle)
        return True

    async def send_progress(self, conv: ConversationRef, text: str, handle: str | None) -> str | None:
        """One card, updated in place (PUT) as the steps go by. Updates do not hold up the work: the
        newest text waits in one slot per card, and one task sends it; steps that come faster than
        Teams answers are never sent (nobody would have seen them)."""
        if not handle:
            return await self.sender.post(conv, card_activity(Card(title="VPN", lines=(text,))))
        self._latest_progress[handle] = (conv, text)
        try:
            self.deps.runner.start(f"teams-progress:{handle}", lambda: self._flush_progress(handle))
        except RuntimeError:  # shutting down: this one update is lost, the next message says more
            self._latest_progress.pop(handle, None)
        return handle

    async def _flush_progress(self, handle: str) -> None:
        while handle in self._latest_progress:
            conv, text = self._latest_progress.pop(handle)
            try:
                await self.sender.post(conv, card_activity(Card(title="VPN", lines=(text,))), update_id=handle)
            except ConnectorError as exc:
                log.info("Teams: progress update failed (%s)", exc.status or exc.code)

    def can_deliver_privately(self, conv: ConversationRef) -> bool:
        return True  # personal chat, or a 1:1 chat the bot opens (check_private_delivery asks Teams)

    async def check_private_delivery(self, conv: ConversationRef, recipient: Identity) -> str | None:
        return await self.delivery.check_private_delivery(conv, recipient)

    async def deliver_config(self, conv: ConversationRef, recipient: Identity, delivery: ConfigDelivery) -> str:
        return await self.delivery.deliver_config(conv, recipient, delivery)

    async def retract_config(self, conv: ConversationRef, session_id: str, handle: str | None = None) -> None:
        await self.delivery.retract_config(conv, session_id, handle)

    # ----- incoming ---------------------------------------------------------------------------------

    def tenant_allowed(self, activity: Activity) -> bool:
        return self._tenant_allowed(tenant_of(activity))

    def _tenant_allowed(self, tenant: str) -> bool:
        tenants = self.config.tenants  # TEAMS_ALLOWED_TENANTS, else the bot's own tenant (single-tenant bots)
        return not tenants or tenant.lower() in {t.lower() for t in tenants}

    async def identity_of(self, activity: Activity) -> Identity | None:
        return await self.members.identity_of(activity)

    async def on_message(self, turn_context: TurnContext) -> None:
        activity = turn_context.activity
        if not self.tenant_allowed(activity):
            log.warning("Teams: message from tenant %s ignored (not allowed)", tenant_of(activity)[:40])
            return
        TurnContext.remove_recipient_mention(activity)
        self._later(activity, lambda: self._handle_message(message_of(activity)))

    async def _handle_message(self, message: Message) -> None:
        text = message.text
        if not text.strip() and isinstance(message.value, dict):
            text = str(message.value.get("command") or "")  # a card button: authorised like typed text
        conv = message.conversation
        who = await self.members.identity(message.aad_object_id, message.sender_id, message.sender_name, message.tenant,
                                          message.service_url, message.conversation_id)
        if who is None:
            await self.send_text(conv, "Sorry, I can only serve people signed in to your organisation's Teams.")
            return
        private = conv.data["conversation_type"] == "personal"
        await self.deps.handle(Incoming(who, text, conv, message_id=activity_key(message.conversation_id, message.id), is_private=private))

    async def on_installed(self, turn_context: TurnContext) -> None:
        activity = turn_context.activity
        if self.tenant_allowed(activity):
            self._later(activity, lambda: self._greet(activity))

    async def _greet(self, activity: Activity) -> None:
        who = await self.identity_of(activity)
        # An id is personal data: said only in a personal chat, never in a channel or group chat.
        await self.send_card(conversation_of(activity), self.deps.welcome(who, is_personal(activity)))

    async def on_file_consent(self, turn_context: TurnContext, accepted: bool) -> None:
        activity = turn_context.activity
        if not self.tenant_allowed(activity):
            log.warning("Teams: file consent from tenant %s ignored (not allowed)", tenant_of(activity)[:40])
            return
        value = activity.value if isinstance(activity.value, dict) else {}
        token = str((value.get("context") or {}).get("token") or "")
        upload = value.get("uploadInfo") if accepted else None  # its URL was checked in _messages
        self._later(activity, lambda: self.delivery.file_consent(activity, token, accepted, upload))


# ----- Action.Execute card actions (issue 22) --------------------------------------------------------

class _MessageResponse(AdaptiveCardInvokeResponse):
    """The SDK types an invoke response's `value` as an object; a message response's value is a string."""

    _attribute_map = {**AdaptiveCardInvokeResponse._attribute_map, "value": {"key": "value", "type": "str"}}


async def _on_card_action(channel: TeamsChannel, turn_context: TurnContext) -> InvokeResponse:
    """An `adaptiveCard/action` invoke (Action.Execute): its `data.command` is handled like typed text,
    authorised the same way; Teams gets its answer at once, the command runs in a tracked task."""
    activity = turn_context.activity
    value = activity.value if isinstance(activity.value, dict) else {}
    action: dict[str, Any] = value["action"] if isinstance(value.get("action"), dict) else {}
    data = action.get("data")
    command = str(data.get("command") or "") if isinstance(data, dict) else ""
    if action.get("type") != "Action.Execute" or not command:
        return InvokeResponse(status=400, body=AdaptiveCardInvokeResponse(
            status_code=400, type="application/vnd.microsoft.error", value={"code": "BadRequest", "message": "not a command card action"}))
    if channel.tenant_allowed(activity):
        activity.text = command
        channel._later(activity, lambda: channel._handle_message(message_of(activity)))
    return InvokeResponse(status=200, body=_MessageResponse(status_code=200, type="application/vnd.microsoft.activity.message", value="Working on it…"))


class _Handler(TeamsActivityHandler):
    """Routes Teams events to the channel; everything else gets the SDK's defaults."""

    def __init__(self, channel: TeamsChannel) -> None:
        self.channel = channel

    async def on_message_activity(self, turn_context: TurnContext) -> None:
        await self.channel.on_message(turn_context)

    async def on_turn(self, turn_context: TurnContext) -> None:
        # An Azure Bot has Web Chat (and Direct Line) on by default: their activities reach this same
        # endpoint with a valid token and a channelData the client writes. Only Teams is served.
        channel_id = turn_context.activity.channel_id
        if channel_id != "msteams":
            log.warning("Teams: activity from channel %r dropped (only msteams is served; remove the Web Chat channel "
                        "from the Azure Bot)", str(channel_id)[:40])
            if turn_context.activity.type == ActivityTypes.invoke:  # an invoke waits for an answer: 403, not the SDK's 501
                await turn_context.send_activity(Activity(type=ActivityTypes.invoke_response, value=InvokeResponse(status=403)))
            return
        await super().on_turn(turn_context)

    async def on_conversation_update_activity(self, turn_context: TurnContext) -> None:
        """Only the bot's own arrival matters (a welcome, sent after the ack). botbuilder's default
        looks up every other new member with TeamsInfo.get_member, inline before the ack, on its
        own client: compare the `membersAdded` ids with the recipient id instead."""
        activity = turn_context.activity
        bot_id = activity.recipient.id if activity.recipient else None
        if bot_id and any(getattr(member, "id", None) == bot_id for member in activity.members_added or []):
            await self.channel.on_installed(turn_context)

    async def on_teams_file_consent_accept(self, turn_context: TurnContext, file_consent_card_response) -> None:
        await self.channel.on_file_consent(turn_context, accepted=True)

    async def on_teams_file_consent_decline(self, turn_context: TurnContext, file_consent_card_response) -> None:
        await self.channel.on_file_consent(turn_context, accepted=False)

    async def on_invoke_activity(self, turn_context: TurnContext) -> InvokeResponse:
        if turn_context.activity.name == "adaptiveCard/action":
            return await _on_card_action(self.channel, turn_context)
        return await super().on_invoke_activity(turn_context)
