"""Commands name the action they are where they are registered; its rule (admin only, …) lives in bot/engine/policy.py."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

from bot.access import Role
from bot.chat.parser import Command
from bot.engine.policy import RULES, Action, Actor, allows
from bot.messages import Incoming
from bot.replies import Outbox
from cards.model import Card


@dataclass(frozen=True)
class Context:
    """What a handler gets: the message, the sender's role, and a way to answer in that conversation."""

    message: Incoming
    actor: Actor
    outbox: Outbox

    @property
    def role(self) -> Role:
        return self.actor.role

    @property
    def is_admin(self) -> bool:
        return self.actor.is_admin

    async def reply(self, text: str) -> None:
        await self.outbox.text(self.message.conversation, text)

    async def reply_card(self, card: Card) -> None:
        await self.outbox.card(self.message.conversation, card)


Handler = Callable[[Context, Command], Awaitable[None]]


@dataclass(frozen=True)
class CommandSpec:
    verb: str
    usage: str
    summary: str
    handler: Handler
    action: Action


class Registry:
    def __init__(self) -> None:
        self._specs: dict[str, CommandSpec] = {}
        self._available: dict[tuple[Role | None, bool], tuple[CommandSpec, ...]] = {}  # what `available_to` answered, until a command is added

    def command(self, verb: str, *, action: Action, usage: str, summary: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            if verb in self._specs:
                raise ValueError(f"command {verb!r} registered twice")
            self._specs[verb] = CommandSpec(verb, usage, summary, handler, action)
            self._available.clear()
            return handler

        return register

    def get(self, verb: str) -> CommandSpec | None:
        return self._specs.get(verb)

    def available_to(self, role: Role | None, *, approver: bool = False) -> tuple[CommandSpec, ...]:
        """The commands this role may run, in the order they were registered (every help card asks)."""
        key = (role, approver) if role is None or type(role) is Role else None  # a plain "admin" str is not Role.ADMIN to `allows`
        found = self._available.get(key) if key else None
        if found is None:
            found = tuple(s for s in self._specs.values() if allows(role, s.action) and (approver or not RULES[s.action].approvers_only))
            if key:
                self._available[key] = found
        return found
