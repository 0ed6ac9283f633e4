"""Approvals: a request waits in `awaiting_approval` until an approver decides, it times out, or its owner withdraws it.

Who may decide is the policy's (`Policy.check_decider`: an approver the request names, never its
owner); this module runs the decisions. Every decision is one compare-and-set on the session, so
whichever approver, replica or sweeper gets there first decides, and every other one is told it was
already decided (`Code.ALREADY_DECIDED`); only the approval's winner starts provisioning, once.

Approvers are reached privately where the bot knows a private chat of theirs (`ContactStore`: kept
when an approver speaks to the bot privately, e.g. `/vpn help`), with a card whose buttons send
`/vpn approve <id>` / `/vpn deny <id>`. Where each card went is stored with the session, so whoever
decides — on any replica — turns every approver's card into the outcome (or tells them in text where
a channel cannot change a card). The web page lists pending requests for its approvers instead.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any, Callable

from bot.access import matches_any
from bot.engine import notices
from bot.engine.groups import GroupsUnavailable
from bot.engine.parts import EngineParts
from bot.engine.policy import MAX_REASON, Action, Actor, Code, Policy, Refused
from bot.engine.usage import DENIED, write_usage_quietly
from bot.messages import ConversationRef, Identity, InvalidIdentity, UserKey
from bot.store.model import Session, SessionState
from bot.store.ports import Contact, ContactStore

log = logging.getLogger(__name__)
AWAITING = SessionState.AWAITING_APPROVAL
MAX_ASKED = 20  # approvers sent a card per request (where each went is stored with the session)
CONTACT_REFRESH = timedelta(hours=1)  # how often one process rewrites an approver's private chat


class Approvals:
    def __init__(
        self, parts: EngineParts, policy: Policy, contacts: ContactStore, start_provisioning: Callable[[str], None], timeout_minutes: int
    ) -> None:
        self.p = parts
        self.policy = policy
        self.contacts = contacts
        self._start_provisioning = start_provisioning
        self.timeout_minutes = timeout_minutes
        self._remembered: dict[str, tuple[str, datetime]] = {}

    # ----- reaching approvers ---------------------------------------------------------------------

    async def remember(self, actor: Actor, conv: ConversationRef, private: bool) -> None:
        """An approver spoke to the bot privately: keep that chat, so requests reach them on any replica."""
        if not private:
            return
        now = self.p.clock()
        seen = self._remembered.get(actor.key)
        if seen is not None and seen[0] == conv.channel and now - seen[1] < CONTACT_REFRESH:
            return
        if not await self.policy.is_approver(actor):
            return
        await self.contacts.put_contact(Contact(actor.key, actor.identity.label, conv, now))
        self._remembered[actor.key] = (conv.channel, now)

    async def recipients(self, approvers: str, owner: str) -> list[Contact]:
        """The approvers of a request the bot can reach privately (never its owner)."""
        rules = self.policy.approver_rules(approvers)
        if not rules:
            return []
        found: list[Contact] = []
        for c in await self.contacts.contacts():
            if c.user == owner:
                continue
            try:
                who = Identity(UserKey.parse(c.user), email=c.label if c.label != c.user and "@" in c.label else None)
                groups = await self.policy.groups_of(who)
            except (InvalidIdentity, GroupsUnavailable):
                continue
            if matches_any(rules, who, groups):
                found.append(c)
                if len(found) == MAX_ASKED:
                    break
        return found

    def ask(self, s: Session, recipients: list[Contact]) -> None:
        """Send each approver the request card, in the background (the requester's answer does not wait)."""
        if recipients:
            self.p.runner.start(f"approval:{s.id}", lambda: self._ask(s, recipients))

    async def _ask(self, s: Session, recipients: list[Contact]) -> None:
        card = notices.approval_request(s)
        sent: list[dict[str, str]] = []
        for c in recipients:
            ok, handle = await self.p.outbox.card_for_update(c.conversation, card)
            if ok:
                sent.append({"conversation": c.conversation.to_json(), "id": handle or ""})
        if not sent:
            return

        def change(x: Session) -> Session:
            return x.with_changes(x.updated_at, approval_cards=json.dumps([*_cards(x), *sent]))

        stored = await self.p.leases.update(s.id, change)
        if stored is not None and stored.state is not AWAITING:
            # Decided while the cards were on their way: whoever decided could not see these.
            await self._close_cards(stored, sent)

    # ----- deciding -------------------------------------------------------------------------------

    async def _find(self, actor: Actor, target: str, action: Action) -> Session:
        """The request `target` names (a session id, or its owner's key or label)."""
        wanted = target.strip()
        waiting = await self.p.store.sessions([AWAITING])
        found = [s for s in waiting if s.id == wanted.lower()]
        if not found:
            folded = wanted.casefold()
            found = [s for s in waiting if s.owner.casefold() == folded or s.owner_label.casefold() == folded]
        if len(found) > 1:
            raise Refused(Code.AMBIGUOUS, target=wanted, session_ids=tuple(s.id for s in found))
        if found:
            return found[0]
        decided = await self.p.store.get(wanted.lower())
        if decided is not None and decided.approvers:
            await self.policy.check_decider(actor, decided, action)
            raise Refused(Code.ALREADY_DECIDED, session_id=decided.id, state=decided.state.value, decided_by=decided.decided_by)
        raise Refused(Code.NO_SUCH_SESSION, target=wanted)

    @staticmethod
    def _still_waiting(x: Session) -> None:
        if x.state is not AWAITING:
            raise Refused(Code.ALREADY_DECIDED, session_id=x.id, state=x.state.value, decided_by=x.decided_by)

    async def approve(self, actor: Actor, target: str, minutes: int | None = None) -> Session:
        """Approve (for the minutes asked, or fewer); the winner of the compare-and-set starts provisioning."""
        s = await self._find(actor, target, Action.APPROVE)
        await self.policy.check_decider(actor, s, Action.APPROVE)
        if minutes is not None and not 1 <= minutes <= s.minutes:
            raise Refused(Code.MINUTES_OUT_OF_RANGE, minutes=minutes, max=s.minutes)
        label, leases, clock = actor.identity.label, self.p.leases, self.p.clock

        def change(x: Session) -> Session:
            self._still_waiting(x)
            now = clock()
            granted = minutes or x.minutes
            return x.moved(
                SessionState.REQUESTED, now, decided_by=label, decided_at=now, minutes=granted, max_minutes=granted,
                expires_at=now + timedelta(minutes=granted), **leases.lease(now),  # ours: no sweeper takes it for an orphan
            )

        decided = await leases.update(s.id, change)
        if decided is None:
            raise Refused(Code.NO_SUCH_SESSION, target=s.id)
        await self.policy.record(actor.identity, actor.channel, f"approve {s.id}", True, f"approved {decided.owner_label} for {decided.minutes} min")
        log.info("session %s approved by %s for %d min", s.id, label, decided.minutes)
        await self.p.emit("approved", decided)
        await self.p.outbox.notice(decided.conversation, notices.approved(decided))
        self._start_provisioning(decided.id)
        self._close_cards_later(decided)
        return decided

    async def deny(self, actor: Actor, target: str, reason: str = "") -> Session:
        reason = " ".join(reason.split())
        if len(reason) > MAX_REASON:
            raise Refused(Code.REASON_TOO_LONG, max=MAX_REASON)
        s = await self._find(actor, target, Action.DENY)
        await self.policy.check_decider(actor, s, Action.DENY)
        why = notices.denied_by(actor.identity.label, reason)
        decided = await self._close(s.id, why, actor.identity.label, strict=True)
        assert decided is not None
        await self.policy.record(actor.identity, actor.channel, f"deny {s.id}", True, why)
        return decided

    async def cancel(self, session_id: str, reason: str, by: str = "", kind: str = DENIED) -> bool:
        """Withdrawn by its owner, stopped by an admin, or its owner's access ended: denied, if still waiting."""
        return await self._close(session_id, reason, by, strict=False, kind=kind) is not None

    async def _close(self, session_id: str, reason: str, by: str, *, strict: bool, kind: str = DENIED) -> Session | None:
        """Awaiting -> denied (terminal, nothing was ever made: no provider call), then tell everyone."""
        clock = self.p.clock

        def change(x: Session) -> Session | None:
            if x.state is not AWAITING:
                if strict:
                    self._still_waiting(x)
                return None
            now = clock()
            return x.moved(SessionState.DENIED, now, end_reason=reason[:300], decided_by=by, decided_at=now, ended_at=now, ending=kind,
                           **self.p.leases.unleased())

        s = await self.p.leases.update(session_id, change)
        if s is None:
            if strict:
                raise Refused(Code.NO_SUCH_SESSION, target=session_id)
            return None
        log.info("session %s not granted: %s", s.id, reason)
        await write_usage_quietly(self.p.store, s)
        await self.p.emit("denied", s)
        await self.p.outbox.notice(s.conversation, notices.request_closed(s))
        self._close_cards_later(s)
        return s

    # ----- time -----------------------------------------------------------------------------------

    async def time_out(self, session_id: str, now: datetime) -> None:
        """A request past its decide-by time is denied (whichever sweeper or reap gets there first; the sweeper calls this when it falls due)."""
        reason = notices.no_decision(self.timeout_minutes)

        def change(x: Session) -> Session | None:
            if x.state is not AWAITING or (x.decide_by is not None and now < x.decide_by):
                return None  # decided meanwhile, or another sweeper timed it out
            return x.moved(SessionState.DENIED, now, end_reason=reason, decided_at=now, ended_at=now, ending=DENIED, **self.p.leases.unleased())

        s = await self.p.leases.update(session_id, change)
        if s is None:
            return
        await write_usage_quietly(self.p.store, s)
        await self.p.emit("denied", s)
        await self.policy.record_for(s.owner, s.owner_label if s.owner_label != s.owner else "", "engine", f"approval timeout {s.id}", False, reason)
        await self.p.outbox.notice(s.conversation, notices.request_closed(s))
        self._close_cards_later(s)

    # ----- reading --------------------------------------------------------------------------------

    async def pending(self, actor: Actor) -> list[Session]:
        """The requests this actor may decide (GroupsUnavailable: refused, never guessed)."""
        out = []
        for s in await self.p.store.sessions([AWAITING]):
            try:
                if await self.policy.may_decide(actor, s):
                    out.append(s)
            except GroupsUnavailable:
                raise Refused(Code.GROUPS_UNAVAILABLE) from None
        return out

    # ----- every approver's card ------------------------------------------------------------------

    def _close_cards_later(self, s: Session) -> None:
        cards = _cards(s)
        if cards:
            self.p.runner.start(f"approval-cards:{s.id}", lambda: self._close_cards(s, cards))

    async def _close_cards(self, s: Session, cards: list[dict[str, str]]) -> None:
        card, text = notices.approval_closed(s), notices.approval_closed_text(s)
        for sent in cards:
            try:
                conv = ConversationRef.from_json(sent["conversation"])
            except (ValueError, KeyError, TypeError):
                continue
            if not (sent.get("id") and await self.p.outbox.update_card(conv, sent["id"], card)):
                await self.p.outbox.notice(conv, text)


def _cards(s: Session) -> list[dict[str, Any]]:
    try:
        cards = json.loads(s.approval_cards or "[]")
    except ValueError:
        return []
    return [c for c in cards if isinstance(c, dict)] if isinstance(cards, list) else []
