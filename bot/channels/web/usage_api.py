"""GET /api/usage and GET /api/audit (issue 23): admins read usage records and the audit log.

Thin, as every route: check the query's shape, ask the policy (`Action.REPORT` / `Action.AUDIT`,
admins only, audited), read what the engine reads for /vpn report and /vpn audit, render JSON — or
CSV with a header line when the client asks for `text/csv`.
"""
from __future__ import annotations

import csv
import io
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from aiohttp import web

from bot.channels.web.body import json_error
from bot.channels.web.deps import WebDeps
from bot.engine import reports
from bot.engine.policy import Action, Actor
from bot.engine.reports import Totals
from bot.store.ports import AuditEntry, UsageRecord
from bot.store.usage_codec import USAGE_FIELDS

MAX_AUDIT = 1000
DEFAULT_DAYS = 30
MAX_USER = 200
_FORMULA = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet would run a cell starting with these


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if t else None


def parse_when(text: str, *, end: bool) -> datetime:
    """An ISO date (2026-11-01) or date-time (2026-11-01T12:00:00Z); a date that ends a range includes that day."""
    text = text.strip()
    if len(text) == 10:
        day = date.fromisoformat(text)
        return datetime.combine(day + timedelta(days=1 if end else 0), time(), timezone.utc)
    at = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)


def _range(request: web.Request, now: datetime, default_days: int | None) -> tuple[datetime | None, datetime | None] | web.Response:
    try:
        since = parse_when(request.query["from"], end=False) if "from" in request.query else None
        until = parse_when(request.query["to"], end=True) if "to" in request.query else None
    except (ValueError, OverflowError):
        return json_error(400, "from and to must be ISO dates (2026-11-01) or date-times (2026-11-01T12:00:00Z)")
    if default_days is not None:
        until = until or now + timedelta(microseconds=1)
        since = since or until - timedelta(days=default_days)
    if since is not None and until is not None and until <= since:
        return json_error(400, "to must come after from")
    return since, until


def _user(request: web.Request) -> str | None | web.Response:
    user = request.query.get("user", "").strip()
    if len(user) > MAX_USER:
        return json_error(400, f"user must be at most {MAX_USER} characters (a user key such as teams:… or an email)")
    return user or None


def _record(r: UsageRecord) -> dict[str, Any]:
    return {name: (_iso(v) if isinstance(v := getattr(r, name), datetime) else v) for name in USAGE_FIELDS}


def _totals(t: Totals, key: str) -> dict[str, Any]:
    out: dict[str, Any] = {key: t.key}
    if key == "user":
        out["label"] = t.label
    return {**out, **t.as_dict()}


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA):
        return "'" + value  # OWASP's advice against CSV injection: text stays text
    return "" if value is None else value


def _csv(records: list[UsageRecord]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(USAGE_FIELDS)
    for r in records:
        row = _record(r)
        writer.writerow([_cell(row[name]) for name in USAGE_FIELDS])
    return out.getvalue()


def wants_csv(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "").lower()
    return any(part.split(";")[0].strip() == "text/csv" and "q=0" not in part.replace(" ", "").split(";")[1:] for part in accept.split(","))


async def usage(request: web.Request, actor: Actor, deps: WebDeps) -> web.StreamResponse:
    span = _range(request, deps.clock(), DEFAULT_DAYS)
    if isinstance(span, web.Response):
        return span
    user = _user(request)
    if isinstance(user, web.Response):
        return user
    since, until = span
    assert since is not None and until is not None
    await deps.policy.authorize(actor, Action.REPORT, f"usage {_iso(since)}..{_iso(until)}" + (f" {user}" if user else ""))
    try:
        found = await deps.engine.usage_report(since, until, user)
    except reports.BadPeriod as exc:
        return json_error(400, str(exc))
    if wants_csv(request):
        name = f"vpn-usage-{since:%Y%m%d}-{until:%Y%m%d}.csv"
        return web.Response(text=_csv(list(found.records)), content_type="text/csv", charset="utf-8",
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})
    return web.json_response({
        "from": _iso(since), "to": _iso(until), "user": user,
        "totals": found.total.as_dict(),
        "users": [_totals(t, "user") for t in found.users],
        "days": [_totals(t, "day") for t in found.days],
        "rows": [_record(r) for r in found.records],
    })


def _entry(e: AuditEntry) -> dict[str, Any]:
    return {"at": _iso(e.at), "user": e.user, "email": e.email, "channel": e.channel, "command": e.command, "allowed": e.allowed,
            "reason": e.reason, "count": e.count}


async def audit(request: web.Request, actor: Actor, deps: WebDeps) -> web.StreamResponse:
    span = _range(request, deps.clock(), None)
    if isinstance(span, web.Response):
        return span
    user = _user(request)
    if isinstance(user, web.Response):
        return user
    raw = request.query.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_AUDIT:
        return json_error(400, f"limit must be a whole number from 1 to {MAX_AUDIT}")
    since, until = span
    await deps.policy.authorize(actor, Action.AUDIT, f"audit {raw}" + (f" {user}" if user else ""))
    entries = await deps.engine.audit_entries(int(raw), since=since, until=until, user=user)
    return web.json_response({"entries": [_entry(e) for e in entries]})
