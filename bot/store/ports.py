"""The store's ports, one per concern (sessions, one-time configs, accounts, audit, progress, addresses,
de-duplication, workers), and their values. SQLite is the embedded back end,
Azure Table Storage (bot/store/tables.py) the shared one; tests/store/test_contract.py is the contract both pass.

Every session write is a compare-and-set: `save` raises `Conflict` when the stored session is no
longer the version that was read (or is gone), and returns the session with its new version. Caps,
message-id de-duplication, claims and address reservations are atomic in the store, never in memory,
so any number of processes may share one store.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import AsyncIterator, Mapping, Protocol, Sequence

from bot.messages import ConversationRef
from bot.one_time_configs import Claim
from bot.store.model import Conflict, Session, SessionState

__all__ = [
    "AccountStore", "AddressStore", "AuditEntry", "AuditStore", "Conflict", "Contact", "ContactStore", "CreateOutcome", "DedupeStore", "LocalUser",
    "OneTimeConfigStore", "ProgressStore", "RetentionStore", "SessionReader", "SessionStore", "Store", "StoreLifecycle", "UsageRecord", "UsageStore",
    "Notification", "NotificationStore", "Worker", "WorkerStore", "NOTIFICATION_MEMORY", "AUDIT_RETENTION", "END_KINDS", "SIGN_IN_MEMORY", "USAGE_RETENTION",
]

AUDIT_RETENTION = timedelta(days=400)  # VPN_AUDIT_RETENTION_DAYS's default
USAGE_RETENTION = timedelta(days=400)  # VPN_USAGE_RETENTION_DAYS's default
NOTIFICATION_MEMORY = timedelta(days=7)  # delivered (or given up) notifications are forgotten after this
SIGN_IN_MEMORY = timedelta(days=30)  # how long a successful sign-in's address is remembered (bot/channels/web/signin_local.py)


class CreateOutcome(str, enum.Enum):
    CREATED = "created"
    USER_LIMIT = "user_limit"
    GLOBAL_LIMIT = "global_limit"


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    user: str
    email: str
    channel: str
    command: str
    allowed: bool
    reason: str
    count: int = 1  # a refusal row counts the refusals of one identity and reason in its hour (at: the first)


# How a session ended, as a usage record says (its owner was told the sentence in `detail`).
END_KINDS = ("stopped", "expired", "idle", "cap", "revoked", "failed", "denied")


@dataclass(frozen=True)
class UsageRecord:
    """One session, written once it ended (any ending) and kept VPN_USAGE_RETENTION_DAYS: what reports read.

    Traffic is from the user's side: `bytes_in` reached the user (download, ↓), `bytes_out` came from them (↑).
    `minutes` is the time in use (ready to end, 0 when it never was); `cost` the estimated spend
    (request to end at the provider's hourly rate; 0 for a request never granted: nothing was made)."""

    session_id: str
    owner: str  # UserKey as text
    owner_label: str  # verified email or the key
    channel: str
    provider: str
    region: str
    requested_at: datetime  # the session's creation: its month is the record's partition, so a rewrite lands on the same row
    ready_at: datetime | None
    ended_at: datetime
    minutes: float
    cost: float
    bytes_in: int
    bytes_out: int
    end_reason: str  # one of END_KINDS
    detail: str = ""  # the sentence its owner was told ("stopped by you", "time is up", …)
    decided_by: str = ""  # approval facts, where there were any: who approved (or denied) it, and when
    decided_at: datetime | None = None
    approvers: str = ""
    request_reason: str = ""  # the requester's reason for the approvers


@dataclass(frozen=True)
class Notification:
    """One event for one target, in the store's outbox (bot/engine/notify.py): inserted once per
    (event, target) however many workers emit the event, claimed under a lease, marked delivered by
    compare-and-set. Holds no key, config or token: the event's facts only."""

    event_id: str  # e.g. "<session id>.ended": the same on every replica
    target: str  # "https://…", "teams:<conversation id>", "groupme:<group id>"
    payload: str  # the event as JSON
    created_at: datetime
    due_at: datetime  # the next attempt
    attempts: int = 0
    state: str = "pending"  # pending, delivered, failed (gave up)
    lease_owner: str = ""
    lease_expires_at: datetime | None = None
    delivered_at: datetime | None = None
    last_error: str = ""  # a status code or an exception's type: never a body
    version: str = ""  # set by the store (compare-and-set)

    @property
    def key(self) -> str:
        return f"{self.event_id}|{self.target}"


@dataclass(frozen=True)
class LocalUser:
    """A web account that signs in with a password; only the hash is ever stored."""

    email: str
    password_hash: str
    created_at: datetime


@dataclass(frozen=True)
class Worker:
    """A process that works on sessions; its records are informational (leases decide ownership)."""

    id: str
    host: str
    pid: int
    heartbeat_at: datetime


@dataclass(frozen=True)
class Contact:
    """Where one person can be reached privately: the engine keeps approvers' private chats, so a request
    reaches them on any replica (bot/engine/approvals.py)."""

    user: str  # UserKey as text
    label: str  # verified email or the key
    conversation: ConversationRef
    updated_at: datetime


class StoreLifecycle(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...


class SessionReader(Protocol):
    """Read-only sessions: what a channel needs to look up the session a config or card belongs to."""

    async def get(self, session_id: str) -> Session | None: ...
    async def sessions(self, states: Sequence[SessionState], owner: str | None = None) -> list[Session]: ...
    def each_session(self, states: Sequence[SessionState]) -> AsyncIterator[Session]:
        """Every session in `states`, one at a time, in no set order: for the fleet-wide turns that look at every
        live session and keep little of each (a list of 10,000 decoded sessions took a replica from 60 to 130 MB)."""
    async def ready_keys(self, now: datetime) -> dict[str, str]:
        """Session id -> client public key of every ready session not past its end: what the provider's
        traffic reading needs (two fields read per session, not all)."""
    async def live_counts(self) -> dict[tuple[str, str], int]:
        """How many live sessions per (state, provider): the metrics gauge (two fields read per session, not all)."""


class SessionStore(SessionReader, Protocol):
    """The session records; every write is a compare-and-set (the engine's leases build on it)."""

    async def create_session(self, session: Session, *, per_user: int, total: int) -> CreateOutcome:
        """Insert atomically if the owner and the service are under their caps (across processes)."""
    async def save(self, session: Session) -> Session:
        """Compare-and-set on `session.version`; returns the stored session (new version) or raises Conflict."""
    async def due_sessions(self, now: datetime, limit: int = 500) -> list[Session]:
        """Sessions whose `due_at` is at or before `now` (earliest first, at most `limit`), as stored now.
        What a sweep reads: its cost follows what is due, not how many sessions are live (issue 25)."""
    async def next_due(self, now: datetime, within: timedelta | None = None) -> datetime | None:
        """When the next session after `now` falls due; it may answer earlier than that, never later.
        `within`: only a time up to `now + within` matters (the sweeper looks again by then anyway), so a
        store may answer None for anything later: Table Storage then reads a few minutes of the index, not all of it."""
    async def live_ids(self) -> set[str]:
        """The ids of every session that may hold resources: a superset of the live ones, read cheaply
        (Table Storage: the due index's keys, not the sessions). For reconcile: an id not in it is confirmed with `get`."""
    async def check_due_index(self, now: datetime, live: Mapping[str, datetime | None]) -> int:
        """Make every live session (`live`: the caller's listing of them, id -> due time) findable by `due_sessions`
        (a store whose index can drift repairs it here: for a fleet-wide turn now and then); returns how many were repaired."""


class WorkerStore(Protocol):
    """Which processes work on sessions (informational: leases decide ownership), and which deployment this is."""

    async def heartbeat(self, worker: Worker) -> None: ...
    async def workers(self) -> list[Worker]: ...
    async def deployment_id(self) -> str:
        """A random id made once per store and kept (get-or-create, atomic): which cloud resources are this deployment's."""
    async def take_turn(self, job: str, holder: str, now: datetime, every: timedelta, mark: str = "") -> bool:
        """Whether `holder` runs `job` now: True for one caller per `every` across every process sharing the
        store (or at once when `mark` differs from the last turn's), by compare-and-set on the job's next time."""


class DedupeStore(Protocol):
    async def first_seen(self, channel: str, message_id: str, now: datetime) -> bool:
        """True the first time a (channel, message id) is seen; False for a platform's re-send."""


class AuditStore(Protocol):
    async def audit(self, entry: AuditEntry) -> None:
        """Record a decision. A refusal (allowed=False) is counted on one row per identity, reason and
        hour (the first refusal's details, and `count`), not written row by row."""
    async def audit_log(
        self, limit: int = 100, *, since: datetime | None = None, until: datetime | None = None, user: str | None = None
    ) -> list[AuditEntry]:
        """The newest entries first; only those at or after `since`, before `until`, of `user` (its key or email) where given.
        Table Storage reads only the days in the range (one partition per day)."""


class NotificationStore(Protocol):
    """The notification outbox, and the chats an admin registered with `/vpn notify here`."""

    async def enqueue(self, items: Sequence[Notification]) -> int:
        """Insert each item unless its (event, target) is there already (any state); returns how many were new."""
    async def due_notifications(self, now: datetime, limit: int = 100) -> list[Notification]:
        """Pending items due at `now` or before, oldest first (leased ones included: the caller skips those)."""
    async def next_notification_due(self) -> datetime | None:
        """When the earliest pending item falls due (None: nothing pending)."""
    async def save_notification(self, item: Notification) -> Notification:
        """Compare-and-set on `item.version`; returns it with its new version or raises Conflict."""
    async def notifications(self, event_id: str | None = None) -> list[Notification]:
        """Every item (of one event), oldest first: for admins and tests."""
    async def put_notify_target(self, target: str, conversation: ConversationRef) -> None: ...
    async def delete_notify_target(self, target: str) -> bool: ...
    async def notify_targets(self) -> dict[str, ConversationRef]: ...


class UsageStore(Protocol):
    """A usage record per ended session (bot/engine/usage.py), for reports; kept VPN_USAGE_RETENTION_DAYS."""

    async def put_usage(self, record: UsageRecord) -> None:
        """Insert or replace the record of `record.session_id`: writing it twice (a teardown taken over) leaves one row."""
    async def usage(self, since: datetime, until: datetime, user: str | None = None) -> list[UsageRecord]:
        """Sessions requested at or after `since` and before `until` (of `user`, its key or label, where given), oldest first.
        Table Storage reads one partition per month in the range."""


class OneTimeConfigStore(Protocol):
    """Sealed configs held for their owner (bot/one_time_configs.py): taken once, erased at the session's end."""

    async def add_claim(self, claim: Claim) -> None: ...
    async def get_claim(self, token_hash: str) -> Claim | None: ...
    async def consume_claim(self, token_hash: str, now: datetime) -> Claim | None:
        """Mark a ready claim used and erase its sealed config, once; returns it as it was, else None."""
    async def purge_claims(self, now: datetime, session_id: str | None = None) -> None: ...


class AddressStore(Protocol):
    """Tunnel addresses, one holder each across every process sharing the store."""

    async def reserve_address(self, scope: str, address: str, session_id: str, now: datetime) -> str:
        """Insert-if-absent: the session id holding `address` in `scope` afterwards (ours if we won it)."""
    async def release_address(self, scope: str, address: str, holder: str) -> None:
        """Delete the reservation if `holder` still holds it (a stale one, of an ended session)."""
    async def release_addresses(self, session_id: str) -> None:
        """Release every address the session holds (it ended)."""


class AccountStore(Protocol):
    """Local web accounts and the sign-in attempt counters shared by every replica."""

    async def put_user(self, user: LocalUser) -> None:
        """Insert or replace the account with this email."""
    async def get_user(self, email: str) -> LocalUser | None: ...
    async def delete_user(self, email: str) -> bool: ...
    async def list_users(self) -> list[LocalUser]: ...
    async def take_attempt(self, key: str, now: datetime, window: timedelta, limit: int) -> bool:
        """Count one attempt on `key` in the fixed window holding `now` if fewer than `limit` are counted:
        True if counted; False (nothing written) when the window is used up. Never more than `limit`
        per window across replicas; a few tries at most (under a concurrent flood False may come while a
        slot is still free: a flood is what the limit is for)."""
    async def attempts(self, key: str, now: datetime, window: timedelta) -> int:
        """The attempts counted on `key` in the window holding `now`, without adding one."""
    async def clear_attempts(self, key: str, now: datetime, window: timedelta) -> None:
        """Forget the attempts counted on `key` in the window holding `now`."""
    async def remember_sign_in(self, account: str, address: str, now: datetime) -> None:
        """Note that `account` signed in from `address` (kept SIGN_IN_MEMORY)."""
    async def sign_in_addresses(self, account: str, since: datetime) -> frozenset[str]:
        """The addresses `account` signed in from at or after `since` (one keyed query)."""


class ProgressStore(Protocol):
    """Short per-request texts (the web page's progress line and notes), readable by any replica."""

    async def set_progress(self, key: str, text: str, now: datetime) -> None: ...
    async def get_progress(self, key: str) -> str: ...


class RetentionStore(Protocol):
    async def purge_expired(
        self, now: datetime, *, audit_retention: timedelta = AUDIT_RETENTION, usage_retention: timedelta = USAGE_RETENTION
    ) -> None:
        """Forget what has outlived its use: sign-in attempt counters of past windows, remembered sign-ins
        older than SIGN_IN_MEMORY, audit rows older than `audit_retention`, usage records of sessions requested
        before `usage_retention`. For the sweeper; it may skip a call that comes within 10 minutes of the last one in this process."""


class ContactStore(Protocol):
    """Approvers' private chats, one per person, readable by every replica."""

    async def put_contact(self, contact: Contact) -> None:
        """Insert or replace the contact of `contact.user`."""
    async def contacts(self) -> list[Contact]: ...


class Store(
    StoreLifecycle, SessionStore, WorkerStore, DedupeStore, AuditStore, OneTimeConfigStore, AddressStore, AccountStore, ProgressStore,
    RetentionStore, ContactStore, UsageStore, NotificationStore, Protocol
):
    """A whole back end (SQLite or Table Storage): one object implements every port; each caller is typed against the port it uses."""
