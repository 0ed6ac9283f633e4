"""Everything with a lifetime, started and stopped in order: store, runner, service, sweeper.

`serve`, `console` and `reap` all build one of these; teardown runs only for what was set up.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from typing import Callable

import aiohttp

from bot.access import AccessPolicy
from bot.chat.dispatcher import Dispatcher
from bot.channels.deps import ChatDeps
from bot.chat.vpn import build_registry, help_card_for, welcome_card_for
from bot.replies import Channel, Outbox
from bot.engine.config import SessionPolicy
from bot.engine.service import VpnService
from bot.store.model import utcnow
from bot.store.sqlite import SqliteStore
from bot.store.ports import Store
from bot.settings import Settings
from bot.engine.tasks import TaskRunner
from provisioner.base import Provider

log = logging.getLogger(__name__)


def policy_from(settings: Settings) -> SessionPolicy:
    return SessionPolicy(
        session_minutes=settings.session_minutes,
        max_session_minutes=settings.max_session_minutes,
        warn_minutes=settings.warn_minutes,
        max_sessions=settings.max_sessions,
        max_sessions_per_user=settings.max_sessions_per_user,
        provision_timeout=settings.provision_timeout_seconds,
        dns=settings.wg_dns,
        allowed_ips=settings.wg_allowed_ips,
        keepalive=settings.wg_keepalive,
        sweep_seconds=settings.sweep_seconds,
        reconcile_seconds=settings.reconcile_seconds,
        lease_seconds=settings.lease_seconds,
        public_url=settings.public_url,
    )


def make_store(settings: Settings, credential=None) -> Store:
    """The configured store; the Table Storage SDK is imported only when it is chosen."""
    if settings.store == "azure-tables":
        from bot.store.tables import TableStore

        if settings.azure_storage_connection_string:
            return TableStore.from_connection_string(settings.azure_storage_connection_string, prefix=settings.table_prefix)
        return TableStore.from_endpoint(settings.azure_tables_endpoint, prefix=settings.table_prefix, credential=credential)
    return SqliteStore(settings.store_path)


class Runtime:
    def __init__(
        self,
        settings: Settings,
        provider: Provider,
        access: AccessPolicy,
        channels: list[Channel] = (),
        *,
        clock: Callable = utcnow,
        background: bool = True,
    ) -> None:
        self.settings = settings
        self.provider = provider
        self.access = access
        self.outbox = Outbox()
        for ch in channels:
            self.outbox.register(ch)
        self.store = make_store(settings)
        self.runner = TaskRunner()
        self.service = VpnService(self.store, provider, self.runner, self.outbox, policy_from(settings), clock=clock)
        self.registry = registry = build_registry(self.service)
        self.dispatcher = Dispatcher(registry, access, self.store, self.outbox, help_card_for(registry), clock=clock)
        self.channels = list(channels)
        self.http: aiohttp.ClientSession | None = None  # one client session for every outbound call
        self._background = background
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> "Runtime":
        stack = self._stack
        await self.store.open()
        stack.push_async_callback(self.store.close)
        stored = await self.store.deployment_id()  # issue 18: the default no longer lives (only) in the store
        self.provider.bind_deployment(self.settings.deployment_id or self.provider.default_deployment_id() or stored, store_id=stored)
        stack.push_async_callback(self.provider.close)
        self.http = aiohttp.ClientSession()
        stack.push_async_callback(self.http.close)  # after the runner: tasks finishing in its grace period still send
        stack.push_async_callback(self.runner.shutdown)
        deps = ChatDeps(
            http=self.http,
            clock=self.service.clock,
            runner=self.runner,
            handle=self.dispatcher.handle,
            notify=self.outbox.text,
            welcome=welcome_card_for(self.registry, self.access),
            configs=self.store,
            sessions=self.store,
        )
        object.__setattr__(deps, "_runtime_for_web", self)  # temporary, until the web channel gets WebDeps
        for ch in self.channels:
            await ch.attach(deps)
        if self._background:
            # First pass before taking commands: resume or clean up what a crash left, expire what is due.
            # Reconcile (provider list calls, seconds on a cloud) is the sweeper's first job instead: off the cold-start path.
            try:
                await self.service.sweep()
            except Exception:
                log.exception("start-up sweep failed; the sweeper will try again")
            sweeper = asyncio.get_running_loop().create_task(self.service.run_sweeper(), name="sweeper")
            stack.push_async_callback(_cancel, sweeper)
        return self

    async def __aexit__(self, *exc) -> None:
        await self._stack.aclose()


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
