"""The /vpn commands: parse arguments, call the service, render its answers as cards and text."""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Callable

from bot.access import AccessPolicy, Role
from bot.messages import Identity
from bot.chat.parser import Command, Usage, parse_extend, parse_start
from bot.chat.registry import Context, Registry
from bot.engine.service import Refused, VpnService
from bot.store.model import Session, SessionState
from cards.model import Action, Card, Table
from cards.text import format_cost, format_minutes


def _when(t: datetime | None) -> str:
    return f"{t:%Y-%m-%d %H:%M} UTC" if t else "-"


def _time_left(s: Session, now: datetime) -> str:
    if s.state is SessionState.EXPIRING:
        return "ending"
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
    actions = [Action("Stop", f"/vpn stop {s.id}")]
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
                     f"{s.created_at:%H:%M}", _time_left(s, now), format_cost(cost)])
        stops.append(Action(f"Stop {s.id}", f"/vpn stop {s.id}") if s.state is not SessionState.EXPIRING else None)
    lines = [f"{len(sessions)} live session(s)."]
    if len(per_user) > 0:
        lines.append("Cost so far by user: " + ", ".join(f"{u} {format_cost(c)}" for u, c in sorted(per_user.items())))
    table = Table(("Session", "Owner", "Where", "Endpoint", "State", "Since (UTC)", "Left", "Cost"), rows, stops)
    return Card(title="Live VPN sessions", lines=lines, table=table)


def help_card_for(registry: Registry) -> Callable[[Role | None, str], Card]:
    def help_card(role: Role | None, problem: str = "") -> Card:
        lines = [problem] if problem else []
        lines.append("I hand out WireGuard VPN access that ends by itself. Commands:")
        lines += [f"{spec.usage} — {spec.summary}" for spec in registry.available_to(role)]
        return Card(title="VPN bot", lines=lines)

    return help_card


def welcome_card_for(registry: Registry, access: AccessPolicy) -> Callable[[Identity | None, bool], Card]:
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

    @registry.command("start", usage="/vpn start [region] [minutes] [key=YOUR-PUBLIC-KEY]", summary="get a VPN config, sent to you privately (or peer settings for your own key)")
    async def start(ctx: Context, cmd: Command) -> None:
        opts = parse_start(cmd.args)
        if isinstance(opts, Usage):
            return await usage(ctx, opts.problem)
        msg = ctx.message
        try:
            s = await service.start(
                msg.identity, msg.conversation, region=opts.region, minutes=opts.minutes, message_id=msg.message_id, public_key=opts.public_key
            )
        except Refused as exc:
            return await ctx.reply(str(exc))
        if opts.public_key:
            private = " You brought your own key, so I will post the peer settings here."
        else:
            private = "" if msg.is_private else " I will send the config to you privately, not here."
        await ctx.reply(f"On it: starting VPN session {s.id} in {s.region} for {format_minutes(s.minutes * 60)}.{private}")

    @registry.command("status", usage="/vpn status", summary="your session: where, state, time left")
    async def status(ctx: Context, cmd: Command) -> None:
        mine = await service.sessions_of(ctx.message.identity.key)
        if not mine:
            return await ctx.reply("You have no VPN session running. Use /vpn start to get one.")
        now = service.clock()
        for s in mine:
            await ctx.reply_card(session_card(s, now))

    @registry.command("stop", usage="/vpn stop [session]", summary="end your session now (admins: any session or user)")
    async def stop(ctx: Context, cmd: Command) -> None:
        me = str(ctx.message.identity.key)
        if len(cmd.args) > 1:
            return await usage(ctx, "stop takes at most one session id or user")
        if cmd.args:
            targets = await service.find_targets(cmd.args[0])
            others = [s for s in targets if s.owner != me]
            if others and not ctx.is_admin:
                return await ctx.reply("Sorry, only admins can stop another person's session.")
            if not targets:
                return await ctx.reply(f"No live session matches '{cmd.args[0][:40]}'. /vpn status shows yours.")
        else:
            targets = await service.sessions_of(ctx.message.identity.key)
            if not targets:
                return await ctx.reply("You have no VPN session running.")
        mine = all(s.owner == me for s in targets)
        reason = "stopped by you" if mine else f"stopped by an admin ({ctx.message.identity.label})"
        stopped = await service.stop(targets, reason)
        ids = ", ".join(s.id for s in stopped) or "nothing"
        await ctx.reply(f"Stopping {ids}. I will confirm when everything is removed.")

    @registry.command("extend", usage="/vpn extend [minutes]", summary="keep your session longer")
    async def extend(ctx: Context, cmd: Command) -> None:
        minutes = parse_extend(cmd.args)
        if isinstance(minutes, Usage):
            return await usage(ctx, minutes.problem)
        try:
            s = await service.extend(ctx.message.identity.key, minutes)
        except Refused as exc:
            return await ctx.reply(str(exc))
        await ctx.reply(f"Session {s.id} now ends at {s.expires_at:%H:%M} UTC ({format_minutes(s.time_left(service.clock()))} left).")

    @registry.command("list", usage="/vpn list", summary="every live session, with cost so far", admin_only=True)
    async def list_(ctx: Context, cmd: Command) -> None:
        await ctx.reply_card(list_card(await service.live_sessions(), service.clock()))

    @registry.command("help", usage="/vpn help", summary="this list")
    async def help_(ctx: Context, cmd: Command) -> None:
        await ctx.reply_card(help_card(ctx.role))

    return registry
