"""What every step of the engine works with, handed in once by the wiring (no locator, no globals)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Protocol

from bot.engine.config import SessionPolicy
from bot.engine.leases import Leases
from bot.engine.notify import Notifier
from bot.engine.tasks import TaskRunner
from bot.engine.usage import UsageConfig
from bot.replies import Outbox
from bot.store.model import Session
from bot.store.ports import (
    AddressStore,
    AuditStore,
    ContactStore,
    NotificationStore,
    OneTimeConfigStore,
    RetentionStore,
    SessionStore,
    UsageStore,
    Worker,
    WorkerStore,
)
from provisioner.base import Provider


class EngineStore(
    SessionStore, OneTimeConfigStore, AddressStore, WorkerStore, RetentionStore, ContactStore, UsageStore, AuditStore, NotificationStore, Protocol
):
    """The ports the engine itself uses: sessions, held configs (erased at the end), addresses, workers, retention, approvers' chats,
    usage records and the audit log (reports), the notification outbox."""


@dataclass(frozen=True)
class EngineParts:
    store: EngineStore
    provider: Provider
    runner: TaskRunner
    outbox: Outbox
    limits: SessionPolicy
    clock: Callable[[], datetime]
    worker: Worker
    leases: Leases
    usage: UsageConfig = UsageConfig()
    notify: Notifier | None = None  # admins' chats and webhooks (bot/engine/notify.py)

    async def emit(self, kind: str, s: Session, **facts: Any) -> None:
        """A notification, queued once per target; a store hiccup is logged (the work that emits it goes on)."""
        if self.notify is not None:
            await self.notify.emit_quietly(kind, s, **facts)
