"""Time-driven work: warnings, expiries, interrupted teardowns, provisioning whose worker is gone, and
reconciling the provider's resources against the store. Any number of replicas (and `reap`) may
sweep at once: every decision is a compare-and-set, so each notice is sent once."""
from __future__ import annotations

import asyncio
import logging
import random
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Awaitable, Sequence

from bot import metrics
from bot.engine import notices
from bot.engine.approvals import Approvals
from bot.engine.parts import EngineParts
from bot.engine.provisioning import Provisioning
from bot.engine.revocation import Revocation
from bot.engine.schedule import Schedule
from bot.engine.teardown import Teardown
from bot.engine.traffic import LiveTraffic
from bot.engine.usage import EXPIRED, STOPPED
from bot.store.model import ACTIVE_STATES, IN_FLIGHT_STATES, Session, SessionState
from bot.store.ports import Worker
from provisioner.base import CleanupIncomplete, ManagedResource, ProvisionError

log = logging.getLogger(__name__)
SWEEP_CONCURRENCY = 16  # sessions a sweep works on at once (a remote store's latency adds up otherwise)
SWEEP_BATCH = 500  # due sessions one pass reads; more are taken by the next pass at once
REAP_PASSES = 100  # `reap` sweeps again while a pass was full: up to this many (50,000 due sessions)
HEARTBEAT_EVERY = timedelta(minutes=1)
INDEX_CHECK_EVERY = timedelta(hours=6)  # the fleet-wide check that every live session is in the due index


async def _bounded(work: Sequence[Awaitable[object]], limit: int) -> None:
    """Await all of `work`, at most `limit` at once; one failure is logged and does not stop the rest."""
    gate = asyncio.Semaphore(limit)

    async def one(aw: Awaitable[object]) -> None:
        async with gate:
            try:
                await aw
            except Exception:
                log.exception("sweep: one session's work failed; the next sweep tries again")

    await asyncio.gather(*(one(aw) for aw in work))


@dataclass(frozen=True)
class ReapReport:
    ended: int
    warned: int
    removed: int  # orphaned provider resources


def _earliest(*times: datetime | None) -> datetime | None:
    return min((t for t in times if t is not None), default=None)


class Sweeper:
    def __init__(
        self, parts: EngineParts, provisioning: Provisioning, teardown: Teardown,
        schedule: Schedule, approvals: Approvals | None = None, revocation: Revocation | None = None, traffic: LiveTraffic | None = None,
    ) -> None:
        self.p = parts
        self.provisioning = provisioning
        self.teardown = teardown
        self.schedule = schedule  # when a session is due (bot/engine/schedule.py)
        self._beat_at: datetime | None = None
        self.last_due: list[Session] = []  # the due sessions the last pass found, as read (for reap's report)
        self.approvals = approvals  # requests past their decide-by time are denied
        self.revocation = revocation  # owners no longer allowed lose their sessions
        self.traffic = traffic  # tunnels' figures; unused or heavy sessions end (issue 23)
        self._wake = asyncio.Event()
        self._sweep_at: datetime | None = None  # when the sweeper means to look next (None: sweeping now)
        self._due_at: datetime | None = None  # the earliest due time reported since the sweep began
        self._start = random.getrandbits(32)  # where this worker starts round the circle of session ids (sweep)

    def _arc(self, session_id: str) -> int:
        """How far round the circle of session ids (CRC-32) this one lies from this worker's starting point."""
        return (zlib.crc32(session_id.encode()) - self._start) % (1 << 32)

    def wake(self) -> None:
        self._wake.set()

    def due(self, s: Session) -> None:
        """Wake the sweeper only if this session needs it before its planned pass: a full sweep after
        every ready session (hundreds a minute under load) listed every live session each time."""
        at = self.schedule.next_look(s)
        if at is None:
            return
        self._due_at = _earliest(self._due_at, at)
        if self._sweep_at is not None and at < self._sweep_at:
            self._wake.set()

    async def sweep(self, *, resume: bool = True) -> datetime | None:
        """One pass: the fleet-wide turns this worker holds (traffic, revocation, the index check), then
        every session that is due (warn, expire, end for want of use, finish interrupted teardowns, time
        out undecided requests, take over provisioning whose lease expired); returns when to look again.
        A pass with nothing due reads the due index, not the live sessions: a handful of requests."""
        p = self.p
        now = p.clock()
        await self._heartbeat(now)
        await p.store.purge_claims(now)
        await p.store.purge_expired(now, audit_retention=timedelta(days=p.limits.audit_retention_days),
                                    usage_retention=timedelta(days=p.usage.retention_days))  # at most every 10 min per process
        due: list[Awaitable[object]] = await self._turns(now)
        sessions = self.last_due = await p.store.due_sessions(now, SWEEP_BATCH)
        # Endings first (a warning waits on its chat post; an expiry must not wait behind a pass of them), then
        # round a circle of session ids from this worker's own starting point: replicas reading the same due
        # sessions work on different arcs until they meet, instead of racing for the same ones (a lost race
        # costs a failed write and two reads).
        for s in sorted(sessions, key=lambda s: (s.state is SessionState.READY and now < s.expires_at, self._arc(s.id))):
            work = self._work_for(s, now, resume=resume)
            due.append(work if work is not None else self._reschedule(s.id, now, known=s))
        await _bounded(due, SWEEP_CONCURRENCY)
        if len(sessions) >= SWEEP_BATCH:
            return p.clock()  # more is due than one pass takes: go on at once
        # Only what falls due before the next planned look matters (run() sleeps sweep_seconds at most).
        next_due = await p.store.next_due(p.clock(), within=timedelta(seconds=p.limits.sweep_seconds))
        return _earliest(next_due, await self.deliver_notifications())

    async def _heartbeat(self, now: datetime) -> None:
        """The workers table is informational (leases decide): a write a minute per process is plenty."""
        if self._beat_at is not None and timedelta(0) <= now - self._beat_at < HEARTBEAT_EVERY:
            return
        self._beat_at = now
        p = self.p
        await p.store.heartbeat(Worker(p.worker.id, p.worker.host, p.worker.pid, now))

    async def _turns(self, now: datetime) -> list[Awaitable[object]]:
        """The work that reads every live session, each at most once per its period across the fleet."""
        p = self.p
        work: list[Awaitable[object]] = []
        if self.traffic is not None:
            await self.traffic.poll(now)
        if self.revocation is not None and await self.revocation.my_turn(now):
            work += await self.revocation.sweep()
        if await p.store.take_turn("due-index", p.worker.id, now, INDEX_CHECK_EVERY, mark=self.schedule.fingerprint()):
            work += await self._check_due_times(now)
        return work

    async def _check_due_times(self, now: datetime) -> list[Awaitable[object]]:
        """Every live session's due time as the current settings would have it (a deploy that turns on the
        warning or an idle limit), and every one findable in the store's index. Reads every live session:
        a fleet-wide turn when the settings change and every INDEX_CHECK_EVERY, never a pass's work."""
        p = self.p
        live: dict[str, datetime | None] = {}  # id -> due time: a session at a time, never all of them decoded at once
        stale: list[str] = []
        async for s in p.store.each_session(ACTIVE_STATES):
            live[s.id] = s.due_at
            if self.schedule.next_look(s) != s.due_at:
                stale.append(s.id)
        repaired = await p.store.check_due_index(now, live)
        if repaired:
            log.warning("%d live session(s) were missing from the due index (written by an earlier version?); they are looked at now", repaired)
        return [self._reschedule(sid, now, even_if_due=True) for sid in stale]

    def _work_for(self, s: Session, now: datetime, *, resume: bool) -> Awaitable[object] | None:
        """What a due session needs now, decided again by whichever step runs it: on `s` as the pass read it
        (its write is a compare-and-set on that version), else on a fresh read."""
        p = self.p
        if s.state is SessionState.READY:
            if now >= s.expires_at:
                return self.teardown.begin(s.id, notices.TIME_IS_UP, EXPIRED, still=lambda x: now >= x.expires_at, known=s)
            if self.traffic is not None:
                ending = self.traffic.check(s, now)
                if ending is not None:
                    return ending
            warn_at = self.schedule.warn_at(s)
            if warn_at is not None and now >= warn_at:
                return self._warn(s.id, now, known=s)
            return None
        if s.state is SessionState.EXPIRING:
            if self.teardown.running(s.id) or s.leased_by_other(p.worker.id, now):
                return None
            return self.teardown.begin(s.id, s.end_reason or "ended", s.ending or STOPPED, known=s)
        if s.state in IN_FLIGHT_STATES:
            if p.runner.get(f"provision:{s.id}") is not None or s.leased_by_other(p.worker.id, now):
                return None  # ours and running (its lease is renewed), or another worker's
            return self._take_over(s.id, now, resume=resume, known=s)
        if s.state is SessionState.AWAITING_APPROVAL and self.approvals is not None:
            if s.decide_by is None or now >= s.decide_by:
                return self.approvals.time_out(s.id, now)
        return None

    async def _reschedule(self, session_id: str, now: datetime, *, even_if_due: bool = False, known: Session | None = None) -> None:
        """Write the session's true due time: its entry was early (nothing to do yet), or the settings changed."""
        schedule = self.schedule

        def change(x: Session) -> Session | None:
            due = schedule.next_look(x)
            if due == x.due_at or (due is not None and due <= now and not even_if_due):
                return None  # written meanwhile, or due now after all (the next pass sees it)
            return x

        await self.p.leases.update(session_id, change, known=known)

    async def deliver_notifications(self) -> datetime | None:
        """The outbox's due items (admins' chats, webhooks); when the next one falls due."""
        if self.p.notify is None:
            return None
        try:
            return await self.p.notify.deliver_due()
        except Exception:
            log.exception("delivering notifications failed; the next sweep tries again")
            return None

    async def _warn(self, session_id: str, now: datetime, *, known: Session | None = None) -> None:
        p = self.p
        warn = timedelta(minutes=p.limits.warn_minutes)

        def change(s: Session) -> Session | None:
            if s.state is not SessionState.READY or s.warned or now < s.expires_at - warn:
                return None  # another replica warned, or the session was extended or ended
            return s.with_changes(now, warned=True)

        s = await p.leases.update(session_id, change, known=known)
        if s is not None:
            await p.outbox.notice(s.conversation, notices.ends_soon(s.id, s.time_left(now), p.limits.session_minutes))

    async def _take_over(self, session_id: str, now: datetime, *, resume: bool, known: Session | None = None) -> None:
        """Take over provisioning whose lease expired (its worker is gone or stuck), decided by a
        compare-and-set on the re-read session: a task that just finished is never taken for an orphan."""
        p = self.p

        def take(x: Session) -> Session | None:
            fresh = p.clock()  # not the pass's start: a long pass would write a lease that has already run out
            if x.state not in IN_FLIGHT_STATES or x.leased_by_other(p.worker.id, fresh):
                return None
            return x.with_changes(fresh, **p.leases.lease(fresh))

        took = await p.leases.update(session_id, take, known=known)
        if took is None or p.runner.get(f"provision:{session_id}") is not None:
            return
        if resume and took.attempts < p.limits.max_attempts and p.clock() < took.expires_at:
            # INFO, not a warning: the owner is told in plain words; the console shows warnings in the chat.
            log.info("session %s was interrupted mid-provisioning (its worker's lease expired); starting over", session_id)
            await p.outbox.notice(took.conversation, notices.restarted(session_id))
            self.provisioning.start(session_id)
        else:
            log.warning("session %s was interrupted mid-provisioning; cleaning up", session_id)
            await self.provisioning.fail(session_id, ProvisionError(notices.FAILED_RESTART), took.progress_handle or None)

    async def reconcile(self) -> int:
        """Delete provider resources that no active session owns (a lost store, a crash, a bug). Costs what
        the provider holds, not the live sessions: one cheap read of the ids that may be live (the due
        index), then a keyed read of each resource's session that is not among them."""
        p = self.p
        resources = await p.provider.list_managed()
        if not resources:
            return 0
        keyless = [r for r in resources if not r.session_id]
        # Read after the listing: a session is in the store (and its due entry) before it makes anything.
        maybe_live = await p.store.live_ids() if len(keyless) < len(resources) else set()
        keys: set[str] = set()
        if keyless:  # a host peer names only its key (one interface: a few hundred peers at most)
            active = await p.store.sessions(ACTIVE_STATES)
            keys = {s.client_public_key for s in active if s.client_public_key}
        orphans: list[ManagedResource] = []
        for r in resources:
            if r.session_id:
                if r.session_id not in maybe_live and not await self._owned(r.session_id):
                    orphans.append(r)
            elif not (r.peer_public_key and r.peer_public_key in keys):
                orphans.append(r)
        removed = 0
        for r in orphans:
            log.warning("reconcile: deleting %s, which no active session owns", r.resource_id)
            try:
                await p.provider.destroy(r.session_id or "", resource_id=r.resource_id, peer_public_key=r.peer_public_key)
                removed += 1
                metrics.reconcile_deleted(p.provider.name)
            except CleanupIncomplete as exc:
                log.warning("reconcile: %s; trying again on the next pass", exc)
            except Exception:
                log.exception("reconcile: could not delete %s", r.resource_id)
        return removed

    async def _owned(self, session_id: str) -> bool:
        """Active. An ended session's resources are orphans (a teardown finishing meanwhile deleted its
        own already: deleting again is a no-op; a failure's leftovers wait for reconcile)."""
        s = await self.p.store.get(session_id)
        return s is not None and s.is_active

    async def run(self) -> None:
        """Forever: sweep when something is due (or every sweep_seconds); reconcile on the fleet's turn, every reconcile_seconds."""
        p = self.p
        while True:
            self._wake.clear()
            self._sweep_at = self._due_at = None
            next_due = None
            try:
                next_due = await self.sweep()
                if await p.store.take_turn("reconcile", p.worker.id, p.clock(), timedelta(seconds=p.limits.reconcile_seconds)):
                    await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sweep failed; trying again shortly")
            timeout = p.limits.sweep_seconds
            next_due = _earliest(next_due, self._due_at)  # readied while we swept
            if next_due is not None:
                timeout = min(timeout, max(0.05, (next_due - p.clock()).total_seconds()))
            self._sweep_at = p.clock() + timedelta(seconds=timeout)
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that races a wake-up.
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def reap_once(self) -> ReapReport:
        """One pass for a scheduler with no `serve` running: everything the sweeper does (warn, expire,
        finish teardowns, clean up provisioning whose lease expired), then reconcile; waits for it all.
        What it did is read back from the sessions it found due (keyed reads: nothing lists every live one)."""
        found: list[Session] = []
        for _ in range(REAP_PASSES):  # a pass takes SWEEP_BATCH sessions: go on while it found a full one
            await self.sweep(resume=False)
            found += self.last_due
            if len(self.last_due) < SWEEP_BATCH:
                break
            await self.p.runner.wait_idle()
        await self.p.runner.wait_idle()
        removed = await self.reconcile()
        await self.p.runner.wait_idle()
        await self.deliver_notifications()  # what the teardowns above queued
        ended = warned = 0
        firsts = list({s.id: s for s in reversed(found)}.values())  # each session as the first pass found it
        gate = asyncio.Semaphore(SWEEP_CONCURRENCY)

        async def now_of(sid: str) -> Session | None:
            async with gate:
                return await self.p.store.get(sid)

        for before, after in zip(firsts, await asyncio.gather(*(now_of(s.id) for s in firsts)), strict=True):
            if after is None or not after.is_active:
                ended += before.is_active
            elif (after.warned and not before.warned) or (after.idle_warned and not before.idle_warned):
                warned += 1
        return ReapReport(ended, warned, removed)
