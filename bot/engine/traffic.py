"""Live traffic (issue 23): each ready session's latest handshake and bytes, and the limits they drive.

Part of every sweep (any replica, and `reap`): the provider is asked once for every ready tunnel
(`Provider.traffic`: the host reads one `wg show <if> dump`, dryrun simulates), at most every
VPN_TRAFFIC_SECONDS per process; an Azure VM reports its own figures every minute over its
authenticated callback instead (`record`, from any replica). Figures are written by compare-and-set,
only when they changed. Then, with VPN_IDLE_MINUTES, a session whose tunnel has not shaken hands for
that long (or never since it was ready) ends — its owner warned VPN_WARN_MINUTES before, as for
expiry —, and with VPN_MAX_MB one past that many MB in and out ends. Each ending is decided again on
the stored session (a handshake recorded meanwhile by another replica keeps it).
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Awaitable, Sequence

from bot.engine import notices
from bot.engine.parts import EngineParts
from bot.engine.usage import CAP, IDLE
from bot.store.model import Session, SessionState
from provisioner.base import Traffic

if TYPE_CHECKING:  # handed in by the service; importing teardown here would load bot.metrics (aiohttp)
    from bot.engine.teardown import Teardown

log = logging.getLogger(__name__)
READY = SessionState.READY


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


def last_used(s: Session) -> datetime:
    """Since when a session counts as unused: its latest handshake, or when it became ready."""
    ready = s.ready_at or s.created_at
    return max(ready, s.handshake_at) if s.handshake_at else ready


class LiveTraffic:
    def __init__(self, parts: EngineParts, teardown: Teardown) -> None:
        self.p = parts
        self.teardown = teardown
        self._read_at: datetime | None = None  # when this process last asked the provider

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

    async def _read(self, now: datetime, ready: Sequence[Session]) -> dict[str, Traffic]:
        p = self.p
        if self._read_at is not None and timedelta(0) <= now - self._read_at < timedelta(seconds=p.usage.traffic_seconds):
            return {}
        self._read_at = now
        try:
            return await p.provider.traffic({s.id: s.client_public_key for s in ready})
        except Exception:
            log.exception("reading the tunnels' traffic failed; trying again next sweep")
            return {}

    # ----- the sweeper's share ------------------------------------------------------------------

    async def sweep(self, now: datetime, ready: Sequence[Session]) -> tuple[list[Awaitable[object]], datetime | None]:
        """Record fresh figures, then the endings and warnings due now; returns them and when to look next."""
        live = [s for s in ready if s.state is READY and now < s.expires_at]  # expired ones end anyway
        figures = await self._read(now, live) if live else {}
        due: list[Awaitable[object]] = []
        next_due: datetime | None = None
        for s in live:
            t = figures.get(s.id)
            if t is not None:
                stored = await self.record(s.id, t)
                s = stored or s
            due_now, at = self._limits(s, now)
            due += due_now
            if at is not None:
                next_due = at if next_due is None else min(next_due, at)
        return due, next_due

    def _limits(self, s: Session, now: datetime) -> tuple[list[Awaitable[object]], datetime | None]:
        cfg, warn_minutes = self.p.usage, self.p.limits.warn_minutes
        if cfg.max_mb and s.bytes_in + s.bytes_out >= cfg.max_mb * 10**6:
            return [self._end(s.id, notices.over_cap(cfg.max_mb), CAP, now)], None
        if not cfg.idle_minutes:
            return [], None
        idle = timedelta(minutes=cfg.idle_minutes)
        ends = last_used(s) + idle
        if now >= ends:
            return [self._end(s.id, notices.unused_for(cfg.idle_minutes), IDLE, now)], None
        warn_at = ends - timedelta(minutes=warn_minutes)
        if warn_minutes and not s.idle_warned and now >= warn_at and ends < s.expires_at:
            return [self._warn(s.id, now)], ends
        return [], warn_at if warn_minutes and not s.idle_warned and warn_at > now else ends

    async def _end(self, session_id: str, reason: str, kind: str, now: datetime) -> None:
        cfg = self.p.usage

        def still(s: Session) -> bool:  # decided again on the stored session
            if kind == CAP:
                return bool(cfg.max_mb) and s.bytes_in + s.bytes_out >= cfg.max_mb * 10**6
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
