"""The front door for every message: de-duplicate, parse, check access, audit, run.

Two layers, as in aiogram: the allowlist runs before anything else (strangers get a polite refusal
and nothing else happens); the admin check runs after a command matched, from its registration.
"""
from __future__ import annotations

import logging
import secrets
from typing import Callable

from bot import metrics
from bot.access import AccessPolicy, Role
from bot.logs import bind
from bot.chat.parser import Command, Usage, parse
from bot.chat.registry import Context, Registry
from bot.messages import Incoming
from bot.replies import Outbox
from bot.store.model import utcnow
from bot.store.ports import AuditEntry, Store

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(
        self,
        registry: Registry,
        access: AccessPolicy,
        store: Store,
        outbox: Outbox,
        help_card: Callable[[Role | None, str], object],
        *,
        clock: Callable = utcnow,
    ) -> None:
        self.registry = registry
        self.access = access
        self.store = store
        self.outbox = outbox
        self.help_card = help_card
        self._clock = clock

    async def handle(self, msg: Incoming) -> None:
        bind(user=str(msg.identity.key))
        outcome = await self._handle(msg)
        metrics.chat_message(msg.conversation.channel, outcome)

    async def _handle(self, msg: Incoming) -> str:
        """Runs the message; returns its outcome for the metrics (handled, duplicate, ignored, refused, usage, error)."""
        if msg.message_id and not await self.store.first_seen(msg.conversation.channel, msg.message_id, self._clock()):
            log.info("ignoring re-sent message %s from %s", msg.message_id[:64], msg.identity.key)
            return "duplicate"
        parsed = parse(msg.text)
        if parsed is None and not msg.is_private:
            return "ignored"  # group chatter that is not for us
        role = self.access.role_of(msg.identity)
        command_text = parsed.verb if isinstance(parsed, Command) else "(unparsed)"
        if role is None:
            await self._audit(msg, command_text, False, "not on the allowlist")
            # An id is said only in a private chat, never in a group or channel.
            where = f" (your id is {msg.identity.key})" if msg.is_private else " (message me privately to learn your id)"
            await self.outbox.text(
                msg.conversation,
                f"Sorry, you are not allowed to use this VPN bot. If you should be, ask an admin to add you{where}.",
            )
            return "refused"
        if parsed is None or isinstance(parsed, Usage):
            problem = parsed.problem if isinstance(parsed, Usage) else "I only understand /vpn commands"
            await self._audit(msg, command_text, True, f"usage: {problem}")
            await self.outbox.card(msg.conversation, self.help_card(role, f"Sorry, {problem}."))
            return "usage"
        spec = self.registry.get(parsed.verb)
        if spec is None:
            await self.outbox.card(msg.conversation, self.help_card(role, f"Sorry, '{parsed.verb}' is not available."))
            return "usage"
        if spec.admin_only and role is not Role.ADMIN:
            await self._audit(msg, command_text, False, "admin only")
            await self.outbox.text(msg.conversation, f"Sorry, only admins can use /vpn {spec.verb}.")
            return "refused"
        await self._audit(msg, _describe(parsed), True, role.value)
        try:
            await spec.handler(Context(msg, role, self.outbox), parsed)
        except Exception:
            ref = secrets.token_hex(3)
            log.exception("command %s from %s failed (ref %s)", parsed.verb, msg.identity.key, ref)
            await self.outbox.text(msg.conversation, f"Sorry, something went wrong. An admin can look it up in the log (ref {ref}).")
            return "error"
        return "handled"

    async def _audit(self, msg: Incoming, command: str, allowed: bool, reason: str) -> None:
        entry = AuditEntry(
            at=self._clock(),
            user=str(msg.identity.key),
            email=msg.identity.email or "",
            channel=msg.conversation.channel,
            command=command,
            allowed=allowed,
            reason=reason,
        )
        log.info("audit user=%s command=%s allowed=%s reason=%s", entry.user, command[:60], allowed, reason[:80])
        await self.store.audit(entry)


def _describe(cmd: Command) -> str:
    return " ".join((cmd.verb, *cmd.args))

