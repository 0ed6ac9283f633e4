"""Every sentence the engine says on its own (progress, ready, warnings, endings, failures).

A notice has two registers: `chat` names the command to type next ("/vpn stop ends it sooner"),
`page` does not (the web page has buttons for that). The reply router picks the register a channel
speaks (`Channel.speaks_commands`); nothing downstream rewrites the engine's words.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from bot.messages import Notice
from bot.store.model import Session, SessionState
from cards.model import Action, Card
from cards.text import format_cost, format_minutes

__all__ = ["Notice"]  # and the sentence functions below


def plain(text: str) -> Notice:
    """A sentence with no command in it: the same in every channel."""
    return Notice(text)


def _hm(t: datetime) -> str:
    return f"{t:%H:%M} UTC"


# ----- progress (one updating message) ------------------------------------------------------------

def setting_up(session_id: str) -> str:
    return f"Setting up your VPN (session {session_id})…"


def setting_up_step(step: str) -> str:
    return f"Setting up your VPN: {step}…"


def ready_progress(session_id: str) -> str:
    return f"Your VPN is ready (session {session_id})."


def failed_progress(session_id: str) -> str:
    return f"Setting up your VPN failed (session {session_id})."


# ----- delivery -----------------------------------------------------------------------------------

def valid_until(minutes: int, ends: datetime) -> str:
    return f"Valid for {format_minutes(minutes * 60)}, until {_hm(ends)}."


def valid_from_up(minutes: int) -> str:
    return f"Valid for {format_minutes(minutes * 60)} from when the server is up."


def own_key_settings(session_id: str, config_text: str) -> Notice:
    return plain(f"Peer settings for your own key (session {session_id}):\n{config_text}")


OWN_KEY_WHERE = "Add these settings to your WireGuard tunnel."


def still_booting(where: str) -> Notice:
    return plain(f"{where} The server is still booting: the tunnel comes up within about a minute, and I will tell you when it is up.")


def ready(where: str, session_id: str, ends: datetime) -> Notice:
    return Notice(
        f"{where} Session {session_id} ends at {_hm(ends)}; /vpn stop ends it sooner.",
        f"{where} Session {session_id} ends at {_hm(ends)}.",
    )


def server_up(session_id: str, ends: datetime) -> Notice:
    return Notice(
        f"Your VPN server is up (session {session_id}). It ends at {_hm(ends)}; /vpn stop ends it sooner.",
        f"Your VPN server is up (session {session_id}). It ends at {_hm(ends)}.",
    )


# ----- time and endings ---------------------------------------------------------------------------

def ends_soon(session_id: str, seconds_left: float, extend_minutes: int) -> Notice:
    head = f"Your VPN session {session_id} ends in {format_minutes(seconds_left)}."
    return Notice(f"{head} Type /vpn extend {extend_minutes} to keep it longer.", head)


def ended(session_id: str, reason: str) -> Notice:
    head = f"Your VPN session {session_id} has ended ({reason})."
    return Notice(f"{head} Use /vpn start for a new one.", head)


def restarted(session_id: str) -> Notice:
    return plain(f"The VPN bot restarted while setting up session {session_id}; starting over.")


def went_wrong(session_id: str) -> Notice:
    return plain(f"Something went wrong with your VPN session {session_id}; an admin has been told.")


# ----- failures -----------------------------------------------------------------------------------

FAILED_RESTART = "the VPN bot restarted while setting it up"
FAILED_TIMEOUT = "the server took too long to come up"
FAILED_OURS = "something went wrong on our side (an admin can find the details in the log)"
NOTHING_LEFT = "Nothing was left running."
NIC_HELD = "The cloud still holds part of it (e.g. a network address) after a failed start; it is released within a few minutes, automatically."
LEFTOVERS = "Its leftovers will be removed automatically."
DEAD_CONFIG = "The config I sent for it will not work; please delete it."


def undeliverable(detail: str) -> str:
    return f"I could not deliver the config privately: {detail}"


def failed(reason: str, tail: str) -> Notice:
    head = f"Sorry, I could not set up your VPN: {reason}. {tail}"
    return Notice(f"{head} You can try /vpn start again.", head)


# ----- who stopped it -----------------------------------------------------------------------------

STOPPED_BY_OWNER = "stopped by you"
TIME_IS_UP = "time is up"


def stopped_by_admin(label: str) -> str:
    return f"stopped by an admin ({label})"


# ----- approvals (bot/engine/approvals.py) ---------------------------------------------------------

ACCESS_WITHDRAWN = "your access was withdrawn: you are no longer on the allowlist or in an allowed group"


def no_decision(minutes: int) -> str:
    return f"no approver decided within {format_minutes(minutes * 60)}"


def denied_by(label: str, reason: str) -> str:
    return f"denied by {label}" + (f": {reason}" if reason else "")


def withdrawn_by_owner() -> str:
    return "withdrawn by you"


def _request_facts(s: Session) -> list[tuple[str, str]]:
    facts = [("Session", s.id), ("Requested by", s.owner_label), ("Length", format_minutes(s.minutes * 60)), ("Region", s.region)]
    if s.reason:
        facts.append(("Reason", s.reason))
    if s.decide_by is not None:
        facts.append(("Decide by", _hm(s.decide_by)))
    return facts


def approval_request(s: Session) -> Card:
    """The card each approver gets privately; its buttons send the commands back (authorised like typed text)."""
    return Card(
        title="VPN access request",
        lines=(f"{s.owner_label} asks for a VPN session. Approve it, or deny it (/vpn deny {s.id} <reason> gives a reason).",),
        facts=_request_facts(s),
        actions=(Action("Approve", f"/vpn approve {s.id}"), Action("Deny", f"/vpn deny {s.id}")),
    )


def _outcome(s: Session) -> str:
    if s.state is SessionState.DENIED:
        return f"Not granted: {s.end_reason}." if s.end_reason else "Not granted."
    granted = format_minutes(s.minutes * 60)
    return f"Approved by {s.decided_by} for {granted}."


def approval_closed(s: Session) -> Card:
    """What every approver's card becomes once the request is decided, timed out or withdrawn."""
    title = "VPN access request: approved" if s.state is not SessionState.DENIED else "VPN access request: closed"
    return Card(title=title, lines=(_outcome(s),), facts=_request_facts(s)[:4])


def approval_closed_text(s: Session) -> Notice:
    """For an approver whose channel cannot update a card in place."""
    return plain(f"VPN request {s.id} of {s.owner_label}: {_outcome(s)}")


def approved(s: Session) -> Notice:
    return plain(f"Your VPN request {s.id} was approved by {s.decided_by} for {format_minutes(s.minutes * 60)}; setting it up now.")


def request_closed(s: Session) -> Notice:
    """To the requester: denied, timed out, withdrawn or revoked (`end_reason` says which)."""
    head = f"Your VPN request {s.id} was not granted ({s.end_reason})."
    return Notice(f"{head} Use /vpn start to ask again.", head)


# ----- live traffic and usage limits (bot/engine/traffic.py) -----------------------------------------

CONNECTED_WITHIN = 180  # seconds: WireGuard hands shake every two minutes while a tunnel is in use


def megabytes(n: int) -> str:
    """12.4 MB: traffic as people read it (decimal units, as WireGuard apps show it)."""
    if n >= 10**9:
        return f"{n / 10**9:.2f} GB"
    return f"{n / 10**6:.1f} MB"


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 90:
        return f"{seconds} s"
    return format_minutes(seconds)


def traffic_line(s: Session, now: datetime) -> str:
    """'connected — handshake 20 s ago, ↓ 12.4 MB ↑ 3.1 MB', or 'not connected yet'; "" before ready."""
    if s.state is not SessionState.READY:
        return ""
    if s.handshake_at is None:
        return "not connected yet"
    ago = (now - s.handshake_at).total_seconds()
    head = f"connected — handshake {_ago(ago)} ago" if ago <= CONNECTED_WITHIN else f"not connected now — last handshake {_ago(ago)} ago"
    return f"{head}, ↓ {megabytes(s.bytes_in)} ↑ {megabytes(s.bytes_out)}"


def unused_for(minutes: int) -> str:
    return f"unused for {format_minutes(minutes * 60)}"


def over_cap(max_mb: int) -> str:
    return f"past its traffic limit of {max_mb} MB"


def unused_soon(session_id: str, seconds_left: float, idle_minutes: int) -> Notice:
    head = (f"Your VPN session {session_id} has not been used (no tunnel handshake) for a while: it ends in "
            f"{format_minutes(seconds_left)}, once unused for {format_minutes(idle_minutes * 60)}, unless your device connects.")
    return plain(head)


# ----- notifications to admins' chats (bot/engine/notify.py) ------------------------------------------

def event_text(e: dict[str, Any]) -> str:
    """One line per event, from its public facts only (never a key, config or token)."""
    s = e.get("session") or {}
    who, sid, kind = s.get("owner_label") or s.get("owner") or "someone", s.get("id", "?"), e.get("type")
    length = format_minutes(int(s.get("minutes") or 0) * 60)
    if kind == "requested":
        waiting = " — awaiting approval" if e.get("awaiting_approval") else ""
        why = f" ({e['request_reason']})" if e.get("request_reason") else ""
        return f"VPN: {who} requested session {sid} ({length}, {s.get('region')}){why}{waiting}."
    if kind == "approved":
        return f"VPN: {e.get('decided_by') or 'an approver'} approved session {sid} of {who} ({length})."
    if kind == "denied":
        return f"VPN: session {sid} of {who} was not granted ({e.get('reason') or 'denied'})."
    if kind == "ready":
        return f"VPN: session {sid} of {who} is ready ({s.get('provider')} / {s.get('region')}, {length})."
    if kind == "ended":
        return (f"VPN: session {sid} of {who} ended ({e.get('end_reason')}: {e.get('reason')}) after "
                f"{format_minutes(float(e.get('minutes_used') or 0) * 60)}, {format_cost(float(e.get('cost') or 0))}.")
    if kind == "failed":
        return f"VPN: session {sid} of {who} failed: {e.get('reason')}."
    if kind == "cleanup_stuck":
        return (f"VPN: session {sid} of {who} could not be cleaned up after {e.get('attempts', 'several')} tries; its cloud resources may "
                "still be billed. The sweeper keeps trying; reconcile removes what no session owns.")
    return f"VPN: {kind} for session {sid} of {who}."
