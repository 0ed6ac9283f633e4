"""One VPN session and the states it moves through.

requested -> provisioning -> ready -> expiring -> deleted, and failed from any step before ready.
A session in `expiring` still holds cloud resources: it counts against caps until it is `deleted`.
"""
from __future__ import annotations

import dataclasses
import enum
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from bot.messages import ConversationRef


class SessionState(str, enum.Enum):
    REQUESTED = "requested"
    PROVISIONING = "provisioning"
    READY = "ready"
    EXPIRING = "expiring"
    DELETED = "deleted"
    FAILED = "failed"


ALLOWED = {
    SessionState.REQUESTED: {SessionState.PROVISIONING, SessionState.EXPIRING, SessionState.FAILED},
    SessionState.PROVISIONING: {SessionState.PROVISIONING, SessionState.READY, SessionState.EXPIRING, SessionState.FAILED},
    SessionState.READY: {SessionState.EXPIRING},
    SessionState.EXPIRING: {SessionState.DELETED},
    SessionState.DELETED: set(),
    SessionState.FAILED: set(),
}
# Holding (or about to hold) resources: these count against the caps and are reconciled.
ACTIVE_STATES = (SessionState.REQUESTED, SessionState.PROVISIONING, SessionState.READY, SessionState.EXPIRING)
IN_FLIGHT_STATES = (SessionState.REQUESTED, SessionState.PROVISIONING)


class InvalidTransition(RuntimeError):
    pass


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
    worker_id: str = ""
    progress_handle: str = ""
    message_id: str = ""
    server_size: str = ""  # the VM size where the provider has one
    own_key: bool = False  # the user brought their key pair: nothing secret to deliver
    # SHA-256 (hex) of the one-time token in the server's "tunnel up" callback URL; the token itself
    # is only in the VM's boot config. Any replica verifies a callback against it.
    ready_token_hash: str = ""
    server_up_at: datetime | None = None  # when that callback arrived (on whichever replica)

    def moved(self, state: SessionState, now: datetime, **changes) -> "Session":
        """This session in a new state; refuses moves the state machine does not allow."""
        if state not in ALLOWED[self.state]:
            raise InvalidTransition(f"session {self.id}: {self.state.value} -> {state.value}")
        return dataclasses.replace(self, state=state, updated_at=now, **changes)

    def with_changes(self, now: datetime, **changes) -> "Session":
        return dataclasses.replace(self, updated_at=now, **changes)

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
