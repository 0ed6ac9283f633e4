"""Live traffic (issue 23): each ready session's latest handshake and bytes, and the limits they drive.

A fleet-wide turn (any replica, or `reap`) asks the provider once for every ready tunnel
(`Provider.traffic`: the host reads one `wg show <if> dump`, dryrun simulates), every
VPN_TRAFFIC_SECONDS; an Azure VM reports its own figures every minute over its authenticated
callback instead (`record`, from any replica). Figures are written by compare-and-set,
only when they changed. Then, with VPN_IDLE_MINUTES, a session whose tunnel has not shaken hands for
that long (or never since it was ready) ends — its owner warned VPN_WARN_MINUTES before, as for
expiry —, and with VPN_MAX_MB one past that many MB in and out ends. Each ending is decided again on
the stored session (a handshake recorded meanwhile by another replica keeps it).
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Awaitable

from bot.engine import notices
from bot.engine.parts import EngineParts
from bot.engine.schedule import Schedule, last_used, over_cap
from bot.engine.usage import CAP, IDLE
from bot.store.model import Session, SessionState
from provisioner.base import Traffic

if TYPE_CHECKING:  # handed in by the service; importing teardown here would load bot.metrics (aiohttp)
    from bot.engine.teardown import Teardown

log = logging.getLogger(__name__)
READY = SessionState.READY
RECORD_CONCURRENCY = 16  # figures written at once (one compare-and-set each; a remote store's latency adds up)


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


class LiveTraffic:
    def __init__(self, parts: EngineParts, teardown: Teardown, schedule: Schedule) -> None:
        self.p = parts
        self.teardown = teardown
        self.schedule = schedule

    # ----- figures ------------------------------------------------------------------------------

    async def record(self, session_id: str, t: Traffic) -> Session | None:
        """Store a tunnel's figures (compare-and-set; None when nothing changed or the session is not live).
        A handshake newer than the idle warning takes the warning back."""
        now = self.p.clock()
        seen = min(t.handshake_at, now) if t.handshake_at is not None else None  # a server's clock ahead of ours

        def change(s: Session) -> Session | None:
            if s.state not in (SessionState.PROVISIONING, READY, SessionState.EXPIRING):
                return None
            handshake = _later(s.handshake_at, seen)
            if handshake == s.handshake_at and (t.bytes_in, t.bytes_out) == (s.bytes_in, s.bytes_out):
                return None
            warned = s.idle_warned and not (handshake is not None and s.handshake_at != handshake)
            return s.with_changes(s.updated_at, handshake_at=handshake, bytes_in=max(0, t.bytes_in), bytes_out=max(0, t.bytes_out),
                                  traffic_at=now, idle_warned=warned)

        return await self.p.leases.update(session_id, change)

    # ----- the sweeper's share ------------------------------------------------------------------

    async def poll(self, now: datetime) -> None:
        """Read every ready tunnel's figures from the provider and store what changed: a fleet-wide turn
        every VPN_TRAFFIC_SECONDS (it lists the ready sessions), only for a provider that can see its
        tunnels from here. A write moves the session's due time (bot/engine/schedule.py): idle
        deadlines move on, a session over its cap falls due at once."""
        p = self.p
        if not p.provider.polls_traffic:
            return
        if not await p.store.take_turn("traffic", p.worker.id, now, timedelta(seconds=p.usage.traffic_seconds)):
            return
        live = await p.store.ready_keys(now)
        if not live:
            return
        try:
            figures = await p.provider.traffic(live)
        except Exception:
            log.exception("reading the tunnels' traffic failed; trying again next turn")
            return
        gate = asyncio.Semaphore(RECORD_CONCURRENCY)

        async def one(session_id: str, t: Traffic) -> None:
            async with gate:
                try:
                    await self.record(session_id, t)
                except Exception:
                    log.exception("session %s: recording its traffic failed; the next turn tries again", session_id)

        await asyncio.gather(*(one(sid, t) for sid, t in figures.items() if sid in live))

    def check(self, s: Session, now: datetime) -> Awaitable[None] | None:
        """What a due ready session's traffic calls for now: an ending (over the cap, or unused) or the idle warning."""
        cfg, schedule = self.p.usage, self.schedule
        if over_cap(s, cfg):
            return self._end(s.id, notices.over_cap(cfg.max_mb), CAP, now)
        ends = schedule.idle_ends_at(s)
        if ends is not None and now >= ends:
            return self._end(s.id, notices.unused_for(cfg.idle_minutes), IDLE, now)
        warn_at = schedule.idle_warn_at(s)
        if warn_at is not None and now >= warn_at:
            return self._warn(s.id, now)
        return None

    async def _end(self, session_id: str, reason: str, kind: str, now: datetime) -> None:
        cfg = self.p.usage

        def still(s: Session) -> bool:  # decided again on the stored session
            if kind == CAP:
                return over_cap(s, cfg)
            return now >= last_used(s) + timedelta(minutes=cfg.idle_minutes)

        if await self.teardown.begin(session_id, reason, kind, still=still):
            log.info("session %s ends: %s", session_id, reason)

    async def _warn(self, session_id: str, now: datetime) -> None:
        p = self.p
        idle = timedelta(minutes=p.usage.idle_minutes)

        def change(s: Session) -> Session | None:
            if s.state is not READY or s.idle_warned or now < last_used(s) + idle - timedelta(minutes=p.limits.warn_minutes):
                return None  # warned by another replica, used meanwhile, or ended
            return s.with_changes(now, idle_warned=True)

        s = await p.leases.update(session_id, change)
        if s is not None:
            await p.outbox.notice(s.conversation, notices.unused_soon(s.id, (last_used(s) + idle - now).total_seconds(), p.usage.idle_minutes))
