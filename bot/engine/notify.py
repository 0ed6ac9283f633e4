"""Notifications (issue 23): what happened, told to the admins' chats and webhooks, once per target.

Events: requested (and awaiting approval), approved, denied, ready, ended (reason, minutes, cost),
failed, cleanup stuck. Emitting one writes an item per target into the store's outbox
(`NotificationStore`), keyed by (event id, target) and inserted only if absent: an event id is the
session's id and the event's type, so two workers emitting it (a teardown taken over) make one item.
Delivery is the sweeper's (every replica's, and `reap`'s): an item is claimed under a lease by
compare-and-set, sent, and marked delivered by compare-and-set; a failure is retried with back-off
(5 s doubling to an hour) up to `max_attempts`; a worker that dies holding a lease leaves the item to
the next one once the lease expires, and a send is cut at two thirds of the lease, so no other worker
takes an item over while it is still being sent. A receiver gets the same `X-VPN-Event-Id` on every
attempt, so the one duplicate a crash can cause (between the receiver's answer and the store's write)
is one it can drop; a chat has no such id, so there the same line can show twice (a crash, or a send
cut or unanswered after the platform took it). No key, config or token is ever in an event: its facts
are the session's public ones.

Targets: `https://…` webhooks (the body signed with HMAC-SHA256, VPN_NOTIFY_SECRET; docs/usage.md),
`teams:<conversation id>` (sent to VPN_NOTIFY_TEAMS_URL, the global service URL by default) and
`groupme:<group id>` (through that group's bot), and any chat an admin registered with `/vpn notify
here` (with its own service URL). A chat item is sent only while its chat is registered (read afresh
each pass that has chat items) or named in VPN_NOTIFY: `/vpn notify off` also stops what was queued.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Protocol

from bot.engine import notices
from bot.engine.usage import usage_record
from bot.messages import ConversationRef
from bot.replies import Outbox
from bot.store.model import Conflict, Session
from bot.store.ports import Notification, NotificationStore

log = logging.getLogger(__name__)

EVENTS = ("requested", "approved", "denied", "ready", "ended", "failed", "cleanup_stuck")
SIGNATURE, TIMESTAMP, EVENT_ID, EVENT = "X-VPN-Signature", "X-VPN-Timestamp", "X-VPN-Event-Id", "X-VPN-Event"
FIRST_RETRY = 5.0  # seconds; doubled every attempt
LONGEST_WAIT = 3600.0
SEND_SHARE_OF_LEASE = 2 / 3  # of VPN_LEASE_SECONDS one delivery may take: the rest is margin for clocks and the store write
DELIVER_AT_ONCE = 8
TARGETS_CACHE = timedelta(seconds=30)  # registered chats: another replica's /vpn notify here counts within this
# Bot Framework's global service URL (Microsoft's commercial cloud), for a teams:<id> in VPN_NOTIFY; VPN_NOTIFY_TEAMS_URL changes it.
TEAMS_SERVICE_URL = "https://smba.trafficmanager.net/teams/"
NOT_A_TARGET = "not a target here (no chat registered it, and it is not in this process's VPN_NOTIFY)"


class WebhookPost(Protocol):
    """POSTs a body and returns the status code (bot/http/webhooks.py: aiohttp, which the engine never imports)."""

    async def __call__(self, url: str, body: bytes, headers: dict[str, str]) -> int: ...


@dataclass(frozen=True)
class NotifyConfig:
    """VPN_NOTIFY and VPN_NOTIFY_SECRET (read by bot/settings/notify.py)."""

    targets: tuple[str, ...] = ()
    secret: str = field(default="", repr=False)
    max_attempts: int = 10
    teams_url: str = TEAMS_SERVICE_URL  # where a teams:<id> in `targets` is sent (a registered chat brings its own)


def sign(secret: str, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 of the exact body bytes, keyed with VPN_NOTIFY_SECRET."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def target_of(conv: ConversationRef) -> str:
    """The target name `/vpn notify here` gives a conversation: `<channel>:<its id>`."""
    data = conv.data
    ref = data.get("reference")
    ref = ref if isinstance(ref, dict) else {}
    conversation = ref.get("conversation")
    conversation = conversation if isinstance(conversation, dict) else {}
    ident = conversation.get("id") or data.get("group_id") or data.get("conversation") or data.get("user") or ""
    return f"{conv.channel}:{ident}" if ident else conv.channel


def _event(kind: str, s: Session, now: datetime, **facts: Any) -> dict[str, Any]:
    """The event's public facts (what admins see of a session in /vpn list, and why)."""
    body: dict[str, Any] = {
        "id": f"{s.id}.{kind}", "type": kind, "at": now.isoformat().replace("+00:00", "Z"),
        "session": {"id": s.id, "owner": s.owner, "owner_label": s.owner_label, "channel": s.conversation.channel, "provider": s.provider,
                    "region": s.region, "minutes": s.minutes, "state": s.state.value},
    }
    if s.reason:
        body["request_reason"] = s.reason
    if s.decided_by:
        body["decided_by"] = s.decided_by
    if kind == "ended":
        r = usage_record(s, s.ended_at or now)
        body.update(end_reason=r.end_reason, reason=r.detail, minutes_used=round(r.minutes, 1), cost=round(r.cost, 4),
                    bytes_in=r.bytes_in, bytes_out=r.bytes_out)
    elif kind in ("denied", "failed"):
        body["reason"] = s.end_reason if kind == "denied" else s.error
    body.update(facts)
    return body


class Notifier:
    def __init__(
        self, store: NotificationStore, outbox: Outbox, clock: Callable[[], datetime], worker_id: str, config: NotifyConfig,
        webhook: WebhookPost | None, lease_seconds: float,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.clock = clock
        self.worker_id = worker_id
        self.config = config
        self.webhook = webhook
        self.lease = timedelta(seconds=lease_seconds)
        self.wake: Callable[[], None] = lambda: None  # the sweeper's, set by the service: deliver soon
        self._registered: tuple[datetime, dict[str, ConversationRef]] | None = None

    # ----- targets --------------------------------------------------------------------------------

    async def registered(self, *, fresh: bool = False) -> dict[str, ConversationRef]:
        now = self.clock()
        if fresh or self._registered is None or not timedelta(0) <= now - self._registered[0] < TARGETS_CACHE:
            self._registered = (now, await self.store.notify_targets())
        return self._registered[1]

    async def register(self, conv: ConversationRef) -> str:
        target = target_of(conv)
        await self.store.put_notify_target(target, conv)
        self._registered = None
        return target

    async def unregister(self, conv: ConversationRef) -> bool:
        gone = await self.store.delete_notify_target(target_of(conv))
        self._registered = None
        return gone

    # ----- emitting -------------------------------------------------------------------------------

    async def emit(self, kind: str, s: Session, **facts: Any) -> None:
        """Into the outbox, once per target. Raises what the store raises: a caller that can retry (a
        teardown) lets it; the others use `emit_quietly`."""
        targets = sorted(set(self.config.targets) | set(await self.registered()))
        if not targets:
            return
        now = self.clock()
        event = _event(kind, s, now, **facts)
        payload = json.dumps(event, sort_keys=True)
        added = await self.store.enqueue([Notification(event["id"], t, payload, now, now) for t in targets])
        if added:
            self.wake()

    async def has_targets(self) -> bool:
        """Whether an event would go anywhere (configured or registered targets; the registered ones cached)."""
        return bool(self.config.targets) or bool(await self.registered())

    async def emit_quietly(self, kind: str, s: Session, **facts: Any) -> None:
        try:
            await self.emit(kind, s, **facts)
        except Exception:
            log.exception("session %s: the %s notification could not be queued", s.id, kind)

    # ----- delivering -----------------------------------------------------------------------------

    async def deliver_due(self) -> datetime | None:
        """Send what is due: each target's items in the order they happened, a few targets at once; returns
        when the next pending item falls due."""
        if not self.config.targets and not await self.registered():
            return None  # nothing to tell anyone: one cached look every TARGETS_CACHE, not two queries a sweep
        now = self.clock()
        items = [n for n in await self.store.due_notifications(now) if not self._leased_by_other(n, now)]
        if items:
            # Chats as registered now, not as cached: one registered on another replica since, or unregistered (/vpn notify off).
            registered = await self.registered(fresh=any(_is_chat(n.target) for n in items))
            gate = asyncio.Semaphore(DELIVER_AT_ONCE)
            by_target: dict[str, list[Notification]] = {}
            for n in sorted(items, key=_order):
                by_target.setdefault(n.target, []).append(n)

            async def one_target(queue: list[Notification]) -> None:
                async with gate:
                    for n in queue:
                        try:
                            await self._deliver(n, registered)
                        except Exception:
                            log.exception("notification %s: delivery failed; the next sweep tries again", n.event_id)

            await asyncio.gather(*(one_target(q) for q in by_target.values()))
        return await self.store.next_notification_due()

    def _leased_by_other(self, n: Notification, now: datetime) -> bool:
        return bool(n.lease_owner) and n.lease_owner != self.worker_id and n.lease_expires_at is not None and now < n.lease_expires_at

    async def _deliver(self, n: Notification, registered: dict[str, ConversationRef]) -> None:
        now = self.clock()
        try:  # claim: one worker sends it, whoever wins the compare-and-set
            n = await self.store.save_notification(dataclasses.replace(n, lease_owner=self.worker_id, lease_expires_at=now + self.lease,
                                                                       attempts=n.attempts + 1))
        except Conflict:
            return
        try:  # a send never outlives its lease: past it, another worker would send the same item again
            async with asyncio.timeout(self.lease.total_seconds() * SEND_SHARE_OF_LEASE):
                error = await self._send(n, registered)
        except TimeoutError:
            error = "no answer in time"
        now = self.clock()
        if error is None:
            done = dataclasses.replace(n, state="delivered", delivered_at=now, lease_owner="", lease_expires_at=None, last_error="")
        elif n.attempts >= self.config.max_attempts:
            log.error("notification %s to %s: gave up after %d attempts (%s)", n.event_id, _safe(n.target), n.attempts, error)
            done = dataclasses.replace(n, state="failed", lease_owner="", lease_expires_at=None, last_error=error)
        else:
            wait = min(LONGEST_WAIT, FIRST_RETRY * 2 ** (n.attempts - 1))
            log.warning("notification %s to %s failed (%s); trying again in %.0f s", n.event_id, _safe(n.target), error, wait)
            done = dataclasses.replace(n, due_at=now + timedelta(seconds=wait), lease_owner="", lease_expires_at=None, last_error=error)
        try:
            await self.store.save_notification(done)
        except Conflict:
            log.warning("notification %s: taken over while it was being sent", n.event_id)

    async def _send(self, n: Notification, registered: dict[str, ConversationRef]) -> str | None:
        """None when delivered, else what went wrong (a status or an exception's type: nothing from a body)."""
        event = json.loads(n.payload)
        if n.target.startswith(("https://", "http://")):
            if self.webhook is None:
                return "no HTTP client in this process"
            stamp = int(time.time())
            body = json.dumps({**event, "timestamp": stamp}, sort_keys=True).encode()
            headers = {"Content-Type": "application/json", EVENT: event["type"], EVENT_ID: event["id"], TIMESTAMP: str(stamp),
                       SIGNATURE: sign(self.config.secret, body), "User-Agent": "vpn-bot"}
            try:
                status = await self.webhook(n.target, body, headers)
            except Exception as exc:
                return type(exc).__name__
            return None if 200 <= status < 300 else f"HTTP {status}"
        # A chat: as registered (its own service URL), else as VPN_NOTIFY names it; a chat that is neither was
        # unregistered with /vpn notify off after this item was queued (or this replica runs an older VPN_NOTIFY).
        conv = registered.get(n.target) or (_conversation(n.target, self.config.teams_url) if n.target in self.config.targets else None)
        if conv is None:
            return NOT_A_TARGET
        return None if await self.outbox.text(conv, notices.event_text(event)) else f"the {conv.channel} channel could not send"


def _order(n: Notification) -> tuple[datetime, int, str]:
    """When it happened; events of one instant in the order a session lives them."""
    kind = n.event_id.rsplit(".", 1)[-1]
    return n.created_at, EVENTS.index(kind) if kind in EVENTS else len(EVENTS), n.event_id


def _is_chat(target: str) -> bool:
    return not target.startswith(("https://", "http://"))


def _conversation(target: str, teams_url: str) -> ConversationRef | None:
    """A chat target from VPN_NOTIFY: GroupMe by its group id; Teams by its conversation id at `teams_url` (the global
    service URL unless VPN_NOTIFY_TEAMS_URL says otherwise: a teams:<id> target carries no service URL of its own)."""
    channel, _, ident = target.partition(":")
    if channel == "groupme" and ident:
        return ConversationRef("groupme", {"group_id": ident})
    if channel == "teams" and ident:
        return ConversationRef("teams", {"reference": {"serviceUrl": teams_url, "channelId": "msteams", "conversation": {"id": ident}},
                                         "conversation_type": "channel"})
    return None


def _safe(target: str) -> str:
    """A target for the log: a webhook's scheme and host only (its path or query may carry a token)."""
    if "://" in target:
        scheme, rest = target.split("://", 1)
        return f"{scheme}://{rest.split('/', 1)[0].split('?', 1)[0]}/…"
    return target

