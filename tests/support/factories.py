"""Shared factories: a fake clock, a channel that records what it was asked to send, neutral messages."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from bot.messages import ConversationRef, Identity, Incoming, UserKey
from bot.replies import ChannelDefaults, ConfigDelivery, DeliveryError
from bot.store.model import Session, SessionState, new_session_id
from cards.model import Card
from cards.text import render_card_text


class FakeClock:
    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw) -> None:
        self.now += timedelta(**kw)


@dataclass
class Sent:
    kind: str  # text, card, progress, config
    conv: ConversationRef
    text: str
    delivery: ConfigDelivery | None = None
    recipient: Identity | None = None


@dataclass
class RecordingChannel(ChannelDefaults):
    """Stands where a platform would be: records every send, as a fake connector records requests."""

    name: str = "test"
    sent: list[Sent] = field(default_factory=list)
    fail_delivery: bool = False

    async def send_text(self, conv, text):
        self.sent.append(Sent("text", conv, text))

    async def send_card(self, conv, card: Card):
        self.sent.append(Sent("card", conv, render_card_text(card)))

    async def send_progress(self, conv, text, handle):
        self.sent.append(Sent("progress", conv, text))
        return handle or f"progress-{len(self.sent)}"

    private: bool = True

    def can_deliver_privately(self, conv):
        return self.private

    async def deliver_config(self, conv, recipient, delivery):
        if self.fail_delivery:
            raise DeliveryError("the user blocked the bot")
        self.sent.append(Sent("config", conv, delivery.config.reveal(), delivery, recipient))
        return "Your config was sent to you privately."

    def texts(self, kind: str | None = None) -> list[str]:
        return [s.text for s in self.sent if kind is None or s.kind == kind]

    def all_text(self) -> str:
        return "\n".join(self.texts())


def conversation(channel: str = "test", **data) -> ConversationRef:
    return ConversationRef(channel, data or {"conversation": "c1"})


def incoming(text: str, user: str = "test:alice", *, email: str | None = None, message_id: str | None = None, private: bool = True, channel: str = "test") -> Incoming:
    return Incoming(Identity(UserKey.parse(user), email=email), text, conversation(channel, user=user), message_id, private)


T0 = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


def new_session(owner: str = "test:alice", session_id: str | None = None, **changes) -> Session:
    """A session as the store keeps it, for the store's own tests."""
    s = Session(
        id=session_id or new_session_id(), owner=owner, owner_label=owner, conversation=ConversationRef("test", {"user": owner}),
        state=SessionState.REQUESTED, provider="dryrun", region="local", created_at=T0, expires_at=T0 + timedelta(minutes=30),
        minutes=30, updated_at=T0,
    )
    return dataclasses.replace(s, **changes)


def traffic_during_teardown(rt, session_id: str, monkeypatch, bytes_in: int = 7_000_000, bytes_out: int = 3_000_000) -> None:
    """Another replica's traffic poll writes figures for the session while its teardown destroys it."""
    destroy = rt.provider.destroy

    async def measured_meanwhile(*args, **kwargs):
        x = await rt.store.get(session_id)
        await rt.store.save(x.with_changes(x.updated_at, bytes_in=bytes_in, bytes_out=bytes_out))
        return await destroy(*args, **kwargs)

    monkeypatch.setattr(rt.provider, "destroy", measured_meanwhile)
