"""When a sweeper must next look at a session: the one rule, applied on every write (issue 25).

Every session write goes through `Leases.update` (and the first through the service's create), which
stamps `Session.due_at` with `Schedule.next_look`. The stores index that time, so a sweep reads only
the sessions that are due instead of every live one. The time is never later than the first thing
the sweeper would do with the session — warn, expire, end it for want of use or over its traffic
cap, time out a request nobody decided, take over work whose lease ran out — and None once it ended.
A time earlier than needed is harmless: the sweeper looks, finds nothing to do and writes the right
time back (also how sessions written before this rule existed, or under other settings, are healed).
"""
from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from bot.engine.config import SessionPolicy
from bot.engine.usage import UsageConfig
from bot.store.model import Session, SessionState


def last_used(s: Session) -> datetime:
    """Since when a session counts as unused: its latest handshake, or when it became ready."""
    ready = s.ready_at or s.created_at
    return max(ready, s.handshake_at) if s.handshake_at else ready


def over_cap(s: Session, usage: UsageConfig) -> bool:
    return bool(usage.max_mb) and s.bytes_in + s.bytes_out >= usage.max_mb * 10**6


class Schedule:
    def __init__(self, limits: SessionPolicy, usage: UsageConfig) -> None:
        self.limits = limits
        self.usage = usage

    def warn_at(self, s: Session) -> datetime | None:
        """When the owner is told their session ends soon (None: no warning is due)."""
        warn = self.limits.warn_minutes
        if not warn or s.warned or s.minutes <= warn:
            return None
        return s.expires_at - timedelta(minutes=warn)

    def idle_ends_at(self, s: Session) -> datetime | None:
        return last_used(s) + timedelta(minutes=self.usage.idle_minutes) if self.usage.idle_minutes else None

    def idle_warn_at(self, s: Session) -> datetime | None:
        ends = self.idle_ends_at(s)
        warn = self.limits.warn_minutes
        if ends is None or not warn or s.idle_warned or ends >= s.expires_at:
            return None
        return ends - timedelta(minutes=warn)

    def next_look(self, s: Session) -> datetime | None:
        state = s.state
        if state is SessionState.READY:
            if over_cap(s, self.usage):
                return s.traffic_at or s.updated_at
            times = [s.expires_at, self.warn_at(s), self.idle_ends_at(s), self.idle_warn_at(s)]
            return min(t for t in times if t is not None)
        if state in (SessionState.REQUESTED, SessionState.PROVISIONING, SessionState.EXPIRING):
            return s.lease_expires_at or s.updated_at  # whoever works on it renews the lease; unleased: now
        if state is SessionState.AWAITING_APPROVAL:
            return s.decide_by or s.updated_at
        return None  # ended

    def fingerprint(self) -> str:
        """The settings this rule reads: when they change, every live session is rescheduled once (the sweeper's turn)."""
        return f"warn={self.limits.warn_minutes};idle={self.usage.idle_minutes};cap={self.usage.max_mb}"

    def apply(self, s: Session) -> Session:
        due = self.next_look(s)
        return s if due == s.due_at else dataclasses.replace(s, due_at=due)
