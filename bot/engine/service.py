"""The use cases: start, status, stop, extend, list, expire, resume and reconcile.

The one place that touches the store, the provider, the task runner and the outbox together. It
returns plain values and short texts; rendering for a channel happens in the command handlers.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import weakref
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import AsyncIterator, Awaitable, Callable, Sequence

from bot import metrics
from bot.messages import ConversationRef, Identity, UserKey
from bot.engine import ready_tokens
from bot.engine.config import SessionPolicy
from bot.replies import ConfigDelivery, DeliveryError, Outbox
from bot.store.model import (
    ACTIVE_STATES,
    IN_FLIGHT_STATES,
    TERMINAL_STATES,
    Conflict,
    Session,
    SessionState,
    new_session_id,
    utcnow,
)
from bot.store.ports import CreateOutcome, Store, Worker
from bot.engine.tasks import TaskRunner
from cards.qr import qr_png
from cards.text import format_minutes
from provisioner.base import CleanupIncomplete, Provider, ProvisionError, ServerSpec
from provisioner.wireguard import (
    DEFAULT_ALLOWED_IPS,
    ClientConfig,
    Secret,
    generate_keypair,
    generate_preshared_key,
    render_client_config,
)

log = logging.getLogger(__name__)
TEARDOWN_ATTEMPTS = 3
CLEANUP_PATIENCE = 5 * 60.0  # how long one teardown keeps retrying what the cloud still holds (a NIC: ~3 min)
CAS_ATTEMPTS = 100  # re-read and re-decide this often before giving up on a contended session
SWEEP_CONCURRENCY = 16  # sessions a sweep works on at once (a remote store's latency adds up otherwise)


async def _bounded(work: Sequence[Awaitable], limit: int) -> None:
    """Await all of `work`, at most `limit` at once; one failure is logged and does not stop the rest."""
    gate = asyncio.Semaphore(limit)

    async def one(aw: Awaitable) -> None:
        async with gate:
            try:
                await aw
            except Exception:
                log.exception("sweep: one session's work failed; the next sweep tries again")

    await asyncio.gather(*(one(aw) for aw in work))


class Refused(Exception):
    """A request the service turns down, with the sentence to say to the user."""


class LeaseLost(Exception):
    """The session is no longer ours to work on: another worker took it over, or it is ending."""

    def __init__(self, session: Session) -> None:
        super().__init__(f"session {session.id} is {session.state.value}, leased to {session.lease_owner or 'nobody'}")
        self.session = session


class _Holding:
    """What a lease-renewal loop found out, for the work it guards."""

    def __init__(self) -> None:
        self.lost: Session | None = None


def this_worker() -> Worker:
    host = socket.gethostname()
    return Worker(id=f"{host}:{os.getpid()}:{os.urandom(4).hex()}", host=host, pid=os.getpid(), heartbeat_at=utcnow())


def _render_delivery(session: Session, config_text: str, expires_note: str) -> ConfigDelivery:
    """CPU work (QR encoding and PNG compression): runs in a thread."""
    return ConfigDelivery(
        session_id=session.id,
        tunnel_name=session.tunnel_name,
        config=Secret(config_text),
        qr_png=qr_png(config_text),
        expires_note=expires_note,
    )


class VpnService:
    def __init__(
        self,
        store: Store,
        provider: Provider,
        runner: TaskRunner,
        outbox: Outbox,
        policy: SessionPolicy,
        *,
        clock: Callable[[], datetime] = utcnow,
        worker: Worker | None = None,
    ) -> None:
        self.store = store
        self.provider = provider
        self.runner = runner
        self.outbox = outbox
        self.policy = policy
        self.clock = clock
        self.worker = worker or this_worker()
        self._user_locks: "weakref.WeakValueDictionary[str, asyncio.Lock]" = weakref.WeakValueDictionary()
        self._wake = asyncio.Event()
        self._sweep_at: datetime | None = None  # when the sweeper means to look next (None: sweeping now)
        self._due_at: datetime | None = None  # the earliest due time reported since the sweep began
        self._handles: dict[str, str | None] = {}  # latest progress handle of each session we provision
        runner.set_error_handler(self._on_task_error)

    # ----- user commands -------------------------------------------------------------------------

    async def start(
        self,
        who: Identity,
        conv: ConversationRef,
        *,
        region: str | None = None,
        minutes: int | None = None,
        message_id: str | None = None,
        public_key: str | None = None,
    ) -> Session:
        """Record the request and hand provisioning to the runner; returns at once (Teams allows ~15 s).

        With `public_key` the user brought their own key pair: no secret exists, so the peer settings
        may be posted anywhere."""
        regions = list(self.provider.regions)
        region = (region or regions[0]).lower()
        if region not in regions:
            raise Refused(f"Region '{region}' is not available. Choose one of: {', '.join(regions)}.")
        minutes = self.policy.session_minutes if minutes is None else minutes
        if not 1 <= minutes <= self.policy.max_session_minutes:
            raise Refused(f"A session can last 1 to {self.policy.max_session_minutes} minutes; {minutes} is out of range.")
        if public_key is None and not self.outbox.can_deliver_privately(conv):
            log.warning("%s channel cannot deliver configs privately here; see README for what to configure", conv.channel)
            raise Refused(
                "I cannot send you a config privately from here, and I never post one in a group. "
                "An admin has been told what to set up. Meanwhile: /vpn start key=YOUR-PUBLIC-KEY works (the public key from your WireGuard app)."
            )
        if public_key is None:
            refusal = await self.outbox.check_private_delivery(conv, who)  # e.g. Teams opens the 1:1 chat first
            if refusal:
                raise Refused(refusal)
        if public_key is not None and await self._key_in_use(public_key):  # issue 18.7: one live session per key
            raise Refused("That public key is already in use by another VPN session. Create a new tunnel in your WireGuard app and use its public key.")
        owner = str(who.key)
        lock = self._user_locks.get(owner)
        if lock is None:
            lock = self._user_locks[owner] = asyncio.Lock()
        # Two quick `/vpn start` from one person in this process queue here; across processes the
        # store's atomic caps decide (this lock only saves a doomed create).
        async with lock:
            now = self.clock()
            session = Session(
                id=new_session_id(),
                owner=owner,
                owner_label=who.label,
                conversation=conv,
                state=SessionState.REQUESTED,
                provider=self.provider.name,
                region=region,
                created_at=now,
                expires_at=now + timedelta(minutes=minutes),
                minutes=minutes,
                updated_at=now,
                hourly_cost=self.provider.hourly_cost(region),
                message_id=message_id or "",
                client_public_key=public_key or "",
                own_key=public_key is not None,
                **self._lease(now),  # ours from the first moment: no other worker takes it for an orphan
            )
            outcome = await self.store.create_session(
                session, per_user=self.policy.max_sessions_per_user, total=self.policy.max_sessions
            )
            if outcome is CreateOutcome.USER_LIMIT:
                mine = await self.store.sessions(ACTIVE_STATES, owner=owner)
                current = mine[0] if mine else None
                detail = f" (session {current.id}, {current.state.value})" if current else ""
                raise Refused(
                    f"You already have a VPN session running{detail}. "
                    "Use /vpn status to see it, /vpn extend to keep it longer, or /vpn stop to end it."
                )
            if outcome is CreateOutcome.GLOBAL_LIMIT:
                raise Refused(
                    f"All {self.policy.max_sessions} VPN slots are in use right now. Please try again in a few minutes."
                )
            self._start_provisioning(session.id)
        log.info("session %s requested by %s in %s for %d min", session.id, owner, region, minutes)
        return session

    async def _key_in_use(self, public_key: str) -> bool:
        """A brought key that a live session already has: its peer is someone's tunnel (host: the same peer)."""
        return any(s.client_public_key == public_key for s in await self.store.sessions(ACTIVE_STATES))

    async def sessions_of(self, who: UserKey) -> list[Session]:
        return await self.store.sessions(ACTIVE_STATES, owner=str(who))

    async def live_sessions(self) -> list[Session]:
        return await self.store.sessions(ACTIVE_STATES)

    async def find_targets(self, target: str) -> list[Session]:
        """Sessions named by an admin's `/vpn stop <target>`: a session id, or a user key/label."""
        active = await self.live_sessions()
        wanted = target.strip()
        by_id = [s for s in active if s.id == wanted.lower()]
        if by_id:
            return by_id
        folded = wanted.casefold()
        return [s for s in active if s.owner.casefold() == folded or s.owner_label.casefold() == folded]

    async def stop(self, sessions: Sequence[Session], reason: str) -> list[Session]:
        stopped = []
        for s in sessions:
            if await self._begin_teardown(s.id, reason):
                stopped.append(s)
        return stopped

    async def extend(self, who: UserKey, minutes: int | None, session_id: str | None = None) -> Session:
        mine = [s for s in await self.sessions_of(who) if s.state is SessionState.READY and session_id in (None, s.id)]
        if not mine:
            raise Refused("You have no running VPN session to extend. Use /vpn start for a new one.")
        minutes = self.policy.session_minutes if minutes is None else minutes
        if minutes < 1:
            raise Refused("Extend by at least 1 minute.")

        def change(s: Session) -> Session:
            if s.state is not SessionState.READY:
                raise Refused(f"Session {s.id} is {s.state.value} now; there is nothing to extend.")
            latest_end = (s.ready_at or s.created_at) + timedelta(minutes=self.policy.max_session_minutes)
            room = int((latest_end - s.expires_at).total_seconds() // 60)
            if room < 1:
                raise Refused(f"Session {s.id} is already at the maximum of {self.policy.max_session_minutes} minutes.")
            if minutes > room:
                raise Refused(f"Session {s.id} can be extended by at most {room} more minutes (the maximum is {self.policy.max_session_minutes}).")
            return s.with_changes(self.clock(), expires_at=s.expires_at + timedelta(minutes=minutes), warned=False)

        s = await self._update(mine[0].id, change)
        if s is None:
            raise Refused("You have no running VPN session to extend. Use /vpn start for a new one.")
        self._wake.set()
        log.info("session %s extended by %d min", s.id, minutes)
        return s

    async def record_server_up(self, session_id: str) -> Session | None:
        """The server's "tunnel up" callback reached this replica: note it once, by compare-and-set."""

        def change(s: Session) -> Session | None:
            if s.state is not SessionState.PROVISIONING or s.server_up_at is not None:
                return None
            now = self.clock()
            return s.with_changes(now, server_up_at=now)

        return await self._update(session_id, change)

    # ----- compare-and-set and leases --------------------------------------------------------------

    async def _update(self, session_id: str, change: Callable[[Session], Session | None]) -> Session | None:
        """Read, decide, compare-and-set; a lost race is re-read and decided again, never overwritten.

        `change` returns the new session, or None for "nothing to do" (then so does this); it may raise."""
        for _ in range(CAS_ATTEMPTS):
            s = await self.store.get(session_id)
            if s is None:
                return None
            new = change(s)
            if new is None:
                return None
            try:
                return await self.store.save(new)
            except Conflict:
                await asyncio.sleep(0)
        raise Conflict(f"session {session_id}: gave up after {CAS_ATTEMPTS} concurrent writes")

    def _lease(self, now: datetime) -> dict:
        return {"lease_owner": self.worker.id, "lease_expires_at": now + timedelta(seconds=self.policy.lease_seconds)}

    @staticmethod
    def _unleased() -> dict:
        return {"lease_owner": "", "lease_expires_at": None}

    async def _owned(self, session_id: str, states: Sequence[SessionState], change: Callable[[Session], Session]) -> Session:
        """A write by the lease holder: renews the lease; raises LeaseLost if the session is no longer ours."""

        def guarded(s: Session) -> Session:
            if s.lease_owner != self.worker.id or s.state not in states:
                raise LeaseLost(s)
            now = self.clock()
            return change(s.with_changes(now, **self._lease(now)))

        s = await self._update(session_id, guarded)
        if s is None:
            raise LeaseLost(Session(**{**_gone(session_id)}))
        return s

    @asynccontextmanager
    async def _holding(self, session_id: str, states: Sequence[SessionState]) -> AsyncIterator[_Holding]:
        """Renew our lease every third of its length while the body works. A lost lease is only
        noted: the body finds out at its next write (each is a compare-and-set that checks the
        lease), never by a cancel that could land after its last write had already succeeded."""
        holding = _Holding()

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.policy.renew_seconds)
                try:
                    await self._owned(session_id, states, lambda s: s)
                except LeaseLost as lost:
                    holding.lost = lost.session
                    return
                except Exception:
                    # A store hiccup: the lease outlives two more tries (renewal is at a third of it).
                    log.exception("session %s: lease renewal failed; trying again", session_id)

        renewer = asyncio.get_running_loop().create_task(renew(), name=f"lease:{session_id}")
        try:
            yield holding
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)

    async def _release_lease(self, session_id: str) -> None:
        """Let another worker take over at once (we are shutting down mid-work)."""
        now = self.clock()

        def change(s: Session) -> Session | None:
            if s.lease_owner != self.worker.id or s.state in TERMINAL_STATES:
                return None
            return s.with_changes(now, lease_expires_at=now)

        try:
            await self._update(session_id, change)
        except Exception:
            log.exception("session %s: could not release the lease; it expires by itself", session_id)

    def _address_reserver(self, session_id: str):
        """For providers that hand out tunnel addresses: one holder per address across all replicas."""
        scope = self.provider.name

        async def reserve(address: str) -> bool:
            for _ in range(3):
                holder = await self.store.reserve_address(scope, address, session_id, self.clock())
                if holder == session_id:
                    return True
                other = await self.store.get(holder) if holder else None
                if other is not None and other.state not in TERMINAL_STATES:
                    return False
                await self.store.release_address(scope, address, holder)  # its session ended: stale
            return False

        return reserve

    # ----- provisioning ----------------------------------------------------------------------------

    def _start_provisioning(self, session_id: str) -> None:
        self.runner.start(f"provision:{session_id}", lambda: self._provision(session_id))

    async def _provision(self, session_id: str) -> None:
        seen: list[Session] = []

        def claim(s: Session) -> Session | None:
            now = self.clock()
            if s.state not in IN_FLIGHT_STATES or s.leased_by_other(self.worker.id, now):
                return None  # finished, ended, or someone else is on it
            seen.append(s)
            return s.moved(SessionState.PROVISIONING, now, attempts=s.attempts + 1, resource_id="", **self._lease(now))

        s = await self._update(session_id, claim)
        if s is None:
            return
        previous = seen[-1]
        conv = s.conversation
        handle: str | None = None
        try:
            async with self._holding(s.id, IN_FLIGHT_STATES) as holding:
                await self._provision_owned(s, previous, conv, holding)
        except LeaseLost as lost:
            await self._after_lease_lost(s, lost.session)
        except asyncio.CancelledError:
            # A stop in this process (its teardown cleans up) or shutdown: hand the lease on at once.
            await self._release_lease(s.id)
            raise
        except Exception as exc:
            await self._fail(s.id, exc, self._handles.pop(s.id, None) or handle)
        finally:
            self._handles.pop(s.id, None)

    async def _after_lease_lost(self, mine: Session, now_stored: Session) -> None:
        if now_stored.state in (SessionState.EXPIRING, *TERMINAL_STATES):
            # Stopped meanwhile: our `create` may have finished after the teardown's destroy.
            log.info("session %s ended while we were provisioning it; removing what we made", mine.id)
            try:
                await self.provider.destroy(
                    mine.id, resource_id=now_stored.resource_id or None, peer_public_key=now_stored.client_public_key or None
                )
            except Exception:
                log.exception("session %s: cleanup after a stop failed; reconcile will retry", mine.id)
        else:
            log.warning("session %s was taken over by %s; this worker stops", mine.id, now_stored.lease_owner)

    async def _provision_owned(self, s: Session, previous: Session, conv: ConversationRef, holding: _Holding) -> None:
        handle = await self.outbox.progress(conv, f"Setting up your VPN (session {s.id})…", s.progress_handle or None)
        self._handles[s.id] = handle
        if previous.attempts > 0:
            # A previous attempt died with its keys: remove whatever it made before starting over.
            await self.provider.destroy(
                s.id, resource_id=previous.resource_id or None, peer_public_key=previous.client_public_key or None
            )
        if s.own_key:
            keys, psk, public = None, None, s.client_public_key
        else:
            keys = await asyncio.to_thread(generate_keypair)
            psk = await asyncio.to_thread(generate_preshared_key)
            public = keys.public
        # The public key is stored before anything is created, so reconciliation can tie the
        # resource to this session even if we crash before `create` returns.
        callback_url, token_hash = ready_tokens.new_callback(self.policy.public_url, s.id)
        s = await self._owned(
            s.id,
            IN_FLIGHT_STATES,
            lambda x: x.with_changes(
                x.updated_at, client_public_key=public, progress_handle=handle or "", ready_token_hash=token_hash, server_up_at=None
            ),
        )

        async def step(text: str) -> None:
            nonlocal handle
            handle = await self.outbox.progress(conv, f"Setting up your VPN: {text}…", handle)
            self._handles[s.id] = handle

        spec = ServerSpec(
            s.id, s.owner, s.region, s.expires_at, public, psk, reserve_address=self._address_reserver(s.id),
            callback_url=callback_url, server_up=ready_tokens.recorded(self.store, s.id),
        )
        if holding.lost is not None:
            raise LeaseLost(holding.lost)  # stopped or taken over while we made keys: create nothing
        info = await asyncio.wait_for(self.provider.create(spec, step), self.policy.provision_timeout)
        # Recorded (and the lease renewed) right before delivery: a config goes out only while we own it.
        s = await self._owned(
            s.id,
            IN_FLIGHT_STATES,
            lambda x: x.with_changes(
                x.updated_at,
                endpoint=info.endpoint,
                resource_id=info.resource_id,
                client_address=info.client_address,
                region=info.region,
                hourly_cost=info.hourly_cost,
                server_size=info.size,
            ),
        )
        config_text = render_client_config(
            ClientConfig(
                private_key=keys.private if keys else None,
                address=info.client_address,
                server_public_key=info.server_public_key,
                preshared_key=psk,
                endpoint=info.endpoint,
                dns=tuple(info.dns) or tuple(self.policy.dns),
                allowed_ips=tuple(self.policy.allowed_ips),
                keepalive=self.policy.keepalive,
            )
        )
        if info.ready:
            ends = self.clock() + timedelta(minutes=s.minutes)
            note = f"Valid for {format_minutes(s.minutes * 60)}, until {ends:%H:%M} UTC."
        else:
            note = f"Valid for {format_minutes(s.minutes * 60)} from when the server is up."
        if s.own_key:
            # Nothing secret: the peer settings go to the conversation itself.
            await self.outbox.text(conv, f"Peer settings for your own key (session {s.id}):\n{config_text}")
            where = "Add these settings to your WireGuard tunnel."
        else:
            delivery = await asyncio.to_thread(_render_delivery, s, config_text, note)
            del config_text, keys  # the private key lives only in `delivery` until the channel has it
            where = await self.outbox.deliver(conv, Identity(UserKey.parse(s.owner), display_name=s.owner_label), delivery)
            del delivery
        metrics.config_delivered(s, self.clock())
        if not info.ready:
            # Cloud VMs: the config is complete once the address is known; the server boots meanwhile.
            await self.outbox.text(conv, f"{where} The server is still booting: the tunnel comes up within about a minute, and I will tell you when it is up.")
            if holding.lost is not None:
                raise LeaseLost(holding.lost)
            await asyncio.wait_for(self.provider.wait_ready(spec, step), self.policy.provision_timeout)
        ready_at = self.clock()
        expires_at = ready_at + timedelta(minutes=s.minutes)
        s = await self._owned(
            s.id,
            IN_FLIGHT_STATES,
            # x is the stored session: a server-up callback recorded meanwhile (any replica) is kept.
            lambda x: x.moved(SessionState.READY, ready_at, ready_at=ready_at, expires_at=expires_at, error="", **self._unleased()),
        )
        metrics.session_ready(s)
        await self.outbox.progress(conv, f"Your VPN is ready (session {s.id}).", handle)
        if info.ready:
            await self.outbox.text(conv, f"{where} Session {s.id} ends at {expires_at:%H:%M} UTC; /vpn stop ends it sooner.")
        else:
            await self.outbox.text(conv, f"Your VPN server is up (session {s.id}). It ends at {expires_at:%H:%M} UTC; /vpn stop ends it sooner.")
        log.info("session %s ready at %s after %.2fs", s.id, info.endpoint, (ready_at - s.created_at).total_seconds())
        self._due(s)

    def _due(self, s: Session) -> None:
        """Wake the sweeper only if this session needs it before its planned pass: a full sweep after
        every ready session (hundreds a minute under load) listed every live session each time."""
        at = s.expires_at
        if self.policy.warn_minutes and not s.warned and s.minutes > self.policy.warn_minutes:
            at = min(at, s.expires_at - timedelta(minutes=self.policy.warn_minutes))
        self._due_at = min(filter(None, (self._due_at, at)))
        if self._sweep_at is not None and at < self._sweep_at:
            self._wake.set()

    async def _fail(self, session_id: str, exc: Exception, handle: str | None) -> None:
        """Mark a session we work on failed (the compare-and-set decides it is ours to fail), clean up, tell."""
        if isinstance(exc, ProvisionError):
            reason = exc.user_message
            log.error("session %s failed: %s", session_id, exc)
        elif isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            reason = "the server took too long to come up"
            log.error("session %s timed out after %.0fs", session_id, self.policy.provision_timeout)
        elif isinstance(exc, DeliveryError):
            reason = f"I could not deliver the config privately: {exc}"
            log.error("session %s: delivery failed: %s", session_id, exc)
        else:
            reason = "something went wrong on our side (an admin can find the details in the log)"
            log.exception("session %s failed unexpectedly", session_id, exc_info=exc)

        def change(s: Session) -> Session | None:
            now = self.clock()
            if s.state not in IN_FLIGHT_STATES or s.leased_by_other(self.worker.id, now):
                return None  # stopped meanwhile, or another worker took it over: theirs to finish
            return s.moved(SessionState.FAILED, now, error=reason[:300], ended_at=now, **self._unleased())

        s = await self._update(session_id, change)
        if s is None:
            log.info("session %s: not failing it, it moved on meanwhile", session_id)
            return
        tail = "Nothing was left running."
        try:
            await self.provider.destroy(s.id, resource_id=s.resource_id or None, peer_public_key=s.client_public_key or None)
        except CleanupIncomplete as held:
            # The cloud still holds part of it (a failed VM's NIC, for about three minutes): the
            # reconcile pass (every replica's sweeper, every `reap`) retries until it is gone.
            log.warning("session %s: %s; reconcile removes it once Azure lets go", s.id, held)
            tail = "Azure still holds its network address after a failed start; the address is released within a few minutes, automatically."
        except Exception:
            tail = "Its leftovers will be removed automatically."  # the reconcile pass: a failed session owns nothing
            log.exception("session %s: cleanup after failure failed; reconcile will retry", s.id)
        if s.endpoint and not s.own_key and not isinstance(exc, DeliveryError):
            tail = f"The config I sent for it will not work; please delete it. {tail}"
        metrics.session_failed(exc)
        await self.outbox.retract(s.conversation, s.id)  # a config already sent is worthless now: take it back
        await self._ended(s)
        await self.outbox.progress(s.conversation, f"Setting up your VPN failed (session {s.id}).", handle or s.progress_handle or None)
        await self.outbox.text(s.conversation, f"Sorry, I could not set up your VPN: {reason}. {tail} You can try /vpn start again.")

    async def _ended(self, s: Session) -> None:
        """What a session held besides its resources: addresses and sealed configs."""
        await self.store.release_addresses(s.id)
        await self.store.purge_claims(self.clock(), session_id=s.id)  # an unclaimed config is worthless now: erase it

    # ----- teardown ------------------------------------------------------------------------------

    async def _begin_teardown(self, session_id: str, reason: str) -> bool:
        """Move the session to `expiring` under our lease (a stop wins over provisioning) and tear it down."""
        await self.runner.cancel(f"provision:{session_id}")
        active = False

        def change(s: Session) -> Session | None:
            nonlocal active
            now = self.clock()
            active = s.state in ACTIVE_STATES
            if not active:
                return None
            if s.state is SessionState.EXPIRING:
                if s.leased_by_other(self.worker.id, now):
                    return None  # someone is tearing it down already
                return s.with_changes(now, **self._lease(now))
            return s.moved(SessionState.EXPIRING, now, end_reason=reason, **self._lease(now))

        s = await self._update(session_id, change)
        if s is not None:
            self.runner.start(f"teardown:{s.id}", lambda: self._teardown(s.id, reason))
        return active

    async def _teardown(self, session_id: str, reason: str) -> None:
        s = await self.store.get(session_id)
        if s is None or s.state is not SessionState.EXPIRING or s.lease_owner != self.worker.id:
            return
        try:
            async with self._holding(s.id, (SessionState.EXPIRING,)):
                attempt, waited = 0, 0.0
                while True:
                    try:
                        await self.provider.destroy(s.id, resource_id=s.resource_id or None, peer_public_key=s.client_public_key or None)
                        break
                    except CleanupIncomplete as exc:  # the cloud is still holding something: not a failed attempt
                        if waited >= CLEANUP_PATIENCE:
                            raise  # still `expiring`: the sweeper starts over
                        log.warning("session %s: %s; trying again in %.0f s", s.id, exc, exc.retry_after)
                        await asyncio.sleep(exc.retry_after)
                        waited += exc.retry_after
                    except Exception:
                        attempt += 1
                        log.exception("session %s: teardown attempt %d failed", s.id, attempt)
                        if attempt == TEARDOWN_ATTEMPTS:
                            raise  # still `expiring`: the sweeper tries again on its next pass
                        await asyncio.sleep(2 ** (attempt - 1))
                now = self.clock()
                s = await self._owned(s.id, (SessionState.EXPIRING,), lambda x: x.moved(SessionState.DELETED, now, ended_at=now, **self._unleased()))
        except LeaseLost as lost:
            log.info("session %s: teardown handed over (%s)", session_id, lost)
            return
        metrics.teardown_done(s)
        await self.outbox.retract(s.conversation, s.id)
        await self._ended(s)
        log.info("session %s deleted (%s)", s.id, s.end_reason or reason)
        await self.outbox.text(s.conversation, f"Your VPN session {s.id} has ended ({s.end_reason or reason}). Use /vpn start for a new one.")

    async def _on_task_error(self, name: str, exc: BaseException) -> None:
        kind, _, session_id = name.partition(":")
        s = await self.store.get(session_id) if session_id else None
        if s is not None and kind == "teardown":
            return  # logged already; the sweeper retries, and the user hears once it is done
        if s is not None:
            await self.outbox.text(s.conversation, f"Something went wrong with your VPN session {s.id}; an admin has been told.")

    # ----- time-driven work -------------------------------------------------------------------------

    async def sweep(self, *, resume: bool = True) -> datetime | None:
        """Warn, expire, finish interrupted teardowns, take over provisioning whose lease expired;
        returns when to look again. Every decision is a compare-and-set, so any number of replicas
        (and `reap`) may sweep at once and each notice is sent once."""
        now = self.clock()
        await self.store.heartbeat(Worker(self.worker.id, self.worker.host, self.worker.pid, now))
        await self.store.purge_claims(now)
        next_due: datetime | None = None
        warn = timedelta(minutes=self.policy.warn_minutes)
        due: list[Awaitable] = []  # per-session work, run a few at once (each is a store round trip or more)
        for s in await self.store.sessions([SessionState.READY]):
            if now >= s.expires_at:
                due.append(self._begin_teardown(s.id, "time is up"))
                continue
            if self.policy.warn_minutes and not s.warned and s.minutes > self.policy.warn_minutes:
                warn_at = s.expires_at - warn
                if now >= warn_at:
                    due.append(self._warn(s.id, now))
                else:
                    next_due = min(filter(None, (next_due, warn_at)))
            next_due = min(filter(None, (next_due, s.expires_at)))
        for s in await self.store.sessions([SessionState.EXPIRING]):
            if self.runner.get(f"teardown:{s.id}") is None and not s.leased_by_other(self.worker.id, now):
                due.append(self._begin_teardown(s.id, s.end_reason or "ended"))
            elif s.lease_expires_at is not None:
                next_due = min(filter(None, (next_due, s.lease_expires_at)))
        await _bounded(due, SWEEP_CONCURRENCY)
        next_due = min(filter(None, (next_due, await self._recover_orphans(now, resume=resume))), default=None)
        return next_due

    async def _warn(self, session_id: str, now: datetime) -> None:
        warn = timedelta(minutes=self.policy.warn_minutes)

        def change(s: Session) -> Session | None:
            if s.state is not SessionState.READY or s.warned or now < s.expires_at - warn:
                return None  # another replica warned, or the session was extended or ended
            return s.with_changes(now, warned=True)

        s = await self._update(session_id, change)
        if s is not None:
            await self.outbox.text(
                s.conversation,
                f"Your VPN session {s.id} ends in {format_minutes(s.time_left(now))}. "
                f"Type /vpn extend {self.policy.session_minutes} to keep it longer.",
            )

    async def _recover_orphans(self, now: datetime, *, resume: bool) -> datetime | None:
        """Take over provisioning whose lease expired (its worker is gone or stuck), decided by a
        compare-and-set on the re-read session: a task that just finished is never taken for an orphan."""
        next_due: datetime | None = None
        for s in await self.store.sessions(IN_FLIGHT_STATES):
            if self.runner.get(f"provision:{s.id}") is not None:
                continue  # ours, running (its lease is renewed)
            if s.leased_by_other(self.worker.id, now):
                next_due = min(filter(None, (next_due, s.lease_expires_at)))
                continue

            def take(x: Session) -> Session | None:
                if x.state not in IN_FLIGHT_STATES or x.leased_by_other(self.worker.id, now):
                    return None
                return x.with_changes(now, **self._lease(now))

            took = await self._update(s.id, take)
            if took is None:
                continue
            if self.runner.get(f"provision:{s.id}") is not None:
                continue
            if resume and took.attempts < self.policy.max_attempts and now < took.expires_at:
                log.warning("session %s was interrupted mid-provisioning (lease of %s expired); starting over", s.id, s.lease_owner or "nobody")
                await self.outbox.text(took.conversation, f"The VPN bot restarted while setting up session {s.id}; starting over.")
                self._start_provisioning(s.id)
            else:
                log.warning("session %s was interrupted mid-provisioning; cleaning up", s.id)
                await self._fail(s.id, ProvisionError("the VPN bot restarted while setting it up"), took.progress_handle or None)
        return next_due

    async def reconcile(self) -> int:
        """Delete provider resources that no active session owns (a lost store, a crash, a bug)."""
        # Active before the listing (a teardown finishing meanwhile destroys its own) or after it (a
        # session created meanwhile stored its key before making anything): not orphans.
        before = await self.store.sessions(ACTIVE_STATES)
        resources = await self.provider.list_managed()
        active = before + await self.store.sessions(ACTIVE_STATES)
        ids = {s.id for s in active}
        keys = {s.client_public_key for s in active if s.client_public_key}
        removed = 0
        for r in resources:
            if (r.session_id and r.session_id in ids) or (r.peer_public_key and r.peer_public_key in keys):
                continue
            log.warning("reconcile: deleting %s, which no active session owns", r.resource_id)
            try:
                await self.provider.destroy(r.session_id or "", resource_id=r.resource_id, peer_public_key=r.peer_public_key)
                removed += 1
                metrics.reconcile_deleted(self.provider.name)
            except CleanupIncomplete as exc:
                log.warning("reconcile: %s; trying again on the next pass", exc)
            except Exception:
                log.exception("reconcile: could not delete %s", r.resource_id)
        return removed

    async def run_sweeper(self) -> None:
        """Forever: sweep when something is due (or every sweep_seconds), reconcile every reconcile_seconds."""
        loop = asyncio.get_running_loop()
        last_reconcile = float("-inf")
        while True:
            self._wake.clear()
            self._sweep_at = self._due_at = None
            next_due = None
            try:
                next_due = await self.sweep()
                if loop.time() - last_reconcile >= self.policy.reconcile_seconds:
                    last_reconcile = loop.time()
                    await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sweep failed; trying again shortly")
            timeout = self.policy.sweep_seconds
            next_due = min(filter(None, (next_due, self._due_at)), default=None)  # readied while we swept
            if next_due is not None:
                timeout = min(timeout, max(0.05, (next_due - self.clock()).total_seconds()))
            self._sweep_at = self.clock() + timedelta(seconds=timeout)
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that races a wake-up.
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def reap_once(self) -> int:
        """One pass for a scheduler with no `serve` running: everything the sweeper does (warn, expire,
        finish teardowns, clean up provisioning whose lease expired), then reconcile; waits for it all."""
        await self.sweep(resume=False)
        await self.runner.wait_idle()
        removed = await self.reconcile()
        await self.runner.wait_idle()
        return removed


def _gone(session_id: str) -> dict:
    """A stand-in for a session that vanished from the store, for LeaseLost."""
    now = utcnow()
    return dict(
        id=session_id, owner="", owner_label="", conversation=ConversationRef("", {}), state=SessionState.DELETED,
        provider="", region="", created_at=now, expires_at=now, minutes=0, updated_at=now,
    )
