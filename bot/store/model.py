"""One VPN session and the states it moves through.

requested -> provisioning -> ready -> expiring -> deleted, and failed from any step before ready.
A session in `expiring` still holds cloud resources: it counts against caps until it is `deleted`.
Where approval is needed a session starts in `awaiting_approval` (nothing made, no key): an approval
moves it to `requested`, a denial, a timeout or a withdrawal to `denied` (terminal, with its reason).

Several processes may work on one store: every write is a compare-and-set on `version` (the store
sets it; a stale write raises `Conflict`), and whoever works on a session (provisioning, teardown)
holds a lease (`lease_owner` until `lease_expires_at`) that others may take over only once expired.
"""
from __future__ import annotations

import dataclasses
import enum
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from bot.messages import ConversationRef


class SessionState(str, enum.Enum):
    REQUESTED = "requested"
    PROVISIONING = "provisioning"
    READY = "ready"
    EXPIRING = "expiring"
    DELETED = "deleted"
    FAILED = "failed"
    AWAITING_APPROVAL = "awaiting_approval"
    DENIED = "denied"


ALLOWED = {
    SessionState.REQUESTED: {SessionState.PROVISIONING, SessionState.EXPIRING, SessionState.FAILED},
    SessionState.PROVISIONING: {SessionState.PROVISIONING, SessionState.READY, SessionState.EXPIRING, SessionState.FAILED},
    SessionState.READY: {SessionState.EXPIRING},
    SessionState.EXPIRING: {SessionState.DELETED},
    SessionState.DELETED: set(),
    SessionState.FAILED: set(),
    SessionState.AWAITING_APPROVAL: {SessionState.REQUESTED, SessionState.DENIED},
    SessionState.DENIED: set(),
}
# Holding (or about to hold) resources: these count against the caps and are reconciled. A request
# awaiting approval holds its place under the caps, so an approval never finds them full.
ACTIVE_STATES = (SessionState.REQUESTED, SessionState.PROVISIONING, SessionState.READY, SessionState.EXPIRING, SessionState.AWAITING_APPROVAL)
IN_FLIGHT_STATES = (SessionState.REQUESTED, SessionState.PROVISIONING)
TERMINAL_STATES = (SessionState.DELETED, SessionState.FAILED, SessionState.DENIED)


class InvalidTransition(RuntimeError):
    pass


class Conflict(RuntimeError):
    """The stored session changed (or vanished) since it was read: re-read and decide again."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_session_id() -> str:
    """Short enough to type in `/vpn stop <id>`, 40 random bits so ids never collide in practice."""
    return secrets.token_hex(5)


@dataclass(frozen=True)
class Session:
    id: str
    owner: str  # UserKey as text
    owner_label: str  # verified email or the key: what admins see
    conversation: ConversationRef
    state: SessionState
    provider: str
    region: str
    created_at: datetime
    expires_at: datetime
    minutes: int
    updated_at: datetime
    ready_at: datetime | None = None
    ended_at: datetime | None = None
    endpoint: str = ""
    resource_id: str = ""
    client_address: str = ""
    client_public_key: str = ""
    hourly_cost: float = 0.0
    warned: bool = False
    attempts: int = 0
    error: str = ""
    progress_handle: str = ""
    message_id: str = ""
    server_size: str = ""  # the VM size where the provider has one
    own_key: bool = False  # the user brought their key pair: nothing secret to deliver
    # SHA-256 (hex) of the one-time token in the server's "tunnel up" callback URL; the token itself
    # is only in the VM's boot config. Any replica verifies a callback against it.
    ready_token_hash: str = ""
    server_up_at: datetime | None = None  # when that callback arrived (on whichever replica)
    lease_owner: str = ""  # the worker provisioning or tearing it down; empty when nobody works on it
    lease_expires_at: datetime | None = None  # after this, another worker may take the work over
    end_reason: str = ""  # why it is ending ("stopped by you"), or why it was denied: told by whoever finishes it
    # Governance (docs/governance.md): what the person's policy allowed when they asked, and the approval.
    reason: str = ""  # the requester's reason (`reason=…`), shown to approvers
    max_minutes: int = 0  # this session's longest run from ready, extensions included (0: VPN_MAX_SESSION_MINUTES)
    allowed_ips: str = ""  # the split-tunnel profile of the person's policy ("": WG_ALLOWED_IPS)
    approvers: str = ""  # the approver rules that apply (VPN_USERS syntax), kept with the request
    asked: str = ""  # who was sent the request privately (labels, comma-separated)
    decide_by: datetime | None = None  # undecided by then: denied by whichever sweeper (or reap) gets there first
    decided_by: str = ""  # the approver's label (or the requester's, for a withdrawal); "" for a timeout
    decided_at: datetime | None = None
    approval_cards: str = ""  # JSON: where each approver's card went, so every one of them is updated once decided
    # Usage (issue 23; bot/engine/usage.py): how it ended, and its tunnel's traffic as last measured.
    ending: str = ""  # stopped, expired, idle, cap, revoked, failed, denied (END_KINDS): the usage record's end reason
    handshake_at: datetime | None = None  # the tunnel's latest handshake (None: never connected)
    bytes_in: int = 0  # to the user (↓) so far
    bytes_out: int = 0  # from the user (↑) so far
    traffic_at: datetime | None = None  # when the figures above were measured
    idle_warned: bool = False  # told it ends soon for want of use (VPN_IDLE_MINUTES)
    # The store's own note of the cap slots this session holds (Table Storage: their keys and ETags, so an
    # ending deletes them by key without reading them first; "" where a store keeps none). Engine code never reads it.
    held_slots: str = ""
    # When a sweeper must next look at it (bot/engine/schedule.py sets it on every write; None once it
    # ended). The stores index it, so a sweep reads what is due, never every live session (issue 25).
    due_at: datetime | None = None
    # Set by the store on every read and write (a counter in SQLite, the ETag in Table Storage);
    # never stored as a field of its own. A save whose version is stale raises Conflict.
    version: str = ""
    # Also set by the store: `due_at` as it was stored (Table Storage drops that index entry once the session ends).
    stored_due_at: datetime | None = None

    def moved(self, state: SessionState, now: datetime, **changes: Any) -> "Session":
        """This session in a new state; refuses moves the state machine does not allow."""
        if state not in ALLOWED[self.state]:
            raise InvalidTransition(f"session {self.id}: {self.state.value} -> {state.value}")
        return dataclasses.replace(self, state=state, updated_at=now, **changes)

    def with_changes(self, now: datetime, **changes: Any) -> "Session":
        return dataclasses.replace(self, updated_at=now, **changes)

    def leased_by_other(self, worker_id: str, now: datetime) -> bool:
        """True while another worker holds an unexpired lease: hands off."""
        return bool(self.lease_owner) and self.lease_owner != worker_id and self.lease_expires_at is not None and now < self.lease_expires_at

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES

    def time_left(self, now: datetime) -> float:
        return max(0.0, (self.expires_at - now).total_seconds())

    def cost_so_far(self, now: datetime) -> float:
        """Estimated spend from creation to end (or now), at the provider's hourly rate."""
        end = self.ended_at or now
        hours = max(0.0, (end - self.created_at).total_seconds() / 3600)
        return hours * self.hourly_cost

    @property
    def tunnel_name(self) -> str:
        """The .conf file name stem; WireGuard apps show it as the tunnel name (max 15 chars)."""
        return f"vpn-{self.id}"[:15]
