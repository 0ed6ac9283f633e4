"""The chat front door: parse, de-duplicate, ask the policy (bot/engine/policy.py), run, answer.

Two layers, as in aiogram: the allowlist runs before anything else (strangers get a polite refusal
and nothing else happens); the command's own rule runs after it matched. Both decisions, and their
audit records, are the policy's — the web API asks the same one.
"""
from __future__ import annotations

import logging
import secrets
from datetime import datetime
from typing import Awaitable, Callable

from bot import metrics
from bot.access import Role
from bot.chat.parser import Command, Usage, parse
from bot.chat.refusals import say
from bot.chat.registry import Context, Registry
from bot.engine.policy import RULES, Actor, Policy, Refused
from bot.logs import bind
from bot.messages import ConversationRef, Incoming
from bot.recent import Recent
from bot.replies import Outbox
from bot.store.codec import store_key
from bot.store.model import utcnow
from bot.store.ports import DedupeStore
from cards.model import Card

log = logging.getLogger(__name__)
ANSWERED_REMEMBERED = 4096  # message ids of repeatable commands this process remembers (a re-send comes within minutes)


class Dispatcher:
    def __init__(
        self,
        registry: Registry,
        policy: Policy,
        dedupe: DedupeStore,
        outbox: Outbox,
        help_card: Callable[[Role | None, str], Card],
        *,
        clock: Callable[[], datetime] = utcnow,
        on_admitted: Callable[[Actor, ConversationRef, bool], Awaitable[None]] | None = None,
    ) -> None:
        self.registry = registry
        self._on_admitted = on_admitted  # the engine keeps approvers' private chats (bot/engine/approvals.py)
        self.policy = policy
        self.dedupe = dedupe
        self.outbox = outbox
        self.help_card = help_card
        self._clock = clock
        self._answered: Recent[tuple[str, str], bool] = Recent(ANSWERED_REMEMBERED)  # ids of repeatable commands (_first_time)

    async def handle(self, msg: Incoming) -> None:
        bind(user=str(msg.identity.key))
        outcome = await self._handle(msg)
        metrics.chat_message(msg.conversation.channel, outcome)

    async def _handle(self, msg: Incoming) -> str:
        """Runs the message; returns its outcome for the metrics (handled, duplicate, ignored, refused, usage, error)."""
        channel = msg.conversation.channel
        parsed = parse(msg.text)
        if parsed is None and not msg.is_private:
            return "ignored"  # group chatter that is not for us: nothing recorded
        if msg.message_id and not await self._first_time(msg, msg.message_id, parsed):
            log.info("ignoring re-sent message %s from %s", msg.message_id[:64], msg.identity.key)
            return "duplicate"
        command_text = parsed.verb if isinstance(parsed, Command) else "(unparsed)"
        try:
            actor = await self.policy.admit(msg.identity, channel, command_text)
        except Refused as refused:
            await self.outbox.text(msg.conversation, say(refused, private=msg.is_private))
            return "refused"
        if self._on_admitted is not None:
            try:
                await self._on_admitted(actor, msg.conversation, msg.is_private)
            except Exception:
                log.exception("remembering where %s can be reached failed", msg.identity.key)
        if parsed is None or isinstance(parsed, Usage):
            problem = parsed.problem if isinstance(parsed, Usage) else "I only understand /vpn commands"
            await self.policy.record(msg.identity, channel, command_text, True, f"usage: {problem}")
            await self.outbox.card(msg.conversation, self.help_card(actor.role, f"Sorry, {problem}."))
            return "usage"
        spec = self.registry.get(parsed.verb)
        if spec is None:
            await self.outbox.card(msg.conversation, self.help_card(actor.role, f"Sorry, '{parsed.verb}' is not available."))
            return "usage"
        try:
            await self.policy.authorize(actor, spec.action, _describe(parsed))
        except Refused as refused:
            await self.outbox.text(msg.conversation, say(refused, private=msg.is_private))
            return "refused"
        try:
            await spec.handler(Context(msg, actor, self.outbox), parsed)
        except Exception:
            ref = secrets.token_hex(3)
            log.exception("command %s from %s failed (ref %s)", parsed.verb, msg.identity.key, ref)
            await self.outbox.text(msg.conversation, f"Sorry, something went wrong. An admin can look it up in the log (ref {ref}).")
            return "error"
        return "handled"

    async def _first_time(self, msg: Incoming, message_id: str, parsed: Command | Usage | None) -> bool:
        """Whether this message id is new. In the store (any replica's copy is recognised), but for a
        command that only answers (`Rule.repeatable`: `/vpn help`, `/vpn pending`) in a private chat:
        this process remembers its recent ids (a platform's re-send usually reaches the same replica,
        e.g. Teams' after a cold start), and a copy reaching another replica is answered again, to
        the same person, instead of a store write per message."""
        channel = msg.conversation.channel
        spec = self.registry.get(parsed.verb) if isinstance(parsed, Command) else None
        if not (msg.is_private and spec is not None and RULES[spec.action].repeatable):
            return await self.dedupe.first_seen(channel, message_id, self._clock())
        key = (channel, store_key(message_id))  # bounded, as the store keeps it
        if key in self._answered:
            return False
        self._answered[key] = True
        return True


def _describe(cmd: Command) -> str:
    return " ".join((cmd.verb, *cmd.args))
