"""The channel-neutral way to talk back: what every channel implements, and a router to reach them.

The service and the commands speak only this interface; Teams, GroupMe and the console each decide
how to show a card, whether a progress message can be edited in place, and how to reach one person
privately with a config.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Protocol

from bot.messages import ConversationRef, Identity, Notice
from cards.model import Card
from provisioner.wireguard import Secret

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConfigDelivery:
    """A client config for exactly one person. Both the text and the QR hold the private key."""

    session_id: str
    tunnel_name: str  # file stem, also the tunnel's name in the WireGuard apps
    config: Secret
    qr_png: bytes
    expires_note: str

    def __repr__(self) -> str:
        return f"ConfigDelivery(session_id={self.session_id!r}, tunnel_name={self.tunnel_name!r}, <secret>)"


class DeliveryError(Exception):
    """The channel could not reach the person privately; the message says what to do."""


class Channel(Protocol):
    name: str
    # Chat channels speak commands ("/vpn stop ends it sooner"); the web page has buttons instead,
    # so the engine's notices reach it in their `page` register (bot/engine/notices.py).
    speaks_commands: bool

    async def send_text(self, conv: ConversationRef, text: str) -> None: ...

    async def send_card(self, conv: ConversationRef, card: Card) -> str | None:
        """Native card where the platform has them, else its text rendering. Returns a handle for
        `update_card` where the channel can change a sent card in place (None elsewhere)."""

    async def update_card(self, conv: ConversationRef, handle: str, card: Card) -> bool:
        """Replace a card sent earlier (its handle from `send_card`), from any replica: e.g. every
        approver's request card becomes "approved by …". False where cards cannot be changed."""

    async def send_progress(self, conv: ConversationRef, text: str, handle: str | None) -> str | None:
        """Post (handle None) or update a progress message; returns the handle for the next update."""

    async def deliver_config(self, conv: ConversationRef, recipient: Identity, delivery: ConfigDelivery) -> str:
        """Get the config to `recipient` and nobody else; returns a secret-free note for the conversation."""

    def can_deliver_privately(self, conv: ConversationRef) -> bool:
        """False when this channel is not set up to reach one person privately (then only
        bring-your-own-key sessions, which carry no secret, can be started from it)."""

    async def check_private_delivery(self, conv: ConversationRef, recipient: Identity) -> str | None:
        """Before provisioning: None if `recipient` can be reached privately now, else the sentence
        that tells them why not and what to do (e.g. Teams opens the 1:1 chat first)."""

    async def retract_config(self, conv: ConversationRef, session_id: str, handle: str | None) -> None:
        """At teardown, before the session's held configs are purged: take the config (QR card) back
        out of the chat. Must work on any replica: whatever it needs lives in the store."""

    async def attach(self, deps: Any) -> None:
        """Receive what the channel uses (its `…Deps`), once the store and the engine exist."""

    def routes(self, app: Any) -> None:
        """Add the channel's HTTP routes (webhooks, pages) to the aiohttp app; none for the console."""


class ChannelDefaults:
    """What a channel without an ability does: no pre-check, nothing to retract, no card updates, no routes."""

    speaks_commands = True

    async def update_card(self, conv: ConversationRef, handle: str, card: Card) -> bool:
        return False

    async def check_private_delivery(self, conv: ConversationRef, recipient: Identity) -> str | None:
        return None

    async def retract_config(self, conv: ConversationRef, session_id: str, handle: str | None) -> None:
        return None

    async def attach(self, deps: Any) -> None:
        return None

    def routes(self, app: Any) -> None:
        return None


class Outbox:
    """Routes a message to the channel a conversation belongs to; a missing channel is logged, not fatal."""

    def __init__(self, elsewhere: Iterable[str] = ()) -> None:
        self._channels: dict[str, Channel] = {}
        self._elsewhere = frozenset(elsewhere)  # channels that live in another process by design (the console): no warning

    def register(self, channel: Channel) -> None:
        self._channels[channel.name] = channel

    def channel(self, conv: ConversationRef) -> Channel | None:
        return self._channels.get(conv.channel)

    async def text(self, conv: ConversationRef, text: str) -> bool:
        return await self._send(conv, "text", lambda ch: ch.send_text(conv, text))

    async def notice(self, conv: ConversationRef, notice: Notice) -> bool:
        """One of the engine's sentences, in the register the conversation's channel speaks."""
        ch = self.channel(conv)
        speaks = ch.speaks_commands if ch is not None else True
        return await self.text(conv, notice.text_for(speaks))

    async def card(self, conv: ConversationRef, card: Card) -> bool:
        return await self._send(conv, "card", lambda ch: ch.send_card(conv, card))

    async def card_for_update(self, conv: ConversationRef, card: Card) -> tuple[bool, str | None]:
        """Send a card and keep its handle (None where the channel cannot update cards); (False, None) if it failed."""
        handle: list[str | None] = [None]

        async def send(ch: Channel) -> None:
            handle[0] = await ch.send_card(conv, card)

        sent = await self._send(conv, "card", send)
        return sent, handle[0] if sent else None

    async def update_card(self, conv: ConversationRef, handle: str, card: Card) -> bool:
        """Logged, never raised; False when the channel cannot (then say it as text instead)."""
        ch = self.channel(conv)
        if ch is None:
            return False
        try:
            return await ch.update_card(conv, handle, card)
        except Exception:
            log.exception("updating a card on %s failed", conv.channel)
            return False

    async def _send(self, conv: ConversationRef, what: str, send) -> bool:
        """A notice that cannot be sent is logged, never raised: it must not break the work that sends it."""
        ch = self.channel(conv)
        if ch is None:
            level = logging.DEBUG if conv.channel in self._elsewhere else logging.WARNING
            log.log(level, "no %r channel in this process; %s not delivered", conv.channel, what)
            return False
        try:
            await send(ch)
            return True
        except Exception:
            log.exception("sending a %s to %s failed", what, conv.channel)
            return False

    async def progress(self, conv: ConversationRef, text: str, handle: str | None) -> str | None:
        ch = self.channel(conv)
        if ch is None:
            return handle
        try:
            return await ch.send_progress(conv, text, handle)
        except Exception:
            log.exception("progress update to %s failed", conv.channel)
            return handle

    def can_deliver_privately(self, conv: ConversationRef) -> bool:
        ch = self.channel(conv)
        return ch is not None and ch.can_deliver_privately(conv)

    async def check_private_delivery(self, conv: ConversationRef, recipient: Identity) -> str | None:
        ch = self.channel(conv)
        if ch is None:
            return None
        try:
            return await ch.check_private_delivery(conv, recipient)
        except Exception:
            log.exception("checking private delivery on %s failed", conv.channel)
            return "I could not check whether I can reach you privately. Please try again in a minute."

    async def retract(self, conv: ConversationRef, session_id: str, handle: str | None = None) -> None:
        """Logged, never raised: a card left in a chat must not stop a teardown."""
        ch = self.channel(conv)
        if ch is None:
            return
        try:
            await ch.retract_config(conv, session_id, handle)
        except Exception:
            log.exception("retracting the config of session %s on %s failed", session_id, conv.channel)

    async def deliver(self, conv: ConversationRef, recipient: Identity, delivery: ConfigDelivery) -> str:
        ch = self.channel(conv)
        if ch is None:
            raise DeliveryError(f"the {conv.channel} channel is not running in this process")
        return await ch.deliver_config(conv, recipient, delivery)
