"""Compare-and-set and leases: how any number of workers (replicas, `reap`) share sessions safely.

Every write re-reads, decides again and compare-and-sets; whoever works on a session holds a lease
and renews it every third of its length; another worker takes the work over only once it expired
(docs/decisions.md, "Leases"). Nothing here depends on one process's memory or PID.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, AsyncIterator, Callable, Sequence

from bot.messages import ConversationRef
from bot.store.model import TERMINAL_STATES, Conflict, Session, SessionState, utcnow
from bot.store.ports import SessionStore, Worker

log = logging.getLogger(__name__)
CAS_ATTEMPTS = 100  # re-read and re-decide this often before giving up on a contended session


class LeaseLost(Exception):
    """The session is no longer ours to work on: another worker took it over, or it is ending."""

    def __init__(self, session: Session) -> None:
        super().__init__(f"session {session.id} is {session.state.value}, leased to {session.lease_owner or 'nobody'}")
        self.session = session


class Holding:
    """What a lease-renewal loop found out, for the work it guards."""

    def __init__(self) -> None:
        self.lost: Session | None = None
        self.renewed: Session | None = None  # the session as the latest renewal wrote it (None: not renewed yet)


def this_worker() -> Worker:
    host = socket.gethostname()
    return Worker(id=f"{host}:{os.getpid()}:{os.urandom(4).hex()}", host=host, pid=os.getpid(), heartbeat_at=utcnow())


class Leases:
    """Compare-and-set writes and leases on sessions, for one worker."""

    def __init__(
        self, store: SessionStore, worker: Worker, clock: Callable[[], datetime], lease_seconds: float,
        schedule: Callable[[Session], Session] = lambda s: s,
    ) -> None:
        self._store = store
        self._worker = worker
        self._clock = clock
        self._lease_seconds = lease_seconds
        self._schedule = schedule  # stamps when a sweeper must next look (bot/engine/schedule.py)

    async def update(
        self, session_id: str, change: Callable[[Session], Session | None], *, known: Session | None = None,
    ) -> Session | None:
        """Read, decide, compare-and-set; a lost race is re-read and decided again, never overwritten.

        `change` returns the new session, or None for "nothing to do" (then so does this); it may raise.
        Every write is stamped with its next due time here, the one place all of them pass.
        `known`: the session as just read from the store (a sweep's due session), tried first instead of a
        read: its version makes the write a compare-and-set all the same; "nothing to do" (or a raise) is
        decided again on a fresh read, never on a copy that may be stale."""
        for _ in range(CAS_ATTEMPTS):
            new = _decided(change, known)
            known = None
            if new is None:
                s = await self._store.get(session_id)
                if s is None:
                    return None
                new = change(s)
            if new is None:
                return None
            try:
                return await self._store.save(self._schedule(new))
            except Conflict:
                await asyncio.sleep(0)
        raise Conflict(f"session {session_id}: gave up after {CAS_ATTEMPTS} concurrent writes")

    def lease(self, now: datetime) -> dict[str, Any]:
        return {"lease_owner": self._worker.id, "lease_expires_at": now + timedelta(seconds=self._lease_seconds)}

    @staticmethod
    def unleased() -> dict[str, Any]:
        return {"lease_owner": "", "lease_expires_at": None}

    async def owned(
        self, session_id: str, states: Sequence[SessionState], change: Callable[[Session], Session], *, known: Session | None = None,
    ) -> Session:
        """A write by the lease holder: renews the lease; raises LeaseLost if the session is no longer ours
        (`known`: as in `update`)."""

        def guarded(s: Session) -> Session:
            if s.lease_owner != self._worker.id or s.state not in states:
                raise LeaseLost(s)
            now = self._clock()
            return change(s.with_changes(now, **self.lease(now)))

        s = await self.update(session_id, guarded, known=known)
        if s is None:
            raise LeaseLost(Session(**{**_gone(session_id)}))
        return s

    @asynccontextmanager
    async def holding(self, session_id: str, states: Sequence[SessionState]) -> AsyncIterator[Holding]:
        """Renew our lease every third of its length while the body works. A lost lease is only
        noted: the body finds out at its next write (each is a compare-and-set that checks the
        lease), never by a cancel that could land after its last write had already succeeded."""
        holding = Holding()

        async def renew() -> None:
            while True:
                await asyncio.sleep(self._lease_seconds / 3)
                try:
                    # A fresh read: the body may have written the session since (provisioning does).
                    holding.renewed = await self.owned(session_id, states, lambda s: s)
                except LeaseLost as lost:
                    holding.lost = lost.session
                    return
                except Exception:
                    # A store hiccup: the lease outlives two more tries (renewal is at a third of it).
                    log.exception("session %s: lease renewal failed; trying again", session_id)

        renewer = asyncio.get_running_loop().create_task(renew(), name=f"lease:{session_id}")
        try:
            yield holding
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)

    async def release(self, session_id: str) -> None:
        """Let another worker take over at once (we are shutting down mid-work)."""
        now = self._clock()

        def change(s: Session) -> Session | None:
            if s.lease_owner != self._worker.id or s.state in TERMINAL_STATES:
                return None
            return s.with_changes(now, lease_expires_at=now)

        try:
            await self.update(session_id, change)
        except Exception:
            log.exception("session %s: could not release the lease; it expires by itself", session_id)


def _decided(change: Callable[[Session], Session | None], known: Session | None) -> Session | None:
    """`change` applied to a session not read just now: None when there is none, or nothing to do, or it raised."""
    if known is None:
        return None
    try:
        return change(known)
    except Exception:
        return None


def _gone(session_id: str) -> dict[str, Any]:
    """A stand-in for a session that vanished from the store, for LeaseLost."""
    now = utcnow()
    return dict(
        id=session_id, owner="", owner_label="", conversation=ConversationRef("", {}), state=SessionState.DELETED,
        provider="", region="", created_at=now, expires_at=now, minutes=0, updated_at=now,
    )
