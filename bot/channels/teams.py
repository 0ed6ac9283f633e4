"""Microsoft Teams through the Bot Framework SDK: the only module that imports botbuilder.

`CloudAdapter` at `POST /api/messages`; a `TeamsActivityHandler` turns activities into the core's
neutral messages, and the `Channel` methods render the core's replies as activities and Adaptive
Cards, always proactively from a stored conversation reference (so progress, warnings and "server
up" survive restarts). Configs go privately: in a personal chat the QR card and a file-consent card;
from a group chat or channel, in a 1:1 chat the bot opens with the requester. Until the user allows
the file, its content is sealed in the store under a token that only the consent card carries.

Outbound connector calls run through msrest/requests in threads (botbuilder's own design), so the
event loop never waits on them. Sends are retried on 429/412/502/504 with backoff and jitter,
spaced per conversation, and never retried on 403 (the user blocked or removed the bot).
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import jwt
from aiohttp import web
from botbuilder.core import TurnContext
from botbuilder.core.teams import TeamsActivityHandler, TeamsInfo
from botbuilder.integration.aiohttp import CloudAdapter, ConfigurationBotFrameworkAuthentication
from botbuilder.schema import (
    Activity,
    ActivityTypes,
    Attachment,
    ChannelAccount,
    ConversationParameters,
    ConversationReference,
    ErrorResponseException,
)
from botbuilder.schema.teams import FileConsentCard, FileConsentCardResponse, FileInfoCard

from bot import claims
from bot.backoff import retry_delay
from bot.messages import ConversationRef, Identity, Incoming, InvalidIdentity, UserKey
from bot.outbox import ConfigDelivery, DeliveryError
from cards.adaptive import render_adaptive
from cards.model import Card
from cards.text import render_card_text

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger(__name__)
RETRY_STATUSES = {412, 429, 502, 504}
ADAPTIVE = "application/vnd.microsoft.card.adaptive"
FILE_CONSENT = "application/vnd.microsoft.teams.card.file.consent"
FILE_INFO = "application/vnd.microsoft.teams.card.file.info"
SEND_SPACING = 0.15  # Teams allows 7 sends per second per conversation


@dataclass(frozen=True)
class TeamsConfig:
    app_id: str = ""
    app_password: str = ""
    app_type: str = "SingleTenant"
    tenant_id: str = ""
    dev_mode: bool = False
    allowed_tenants: tuple[str, ...] = ()
    member_cache_seconds: float = 600.0
    send_attempts: int = 5
    backoff: float = 0.5
    consent_minutes: int = 60

    def __repr__(self) -> str:
        return f"TeamsConfig(app_id={self.app_id!r}, type={self.app_type}, dev_mode={self.dev_mode})"


class _AdapterSettings:
    """The attribute names ConfigurationBotFrameworkAuthentication reads. Empty APP_ID = auth off."""

    def __init__(self, c: TeamsConfig) -> None:
        self.APP_ID = c.app_id
        self.APP_PASSWORD = c.app_password
        # Without an app id (dev mode) only the SDK's MultiTenant path accepts an empty id.
        self.APP_TYPE = c.app_type if c.app_id else "MultiTenant"
        self.APP_TENANTID = c.tenant_id


class SendBlocked(Exception):
    """403: the user blocked or removed the bot; retrying cannot help."""


def _tenant_of(activity: Activity) -> str:
    data = activity.channel_data or {}
    tenant = data.get("tenant") if isinstance(data, dict) else None
    return str((tenant or {}).get("id") or "") if isinstance(tenant, dict) else ""


def _conversation(activity: Activity) -> ConversationRef:
    reference = TurnContext.get_conversation_reference(activity).serialize()
    return ConversationRef(
        "teams",
        {
            "reference": reference,
            "tenant_id": _tenant_of(activity),
            "user_id": activity.from_property.id if activity.from_property else "",
            "conversation_type": (activity.conversation.conversation_type if activity.conversation else "") or "personal",
        },
    )


class TeamsChannel:
    name = "teams"

    def __init__(self, config: TeamsConfig) -> None:
        self.config = config
        self._runtime: Runtime | None = None
        self._adapter: CloudAdapter | None = None
        self._handler = _Handler(self)
        self._emails: dict[str, tuple[float, str | None]] = {}
        self._last_send: dict[str, float] = {}
        self._send_locks: dict[str, asyncio.Lock] = {}
        self._latest_progress: dict[str, str] = {}

    # ----- lifecycle and route ------------------------------------------------------------------------

    async def attach(self, runtime: "Runtime") -> None:
        self._runtime = runtime
        auth = ConfigurationBotFrameworkAuthentication(_AdapterSettings(self.config))
        self._adapter = CloudAdapter(auth)
        self._adapter.on_turn_error = self._on_turn_error

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/messages", self._messages)

    @property
    def runtime(self) -> "Runtime":
        assert self._runtime is not None, "Teams channel used before the runtime started"
        return self._runtime

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        """Invalid or oversized requests get 4xx before the SDK sees them; the SDK checks the token."""
        if "application/json" not in request.headers.get("Content-Type", ""):
            return web.Response(status=415, text="expected application/json")
        # read() caches the body for the SDK's own request.json(), and the app's client_max_size
        # (bot/web.py, 256 KiB) answers anything larger with 413.
        body = await request.read()
        try:
            data = json.loads(body)
        except ValueError:
            log.warning("Teams: malformed JSON (%d bytes) refused", len(body))
            return web.Response(status=400, text="malformed JSON")
        if not isinstance(data, dict) or not isinstance(data.get("type"), str) or not data.get("type"):
            return web.Response(status=400, text="not an activity")
        assert self._adapter is not None
        try:
            return await self._adapter.process(request, self._handler)
        except web.HTTPException:
            raise
        except jwt.PyJWTError:
            return web.Response(status=401, text="invalid token")  # a malformed bearer token
        except Exception as exc:  # the bot's own errors end in on_turn_error: what is left is bad input
            log.warning("Teams: activity refused (%s)", type(exc).__name__)
            return web.Response(status=400, text="invalid activity")

    async def _on_turn_error(self, turn_context: TurnContext, error: Exception) -> None:
        log.error("Teams turn failed", exc_info=error)

    # ----- sending ----------------------------------------------------------------------------------

    async def _send(self, conv: ConversationRef, activity: Activity, *, update_id: str | None = None) -> str | None:
        """Proactive send (or update) with per-conversation spacing and retries; returns the activity id."""
        assert self._adapter is not None
        reference = ConversationReference().deserialize(conv.data["reference"])
        key = reference.conversation.id if reference.conversation else ""
        lock = self._send_locks.setdefault(key, asyncio.Lock())
        result: dict[str, Any] = {}

        async def callback(turn_context: TurnContext) -> None:
            # Inside the turn: the adapter hands exceptions raised here to on_turn_error, not to us.
            try:
                result["id"] = await self._with_retries(turn_context, activity, update_id, key)
            except BaseException as exc:  # noqa: BLE001 - carried out of the turn and re-raised below
                result["error"] = exc

        async with lock:
            wait = SEND_SPACING - (time.monotonic() - self._last_send.get(key, 0.0))
            if wait > 0:
                await asyncio.sleep(wait)
            await self._adapter.continue_conversation(reference, callback, self.config.app_id or None)
            self._last_send[key] = time.monotonic()
        if "error" in result:
            raise result["error"]
        return result.get("id")

    async def _with_retries(self, turn_context: TurnContext, activity: Activity, update_id: str | None, key: str) -> str | None:
        for attempt in range(self.config.send_attempts):
            try:
                if update_id:
                    activity.id = update_id
                    await turn_context.update_activity(activity)
                    return update_id
                response = await turn_context.send_activity(activity)
                return getattr(response, "id", None)
            except ErrorResponseException as exc:
                status = getattr(exc.response, "status_code", 0)
                if status == 403:
                    log.warning("Teams: conversation %s refuses messages (403, e.g. MessageWritesBlocked); not retrying", key[:40])
                    raise SendBlocked(key) from None
                if status not in RETRY_STATUSES or attempt + 1 == self.config.send_attempts:
                    raise
                retry_after = exc.response.headers.get("Retry-After", "") if exc.response is not None else ""
                delay = retry_delay(attempt, self.config.backoff, retry_after)
                log.info("Teams: send got %d; retrying in %.1fs", status, delay)
                await asyncio.sleep(delay)
        return None

    async def send_text(self, conv: ConversationRef, text: str) -> None:
        await self._send(conv, Activity(type=ActivityTypes.message, text=text))

    async def send_card(self, conv: ConversationRef, card: Card) -> None:
        await self._send(conv, _card_activity(card))

    async def send_progress(self, conv: ConversationRef, text: str, handle: str | None) -> str | None:
        """One card, updated in place (PUT) as the steps go by."""
        activity = _card_activity(Card(title="VPN", lines=(text,)))
        if handle:
            # Coalesce: while an update waits for its turn, a newer one makes it pointless.
            self._latest_progress[handle] = text
            key = ConversationReference().deserialize(conv.data["reference"]).conversation.id
            async with self._send_locks.setdefault(f"progress:{key}", asyncio.Lock()):
                if self._latest_progress.get(handle) != text:
                    return handle
                try:
                    return await self._send(conv, activity, update_id=handle)
                except ErrorResponseException:
                    log.info("Teams: progress update failed; posting a new progress card")
        return await self._send(conv, activity)

    def can_deliver_privately(self, conv: ConversationRef) -> bool:
        return True  # personal chat, or a 1:1 chat the bot opens

    async def deliver_config(self, conv: ConversationRef, recipient: Identity, delivery: ConfigDelivery) -> str:
        personal = conv.data.get("conversation_type") == "personal"
        try:
            target = conv if personal else await self._open_private_chat(conv)
        except ErrorResponseException as exc:
            raise DeliveryError(
                "I could not open a private chat with you; install the VPN bot app for yourself (personal scope) and try again"
            ) from exc
        qr_uri = "data:image/png;base64," + base64.b64encode(delivery.qr_png).decode()
        card = Card(
            title="Your VPN config",
            lines=(
                "In the WireGuard app: + → Scan from QR code. Or allow the file below and import it.",
                delivery.expires_note,
            ),
        )
        activity = Activity(type=ActivityTypes.message, attachments=[Attachment(content_type=ADAPTIVE, content=render_adaptive(card, image_data_uri=qr_uri))])
        try:
            await self._send(target, activity)
            data = delivery.config.reveal().encode()
            token = await claims.hold(
                self.runtime.store, session_id=delivery.session_id, user=str(recipient.key), tunnel_name=delivery.tunnel_name,
                config=delivery.config.reveal(), now=self.runtime.service.clock(), lifetime=timedelta(minutes=self.config.consent_minutes),
            )
            consent = FileConsentCard(
                description="Your WireGuard configuration (holds your private key: keep it to yourself).",
                size_in_bytes=len(data),
                accept_context={"token": token, "session": delivery.session_id},
                decline_context={"token": token, "session": delivery.session_id},
            )
            await self._send(target, Activity(type=ActivityTypes.message, attachments=[Attachment(content_type=FILE_CONSENT, name=f"{delivery.tunnel_name}.conf", content=consent)]))
        except SendBlocked:
            raise DeliveryError("Teams refuses messages to you from the bot (it may be blocked)") from None
        if personal:
            return "Your config is above: scan the QR code, or allow the file."
        return "I sent your config to you in a private chat with me."

    async def _open_private_chat(self, conv: ConversationRef) -> ConversationRef:
        assert self._adapter is not None
        reference = ConversationReference().deserialize(conv.data["reference"])
        tenant = conv.data.get("tenant_id") or None
        params = ConversationParameters(
            is_group=False,
            bot=reference.bot,
            members=[ChannelAccount(id=conv.data["user_id"])],
            tenant_id=tenant,
            channel_data={"tenant": {"id": tenant}} if tenant else None,
        )
        created: dict[str, ConversationRef] = {}

        async def callback(turn_context: TurnContext) -> None:
            ref = TurnContext.get_conversation_reference(turn_context.activity).serialize()
            created["conv"] = ConversationRef(
                "teams", {"reference": ref, "tenant_id": tenant or "", "user_id": conv.data["user_id"], "conversation_type": "personal"}
            )

        await self._adapter.create_conversation(self.config.app_id or None, callback, params, "msteams", reference.service_url, None)
        return created["conv"]

    # ----- incoming ---------------------------------------------------------------------------------

    def tenant_allowed(self, activity: Activity) -> bool:
        return not self.config.allowed_tenants or _tenant_of(activity) in self.config.allowed_tenants

    async def identity_of(self, turn_context: TurnContext) -> Identity | None:
        sender = turn_context.activity.from_property
        aad = getattr(sender, "aad_object_id", None) if sender else None
        if not aad:
            return None
        try:
            key = UserKey("teams", aad.lower())
        except InvalidIdentity:
            return None
        return Identity(key, email=await self._email(turn_context, sender.id), display_name=sender.name or "")

    async def _email(self, turn_context: TurnContext, member_id: str) -> str | None:
        """The verified email or UPN from Teams (cached); guests and anonymous users have none."""
        cached = self._emails.get(member_id)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        email = None
        try:
            member = await TeamsInfo.get_member(turn_context, member_id)
            email = getattr(member, "email", None) or getattr(member, "user_principal_name", None)
        except Exception as exc:  # a lookup failure must not lock the user out of id-based rules
            log.info("Teams: member lookup failed (%s); matching by id only", type(exc).__name__)
        self._emails[member_id] = (time.monotonic() + self.config.member_cache_seconds, email)
        return email

    async def on_message(self, turn_context: TurnContext) -> None:
        activity = turn_context.activity
        if not self.tenant_allowed(activity):
            log.warning("Teams: message from tenant %s ignored (not allowed)", _tenant_of(activity)[:40])
            return
        TurnContext.remove_recipient_mention(activity)
        text = activity.text or ""
        if not text.strip() and isinstance(activity.value, dict):
            text = str(activity.value.get("command") or "")  # a card button: authorised like typed text
        conv = _conversation(activity)
        who = await self.identity_of(turn_context)
        if who is None:
            await turn_context.send_activity("Sorry, I can only serve people signed in to your organisation's Teams.")
            return
        private = conv.data["conversation_type"] == "personal"
        await self.runtime.dispatcher.handle(Incoming(who, text, conv, message_id=activity.id, is_private=private))

    async def on_installed(self, turn_context: TurnContext) -> None:
        activity = turn_context.activity
        if not self.tenant_allowed(activity):
            return
        who = await self.identity_of(turn_context)
        role = self.runtime.access.role_of(who) if who else None
        greeting = "Hi! I hand out short-lived WireGuard VPN access."
        if role is None:
            where = f" (your id is {who.key})" if who else ""
            greeting += f" You are not on the allowlist yet: ask an admin to add you{where}."
        card = self.runtime.dispatcher.help_card(role, greeting)
        await self.send_card(_conversation(activity), card)

    async def on_file_consent(self, turn_context: TurnContext, response: FileConsentCardResponse, accepted: bool) -> None:
        context = response.context if isinstance(response.context, dict) else {}
        token = str(context.get("token") or "")
        runtime = self.runtime
        taken = await claims.take(runtime.store, token, runtime.service.clock()) if token else None
        conv = _conversation(turn_context.activity)
        if taken is None:
            await self.send_text(conv, "That file is no longer available (already sent, declined, or its session ended).")
            return
        if not accepted:
            await self.send_text(conv, "No problem: the QR code above is all you need. The file was discarded.")
            return
        data = taken[1].encode()
        upload = response.upload_info
        headers = {"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}", "Content-Length": str(len(data))}
        assert runtime.http is not None
        async with runtime.http.put(upload.upload_url, data=data, headers=headers) as resp:
            if resp.status >= 300:
                log.warning("Teams: file upload answered %d", resp.status)
                await self.send_text(conv, "The file upload failed; the QR code above still works.")
                return
        info = FileInfoCard(unique_id=upload.unique_id, file_type=upload.file_type)
        await self._send(conv, Activity(type=ActivityTypes.message, attachments=[
            Attachment(content_type=FILE_INFO, name=upload.name, content_url=upload.content_url, content=info)
        ]))


def _card_activity(card: Card) -> Activity:
    content = render_adaptive(card)
    content["fallbackText"] = render_card_text(card)
    return Activity(type=ActivityTypes.message, attachments=[Attachment(content_type=ADAPTIVE, content=content)])


class _Handler(TeamsActivityHandler):
    """Routes Teams events to the channel; everything else gets the SDK's defaults."""

    def __init__(self, channel: TeamsChannel) -> None:
        self.channel = channel

    async def on_message_activity(self, turn_context: TurnContext) -> None:
        await self.channel.on_message(turn_context)

    async def on_teams_members_added(self, teams_members_added, team_info, turn_context: TurnContext) -> None:
        bot_id = turn_context.activity.recipient.id if turn_context.activity.recipient else None
        if any(m.id == bot_id for m in teams_members_added):
            await self.channel.on_installed(turn_context)

    async def on_teams_file_consent_accept(self, turn_context: TurnContext, file_consent_card_response: FileConsentCardResponse) -> None:
        await self.channel.on_file_consent(turn_context, file_consent_card_response, accepted=True)

    async def on_teams_file_consent_decline(self, turn_context: TurnContext, file_consent_card_response: FileConsentCardResponse) -> None:
        await self.channel.on_file_consent(turn_context, file_consent_card_response, accepted=False)
