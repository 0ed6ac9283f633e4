"""Who may do what: the one place every front door (chat, web API) asks, and where every decision is audited.

The allowlist and roles come from bot/access.py; the limits from `SessionPolicy`. A refusal is a
`Refused` with a code and facts — never a sentence: each front end renders its own words
(bot/chat/refusals.py for chat, bot/channels/web/refusals.py for the page and API).

Rules, by action (`RULES`): who may run it, whether admins may act on another person's session, and
whether it is audited. "May an admin extend someone else's session?" is answered here and nowhere else.
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Sequence

from bot.access import AccessPolicy, Role
from bot.engine.config import SessionPolicy
from bot.messages import Identity
from bot.store.model import Session
from bot.store.ports import AuditEntry, AuditStore

log = logging.getLogger(__name__)
MAX_EXTEND_INPUT = 7 * 24 * 60  # bounds what a front end accepts; the session maximum is the real cap


class Action(str, enum.Enum):
    HELP = "help"
    START = "start"
    STATUS = "status"
    STOP = "stop"
    EXTEND = "extend"
    LIST = "list"  # every live session, with cost
    VIEW = "view"  # a web client reading a session or its own list (polled: not audited)
    TAKE_CONFIG = "config"  # a held config, downloaded once


@dataclass(frozen=True)
class Rule:
    admin_only: bool = False
    admins_act_on_others: bool = False  # an admin may do this to another person's session
    audited: bool = True


RULES: dict[Action, Rule] = {
    Action.HELP: Rule(),
    Action.START: Rule(),
    Action.STATUS: Rule(),
    Action.STOP: Rule(admins_act_on_others=True),
    Action.EXTEND: Rule(admins_act_on_others=True),
    Action.LIST: Rule(admin_only=True),
    Action.VIEW: Rule(admins_act_on_others=True, audited=False),
    Action.TAKE_CONFIG: Rule(admins_act_on_others=False, audited=False),  # a config is its owner's alone, admins included
}


def allows(role: Role | None, action: Action) -> bool:
    """Whether a role may run an action at all (the help text lists only these)."""
    return role is not None and (role is Role.ADMIN or not RULES[action].admin_only)


class Code(str, enum.Enum):
    """Why a request was turned down; the facts that go with each are listed beside it."""

    NOT_ALLOWED = "not_allowed"  # user
    ADMIN_ONLY = "admin_only"  # command
    NOT_OWNER = "not_owner"  # session_id (the session is someone else's)
    NO_SUCH_SESSION = "no_such_session"  # target
    NO_SESSION = "no_session"  # (the person has none running)
    UNKNOWN_REGION = "unknown_region"  # region, regions
    MINUTES_OUT_OF_RANGE = "minutes_out_of_range"  # minutes, max
    NO_PRIVATE_DELIVERY = "no_private_delivery"  # channel
    PRIVATE_CHAT_UNAVAILABLE = "private_chat_unavailable"  # reason (the channel's own sentence)
    KEY_IN_USE = "key_in_use"  # (a brought public key another live session has)
    USER_LIMIT = "user_limit"  # session_id, state
    GLOBAL_LIMIT = "global_limit"  # max
    NOTHING_TO_EXTEND = "nothing_to_extend"  # session_id, state ("" when the person has no session)
    EXTEND_TOO_SHORT = "extend_too_short"  # minutes
    AT_MAXIMUM = "at_maximum"  # session_id, max
    EXTEND_TOO_LONG = "extend_too_long"  # session_id, room, max
    ALREADY_ENDED = "already_ended"  # session_id


class Refused(Exception):
    """A request the engine turns down: a code and facts, rendered by each front end in its own words."""

    def __init__(self, code: Code, **facts: Any) -> None:
        super().__init__(f"{code.value} {facts}")
        self.code = code
        self.facts = facts

    def __getitem__(self, name: str) -> Any:
        return self.facts[name]


@dataclass(frozen=True)
class Actor:
    """Someone the allowlist let in, with their role and the channel they spoke on."""

    identity: Identity
    role: Role
    channel: str

    @property
    def key(self) -> str:
        return str(self.identity.key)

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


class Policy:
    """Decides and audits; raises `Refused`. Front ends call `admit` then `authorize`; the engine's use
    cases call `check_session`, `start_request` and `extend_request` for the rules about sessions."""

    def __init__(self, access: AccessPolicy, limits: SessionPolicy, audit: AuditStore, clock: Callable[[], datetime]) -> None:
        self.access = access
        self.limits = limits
        self._audit = audit
        self._clock = clock

    def role_of(self, who: Identity) -> Role | None:
        return self.access.role_of(who)

    def allows(self, role: Role | None, action: Action) -> bool:
        return allows(role, action)

    async def admit(self, who: Identity, channel: str, command: str) -> Actor:
        """The allowlist, before anything else happens: strangers are refused (and audited)."""
        role = self.role_of(who)
        if role is None:
            await self.record(who, channel, command, False, "not on the allowlist")
            raise Refused(Code.NOT_ALLOWED, user=str(who.key))
        return Actor(who, role, channel)

    async def authorize(self, actor: Actor, action: Action, command: str) -> None:
        """May this actor run this action at all? Audited both ways where the rule says so."""
        rule = RULES[action]
        if rule.admin_only and not actor.is_admin:
            await self.record(actor.identity, actor.channel, command, False, "admin only")
            raise Refused(Code.ADMIN_ONLY, command=action.value)
        if rule.audited:
            await self.record(actor.identity, actor.channel, command, True, actor.role.value)

    def may_act_on(self, actor: Actor, session: Session, action: Action) -> bool:
        return session.owner == actor.key or (actor.is_admin and RULES[action].admins_act_on_others)

    def check_session(self, actor: Actor, session: Session, action: Action) -> None:
        """The owner, or an admin where the action's rule lets admins act on others."""
        if not self.may_act_on(actor, session, action):
            raise Refused(Code.NOT_OWNER, session_id=session.id)

    def start_request(self, region: str | None, minutes: int | None, regions: Sequence[str]) -> tuple[str, int]:
        """The region (default: the provider's first) and length a start may have."""
        chosen = (region or regions[0]).lower()
        if chosen not in regions:
            raise Refused(Code.UNKNOWN_REGION, region=chosen, regions=tuple(regions))
        length = self.limits.session_minutes if minutes is None else minutes
        if not 1 <= length <= self.limits.max_session_minutes:
            raise Refused(Code.MINUTES_OUT_OF_RANGE, minutes=length, max=self.limits.max_session_minutes)
        return chosen, length

    def extend_request(self, minutes: int | None) -> int:
        length = self.limits.session_minutes if minutes is None else minutes
        if length < 1:
            raise Refused(Code.EXTEND_TOO_SHORT, minutes=length)
        return length

    async def record(self, who: Identity, channel: str, command: str, allowed: bool, reason: str) -> None:
        """One audit entry (and one log line) per decision."""
        entry = AuditEntry(self._clock(), str(who.key), who.email or "", channel, command, allowed, reason)
        log.info("audit user=%s command=%s allowed=%s reason=%s", entry.user, command[:60], allowed, reason[:80])
        await self._audit.audit(entry)
