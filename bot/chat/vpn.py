"""The /vpn commands: parse arguments, call the service, render its answers as cards and text."""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Callable

from bot.access import AccessPolicy, Role
from bot.chat.parser import Command, Usage, parse_approve, parse_deny, parse_extend, parse_start
from bot.chat.refusals import say
from bot.chat.registry import Context, Registry
from bot.chat.usage import register_usage
from bot.engine import notices
from bot.engine.policy import Action as Do
from bot.engine.policy import Limits, Policy, Refused
from bot.engine.service import VpnService
from bot.messages import Identity
from bot.store.model import Session, SessionState
from cards.model import Action, Card, Table
from cards.text import format_cost, format_minutes


def _when(t: datetime | None) -> str:
    return f"{t:%Y-%m-%d %H:%M} UTC" if t else "-"


def _time_left(s: Session, now: datetime) -> str:
    if s.state is SessionState.EXPIRING:
        return "ending"
    if s.state is SessionState.AWAITING_APPROVAL:
        return f"{format_minutes(s.minutes * 60)} once approved and ready"
    if s.state is not SessionState.READY:
        return f"{format_minutes(s.minutes * 60)} once ready"
    return format_minutes(s.time_left(now))


def session_card(s: Session, now: datetime) -> Card:
    facts = [
        ("Session", s.id),
        ("State", s.state.value),
        ("Where", f"{s.provider} / {s.region}" + (f" ({s.server_size})" if s.server_size else "")),
        ("Endpoint", s.endpoint or "-"),
        ("Started", _when(s.created_at)),
        ("Time left", _time_left(s, now)),
    ]
    if s.state is SessionState.READY:
        facts.append(("Tunnel", notices.traffic_line(s, now)))  # connected — handshake 20 s ago, ↓ 12.4 MB ↑ 3.1 MB
    if s.state is SessionState.AWAITING_APPROVAL:
        facts.append(("Asked", s.asked or "no approver could be reached privately: they see it with /vpn pending"))
    elif s.decided_by:
        facts.append(("Approved by", s.decided_by))
    actions = [Action("Withdraw" if s.state is SessionState.AWAITING_APPROVAL else "Stop", f"/vpn stop {s.id}")]
    if s.state is SessionState.READY:
        actions.insert(0, Action("Extend 30 min", "/vpn extend 30"))
    return Card(title="Your VPN session", facts=facts, actions=actions)


def list_card(sessions: list[Session], now: datetime) -> Card:
    rows, stops = [], []
    per_user: dict[str, float] = defaultdict(float)
    for s in sessions:
        cost = s.cost_so_far(now)
        per_user[s.owner_label] += cost
        where = f"{s.provider}/{s.region}" + (f" ({s.server_size})" if s.server_size else "")
        rows.append([s.id, s.owner_label, where, s.endpoint or "-", s.state.value,
                     f"{s.created_at:%H:%M}", _time_left(s, now), format_cost(cost), notices.traffic_line(s, now) or "-"])
        stops.append(Action(f"Stop {s.id}", f"/vpn stop {s.id}") if s.state is not SessionState.EXPIRING else None)
    lines = [f"{len(sessions)} live session(s)."]
    if len(per_user) > 0:
        lines.append("Cost so far by user: " + ", ".join(f"{u} {format_cost(c)}" for u, c in sorted(per_user.items())))
    table = Table(("Session", "Owner", "Where", "Endpoint", "State", "Since (UTC)", "Left", "Cost", "Tunnel"), rows, stops)
    return Card(title="Live VPN sessions", lines=lines, table=table)


def pending_card(sessions: list[Session], now: datetime) -> Card:
    rows, actions = [], []
    for s in sessions:
        left = format_minutes((s.decide_by - now).total_seconds()) if s.decide_by else "-"
        rows.append([s.id, s.owner_label, format_minutes(s.minutes * 60), s.region, s.reason or "-", left])
        actions.append(Action(f"Approve {s.id}", f"/vpn approve {s.id}"))
    lines = [f"{len(sessions)} request(s) waiting for you. /vpn approve <id> [minutes] approves (fewer minutes grant less); /vpn deny <id> [reason] denies."]
    table = Table(("Session", "Requested by", "Length", "Region", "Reason", "Decide within"), rows, actions)
    return Card(title="VPN requests awaiting approval", lines=lines, table=table)


def limits_lines(mine: Limits) -> list[str]:
    """A person's own limits, in chat words (`/vpn help`)."""
    lines = [f"Your sessions: up to {format_minutes(mine.max_minutes * 60)} ({format_minutes(mine.default_minutes * 60)} unless you say), "
             f"regions: {', '.join(mine.regions) or 'none'}."]
    if mine.approval.kind == "always":
        lines.append("Every session needs an approval first; /vpn start asks the approvers (add reason=… for them).")
    elif mine.approval.kind == "over":
        lines.append(f"Sessions longer than {format_minutes(mine.approval.minutes * 60)} need an approval first (add reason=… for the approvers).")
    if mine.entry:
        lines.append(f"(from the access policy's {mine.entry})")
    return lines


def help_card_for(registry: Registry) -> Callable[..., Card]:
    def help_card(role: Role | None, problem: str = "", *, approver: bool = False, limits: list[str] | None = None) -> Card:
        lines = [problem] if problem else []
        lines.append("I hand out WireGuard VPN access that ends by itself. Commands:")
        lines += [f"{spec.usage} — {spec.summary}" for spec in registry.available_to(role, approver=approver)]
        lines += limits or []
        return Card(title="VPN bot", lines=tuple(lines))  # hashable: Teams sends an equal card again without encoding it

    return help_card


def welcome_card_for(registry: Registry, access: AccessPolicy | Policy) -> Callable[[Identity | None, bool], Card]:
    """A newcomer's card (Teams says hello on install): their commands, or how to be let in."""
    help_card = help_card_for(registry)

    def welcome(who: Identity | None, private: bool) -> Card:
        role = access.role_of(who) if who else None
        greeting = "Hi! I hand out short-lived WireGuard VPN access."
        if role is None:
            # An id is personal data: said only in a private chat, never in a channel or group chat.
            where = f" (your id is {who.key})" if who and private else ""
            greeting += f" You are not on the allowlist yet: ask an admin to add you{where}."
        return help_card(role, greeting)

    return welcome


def build_registry(service: VpnService) -> Registry:
    registry = Registry()
    help_card = help_card_for(registry)

    async def usage(ctx: Context, problem: str) -> None:
        await ctx.reply_card(help_card(ctx.role, f"Sorry, {problem}."))

    async def refused(ctx: Context, r: Refused) -> None:
        await ctx.reply(say(r, private=ctx.message.is_private))

    @registry.command("start", action=Do.START, usage="/vpn start [region] [minutes] [key=YOUR-PUBLIC-KEY] [reason=…]", summary="get a VPN config, sent to you privately (or peer settings for your own key)")
    async def start(ctx: Context, cmd: Command) -> None:
        opts = parse_start(cmd.args)
        if isinstance(opts, Usage):
            return await usage(ctx, opts.problem)
        msg = ctx.message
        try:
            s = await service.start(
                ctx.actor, msg.conversation, region=opts.region, minutes=opts.minutes, message_id=msg.message_id, public_key=opts.public_key,
                reason=opts.reason,
            )
        except Refused as r:
            return await refused(ctx, r)
        if s.state is SessionState.AWAITING_APPROVAL:
            asked = f"I asked {s.asked} privately." if s.asked else "No approver could be reached privately; they see it with /vpn pending or on the web page."
            timeout = format_minutes((s.decide_by - s.created_at).total_seconds()) if s.decide_by else "a while"
            return await ctx.reply(
                f"Session {s.id} ({s.region}, {format_minutes(s.minutes * 60)}) needs an approval first. {asked} "
                f"An approver answers with /vpn approve {s.id} or /vpn deny {s.id} [reason]; undecided after {timeout}, it lapses. "
                "I will tell you here either way; /vpn stop withdraws it."
            )
        if opts.public_key:
            private = " You brought your own key, so I will post the peer settings here."
        else:
            private = "" if msg.is_private else " I will send the config to you privately, not here."
        await ctx.reply(f"On it: starting VPN session {s.id} in {s.region} for {format_minutes(s.minutes * 60)}.{private}")

    @registry.command("status", action=Do.STATUS, usage="/vpn status", summary="your session: where, state, time left")
    async def status(ctx: Context, cmd: Command) -> None:
        mine = await service.sessions_of(ctx.actor.key)
        if not mine:
            return await ctx.reply("You have no VPN session running. Use /vpn start to get one.")
        now = service.clock()
        for s in mine:
            await ctx.reply_card(session_card(s, now))

    @registry.command("stop", action=Do.STOP, usage="/vpn stop [session]", summary="end your session now (admins: any session or user)")
    async def stop(ctx: Context, cmd: Command) -> None:
        if len(cmd.args) > 1:
            return await usage(ctx, "stop takes at most one session id or user")
        try:
            stopped = await service.stop(ctx.actor, cmd.args[0] if cmd.args else None)
        except Refused as r:
            return await refused(ctx, r)
        waiting = [s.id for s in stopped if s.state is SessionState.AWAITING_APPROVAL]
        running = [s.id for s in stopped if s.state is not SessionState.AWAITING_APPROVAL]
        if waiting and not running:
            return await ctx.reply(f"Withdrawn: {', '.join(waiting)} (nothing had been set up).")
        ids = ", ".join(running) or "nothing"
        await ctx.reply(f"Stopping {ids}. I will confirm when everything is removed.")

    @registry.command("extend", action=Do.EXTEND, usage="/vpn extend [minutes]", summary="keep your session longer")
    async def extend(ctx: Context, cmd: Command) -> None:
        minutes = parse_extend(cmd.args)
        if isinstance(minutes, Usage):
            return await usage(ctx, minutes.problem)
        try:
            s = await service.extend(ctx.actor, minutes)
        except Refused as r:
            return await refused(ctx, r)
        await ctx.reply(f"Session {s.id} now ends at {s.expires_at:%H:%M} UTC ({format_minutes(s.time_left(service.clock()))} left).")

    @registry.command("list", action=Do.LIST, usage="/vpn list", summary="every live session, with cost so far")
    async def list_(ctx: Context, cmd: Command) -> None:
        await ctx.reply_card(list_card(await service.live_sessions(), service.clock()))

    @registry.command("approve", action=Do.APPROVE, usage="/vpn approve <session|user> [minutes]", summary="approve a request (fewer minutes grant less)")
    async def approve(ctx: Context, cmd: Command) -> None:
        parsed = parse_approve(cmd.args)
        if isinstance(parsed, Usage):
            return await usage(ctx, parsed.problem)
        try:
            s = await service.approve(ctx.actor, parsed[0], parsed[1])
        except Refused as r:
            return await refused(ctx, r)
        await ctx.reply(f"Approved: session {s.id} of {s.owner_label} for {format_minutes(s.minutes * 60)}; it is being set up.")

    @registry.command("deny", action=Do.DENY, usage="/vpn deny <session|user> [reason]", summary="deny a request, with a reason for the requester")
    async def deny(ctx: Context, cmd: Command) -> None:
        parsed = parse_deny(cmd.args)
        if isinstance(parsed, Usage):
            return await usage(ctx, parsed.problem)
        try:
            s = await service.deny(ctx.actor, parsed[0], parsed[1])
        except Refused as r:
            return await refused(ctx, r)
        await ctx.reply(f"Denied: session {s.id} of {s.owner_label}. I told them.")

    @registry.command("pending", action=Do.PENDING, usage="/vpn pending", summary="the requests waiting for your approval")
    async def pending(ctx: Context, cmd: Command) -> None:
        try:
            waiting = await service.pending(ctx.actor)
        except Refused as r:
            return await refused(ctx, r)
        if not waiting:
            return await ctx.reply("No request is waiting for your approval.")
        await ctx.reply_card(pending_card(waiting, service.clock()))

    @registry.command("help", action=Do.HELP, usage="/vpn help", summary="your commands and your limits")
    async def help_(ctx: Context, cmd: Command) -> None:
        try:
            mine = limits_lines(await service.limits_for(ctx.actor))
        except Refused as r:
            mine = [say(r, private=ctx.message.is_private)]
        await ctx.reply_card(help_card(ctx.role, approver=await service.policy.is_approver(ctx.actor), limits=mine))

    register_usage(registry, service)  # /vpn report, /vpn audit (bot/chat/usage.py)
    return registry
