"""Text -> command value, once, purely. Handlers never split raw strings again.

Tolerant of case, spacing, a leading `/` or none, full-width look-alikes (NFKC) and the `&nbsp;`
Teams leaves behind; strict about length and control characters.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from provisioner.wireguard import is_valid_key

MAX_TEXT = 500
MAX_ARGS = 8  # words before a free-text reason (`reason=…`, or what follows `/vpn deny <id>`); MAX_TEXT bounds the rest
VERBS = ("start", "stop", "status", "extend", "list", "help", "approve", "deny", "pending", "report", "audit", "notify")
ALIASES = {"ls": "list", "end": "stop", "down": "stop", "up": "start", "info": "status", "?": "help"}
_DURATION = re.compile(r"^(?:(\d{1,4})h)?(?:(\d{1,5})(?:m|min|mins|minutes?)?)?$")


@dataclass(frozen=True)
class Command:
    verb: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Usage:
    """The text was meant for us but is not a valid command: answer with help and this problem."""

    problem: str


@dataclass(frozen=True)
class StartOptions:
    region: str | None = None
    minutes: int | None = None
    public_key: str | None = None  # bring-your-own-key: the user's WireGuard public key
    reason: str = ""  # for the approvers, where the person's sessions need an approval


def normalise(text: str) -> str:
    text = text.replace("&nbsp;", " ")
    if not text.isascii():  # NFKC leaves ASCII as it is
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.split())


def _has_control(clean: str) -> bool:
    """Control, format, private-use or surrogate characters (categories Cc, Cf, Co, Cs). In ASCII only
    Cc exists, and exactly those are what `isprintable` rejects there (whitespace is already single spaces)."""
    if clean.isascii():
        return not clean.isprintable()
    return any(unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs") for c in clean)


def parse(text: str | None) -> Command | Usage | None:
    """None when the text is not addressed to the bot at all (channels ignore it in group chats)."""
    if text is None:
        return None
    if len(text) > MAX_TEXT:
        return Usage("that message is too long to be a command")
    clean = normalise(text)
    if _has_control(clean):
        return Usage("that message contains control characters")
    words = clean.split(" ") if clean else []
    if not words:
        return None
    head = words[0].lower().lstrip("/")
    if head != "vpn":
        if head in VERBS and len(words) == 1 and words[0].startswith("/"):
            return Usage(f"commands start with /vpn, e.g. /vpn {head}")
        return None
    if len(words) == 1:
        return Command("help")
    verb = words[1].lower()
    verb = ALIASES.get(verb, verb)
    if verb not in VERBS:
        return Usage(f"'{words[1][:30]}' is not a command I know")
    args = tuple(words[2:])
    free = next((n for n, a in enumerate(args) if a.lower().startswith("reason=")), len(args))
    if verb == "deny":
        free = min(free, 1)
    if free > MAX_ARGS:
        return Usage("too many words after the command")
    return Command(verb, args)


def parse_minutes(token: str) -> int | None:
    """'45', '45m', '45min', '2h', '1h30m' -> minutes; None if it is not a duration."""
    m = _DURATION.match(token.lower())
    if not m or not (m.group(1) or m.group(2)):
        return None
    return int(m.group(1) or 0) * 60 + int(m.group(2) or 0)


def parse_start(args: tuple[str, ...]) -> StartOptions | Usage:
    """`/vpn start [region] [duration] [key=<public key>] [reason=<free text>]`, in any order; the reason last."""
    region = minutes = public_key = None
    reason = ""
    for n, arg in enumerate(args):
        if arg.lower().startswith("reason="):
            reason = " ".join((arg[7:], *args[n + 1:])).strip()
            if not reason:
                return Usage("give the reason after reason=, e.g. /vpn start 60 reason=fixing the build server")
            break
        if arg.lower().startswith("key="):
            if public_key is not None:
                return Usage("give one key, e.g. /vpn start key=YOUR-PUBLIC-KEY")
            public_key = arg[4:]
            if not is_valid_key(public_key):
                return Usage(
                    "that is not a WireGuard public key (44 characters of base64 ending in '='; "
                    "copy the public key from your WireGuard app, never the private one)"
                )
            continue
        value = parse_minutes(arg)
        if value is not None:
            if minutes is not None:
                return Usage("give the duration once, e.g. /vpn start 60")
            minutes = value
        elif re.fullmatch(r"[a-z0-9][a-z0-9-]{0,39}", arg.lower()):
            if region is not None:
                return Usage("give one region, e.g. /vpn start westeurope")
            region = arg.lower()
        else:
            return Usage(f"'{arg[:30]}' is neither a region nor a duration")
    return StartOptions(region, minutes, public_key, reason)


def parse_approve(args: tuple[str, ...]) -> tuple[str, int | None] | Usage:
    """`/vpn approve <session|user> [duration]`: a shorter duration grants less than was asked."""
    if not args or len(args) > 2:
        return Usage("approve takes a session id (or user) and an optional duration, e.g. /vpn approve 0123456789 30")
    minutes = None
    if len(args) == 2:
        minutes = parse_minutes(args[1])
        if minutes is None:
            return Usage(f"'{args[1][:30]}' is not a duration; try /vpn approve {args[0][:20]} 30")
    return args[0], minutes


def parse_deny(args: tuple[str, ...]) -> tuple[str, str] | Usage:
    """`/vpn deny <session|user> [reason]`."""
    if not args:
        return Usage("deny takes a session id (or user) and an optional reason, e.g. /vpn deny 0123456789 not this week")
    reason = " ".join(args[1:])
    if reason.lower().startswith("reason="):
        reason = reason[7:]
    return args[0], reason.strip()


def parse_extend(args: tuple[str, ...]) -> int | None | Usage:
    if not args:
        return None
    if len(args) > 1:
        return Usage("extend takes one duration, e.g. /vpn extend 30")
    value = parse_minutes(args[0])
    if value is None:
        return Usage(f"'{args[0][:30]}' is not a duration; try /vpn extend 30")
    return value


_PERIOD = re.compile(r"^(?:\d{1,3}d|\d{4}-\d{2})$", re.IGNORECASE)
MAX_AUDIT_ROWS = 100


def parse_report(args: tuple[str, ...]) -> tuple[str | None, str | None] | Usage:
    """`/vpn report [7d|30d|YYYY-MM] [user]`, in either order: (period, user)."""
    period = user = None
    for arg in args:
        if _PERIOD.match(arg) and period is None:
            period = arg.lower()
        elif user is None:
            user = arg
        else:
            return Usage("report takes a period (7d, 30d or a month such as 2026-11) and a user, e.g. /vpn report 2026-11 kim@example.org")
    return period, user


def parse_audit(args: tuple[str, ...]) -> tuple[int, str | None] | Usage:
    """`/vpn audit [n] [user]`, in either order: (rows, user)."""
    rows, user = 20, None
    seen_n = False
    for arg in args:
        if arg.isdigit() and not seen_n:
            rows, seen_n = int(arg), True
            if not 1 <= rows <= MAX_AUDIT_ROWS:
                return Usage(f"audit shows 1 to {MAX_AUDIT_ROWS} entries")
        elif user is None:
            user = arg
        else:
            return Usage("audit takes a number of entries and a user, e.g. /vpn audit 50 kim@example.org")
    return rows, user


def parse_notify(args: tuple[str, ...]) -> str | Usage:
    """`/vpn notify [here|off]`: "" shows where notifications go."""
    if not args:
        return ""
    if len(args) == 1 and args[0].lower() in ("here", "off"):
        return args[0].lower()
    return Usage("notify takes here (send notifications to this chat) or off (stop sending them here)")
