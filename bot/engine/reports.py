"""Reports over usage records (issue 23): per user and per day, and the periods people ask for.

Pure: the chat command (/vpn report), the web API (GET /api/usage, JSON or CSV) and the page's admin
view all read the same `Report`; each renders it in its own way.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Iterable, Sequence

from bot.engine.notices import megabytes
from bot.store.ports import UsageRecord

__all__ = ["BadPeriod", "Report", "Totals", "check_range", "is_period", "megabytes", "period", "summarize"]

DEFAULT_PERIOD = "30d"
MAX_DAYS = 400  # a report spans at most this long (the records' default retention)
_DAYS = re.compile(r"^(\d{1,3})d$")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


class BadPeriod(ValueError):
    """Not a period: the message says what is expected."""


def is_period(text: str) -> bool:
    return bool(_DAYS.match(text.lower()) or _MONTH.match(text))


def period(text: str | None, now: datetime) -> tuple[datetime, datetime, str]:
    """`7d`/`30d` (the last N days up to now) or `YYYY-MM` (that calendar month, UTC): (since, until, label)."""
    text = (text or DEFAULT_PERIOD).strip().lower()
    days = _DAYS.match(text)
    if days:
        n = int(days.group(1))
        if not 1 <= n <= MAX_DAYS:
            raise BadPeriod(f"a period of days is 1d to {MAX_DAYS}d")
        return now - timedelta(days=n), now + timedelta(microseconds=1), f"the last {n} day{'s' if n != 1 else ''}"  # now included
    month = _MONTH.match(text)
    if month:
        year, m = int(month.group(1)), int(month.group(2))
        if not 1 <= m <= 12 or year < 2000:
            raise BadPeriod(f"{text} is not a month")
        since = datetime(year, m, 1, tzinfo=timezone.utc)
        until = datetime(year + (m == 12), m % 12 + 1, 1, tzinfo=timezone.utc)
        return since, until, f"{year:04d}-{m:02d}"
    raise BadPeriod("the period is 7d, 30d (any number of days) or a month such as 2026-11")


def check_range(since: datetime, until: datetime) -> None:
    if until <= since:
        raise BadPeriod("the end of the period must come after its start")
    if until - since > timedelta(days=MAX_DAYS + 31):
        raise BadPeriod(f"a report spans at most {MAX_DAYS} days")


@dataclass
class Totals:
    """Sessions, minutes in use, cost and traffic of some records (a user's, a day's, everyone's)."""

    key: str = ""  # the user key, or the day (YYYY-MM-DD)
    label: str = ""
    sessions: int = 0
    minutes: float = 0.0
    cost: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    endings: dict[str, int] = field(default_factory=dict)

    def add(self, r: UsageRecord) -> None:
        self.sessions += 1
        self.minutes += r.minutes
        self.cost += r.cost
        self.bytes_in += r.bytes_in
        self.bytes_out += r.bytes_out
        self.endings[r.end_reason] = self.endings.get(r.end_reason, 0) + 1

    def as_dict(self) -> dict[str, object]:
        return {"sessions": self.sessions, "minutes": round(self.minutes, 1), "cost": round(self.cost, 4),
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "endings": dict(sorted(self.endings.items()))}


@dataclass(frozen=True)
class Report:
    since: datetime
    until: datetime
    user: str | None
    records: Sequence[UsageRecord]
    users: Sequence[Totals]  # most expensive first
    days: Sequence[Totals]  # every day of the period, oldest first (days without sessions are zeros: a chart needs them)
    total: Totals


def summarize(records: Iterable[UsageRecord], since: datetime, until: datetime, user: str | None = None) -> Report:
    rows = list(records)
    total = Totals("total", "total")
    by_user: dict[str, Totals] = {}
    by_day: dict[date, Totals] = {}
    for r in rows:
        total.add(r)
        by_user.setdefault(r.owner, Totals(r.owner, r.owner_label)).add(r)
        day = r.requested_at.astimezone(timezone.utc).date()
        by_day.setdefault(day, Totals(day.isoformat(), day.isoformat())).add(r)
    first, last = since.astimezone(timezone.utc).date(), (until - timedelta(microseconds=1)).astimezone(timezone.utc).date()
    days = []
    d = first
    while d <= last:
        days.append(by_day.get(d) or Totals(d.isoformat(), d.isoformat()))
        d += timedelta(days=1)
    users = sorted(by_user.values(), key=lambda t: (-t.cost, -t.sessions, t.label))
    return Report(since, until, user, rows, users, days, total)
