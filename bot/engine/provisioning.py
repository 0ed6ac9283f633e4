"""Provisioning a session, as named steps under its lease: claim, prepare keys, create, deliver, wait, ready.

Runs as a tracked task (`provision:<id>`). Every write is by the lease holder; a lost lease (a stop,
a takeover) is noticed at the next write and the work stops there. A failure tells the user the
truth and removes what was made; what the cloud still holds is retried by reconcile.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

from bot import metrics
from bot.engine import notices, ready_tokens
from bot.engine.endings import release_held
from bot.engine.leases import Holding, LeaseLost
from bot.engine.parts import EngineParts
from bot.engine.reservations import reserve
from bot.engine.usage import FAILED, write_usage_quietly
from bot.messages import ConversationRef, Identity, UserKey
from bot.replies import ConfigDelivery, DeliveryError
from bot.store.model import IN_FLIGHT_STATES, TERMINAL_STATES, Session, SessionState
from cards.qr import qr_png
from provisioner.base import CleanupIncomplete, ProvisionError, ReserveAddressFn, ServerInfo, ServerSpec
from provisioner.wireguard import ClientConfig, KeyPair, Secret, generate_keypair, generate_preshared_key, render_client_config

log = logging.getLogger(__name__)


def _render_delivery(session: Session, config_text: str, expires_note: str) -> ConfigDelivery:
    """CPU work (QR encoding and PNG compression): runs in a thread."""
    return ConfigDelivery(
        session_id=session.id,
        tunnel_name=session.tunnel_name,
        config=Secret(config_text),
        qr_png=qr_png(config_text),
        expires_note=expires_note,
    )


@dataclass
class _Attempt:
    """One provisioning attempt's working state: the session as last written, its keys, its progress message."""

    session: Session
    conv: ConversationRef
    holding: Holding
    handle: str | None = None
    keys: KeyPair | None = None
    psk: Secret | None = None
    spec: ServerSpec | None = None


class Provisioning:
    def __init__(self, parts: EngineParts, on_ready: Callable[[Session], None]) -> None:
        self.p = parts
        self._on_ready = on_ready  # the sweeper's wake-up when this session falls due sooner than planned
        self._handles: dict[str, str | None] = {}  # latest progress handle of each session we provision

    def start(self, session_id: str) -> None:
        self.p.runner.start(f"provision:{session_id}", lambda: self._provision(session_id))

    async def _provision(self, session_id: str) -> None:
        seen: list[Session] = []
        leases = self.p.leases

        def claim(s: Session) -> Session | None:
            now = self.p.clock()
            if s.state not in IN_FLIGHT_STATES or s.leased_by_other(self.p.worker.id, now):
                return None  # finished, ended, or someone else is on it
            seen.append(s)
            return s.moved(SessionState.PROVISIONING, now, attempts=s.attempts + 1, resource_id="", **leases.lease(now))

        s = await leases.update(session_id, claim)
        if s is None:
            return
        try:
            async with leases.holding(s.id, IN_FLIGHT_STATES) as holding:
                await self._run(_Attempt(s, s.conversation, holding), previous=seen[-1])
        except LeaseLost as lost:
            await self._after_lease_lost(s, lost.session)
        except asyncio.CancelledError:
            # A stop in this process (its teardown cleans up) or shutdown: hand the lease on at once.
            await leases.release(s.id)
            raise
        except Exception as exc:
            await self.fail(s.id, exc, self._handles.pop(s.id, None))
        finally:
            self._handles.pop(s.id, None)

    async def _after_lease_lost(self, mine: Session, now_stored: Session) -> None:
        if now_stored.state in (SessionState.EXPIRING, *TERMINAL_STATES):
            # Stopped meanwhile: our `create` may have finished after the teardown's destroy.
            log.info("session %s ended while we were provisioning it; removing what we made", mine.id)
            try:
                await self.p.provider.destroy(
                    mine.id, resource_id=now_stored.resource_id or None, peer_public_key=now_stored.client_public_key or None
                )
            except Exception:
                log.exception("session %s: cleanup after a stop failed; reconcile will retry", mine.id)
        else:
            log.warning("session %s was taken over by %s; this worker stops", mine.id, now_stored.lease_owner)

    # ----- the steps ---------------------------------------------------------------------------------

    async def _run(self, a: _Attempt, previous: Session) -> None:
        await self._prepare(a, previous)
        info = await self._create(a)
        where = await self._deliver(a, info)
        if not info.ready:
            await self._await_server(a, where)
        await self._mark_ready(a, info, where)

    async def _progress(self, a: _Attempt, text: str) -> None:
        a.handle = await self.p.outbox.progress(a.conv, text, a.handle)
        self._handles[a.session.id] = a.handle

    async def _prepare(self, a: _Attempt, previous: Session) -> None:
        """Progress message, a previous attempt's leftovers removed, keys made, the public key stored."""
        s = a.session
        a.handle = s.progress_handle or None
        await self._progress(a, notices.setting_up(s.id))
        if previous.attempts > 0:
            # A previous attempt died with its keys: remove whatever it made before starting over.
            await self.p.provider.destroy(s.id, resource_id=previous.resource_id or None, peer_public_key=previous.client_public_key or None)
        if s.own_key:
            public = s.client_public_key
        else:
            a.keys = await asyncio.to_thread(generate_keypair)
            a.psk = await asyncio.to_thread(generate_preshared_key)
            public = a.keys.public
        # The public key is stored before anything is created, so reconciliation can tie the
        # resource to this session even if we crash before `create` returns.
        callback_url, token_hash = ready_tokens.new_callback(self.p.limits.public_url, s.id)
        handle = a.handle or ""
        a.session = s = await self.p.leases.owned(
            s.id,
            IN_FLIGHT_STATES,
            lambda x: x.with_changes(x.updated_at, client_public_key=public, progress_handle=handle, ready_token_hash=token_hash, server_up_at=None),
        )
        a.spec = ServerSpec(
            s.id, s.owner, s.region, s.expires_at, public, a.psk, reserve_address=self._address_reserver(s.id),
            callback_url=callback_url, server_up=ready_tokens.recorded(self.p.store, s.id),
        )

    async def _create(self, a: _Attempt) -> ServerInfo:
        """The provider makes the server; what it made is recorded (lease renewed) before any delivery."""
        assert a.spec is not None
        if a.holding.lost is not None:
            raise LeaseLost(a.holding.lost)  # stopped or taken over while we made keys: create nothing

        async def step(text: str) -> None:
            await self._progress(a, notices.setting_up_step(text))

        info = await asyncio.wait_for(self.p.provider.create(a.spec, step), self.p.limits.provision_timeout)
        a.session = await self.p.leases.owned(
            a.session.id,
            IN_FLIGHT_STATES,
            lambda x: x.with_changes(
                x.updated_at, endpoint=info.endpoint, resource_id=info.resource_id, client_address=info.client_address,
                region=info.region, hourly_cost=info.hourly_cost, server_size=info.size,
            ),
        )
        return info

    async def _deliver(self, a: _Attempt, info: ServerInfo) -> str:
        """The config to its owner alone (or, for a brought key, the peer settings to the conversation);
        returns the channel's secret-free sentence about where it went."""
        s, limits = a.session, self.p.limits
        config_text = render_client_config(
            ClientConfig(
                private_key=a.keys.private if a.keys else None,
                address=info.client_address,
                server_public_key=info.server_public_key,
                preshared_key=a.psk,
                endpoint=info.endpoint,
                dns=tuple(info.dns) or tuple(limits.dns),
                # The person's split-tunnel profile (their policy entry), else WG_ALLOWED_IPS.
                allowed_ips=tuple(ip.strip() for ip in s.allowed_ips.split(",")) if s.allowed_ips else tuple(limits.allowed_ips),
                keepalive=limits.keepalive,
            )
        )
        if info.ready:
            note = notices.valid_until(s.minutes, self.p.clock() + timedelta(minutes=s.minutes))
        else:
            note = notices.valid_from_up(s.minutes)
        if s.own_key:
            # Nothing secret: the peer settings go to the conversation itself.
            await self.p.outbox.notice(a.conv, notices.own_key_settings(s.id, config_text))
            where = notices.OWN_KEY_WHERE
        else:
            delivery = await asyncio.to_thread(_render_delivery, s, config_text, note)
            del config_text
            a.keys = None  # the private key lives only in `delivery` until the channel has it
            where = await self.p.outbox.deliver(a.conv, Identity(UserKey.parse(s.owner), display_name=s.owner_label), delivery)
            del delivery
        metrics.config_delivered(s, self.p.clock())
        return where

    async def _await_server(self, a: _Attempt, where: str) -> None:
        """Cloud VMs: the config went out once the address was known; the server boots meanwhile."""
        assert a.spec is not None
        await self.p.outbox.notice(a.conv, notices.still_booting(where))
        if a.holding.lost is not None:
            raise LeaseLost(a.holding.lost)

        async def step(text: str) -> None:
            await self._progress(a, notices.setting_up_step(text))

        await asyncio.wait_for(self.p.provider.wait_ready(a.spec, step), self.p.limits.provision_timeout)

    async def _mark_ready(self, a: _Attempt, info: ServerInfo, where: str) -> None:
        ready_at = self.p.clock()
        expires_at = ready_at + timedelta(minutes=a.session.minutes)
        leases = self.p.leases
        s = await leases.owned(
            a.session.id,
            IN_FLIGHT_STATES,
            # x is the stored session: a server-up callback recorded meanwhile (any replica) is kept.
            lambda x: x.moved(SessionState.READY, ready_at, ready_at=ready_at, expires_at=expires_at, error="", **leases.unleased()),
        )
        metrics.session_ready(s)
        await self.p.emit("ready", s)
        await self.p.outbox.progress(a.conv, notices.ready_progress(s.id), a.handle)
        if info.ready:
            await self.p.outbox.notice(a.conv, notices.ready(where, s.id, expires_at))
        else:
            await self.p.outbox.notice(a.conv, notices.server_up(s.id, expires_at))
        log.info("session %s ready at %s after %.2fs", s.id, info.endpoint, (ready_at - s.created_at).total_seconds())
        self._on_ready(s)

    def _address_reserver(self, session_id: str) -> ReserveAddressFn:
        """For providers that hand out tunnel addresses: one holder per address across all replicas."""
        store, scope = self.p.store, self.p.provider.name

        async def reserve_one(address: str) -> bool:
            return await reserve(store, scope, address, session_id, self.p.clock)

        return reserve_one

    # ----- failure -----------------------------------------------------------------------------------

    async def fail(self, session_id: str, exc: Exception, handle: str | None) -> None:
        """Mark a session we work on failed (the compare-and-set decides it is ours to fail), clean up, tell."""
        reason = _reason(session_id, exc, self.p.limits.provision_timeout)
        now_fn, worker_id, leases = self.p.clock, self.p.worker.id, self.p.leases

        def change(s: Session) -> Session | None:
            now = now_fn()
            if s.state not in IN_FLIGHT_STATES or s.leased_by_other(worker_id, now):
                return None  # stopped meanwhile, or another worker took it over: theirs to finish
            return s.moved(SessionState.FAILED, now, error=reason[:300], ended_at=now, ending=FAILED, **leases.unleased())

        s = await leases.update(session_id, change)
        if s is None:
            log.info("session %s: not failing it, it moved on meanwhile", session_id)
            return
        tail = notices.NOTHING_LEFT
        try:
            await self.p.provider.destroy(s.id, resource_id=s.resource_id or None, peer_public_key=s.client_public_key or None)
        except CleanupIncomplete as held:
            # The cloud still holds part of it (a failed VM's NIC, for about three minutes): the
            # reconcile pass (every replica's sweeper, every `reap`) retries until it is gone.
            log.warning("session %s: %s; reconcile removes it once Azure lets go", s.id, held)
            tail = notices.NIC_HELD
        except Exception:
            tail = notices.LEFTOVERS  # the reconcile pass: a failed session owns nothing
            log.exception("session %s: cleanup after failure failed; reconcile will retry", s.id)
        if s.endpoint and not s.own_key and not isinstance(exc, DeliveryError):
            tail = f"{notices.DEAD_CONFIG} {tail}"
        metrics.session_failed(exc)
        await write_usage_quietly(self.p.store, s)
        await self.p.emit("failed", s)
        outbox = self.p.outbox
        await outbox.retract(s.conversation, s.id)  # a config already sent is worthless now: take it back
        await release_held(self.p, s)
        await outbox.progress(s.conversation, notices.failed_progress(s.id), handle or s.progress_handle or None)
        await outbox.notice(s.conversation, notices.failed(reason, tail))


def _reason(session_id: str, exc: Exception, timeout: float) -> str:
    """What the user is told about a failure (the log gets the rest)."""
    if isinstance(exc, ProvisionError):
        log.error("session %s failed: %s", session_id, exc)
        return exc.user_message
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        log.error("session %s timed out after %.0fs", session_id, timeout)
        return notices.FAILED_TIMEOUT
    if isinstance(exc, DeliveryError):
        log.error("session %s: delivery failed: %s", session_id, exc)
        return notices.undeliverable(str(exc))
    log.exception("session %s failed unexpectedly", session_id, exc_info=exc)
    return notices.FAILED_OURS
