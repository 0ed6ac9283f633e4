"""Who may do what: the one place every front door (chat, web API) asks, and where every decision is audited
(refusals always; of the allowed, what `RULES` marks audited: every state change and every read of
sessions, not `/vpn help` nor the web page's polls).

The allowlist and roles come from bot/access.py; the limits from `SessionPolicy`, overridden per
person by the first matching entry of the policy file (bot/engine/policy_file.py); Entra group
membership from `Memberships` (bot/engine/groups.py, fail closed). A refusal is a `Refused` with a
code and facts — never a sentence: each front end renders its own words (bot/chat/refusals.py for
chat, bot/channels/web/refusals.py for the page and API).

Rules, by action (`RULES`): who may run it, whether admins may act on another person's session, and
whether it is audited. "May an admin extend someone else's session?" is answered here and nowhere else;
so is "who may approve this request?" (`check_decider`: an approver the request names, never its owner).
"""
from __future__ import annotations

import enum
import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Sequence

from bot.access import NO_GROUPS, AccessPolicy, Role, RuleError, group_ids, matches_any, parse_rules
from bot.access import Rule as Match
from bot.engine.config import GovernanceConfig, SessionPolicy
from bot.engine.groups import GroupsUnavailable, Memberships, NoGraph
from bot.engine.policy_file import Approval, PolicyEntry, WatchedPolicy
from bot.messages import Identity, InvalidIdentity, UserKey
from bot.store.model import Session
from bot.store.ports import AuditEntry, AuditStore

log = logging.getLogger(__name__)
MAX_EXTEND_INPUT = 7 * 24 * 60  # bounds what a front end accepts; the session maximum is the real cap
MAX_REASON = 200  # characters of a request's reason or a denial's


class Action(str, enum.Enum):
    HELP = "help"
    START = "start"
    STATUS = "status"
    STOP = "stop"
    EXTEND = "extend"
    LIST = "list"  # every live session, with cost
    VIEW = "view"  # a web client reading a session or its own list (polled: not audited)
    TAKE_CONFIG = "config"  # a held config, downloaded once
    APPROVE = "approve"  # a request awaiting approval: its approvers decide (check_decider)
    DENY = "deny"
    PENDING = "pending"  # the requests this person may decide
    REPORT = "report"  # usage per user over a period (bot/engine/reports.py)
    AUDIT = "audit"  # the audit log, newest first
    NOTIFY = "notify"  # where notifications go: this chat, or no longer


@dataclass(frozen=True)
class Rule:
    admin_only: bool = False
    admins_act_on_others: bool = False  # an admin may do this to another person's session
    audited: bool = True
    approvers_only: bool = False  # listed in help only for people some approver rule names
    # Only answers, from state it does not change: in a private chat a re-sent copy is recognised by the
    # process that answered it, not through a store write per message; a copy reaching another replica
    # is answered again (bot/chat/dispatcher.py _first_time; docs/decisions.md, issue 25 goal 4).
    repeatable: bool = False


RULES: dict[Action, Rule] = {
    Action.HELP: Rule(audited=False, repeatable=True),  # reads nothing but the asker's own limits: no decision worth a row (docs/decisions.md)
    Action.START: Rule(),
    Action.STATUS: Rule(),
    Action.STOP: Rule(admins_act_on_others=True),
    Action.EXTEND: Rule(admins_act_on_others=True),
    Action.LIST: Rule(admin_only=True),
    Action.VIEW: Rule(admins_act_on_others=True, audited=False),
    Action.TAKE_CONFIG: Rule(admins_act_on_others=False, audited=False),  # a config is its owner's alone, admins included
    Action.APPROVE: Rule(approvers_only=True),  # the decision itself is audited by check_decider and the use case
    Action.DENY: Rule(approvers_only=True),
    Action.PENDING: Rule(approvers_only=True, audited=False, repeatable=True),
    Action.REPORT: Rule(admin_only=True),
    Action.AUDIT: Rule(admin_only=True),
    Action.NOTIFY: Rule(admin_only=True),
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
    GROUPS_UNAVAILABLE = "groups_unavailable"  # (Microsoft Graph could not say; nothing was allowed on a guess)
    PROVIDER_NOT_ALLOWED = "provider_not_allowed"  # provider, providers (the person's policy entry)
    REASON_TOO_LONG = "reason_too_long"  # max
    NOT_APPROVER = "not_approver"  # session_id
    SELF_APPROVAL = "self_approval"  # session_id
    ALREADY_DECIDED = "already_decided"  # session_id, state, decided_by
    AMBIGUOUS = "ambiguous"  # target, session_ids (several requests match: name one)


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


@dataclass(frozen=True)
class Limits:
    """What one person may have: their policy entry's values, the environment's where it gives none."""

    entry: str  # the entry's label ("" = the environment)
    default_minutes: int
    max_minutes: int
    regions: tuple[str, ...]  # the provider's regions this person may use; the first is the default
    providers: tuple[str, ...] | None  # None: any
    allowed_ips: tuple[str, ...]
    approval: Approval
    approvers: tuple[Match, ...]
    approvers_text: str


@dataclass(frozen=True)
class StartPlan:
    """A start the policy allows: where, how long, and whether it waits for an approval first."""

    region: str
    minutes: int
    needs_approval: bool
    max_minutes: int  # the session's cap from ready, extensions included
    allowed_ips: str  # "" = the environment's
    approvers: str  # the rules that may decide it ("" when it needs no approval)
    reason: str


class Policy:
    """Decides and audits; raises `Refused`. Front ends call `admit` then `authorize`; the engine's use
    cases call `check_session`, `start_request`, `extend_request` and `check_decider` for the rules about sessions."""

    def __init__(
        self,
        access: AccessPolicy,
        limits: SessionPolicy,
        audit: AuditStore,
        clock: Callable[[], datetime],
        *,
        governance: GovernanceConfig | None = None,
        memberships: Memberships | None = None,
    ) -> None:
        self.access = access
        self.limits = limits
        self._audit = audit
        self._clock = clock
        self.governance = governance or GovernanceConfig()
        self.memberships = memberships or Memberships(NoGraph(), clock, 0)
        self._approvers = parse_rules(self.governance.approvers)
        self._file = WatchedPolicy(self.governance.policy_file, self.governance.policy, self.governance.policy_stamp)
        self._parsed: dict[str, tuple[Match, ...]] = {}
        self._wanted: tuple[AccessPolicy, tuple[PolicyEntry, ...], frozenset[str]] | None = None  # wanted_groups, and what it was made of

    # ----- who someone is: role, groups, policy entry -------------------------------------------

    @property
    def _entries(self) -> tuple[PolicyEntry, ...]:
        return self._file.entries

    @property
    def wanted_groups(self) -> frozenset[str]:
        """Every group some rule names: one Graph question per person answers them all (asked on every
        message: kept until the policy file's entries change)."""
        entries, access = self._entries, self.access
        if self._wanted is not None and self._wanted[0] is access and self._wanted[1] is entries:
            return self._wanted[2]
        found = set(access.group_ids | group_ids(self._approvers))
        for entry in entries:
            found |= entry.group_ids
        self._wanted = (access, entries, frozenset(found))
        return self._wanted[2]

    async def groups_of(self, who: Identity, extra: frozenset[str] = NO_GROUPS) -> frozenset[str]:
        """Raises GroupsUnavailable (fail closed: the caller refuses)."""
        return await self.memberships.of(who, self.wanted_groups | extra)

    def _entry_for(self, who: Identity, groups: frozenset[str]) -> PolicyEntry | None:
        return next((e for e in self._entries if matches_any(e.match, who, groups)), None)

    def role_of(self, who: Identity) -> Role | None:
        """Without group lookups (a newcomer's welcome card): rules by id and email, and the policy file."""
        role = self.access.role_of(who)
        return role or (Role.USER if self._entry_for(who, NO_GROUPS) else None)

    async def role_for(self, who: Identity) -> Role | None:
        """The role, group rules included; raises GroupsUnavailable only when no rule without groups lets `who` in."""
        if self.access.role_of(who) is Role.ADMIN:
            return Role.ADMIN
        try:
            groups = await self.groups_of(who) if self.wanted_groups else NO_GROUPS
        except GroupsUnavailable as exc:
            known = self.role_of(who)  # an admin group cannot be checked: such a person is a user for now
            if known is None:
                raise
            log.warning("group membership of %s unavailable (%s); role %s from rules without groups", who.key, exc, known.value)
            return known
        role = self.access.role_of(who, groups)
        return role or (Role.USER if self._entry_for(who, groups) else None)

    def allows(self, role: Role | None, action: Action) -> bool:
        return allows(role, action)

    async def admit(self, who: Identity, channel: str, command: str) -> Actor:
        """The allowlist, before anything else happens: strangers are refused (and audited)."""
        try:
            role = await self.role_for(who)
        except GroupsUnavailable as exc:
            await self.record(who, channel, command, False, f"group membership unavailable: {exc}")
            raise Refused(Code.GROUPS_UNAVAILABLE) from None
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

    async def limits_for(self, actor: Actor, regions: Sequence[str]) -> Limits:
        """This person's limits: the first policy entry that names them, the environment for what it leaves out."""
        try:
            groups = await self.groups_of(actor.identity) if self.wanted_groups else NO_GROUPS
        except GroupsUnavailable:
            raise Refused(Code.GROUPS_UNAVAILABLE) from None
        entry = self._entry_for(actor.identity, groups) or PolicyEntry("", ())
        env = self.limits
        max_minutes = entry.max_minutes or env.max_session_minutes
        default = min(entry.default_minutes or env.session_minutes, max_minutes)
        allowed = [r for r in regions if entry.regions is None or r in entry.regions]
        if entry.regions is not None:  # in the entry's order: its first is the default
            allowed.sort(key=entry.regions.index)
        approval = entry.approval or self.governance.approval
        approvers = entry.approvers if entry.approvers is not None else self._approvers
        text = entry.approvers_text if entry.approvers_text is not None else self.governance.approvers
        return Limits(entry.label, default, max_minutes, tuple(allowed), entry.providers, tuple(entry.allowed_ips or env.allowed_ips),
                      approval, approvers, text)

    async def start_request(
        self, actor: Actor, region: str | None, minutes: int | None, regions: Sequence[str], provider: str, reason: str = ""
    ) -> StartPlan:
        """The region (default: the person's first), length and approval a start may have."""
        if len(reason) > MAX_REASON:
            raise Refused(Code.REASON_TOO_LONG, max=MAX_REASON)
        mine = await self.limits_for(actor, regions)
        if mine.providers is not None and provider not in mine.providers:
            raise Refused(Code.PROVIDER_NOT_ALLOWED, provider=provider, providers=mine.providers)
        chosen = (region or (mine.regions[0] if mine.regions else "")).lower()
        if chosen not in mine.regions:
            raise Refused(Code.UNKNOWN_REGION, region=chosen, regions=mine.regions)
        length = mine.default_minutes if minutes is None else minutes
        if not 1 <= length <= mine.max_minutes:
            raise Refused(Code.MINUTES_OUT_OF_RANGE, minutes=length, max=mine.max_minutes)
        needs = mine.approval.needed(length)
        cap = length if needs else (min(mine.max_minutes, mine.approval.minutes) if mine.approval.kind == "over" else mine.max_minutes)
        custom_ips = mine.allowed_ips != tuple(self.limits.allowed_ips)
        approvers = mine.approvers_text if mine.approval.kind != "never" else ""
        return StartPlan(chosen, length, needs, cap, ", ".join(mine.allowed_ips) if custom_ips else "", approvers, reason.strip())

    def extend_request(self, minutes: int | None) -> int:
        length = self.limits.session_minutes if minutes is None else minutes
        if length < 1:
            raise Refused(Code.EXTEND_TOO_SHORT, minutes=length)
        return length

    def max_minutes_of(self, s: Session) -> int:
        return s.max_minutes or self.limits.max_session_minutes

    # ----- approvals ------------------------------------------------------------------------------

    def approver_rules(self, text: str) -> tuple[Match, ...]:
        rules = self._parsed.get(text)
        if rules is None:
            try:
                rules = parse_rules(text)
            except RuleError:
                log.warning("stored approver rules %r do not parse; nobody may decide", text[:80])
                rules = ()
            self._parsed[text] = rules
        return rules

    async def may_decide(self, actor: Actor, s: Session) -> bool:
        """An approver the request names, and not its owner (GroupsUnavailable: the caller refuses)."""
        rules = self.approver_rules(s.approvers)
        if s.owner == actor.key or not rules:
            return False
        return matches_any(rules, actor.identity, await self.groups_of(actor.identity, group_ids(rules)))

    async def check_decider(self, actor: Actor, s: Session, action: Action) -> None:
        """Nobody decides their own request; only the approvers it names decide. Refusals are audited."""
        command = f"{action.value} {s.id}"
        if s.owner == actor.key:
            await self.record(actor.identity, actor.channel, command, False, "self-approval refused")
            raise Refused(Code.SELF_APPROVAL, session_id=s.id)
        try:
            ok = await self.may_decide(actor, s)
        except GroupsUnavailable as exc:
            await self.record(actor.identity, actor.channel, command, False, f"group membership unavailable: {exc}")
            raise Refused(Code.GROUPS_UNAVAILABLE) from None
        if not ok:
            await self.record(actor.identity, actor.channel, command, False, "not an approver of this request")
            raise Refused(Code.NOT_APPROVER, session_id=s.id)

    async def is_approver(self, actor: Actor) -> bool:
        """Whether some approver rule (VPN_APPROVERS or a policy entry's) names this person; False if unknowable."""
        rules = [*self._approvers, *(r for e in self._entries for r in (e.approvers or ()))]
        if not rules:
            return False
        try:
            groups = await self.groups_of(actor.identity) if group_ids(rules) else NO_GROUPS
        except GroupsUnavailable:
            return False
        return matches_any(rules, actor.identity, groups)

    # ----- revocation -----------------------------------------------------------------------------

    async def still_allowed(self, owner: str, label: str) -> bool | None:
        """Whether a session's owner would still be let in: None when it cannot be known now (Graph down).
        The console operator is let in by running the console, not by a rule: never revoked."""
        try:
            key = UserKey.parse(owner)
        except InvalidIdentity:
            return False
        if key.channel == "console":
            return True
        who = Identity(key, email=label if label != owner and "@" in label else None)
        try:
            return await self.role_for(who) is not None
        except GroupsUnavailable:
            return None

    def fingerprint(self) -> str:
        """A digest of who may have a session (allowlist, approvers, policy entries): when it differs from the
        last revocation pass's, every live session is checked again (bot/engine/revocation.py)."""
        text = repr((self.access.describe(), self._approvers, self._entries))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    async def reload_if_changed(self) -> bool:
        """Re-read the policy file if it changed on disk (a bad edit keeps the policy in force)."""
        return await self._file.reload_if_changed()

    async def record(self, who: Identity, channel: str, command: str, allowed: bool, reason: str) -> None:
        """One audit entry (and one log line) per decision."""
        await self.record_for(str(who.key), who.email or "", channel, command, allowed, reason)

    async def record_for(self, user: str, email: str, channel: str, command: str, allowed: bool, reason: str) -> None:
        """The same, for a decision the engine makes on someone's behalf (a timeout, a revocation)."""
        entry = AuditEntry(self._clock(), user, email, channel, command, allowed, reason)
        log.info("audit user=%s command=%s allowed=%s reason=%s", entry.user, command[:60], allowed, reason[:80])
        await self._audit.audit(entry)

