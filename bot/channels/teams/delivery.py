"""Configs, delivered privately in Teams: the 1:1 chat, the QR card, file consent and retraction.

In a personal chat the QR card and a file-consent card go to the requester; from a group chat or
channel, to a 1:1 chat the bot opens with them, checked before anything is provisioned. Until the
user allows the file, its content is sealed in the store under a token only the consent card
carries, and only its owner, from its tenant, can have it uploaded to an allowed OneDrive /
SharePoint host. At teardown the QR card is replaced by an "expired" card.
"""
from __future__ import annotations

import base64
import json
import logging
import math
from datetime import datetime, timedelta
from typing import Any

from botbuilder.schema import Activity

from bot import one_time_configs
from bot.channels.deps import ChatDeps
from bot.channels.teams.activities import ADAPTIVE, FILE_CONSENT, FILE_INFO, card_activity, conversation_of, tenant_of
from bot.channels.teams.config import TeamsConfig
from bot.channels.teams.connector import RETRY_ALWAYS, RETRY_IF_IDEMPOTENT, ConnectorClient, ConnectorError, SendBlocked, Sender
from bot.messages import ConversationRef, Identity
from bot.one_time_configs import Claim
from bot.recent import Recent
from bot.replies import ConfigDelivery, DeliveryError
from cards.adaptive import render_adaptive
from cards.model import Card

log = logging.getLogger(__name__)
QR_RECORD = "teams-qr:"  # claims-table key prefix of "where the QR card went" (never a token hash: those are hex)
INSTALL_HELP = (
    "the VPN bot app is not installed for you personally, so I cannot open a private chat with you. "
    "To install it, in Teams select Apps (left rail), search for the VPN bot and select Add (\"Add for me\"); "
    "or select my name in this chat, then Chat. Then send /vpn start again, here or in our private chat"
)


class Delivery:
    """What the Teams channel does with a config: open the 1:1 chat, post the cards, upload the file
    the user allowed, and take the cards back at teardown."""

    def __init__(self, config: TeamsConfig, deps: ChatDeps, client: ConnectorClient, sender: Sender) -> None:
        self.config, self.deps, self.client, self.sender = config, deps, client, sender
        self._private_chats: Recent[tuple[str, str], str] = Recent(config.remembered)  # (service url, user id) -> 1:1 chat id

    async def send_text(self, conv: ConversationRef, text: str) -> None:
        await self.sender.post(conv, {"type": "message", "text": text})

    async def check_private_delivery(self, conv: ConversationRef, recipient: Identity) -> str | None:
        """Before anything is provisioned: can the bot reach this person in a 1:1 chat? None if yes,
        else the sentence that says why not (and, when that is the reason, how to install the app)."""
        if conv.data.get("conversation_type") == "personal":
            return None
        try:
            await self._open_private_chat(conv)
        except DeliveryError as exc:
            log.info("Teams: no private chat with %s: %s", recipient.key, str(exc)[:80])
            return f"I cannot send you a config privately: {exc}."
        return None

    async def deliver_config(self, conv: ConversationRef, recipient: Identity, delivery: ConfigDelivery) -> str:
        personal = conv.data.get("conversation_type") == "personal"
        target = conv if personal else await self._open_private_chat(conv)
        qr_uri = "data:image/png;base64," + base64.b64encode(delivery.qr_png).decode()
        card = Card(
            title="Your VPN config",
            lines=(
                "In the WireGuard app: + → Scan from QR code. Or allow the file below and import it.",
                delivery.expires_note,
            ),
        )
        qr_activity = {"type": "message", "attachments": [{"contentType": ADAPTIVE, "content": render_adaptive(card, image_data_uri=qr_uri)}]}
        now = self.deps.clock()
        user = str(recipient.key)
        try:
            # The QR card is the config: one bad gateway must not cost the session (a repeat may post
            # it twice; a copy teardown cannot retract stops working with the session all the same).
            qr_id = await self.sender.post(target, qr_activity, retry_bad_gateway=True)
        except SendBlocked:
            raise DeliveryError("Teams refuses messages to you from the bot (it may be blocked)") from None
        except ConnectorError as exc:
            raise DeliveryError(_sent_refusal(exc)) from None
        del qr_activity, qr_uri
        if qr_id:  # recorded at once, so teardown can replace it whatever happens next
            await self._remember_sent(delivery.session_id, user, delivery.tunnel_name, target, [qr_id])
        offered = await self._offer_file(target, user, delivery, now)
        if personal:
            return ("Your config is above: scan the QR code, or allow the file." if offered else
                    "Your config is above: scan the QR code (I could not offer it as a file this time).")
        return ("I sent your config to you in a private chat with me." if offered else
                "I sent your config to you in a private chat with me, as a QR code (I could not offer it as a file this time).")

    async def _offer_file(self, target: ConversationRef, user: str, delivery: ConfigDelivery, now: datetime) -> bool:
        """The file-consent card; the config waits sealed in the store for the user's Allow. Not
        fatal when it fails (the QR card holds the same config): the sealed copy is erased."""
        store = self.deps.configs
        data = delivery.config.reveal().encode()
        token = await one_time_configs.hold(
            store, session_id=delivery.session_id, user=user, tunnel_name=delivery.tunnel_name,
            config=delivery.config.reveal(), now=now, lifetime=timedelta(minutes=self.config.consent_minutes),
        )
        consent = {
            "description": "Your WireGuard configuration (holds your private key: keep it to yourself).",
            "sizeInBytes": len(data),
            "acceptContext": {"token": token, "session": delivery.session_id},
            "declineContext": {"token": token, "session": delivery.session_id},
        }
        try:
            consent_id = await self.sender.post(target, {"type": "message", "attachments": [
                {"contentType": FILE_CONSENT, "name": f"{delivery.tunnel_name}.conf", "content": consent}
            ]})
        except ConnectorError as exc:
            log.warning("Teams: session %s: the file-consent card was not accepted (%s); the QR card stands", delivery.session_id, exc)
            await one_time_configs.take(store, token, now)  # nobody can allow it: erase the sealed copy
            return False
        if consent_id:  # "" for the QR: retraction only deletes this one
            await self._remember_sent(delivery.session_id, user, delivery.tunnel_name, target, ["", consent_id])
        return True

    async def _remember_sent(self, session_id: str, user: str, tunnel: str, target: ConversationRef, activity_ids: list[str]) -> None:
        """Where the QR card went, in the shared store (teardown may run on another replica)."""
        store, now = self.deps.configs, self.deps.clock()
        record = json.dumps({"conversation": dict(target.data), "activities": activity_ids}).encode()
        for n in range(10):
            key = f"{QR_RECORD}{session_id}:{n}"
            if await store.get_claim(key) is None:
                await store.add_claim(Claim(key, session_id, user, tunnel, now, now + timedelta(days=8), sealed=record))
                return
        log.warning("Teams: session %s delivered too often to remember where", session_id)

    async def retract_config(self, conv: ConversationRef, session_id: str, handle: str | None = None) -> None:
        """At teardown: the QR card becomes an "expired" card and the consent card goes, so the private
        key does not stay in the chat. Called before the session's claims are purged."""
        store = self.deps.configs
        for n in range(10):
            record = await store.get_claim(f"{QR_RECORD}{session_id}:{n}")
            if record is None:
                return
            if not record.sealed:
                continue
            try:
                saved = json.loads(record.sealed)
                target = ConversationRef("teams", saved["conversation"])
                qr_id, *others = saved["activities"] or [""]
            except (ValueError, KeyError, TypeError):
                log.warning("Teams: session %s: unreadable QR record", session_id)
                continue
            expired = card_activity(Card(title="VPN config expired", lines=(
                f"Session {session_id} has ended; this config no longer works. Use /vpn start for a new one.",
            )))
            try:
                if qr_id:
                    await self.sender.post(target, expired, update_id=qr_id)
                for other in others:
                    await self.sender.delete(target, other)
            except ConnectorError as exc:
                log.warning("Teams: session %s: could not retract the config card (%s)", session_id, exc)

    async def _open_private_chat(self, conv: ConversationRef) -> ConversationRef:
        """The 1:1 chat with the requester (Teams answers the existing one if there is one)."""
        reference = conv.data["reference"]
        service_url = reference.get("serviceUrl") or ""
        user_id = conv.data.get("user_id") or ""
        tenant = conv.data.get("tenant_id") or None
        if not service_url or not user_id:
            raise DeliveryError("I do not know how to reach you privately (this message carried no user)")
        known = self._private_chats.get((service_url, user_id))
        if known is None:
            params: dict[str, Any] = {"isGroup": False, "bot": reference.get("bot"), "members": [{"id": user_id}]}
            if tenant:
                params.update(tenantId=tenant, channelData={"tenant": {"id": tenant}})
            try:
                # Idempotent in Teams (the existing 1:1 chat comes back), so transient failures are retried.
                answer = await self.client.call("POST", service_url, "conversations", body=params, idempotent=True)
            except ConnectorError as exc:
                raise DeliveryError(_private_chat_refusal(exc)) from None
            known = (answer or {}).get("id") if isinstance(answer, dict) else None
            if not known:
                raise DeliveryError("Teams did not say which private chat to use; please try again")
            self._private_chats[(service_url, user_id)] = known
        return ConversationRef("teams", {
            "reference": {"serviceUrl": service_url, "channelId": reference.get("channelId") or "msteams", "bot": reference.get("bot"),
                          "user": reference.get("user"), "conversation": {"id": known, "conversationType": "personal", "tenantId": tenant}},
            "tenant_id": tenant or "", "user_id": user_id, "conversation_type": "personal",
        })

    async def file_consent(self, activity: Activity, token: str, accepted: bool, upload: dict | None) -> None:
        conv = conversation_of(activity)
        store, now = self.deps.configs, self.deps.clock()
        claim = await store.get_claim(one_time_configs.token_hash(token)) if token else None
        if claim is None or claim.session_id == "" or claim.token_hash.startswith(QR_RECORD):
            claim = None
        if claim is not None and not await self._is_owner(activity, claim):
            log.warning("Teams: file consent for session %s by someone other than its owner refused", claim.session_id)
            await self.send_text(conv, "That file belongs to someone else; nothing was sent.")
            return
        taken = await one_time_configs.take(store, token, now) if claim is not None else None
        if taken is None:
            await self.send_text(conv, "That file is no longer available (already sent, declined, or its session ended).")
            return
        if not accepted:
            await self.send_text(conv, "No problem: the QR code above is all you need. The file was discarded.")
            return
        assert upload is not None
        data = taken[1].encode()
        del taken
        headers = {"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}", "Content-Type": "application/octet-stream"}
        try:
            # A PUT of the whole file to a pre-authorised URL: safe to repeat. No bot token goes there.
            await self.client.request("PUT", upload["uploadUrl"], data=data, headers=headers, idempotent=True)
        except ConnectorError as exc:
            log.warning("Teams: file upload failed (%s)", exc.status or exc.code)
            await self.send_text(conv, "The file upload failed; the QR code above still works.")
            return
        info = {"uniqueId": upload.get("uniqueId"), "fileType": upload.get("fileType")}
        await self.sender.post(conv, {"type": "message", "attachments": [
            {"contentType": FILE_INFO, "name": upload.get("name"), "contentUrl": upload.get("contentUrl"), "content": info}
        ]})

    async def _is_owner(self, activity: Activity, claim: Claim) -> bool:
        """The invoking user is the claim's owner, in the tenant the session was started from."""
        aad = getattr(activity.from_property, "aad_object_id", None) or ""
        if not aad or claim.user != f"teams:{aad.lower()}":
            return False
        session = await self.deps.sessions.get(claim.session_id)
        if session is None:
            return False
        return (session.conversation.data.get("tenant_id") or "") == tenant_of(activity)


def _sent_refusal(exc: ConnectorError) -> str:
    """Why the config card did not go out, in words the user can act on."""
    if exc.retry_after is not None:
        minutes = max(1, math.ceil(min(exc.retry_after, 24 * 3600) / 60))  # an absurd Retry-After reads as a day
        return f"Teams is limiting messages to this chat right now; please try again in {minutes} minute{'s' if minutes > 1 else ''}"
    return f"Teams did not accept the message ({exc.status or exc.code}); please try again in a minute"


def _private_chat_refusal(exc: ConnectorError) -> str:
    """The true reason a 1:1 chat could not be opened, in words the user can act on."""
    if exc.status in (403, 404) or exc.code in ("BotNotInConversationRoster", "ConversationBlockedByUser", "Forbidden"):
        if exc.code == "ConversationBlockedByUser":
            return "you have blocked the VPN bot in Teams; unblock it in our private chat, then try again"
        return INSTALL_HELP
    if exc.status in RETRY_ALWAYS or exc.status in RETRY_IF_IDEMPOTENT or exc.status == 0:
        return f"Teams is not answering right now ({exc.status or exc.code}); please try again in a minute"
    return f"Teams refused to open a private chat with you ({exc.status} {exc.code}); an admin can find details in the log"
