"""Ending a session: move it to `expiring` under our lease (a stop wins over provisioning), destroy what
it made — retrying what the cloud still holds — and tell its owner once it is gone."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Callable

from bot import metrics
from bot.engine import notices
from bot.engine.endings import release_held
from bot.engine.leases import LeaseLost
from bot.engine.parts import EngineParts
from bot.engine.usage import usage_record, write_usage, write_usage_quietly
from bot.store.model import ACTIVE_STATES, Session, SessionState
from provisioner.base import CleanupIncomplete

log = logging.getLogger(__name__)
TEARDOWN_ATTEMPTS = 3
CLEANUP_PATIENCE = 5 * 60.0  # how long one teardown keeps retrying what the cloud still holds (a NIC: ~3 min)


class Teardown:
    def __init__(self, parts: EngineParts) -> None:
        self.p = parts

    def running(self, session_id: str) -> bool:
        return self.p.runner.get(f"teardown:{session_id}") is not None

    async def begin(
        self, session_id: str, reason: str, kind: str, *, still: Callable[[Session], bool] | None = None, known: Session | None = None,
    ) -> bool:
        """True if the session was active (and is now ending); its provisioning in this process is cancelled.
        `kind` is the usage record's end reason (bot/engine/usage.py: stopped, expired, idle, cap, revoked);
        `still`, where given, decides again on the stored session whether it should end (an idle limit);
        `known`, the session as a sweep just read it (Leases.update: one read fewer per expiry)."""
        p = self.p
        await p.runner.cancel(f"provision:{session_id}")
        active = False

        def change(s: Session) -> Session | None:
            nonlocal active
            now = p.clock()
            active = s.state in ACTIVE_STATES
            if not active or (still is not None and s.state is not SessionState.EXPIRING and not still(s)):
                active = False
                return None
            if s.state is SessionState.EXPIRING:
                if s.leased_by_other(p.worker.id, now):
                    return None  # someone is tearing it down already
                return s.with_changes(now, **p.leases.lease(now))
            return s.moved(SessionState.EXPIRING, now, end_reason=reason, ending=kind, **p.leases.lease(now))

        s = await p.leases.update(session_id, change, known=known)
        if s is not None:
            sid, moved = s.id, s
            p.runner.start(f"teardown:{sid}", lambda: self._teardown(sid, reason, moved))
        return active

    async def _teardown(self, session_id: str, reason: str, moved: Session) -> None:
        """`moved`: the session as `begin` wrote it (ours, expiring): the work starts without reading it again."""
        p = self.p
        s = moved
        if s.state is not SessionState.EXPIRING or s.lease_owner != p.worker.id:
            return
        try:
            async with p.leases.holding(s.id, (SessionState.EXPIRING,)) as held:
                try:
                    await self._destroy(s)
                except Exception:
                    await p.emit("cleanup_stuck", s, attempts=TEARDOWN_ATTEMPTS)  # once per session: the outbox keeps one per event
                    raise
                s = await self._finish(held.renewed or s)
        except LeaseLost as lost:
            log.info("session %s: teardown handed over (%s)", session_id, lost)
            return
        metrics.teardown_done(s)
        said = s.end_reason or reason
        log.info("session %s ended (%s)", s.id, "stopped by its owner" if said == notices.STOPPED_BY_OWNER else said)
        # The owner first: what is left is housekeeping that a crash leaves to others (an ended session's
        # address reservations are taken over, its sealed configs erased at their own expiry).
        await p.outbox.notice(s.conversation, notices.ended(s.id, said))
        await p.outbox.retract(s.conversation, s.id)
        await release_held(p, s)

    async def _finish(self, ours: Session) -> Session:
        """The usage record, the `ended` event, then the last compare-and-set, tried on `ours` (the session as
        we last wrote it: nobody else writes an expiring session we hold, so usually no read is needed).
        Record and event come before that write: a crash after it leaves the session `expiring`, and
        whoever finishes it writes the same record and queues the same event again (one of each per session).
        If another write landed meanwhile, the record is written again from the session as ended. An event,
        once queued, is not replaced: where one goes out (VPN_NOTIFY), the session is read once more for it."""
        p = self.p
        if p.notify is not None and await p.notify.has_targets():
            ours = await p.store.get(ours.id) or ours  # figures written during the teardown (a VM's last report)
        now = p.clock()
        await write_usage(p.store, ours, now)
        if p.notify is not None:
            await p.notify.emit("ended", dataclasses.replace(ours, ended_at=now))
        s = await p.leases.owned(ours.id, (SessionState.EXPIRING,), lambda x: x.moved(SessionState.DELETED, now, ended_at=now, **p.leases.unleased()),
                                 known=ours)
        if usage_record(s, now) != usage_record(ours, now):
            # It changed under us (traffic figures): the record follows the session as ended. After the last write,
            # so a failure is only logged: nobody finishes this session again, and the owner must still be told.
            await write_usage_quietly(p.store, s)
        return s

    async def _destroy(self, s: Session) -> None:
        """Until the provider has let go of everything; raises (the session stays `expiring`, the
        sweeper starts over) after a few failures or once the cloud held on past CLEANUP_PATIENCE."""
        attempt, waited = 0, 0.0
        while True:
            try:
                await self.p.provider.destroy(s.id, resource_id=s.resource_id or None, peer_public_key=s.client_public_key or None)
                return
            except CleanupIncomplete as exc:  # the cloud is still holding something: not a failed attempt
                if waited >= CLEANUP_PATIENCE:
                    raise
                log.warning("session %s: %s; trying again in %.0f s", s.id, exc, exc.retry_after)
                await asyncio.sleep(exc.retry_after)
                waited += exc.retry_after
            except Exception:
                attempt += 1
                log.exception("session %s: teardown attempt %d failed", s.id, attempt)
                if attempt == TEARDOWN_ATTEMPTS:
                    raise
                await asyncio.sleep(2 ** (attempt - 1))
