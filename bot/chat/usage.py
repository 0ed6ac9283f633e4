"""The admins' /vpn report, /vpn audit and /vpn notify (issue 23): usage per user over a period, the audit
log, and which chats get notifications.

Reads what the engine reads for the web API (`VpnService.usage_report`, `audit_entries`); only the
rendering is chat's. The rules (admins only) are the policy's: `Action.REPORT`, `Action.AUDIT`.
"""
from __future__ import annotations

from datetime import datetime

from bot.chat.parser import Command, Usage, parse_audit, parse_notify, parse_report
from bot.chat.registry import Context, Registry
from bot.engine import reports
from bot.engine.policy import Action as Do
from bot.engine.reports import Report, Totals, megabytes
from bot.engine.service import VpnService
from bot.store.ports import AuditEntry
from cards.model import Card, Table
from cards.text import format_cost

MAX_USERS = 20  # rows of a report card (the web page's admin view has every user)


def _totals_line(t: Totals) -> str:
    endings = ", ".join(f"{n} {kind}" for kind, n in sorted(t.endings.items(), key=lambda kv: (-kv[1], kv[0])))
    line = (f"{t.sessions} session(s), {t.minutes:.0f} min in use, {format_cost(t.cost)}, "
            f"↓ {megabytes(t.bytes_in)} ↑ {megabytes(t.bytes_out)}.")
    return line + (f" Ended: {endings}." if endings else "")


def report_card(r: Report, label: str) -> Card:
    title = f"VPN usage: {label}" + (f" ({r.user})" if r.user else "")
    if not r.records:
        return Card(title=title, lines=("No session was requested in this period.",))
    rows = [[t.label, str(t.sessions), f"{t.minutes:.0f}", format_cost(t.cost), megabytes(t.bytes_in), megabytes(t.bytes_out)]
            for t in r.users[:MAX_USERS]]
    lines = [f"Total: {_totals_line(r.total)}"]
    if len(r.users) > MAX_USERS:
        lines.append(f"The {MAX_USERS} users who cost most; {len(r.users) - MAX_USERS} more on the web page's admin view.")
    return Card(title=title, lines=lines, table=Table(("User", "Sessions", "Minutes", "Cost", "↓", "↑"), rows))


def audit_card(entries: list[AuditEntry], user: str | None) -> Card:
    title = "Audit log" + (f" ({user})" if user else "")
    if not entries:
        return Card(title=title, lines=("Nothing recorded" + (" for that user." if user else "."),))
    rows = [[f"{e.at:%Y-%m-%d %H:%M}", e.email or e.user, e.command, "yes" if e.allowed else "no",
             e.reason + (f" (×{e.count})" if e.count > 1 else "")] for e in entries]
    return Card(title=title, lines=(f"The newest {len(entries)}, newest first (UTC).",),
                table=Table(("Time", "Who", "Command", "Allowed", "Reason"), rows))


def register_usage(registry: Registry, service: VpnService) -> None:
    async def usage(ctx: Context, problem: str) -> None:
        await ctx.reply(f"Sorry, {problem}.")

    @registry.command("report", action=Do.REPORT, usage="/vpn report [7d|30d|YYYY-MM] [user]",
                      summary="sessions, minutes, cost and traffic per user (admins)")
    async def report(ctx: Context, cmd: Command) -> None:
        parsed = parse_report(cmd.args)
        if isinstance(parsed, Usage):
            return await usage(ctx, parsed.problem)
        now: datetime = service.clock()
        try:
            since, until, label = reports.period(parsed[0], now)
            found = await service.usage_report(since, until, parsed[1])
        except reports.BadPeriod as exc:
            return await usage(ctx, str(exc))
        await ctx.reply_card(report_card(found, label))

    @registry.command("audit", action=Do.AUDIT, usage="/vpn audit [n] [user]", summary="who did what, newest first (admins)")
    async def audit(ctx: Context, cmd: Command) -> None:
        parsed = parse_audit(cmd.args)
        if isinstance(parsed, Usage):
            return await usage(ctx, parsed.problem)
        await ctx.reply_card(audit_card(await service.audit_entries(parsed[0], user=parsed[1]), parsed[1]))

    @registry.command("notify", action=Do.NOTIFY, usage="/vpn notify [here|off]",
                      summary="send notifications (requests, approvals, endings, failures) to this chat, or stop (admins)")
    async def notify(ctx: Context, cmd: Command) -> None:
        parsed = parse_notify(cmd.args)
        if isinstance(parsed, Usage):
            return await usage(ctx, parsed.problem)
        notifier, conv = service.notify, ctx.message.conversation
        if parsed == "here":
            target = await notifier.register(conv)
            return await ctx.reply(f"Notifications now come to this chat too ({target}): requests, approvals, sessions ready and ended, failures.")
        if parsed == "off":
            gone = await notifier.unregister(conv)
            return await ctx.reply("Notifications no longer come to this chat." if gone else
                                   "This chat was not registered for notifications (VPN_NOTIFY's targets are set by whoever runs the bot).")
        registered = sorted(await notifier.registered(fresh=True))
        configured = [t.split("://", 1)[0] + "://" + t.split("://", 1)[1].split("/", 1)[0] + "/…" if "://" in t else t for t in notifier.config.targets]
        lines = [f"VPN_NOTIFY: {', '.join(configured) or 'none'}.", f"Registered with /vpn notify here: {', '.join(registered) or 'none'}."]
        await ctx.reply(" ".join(lines))
