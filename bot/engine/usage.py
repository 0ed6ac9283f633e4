"""Usage (issue 23): the record every ending writes, and the settings of live traffic and retention.

Every ending — stopped, expired, idle, cap, revoked, failed, denied — writes one `UsageRecord`
(bot/store/ports.py) keyed by the session id: a teardown that another replica takes over writes the
same row again, never a second one. A teardown writes it before its last compare-and-set (a crash in
between leaves the session `expiring`, and whoever finishes it writes the record); a failure and a
denial write it right after theirs. Reports read them back (bot/engine/reports.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from bot.store.model import Session, SessionState
from bot.store.ports import UsageRecord, UsageStore

log = logging.getLogger(__name__)

STOPPED, EXPIRED, IDLE, CAP, REVOKED, FAILED, DENIED = "stopped", "expired", "idle", "cap", "revoked", "failed", "denied"


@dataclass(frozen=True)
class UsageConfig:
    """VPN_USAGE_RETENTION_DAYS, VPN_IDLE_MINUTES, VPN_MAX_MB (read by bot/settings/usage.py)."""

    retention_days: int = 400
    idle_minutes: int = 0  # 0: off. A ready session with no handshake for this long (or never) ends
    max_mb: int = 0  # 0: off. A session past this many MB in and out ends
    traffic_seconds: float = 60.0  # how often the sweeper asks the provider for traffic figures


def ending_of(s: Session) -> str:
    """The end reason a usage record gives: the one the ending set, else what the state says."""
    if s.ending:
        return s.ending
    if s.state is SessionState.FAILED:
        return FAILED
    if s.state is SessionState.DENIED:
        return DENIED
    return STOPPED


def usage_record(s: Session, ended_at: datetime) -> UsageRecord:
    """The record of a session that ended at `ended_at`."""
    denied = s.state is SessionState.DENIED or (s.ending == DENIED)
    in_use = (ended_at - s.ready_at).total_seconds() / 60 if s.ready_at else 0.0
    cost = 0.0 if denied else max(0.0, (ended_at - s.created_at).total_seconds() / 3600) * s.hourly_cost
    return UsageRecord(
        session_id=s.id, owner=s.owner, owner_label=s.owner_label, channel=s.conversation.channel, provider=s.provider, region=s.region,
        requested_at=s.created_at, ready_at=s.ready_at, ended_at=ended_at, minutes=round(max(0.0, in_use), 2), cost=round(cost, 6),
        bytes_in=s.bytes_in, bytes_out=s.bytes_out, end_reason=ending_of(s), detail=s.end_reason or s.error,
        decided_by=s.decided_by, decided_at=s.decided_at,
        approvers=s.approvers, request_reason=s.reason,
    )


async def write_usage(store: UsageStore, s: Session, ended_at: datetime) -> None:
    await store.put_usage(usage_record(s, ended_at))


async def write_usage_quietly(store: UsageStore, s: Session) -> None:
    """After the final compare-and-set (a failure, a denial): a store hiccup is logged, the ending goes on."""
    try:
        await write_usage(store, s, s.ended_at or s.updated_at)
    except Exception:
        log.exception("session %s: its usage record could not be written", s.id)
