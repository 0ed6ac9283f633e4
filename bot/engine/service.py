"""The use cases every front door calls: start, status, stop, extend, list, approve, deny, pending; plus the sweeper and reap.

The façade over the engine's steps (provisioning, teardown, approvals, revocation, sweeper, leases).
Who may do what is decided by `Policy` (bot/engine/policy.py) — here, for everything about sessions;
refusals are `Refused(code, facts)` that each front end puts in its own words.
"""
from __future__ import annotations

import asyncio
import logging
import weakref
from datetime import datetime, timedelta
from typing import Callable, Sequence

from bot.engine import notices, reports, usage
from bot.engine.approvals import Approvals
from bot.engine.config import SessionPolicy
from bot.engine.leases import Leases, this_worker
from bot.engine.notify import Notifier, NotifyConfig, WebhookPost
from bot.engine.parts import EngineParts, EngineStore
from bot.engine.policy import Action, Actor, Code, Limits, Policy, Refused, StartPlan
from bot.engine.provisioning import Provisioning
from bot.engine.reservations import KEY_SCOPE, UNWRITTEN_GRACE, reserve
from bot.engine.revocation import Revocation
from bot.engine.schedule import Schedule
from bot.engine.sweeper import ReapReport, Sweeper
from bot.engine.tasks import TaskRunner
from bot.engine.teardown import Teardown
from bot.engine.traffic import LiveTraffic
from bot.messages import ConversationRef, UserKey
from bot.replies import Outbox
from bot.store.model import ACTIVE_STATES, Session, SessionState, new_session_id, utcnow
from bot.store.ports import AuditEntry, Contact, CreateOutcome, Worker
from provisioner.base import Provider, Traffic

log = logging.getLogger(__name__)

__all__ = ["Refused", "VpnService"]


class VpnService:
    def __init__(
        self,
        store: EngineStore,
        provider: Provider,
        runner: TaskRunner,
        outbox: Outbox,
        limits: SessionPolicy,
        policy: Policy,
        *,
        clock: Callable[[], datetime] = utcnow,
        worker: Worker | None = None,
        usage_config: usage.UsageConfig | None = None,
        notify_config: NotifyConfig | None = None,
        webhook: WebhookPost | None = None,
    ) -> None:
        self.store = store
        self.provider = provider
        self.runner = runner
        self.outbox = outbox
        self.limits = limits
        self.policy = policy
        self.clock = clock
        self.worker = worker or this_worker()
        self.usage = usage_config or usage.UsageConfig()
        self.schedule = Schedule(limits, self.usage)
        self.leases = Leases(store, self.worker, clock, limits.lease_seconds, self.schedule.apply)
        self.notify = Notifier(store, outbox, clock, self.worker.id, notify_config or NotifyConfig(), webhook, limits.lease_seconds)
        self.parts = parts = EngineParts(store, provider, runner, outbox, limits, clock, self.worker, self.leases, self.usage, self.notify)
        self.sweeper: Sweeper
        self.provisioning = Provisioning(parts, on_ready=lambda s: self.sweeper.due(s))
        self.teardown = Teardown(parts)
        self.approvals = Approvals(parts, policy, store, self.provisioning.start, policy.governance.approval_timeout_minutes)
        self.revocation = Revocation(parts, policy, self.teardown, self.approvals)
        self.traffic = LiveTraffic(parts, self.teardown, self.schedule)
        self.sweeper = Sweeper(parts, self.provisioning, self.teardown, self.schedule, self.approvals, self.revocation, self.traffic)
        self.notify.wake = self.sweeper.wake
        self._user_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        runner.set_error_handler(self._on_task_error)

    # ----- start ------------------------------------------------------------------------------------

    async def start(
        self,
        actor: Actor,
        conv: ConversationRef,
        *,
        region: str | None = None,
        minutes: int | None = None,
        message_id: str | None = None,
        public_key: str | None = None,
        reason: str = "",
    ) -> Session:
        """Record the request and hand provisioning to the runner; returns at once (Teams allows ~15 s).
        Where the person's policy wants an approval, the session waits in `awaiting_approval` instead
        (nothing made, no key) and its approvers are asked (`asked` names who).

        With `public_key` the user brought their own key pair: no secret exists, so the peer settings
        may be posted anywhere."""
        plan = await self.policy.start_request(actor, region, minutes, list(self.provider.regions), self.provider.name, reason)
        region, minutes = plan.region, plan.minutes
        asked = await self.approvals.recipients(plan.approvers, actor.key) if plan.needs_approval else []
        if public_key is None:
            await self._check_private_delivery(actor, conv)
        session_id = new_session_id()
        # Issue 18.7: one live session per brought key, as a reservation (keyed: nothing lists the live sessions).
        if public_key is not None and not await reserve(self.store, KEY_SCOPE, public_key, session_id, self.clock, grace=UNWRITTEN_GRACE):
            raise Refused(Code.KEY_IN_USE)
        try:
            return await self._create(actor, conv, plan, asked, session_id, region, minutes, message_id, public_key)
        except BaseException:
            if public_key is not None:
                await self.store.release_address(KEY_SCOPE, public_key, session_id)
            raise

    async def _create(
        self, actor: Actor, conv: ConversationRef, plan: StartPlan, asked: list[Contact], session_id: str, region: str, minutes: int,
        message_id: str | None, public_key: str | None,
    ) -> Session:
        owner = actor.key
        lock = self._user_locks.get(owner)
        if lock is None:
            lock = self._user_locks[owner] = asyncio.Lock()
        # Two quick starts from one person in this process queue here; across processes the store's
        # atomic caps decide (this lock only saves a doomed create).
        async with lock:
            now = self.clock()
            waiting = plan.needs_approval
            session = Session(
                id=session_id,
                owner=owner,
                owner_label=actor.identity.label,
                conversation=conv,
                state=SessionState.AWAITING_APPROVAL if waiting else SessionState.REQUESTED,
                provider=self.provider.name,
                region=region,
                created_at=now,
                expires_at=now + timedelta(minutes=minutes),
                minutes=minutes,
                updated_at=now,
                hourly_cost=self.provider.hourly_cost(region),
                message_id=message_id or "",
                client_public_key=public_key or "",
                own_key=public_key is not None,
                reason=plan.reason,
                max_minutes=plan.max_minutes,
                allowed_ips=plan.allowed_ips,
                approvers=plan.approvers,
                asked=", ".join(c.label for c in asked),
                decide_by=now + timedelta(minutes=self.approvals.timeout_minutes) if waiting else None,
                # Ours from the first moment: no other worker takes it for an orphan (a request waiting
                # for an approval is nobody's work until it is approved).
                **(self.leases.unleased() if waiting else self.leases.lease(now)),
            )
            session = self.schedule.apply(session)
            outcome = await self.store.create_session(session, per_user=self.limits.max_sessions_per_user, total=self.limits.max_sessions)
            if outcome is CreateOutcome.USER_LIMIT:
                mine = await self.store.sessions(ACTIVE_STATES, owner=owner)
                current = mine[0] if mine else None
                raise Refused(Code.USER_LIMIT, session_id=current.id if current else "", state=current.state.value if current else "")
            if outcome is CreateOutcome.GLOBAL_LIMIT:
                raise Refused(Code.GLOBAL_LIMIT, max=self.limits.max_sessions)
            await self.parts.emit("requested", session, awaiting_approval=waiting)
            if waiting:
                await self.policy.record(actor.identity, actor.channel, f"request {session.id}", True,
                                         f"awaiting approval ({minutes} min){': ' + plan.reason if plan.reason else ''}")
                self.approvals.ask(session, asked)
            else:
                self.provisioning.start(session.id)
        log.info("session %s requested by %s in %s for %d min%s", session.id, owner, region, minutes, " (awaiting approval)" if waiting else "")
        return session

    async def _check_private_delivery(self, actor: Actor, conv: ConversationRef) -> None:
        if not self.outbox.can_deliver_privately(conv):
            log.warning("%s channel cannot deliver configs privately here; see docs/teams.md or docs/groupme.md for what to configure", conv.channel)
            raise Refused(Code.NO_PRIVATE_DELIVERY, channel=conv.channel)
        reason = await self.outbox.check_private_delivery(conv, actor.identity)  # e.g. Teams opens the 1:1 chat first
        if reason:
            raise Refused(Code.PRIVATE_CHAT_UNAVAILABLE, reason=reason)

    # ----- reading ----------------------------------------------------------------------------------

    async def sessions_of(self, who: UserKey | str) -> list[Session]:
        return await self.store.sessions(ACTIVE_STATES, owner=str(who))

    async def live_sessions(self) -> list[Session]:
        return await self.store.sessions(ACTIVE_STATES)

    async def limits_for(self, actor: Actor) -> Limits:
        """This person's own limits (`/vpn help`, the web page)."""
        return await self.policy.limits_for(actor, list(self.provider.regions))

    async def visible_sessions(self, actor: Actor) -> list[Session]:
        """What a list shows this actor: every live session where the rules let them see others', else their own."""
        if self.policy.allows(actor.role, Action.LIST):
            return await self.live_sessions()
        return await self.sessions_of(actor.key)

    async def session_for(self, actor: Actor, session_id: str, action: Action) -> Session:
        """A session by id, if this actor may act on it; one answer for "missing" and "not yours"."""
        s = await self.store.get(session_id)
        if s is None or not self.policy.may_act_on(actor, s, action):
            raise Refused(Code.NO_SUCH_SESSION, target=session_id)
        return s

    async def find_targets(self, target: str) -> list[Session]:
        """Live sessions named by `/vpn stop <target>`: a session id, or a user key/label."""
        active = await self.live_sessions()
        wanted = target.strip()
        by_id = [s for s in active if s.id == wanted.lower()]
        if by_id:
            return by_id
        folded = wanted.casefold()
        return [s for s in active if s.owner.casefold() == folded or s.owner_label.casefold() == folded]

    # ----- usage and the audit log (admins: the front door asked the policy) -------------------------

    async def usage_report(self, since: datetime, until: datetime, user: str | None = None) -> reports.Report:
        """Sessions requested in [since, until), per user and per day; raises reports.BadPeriod for a range it will not read."""
        reports.check_range(since, until)
        return reports.summarize(await self.store.usage(since, until, user), since, until, user)

    async def audit_entries(
        self, limit: int, *, since: datetime | None = None, until: datetime | None = None, user: str | None = None
    ) -> list[AuditEntry]:
        return await self.store.audit_log(limit, since=since, until=until, user=user)

    # ----- stop and extend --------------------------------------------------------------------------

    async def stop(self, actor: Actor, target: str | None = None) -> list[Session]:
        """End the actor's sessions, or those `target` names (a session id, a user): others' only where
        the rules let this actor. Returns the sessions that were active and are now ending."""
        if target is None:
            targets = await self.sessions_of(actor.key)
            if not targets:
                raise Refused(Code.NO_SESSION)
        else:
            targets = await self.find_targets(target)
            for s in targets:
                self.policy.check_session(actor, s, Action.STOP)
            if not targets:
                ended = await self.store.get(target.strip().lower())
                if ended is not None and self.policy.may_act_on(actor, ended, Action.STOP):
                    raise Refused(Code.ALREADY_ENDED, session_id=ended.id)
                raise Refused(Code.NO_SUCH_SESSION, target=target)
        mine = all(s.owner == actor.key for s in targets)
        reason = notices.STOPPED_BY_OWNER if mine else notices.stopped_by_admin(actor.identity.label)
        if mine and all(s.state is SessionState.AWAITING_APPROVAL for s in targets):
            reason = notices.withdrawn_by_owner()
        return await self.end(targets, reason, actor.identity.label)

    async def end(self, sessions: Sequence[Session], reason: str, by: str = "", kind: str = usage.STOPPED) -> list[Session]:
        """Tear these sessions down, or withdraw those still awaiting approval (the caller decided it
        may); returns those that were active. `kind`: the usage record's end reason."""
        ended = []
        for s in sessions:
            if s.state is SessionState.AWAITING_APPROVAL and await self.approvals.cancel(s.id, reason, by, kind):
                ended.append(s)
            elif await self.teardown.begin(s.id, reason, kind):
                ended.append(s)
        return ended

    async def extend(self, actor: Actor, minutes: int | None, session_id: str | None = None) -> Session:
        """The actor's running session, or the one named (theirs, or anyone's for an admin), ends later."""
        if session_id is None:
            mine = [s for s in await self.sessions_of(actor.key) if s.state is SessionState.READY]
            if not mine:
                raise Refused(Code.NOTHING_TO_EXTEND, session_id="", state="")
            target = mine[0]
        else:
            target = await self.session_for(actor, session_id, Action.EXTEND)
            if target.state is not SessionState.READY:
                raise Refused(Code.NOTHING_TO_EXTEND, session_id=target.id, state=target.state.value)
        minutes = self.policy.extend_request(minutes)

        def change(s: Session) -> Session:
            if s.state is not SessionState.READY:
                raise Refused(Code.NOTHING_TO_EXTEND, session_id=s.id, state=s.state.value)
            max_minutes = self.policy.max_minutes_of(s)  # the person's policy, or what an approver granted
            latest_end = (s.ready_at or s.created_at) + timedelta(minutes=max_minutes)
            room = int((latest_end - s.expires_at).total_seconds() // 60)
            if room < 1:
                raise Refused(Code.AT_MAXIMUM, session_id=s.id, max=max_minutes, approval=bool(s.approvers))
            if minutes > room:
                raise Refused(Code.EXTEND_TOO_LONG, session_id=s.id, room=room, max=max_minutes, approval=bool(s.approvers))
            return s.with_changes(self.clock(), expires_at=s.expires_at + timedelta(minutes=minutes), warned=False)

        s = await self.leases.update(target.id, change)
        if s is None:
            raise Refused(Code.NOTHING_TO_EXTEND, session_id="", state="")
        self.sweeper.wake()
        log.info("session %s extended by %d min", s.id, minutes)
        return s

    # ----- approvals --------------------------------------------------------------------------------

    async def approve(self, actor: Actor, target: str, minutes: int | None = None) -> Session:
        return await self.approvals.approve(actor, target, minutes)

    async def deny(self, actor: Actor, target: str, reason: str = "") -> Session:
        return await self.approvals.deny(actor, target, reason)

    async def pending(self, actor: Actor) -> list[Session]:
        return await self.approvals.pending(actor)

    async def remember_contact(self, actor: Actor, conv: ConversationRef, private: bool) -> None:
        await self.approvals.remember(actor, conv, private)

    async def record_server_up(self, session_id: str) -> Session | None:
        """The server's "tunnel up" callback reached this replica: note it once, by compare-and-set."""

        def change(s: Session) -> Session | None:
            if s.state is not SessionState.PROVISIONING or s.server_up_at is not None:
                return None
            now = self.clock()
            return s.with_changes(now, server_up_at=now)

        return await self.leases.update(session_id, change)

    async def record_traffic(self, session_id: str, traffic: Traffic) -> Session | None:
        """A server's own report of its tunnel (an Azure VM, every minute), on whichever replica it reached."""
        return await self.traffic.record(session_id, traffic)

    # ----- time-driven work -------------------------------------------------------------------------

    async def sweep(self, *, resume: bool = True) -> datetime | None:
        return await self.sweeper.sweep(resume=resume)

    async def reconcile(self) -> int:
        return await self.sweeper.reconcile()

    async def run_sweeper(self) -> None:
        await self.sweeper.run()

    async def reap_once(self) -> ReapReport:
        return await self.sweeper.reap_once()

    async def _on_task_error(self, name: str, exc: BaseException) -> None:
        kind, _, session_id = name.partition(":")
        s = await self.store.get(session_id) if session_id else None
        if s is not None and kind == "teardown":
            return  # logged already; the sweeper retries, and the user hears once it is done
        if s is not None:
            await self.outbox.notice(s.conversation, notices.went_wrong(s.id))
