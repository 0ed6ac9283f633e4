"""Time-driven work: warnings, expiries, interrupted teardowns, provisioning whose worker is gone, and
reconciling the provider's resources against the store. Any number of replicas (and `reap`) may
sweep at once: every decision is a compare-and-set, so each notice is sent once."""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Awaitable, Sequence

from bot import metrics
from bot.engine import notices
from bot.engine.approvals import Approvals
from bot.engine.parts import EngineParts
from bot.engine.provisioning import Provisioning
from bot.engine.revocation import Revocation
from bot.engine.teardown import Teardown
from bot.engine.traffic import LiveTraffic
from bot.engine.usage import EXPIRED, STOPPED
from bot.store.model import ACTIVE_STATES, IN_FLIGHT_STATES, Session, SessionState
from bot.store.ports import Worker
from provisioner.base import CleanupIncomplete, ProvisionError

log = logging.getLogger(__name__)
SWEEP_CONCURRENCY = 16  # sessions a sweep works on at once (a remote store's latency adds up otherwise)


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


def _earliest(*times: datetime | None) -> datetime | None:
    return min((t for t in times if t is not None), default=None)


class Sweeper:
    def __init__(
        self, parts: EngineParts, provisioning: Provisioning, teardown: Teardown,
        approvals: Approvals | None = None, revocation: Revocation | None = None, traffic: LiveTraffic | None = None,
    ) -> None:
        self.p = parts
        self.provisioning = provisioning
        self.teardown = teardown
        self.approvals = approvals  # requests past their decide-by time are denied
        self.revocation = revocation  # owners no longer allowed lose their sessions
        self.traffic = traffic  # tunnels' figures; unused or heavy sessions end (issue 23)
        self._wake = asyncio.Event()
        self._sweep_at: datetime | None = None  # when the sweeper means to look next (None: sweeping now)
        self._due_at: datetime | None = None  # the earliest due time reported since the sweep began

    def wake(self) -> None:
        self._wake.set()

    def due(self, s: Session) -> None:
        """Wake the sweeper only if this session needs it before its planned pass: a full sweep after
        every ready session (hundreds a minute under load) listed every live session each time."""
        limits = self.p.limits
        at = s.expires_at
        if limits.warn_minutes and not s.warned and s.minutes > limits.warn_minutes:
            at = min(at, s.expires_at - timedelta(minutes=limits.warn_minutes))
        self._due_at = _earliest(self._due_at, at)
        if self._sweep_at is not None and at < self._sweep_at:
            self._wake.set()

    async def sweep(self, *, resume: bool = True) -> datetime | None:
        """Warn, expire, finish interrupted teardowns, time out requests awaiting approval, revoke what
        its owner may no longer have, take over provisioning whose lease expired; returns when to look again."""
        p = self.p
        now = p.clock()
        await p.store.heartbeat(Worker(p.worker.id, p.worker.host, p.worker.pid, now))
        await p.store.purge_claims(now)
        await p.store.purge_expired(now, audit_retention=timedelta(days=p.limits.audit_retention_days),
                                    usage_retention=timedelta(days=p.usage.retention_days))  # at most every 10 min per process
        next_due: datetime | None = None
        warn = timedelta(minutes=p.limits.warn_minutes)
        due: list[Awaitable[object]] = []  # per-session work, run a few at once (each is a store round trip or more)
        ready = await p.store.sessions([SessionState.READY])
        for s in ready:
            if now >= s.expires_at:
                due.append(self.teardown.begin(s.id, notices.TIME_IS_UP, EXPIRED))
                continue
            if p.limits.warn_minutes and not s.warned and s.minutes > p.limits.warn_minutes:
                warn_at = s.expires_at - warn
                if now >= warn_at:
                    due.append(self._warn(s.id, now))
                else:
                    next_due = _earliest(next_due, warn_at)
            next_due = _earliest(next_due, s.expires_at)
        for s in await p.store.sessions([SessionState.EXPIRING]):
            if not self.teardown.running(s.id) and not s.leased_by_other(p.worker.id, now):
                due.append(self.teardown.begin(s.id, s.end_reason or "ended", s.ending or STOPPED))
            elif s.lease_expires_at is not None:
                next_due = _earliest(next_due, s.lease_expires_at)
        if self.approvals is not None:
            timeouts, decide_by = await self.approvals.sweep(now)
            due += timeouts
            next_due = _earliest(next_due, decide_by)
        if self.revocation is not None:
            due += await self.revocation.sweep()
        if self.traffic is not None:
            more, at = await self.traffic.sweep(now, ready)
            due += more
            next_due = _earliest(next_due, at)
        await _bounded(due, SWEEP_CONCURRENCY)
        next_due = _earliest(next_due, await self._recover_orphans(now, resume=resume))
        return _earliest(next_due, await self.deliver_notifications())

    async def deliver_notifications(self) -> datetime | None:
        """The outbox's due items (admins' chats, webhooks); when the next one falls due."""
        if self.p.notify is None:
            return None
        try:
            return await self.p.notify.deliver_due()
        except Exception:
            log.exception("delivering notifications failed; the next sweep tries again")
            return None

    async def _warn(self, session_id: str, now: datetime) -> None:
        p = self.p
        warn = timedelta(minutes=p.limits.warn_minutes)

        def change(s: Session) -> Session | None:
            if s.state is not SessionState.READY or s.warned or now < s.expires_at - warn:
                return None  # another replica warned, or the session was extended or ended
            return s.with_changes(now, warned=True)

        s = await p.leases.update(session_id, change)
        if s is not None:
            await p.outbox.notice(s.conversation, notices.ends_soon(s.id, s.time_left(now), p.limits.session_minutes))

    async def _recover_orphans(self, now: datetime, *, resume: bool) -> datetime | None:
        """Take over provisioning whose lease expired (its worker is gone or stuck), decided by a
        compare-and-set on the re-read session: a task that just finished is never taken for an orphan."""
        p = self.p
        next_due: datetime | None = None
        for s in await p.store.sessions(IN_FLIGHT_STATES):
            if p.runner.get(f"provision:{s.id}") is not None:
                continue  # ours, running (its lease is renewed)
            if s.leased_by_other(p.worker.id, now):
                next_due = _earliest(next_due, s.lease_expires_at)
                continue

            def take(x: Session) -> Session | None:
                if x.state not in IN_FLIGHT_STATES or x.leased_by_other(p.worker.id, now):
                    return None
                return x.with_changes(now, **p.leases.lease(now))

            took = await p.leases.update(s.id, take)
            if took is None or p.runner.get(f"provision:{s.id}") is not None:
                continue
            if resume and took.attempts < p.limits.max_attempts and now < took.expires_at:
                # INFO, not a warning: the owner is told in plain words; the console shows warnings in the chat.
                log.info("session %s was interrupted mid-provisioning (its worker's lease expired); starting over", s.id)
                await p.outbox.notice(took.conversation, notices.restarted(s.id))
                self.provisioning.start(s.id)
            else:
                log.warning("session %s was interrupted mid-provisioning; cleaning up", s.id)
                await self.provisioning.fail(s.id, ProvisionError(notices.FAILED_RESTART), took.progress_handle or None)
        return next_due

    async def reconcile(self) -> int:
        """Delete provider resources that no active session owns (a lost store, a crash, a bug)."""
        p = self.p
        # Active before the listing (a teardown finishing meanwhile destroys its own) or after it (a
        # session created meanwhile stored its key before making anything): not orphans.
        before = await p.store.sessions(ACTIVE_STATES)
        resources = await p.provider.list_managed()
        active = before + await p.store.sessions(ACTIVE_STATES)
        ids = {s.id for s in active}
        keys = {s.client_public_key for s in active if s.client_public_key}
        removed = 0
        for r in resources:
            if (r.session_id and r.session_id in ids) or (r.peer_public_key and r.peer_public_key in keys):
                continue
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

    async def run(self) -> None:
        """Forever: sweep when something is due (or every sweep_seconds), reconcile every reconcile_seconds."""
        p = self.p
        loop = asyncio.get_running_loop()
        last_reconcile = float("-inf")
        while True:
            self._wake.clear()
            self._sweep_at = self._due_at = None
            next_due = None
            try:
                next_due = await self.sweep()
                if loop.time() - last_reconcile >= p.limits.reconcile_seconds:
                    last_reconcile = loop.time()
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

    async def reap_once(self) -> int:
        """One pass for a scheduler with no `serve` running: everything the sweeper does (warn, expire,
        finish teardowns, clean up provisioning whose lease expired), then reconcile; waits for it all."""
        await self.sweep(resume=False)
        await self.p.runner.wait_idle()
        removed = await self.reconcile()
        await self.p.runner.wait_idle()
        await self.deliver_notifications()  # what the teardowns above queued
        return removed
