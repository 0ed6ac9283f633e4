"""Shared fixtures: a fake clock, a channel that records what it was asked to send, a runtime on tmp_path."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.access import AccessPolicy  # noqa: E402
from bot.messages import ConversationRef, Identity, Incoming, UserKey  # noqa: E402
from bot.outbox import ConfigDelivery  # noqa: E402
from bot.runtime import Runtime  # noqa: E402
from bot.settings import Settings  # noqa: E402
from cards.model import Card  # noqa: E402
from cards.text import render_card_text  # noqa: E402
from app import make_provider  # noqa: E402


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
class RecordingChannel:
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
            from bot.outbox import DeliveryError

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


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def channel() -> RecordingChannel:
    return RecordingChannel()


@pytest.fixture(scope="session")
def azurite():
    """Azurite's table service on 127.0.0.1, shared by the session; tests isolate by table prefix."""
    from tests.azurite import Azurite

    server = Azurite().start()
    yield server
    server.stop()


@pytest.fixture
def store_backend(request) -> str:
    """sqlite unless a test module parametrises it (indirect) over both back ends."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def store_env(request, store_backend) -> dict[str, str]:
    """The settings that put a runtime on the chosen store; one test's tables are its own."""
    if store_backend == "sqlite":
        return {"VPN_STORE": "sqlite"}
    server = request.getfixturevalue("azurite")
    return {"VPN_STORE": "azure-tables", "AZURE_STORAGE_CONNECTION_STRING": server.connection_string, "VPN_TABLE_PREFIX": server.prefix()}


@pytest.fixture
def make_runtime(tmp_path, clock, channel, store_env):
    """Build a Runtime on tmp_path with settings from keyword overrides; enter it with `async with`."""

    def build(*, users: str = "test:alice,test:bob", admins: str = "test:root", provider=None, channels=None, clock_fn=None, **env) -> Runtime:
        values = {"VPN_DATA_DIR": str(tmp_path / "data"), "VPN_USERS": users, "VPN_ADMINS": admins, "VPN_METRICS_PORT": "0", **store_env}
        values.update({k: str(v) for k, v in env.items()})
        settings = Settings.from_env(values)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        provider = provider or make_provider(settings)
        access = AccessPolicy.from_text(settings.users, settings.admins)
        return Runtime(settings, provider, access, [channel] if channels is None else channels, clock=clock_fn or clock, background=False)

    return build


@pytest.fixture
def lab():
    """A two-namespace WireGuard lab (tests/netns.py); skipped where namespaces are impossible, never in CI."""
    import os

    from tests.netns import Lab, why_no_netns

    reason = why_no_netns()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the tunnel tests, but: {reason}")
        pytest.skip(reason)
    with Lab() as made:
        yield made
