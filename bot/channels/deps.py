"""What the wiring hands a chat channel (Teams, GroupMe, the console): exactly what they use, never the runtime.

A channel is built from its own settings section; `attach(deps)` gives it these once the store,
the task runner and the front door exist. Each field is typed against the narrow port it needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Awaitable, Callable

from bot.messages import ConversationRef, Identity, Incoming
from bot.store.ports import OneTimeConfigStore, SessionReader
from cards.model import Card

if TYPE_CHECKING:
    import aiohttp

    from bot.engine.tasks import TaskRunner

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class ChatDeps:
    http: "aiohttp.ClientSession"  # one client session for every outbound call
    clock: Clock
    runner: "TaskRunner"  # tracked background work: a message is handled after its request was acknowledged
    handle: Callable[[Incoming], Awaitable[None]]  # the chat front door (bot/chat/dispatcher.py)
    notify: Callable[[ConversationRef, str], Awaitable[bool]]  # a notice outside a command (logged, never raised)
    welcome: Callable[[Identity | None, bool], Card]  # a newcomer's card: their commands, or how to get access (ids only if private)
    configs: OneTimeConfigStore  # configs held for their owner (claim links, Teams file consent)
    sessions: SessionReader  # the session a held config or card belongs to
