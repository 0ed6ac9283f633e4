"""Everything with a lifetime, started and stopped in order: store, runner, service, sweeper.

`serve`, `console` and `reap` all build one of these; teardown runs only for what was set up.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from contextlib import AsyncExitStack
from typing import Awaitable, Callable, Sequence

import aiohttp

from bot.access import AccessPolicy
from bot.chat.dispatcher import Dispatcher
from bot.channels.deps import ChatDeps
from bot.channels.web.deps import WebDeps
from bot.chat.vpn import build_registry, help_card_for, welcome_card_for
from bot.replies import Channel, Outbox
from bot.engine.config import GovernanceConfig, SessionPolicy
from bot.engine.groups import GroupLookup, Memberships, NoGraph
from bot.engine.policy import Policy
from bot.engine.service import VpnService
from bot.store.model import utcnow
from bot.store.sqlite import SqliteStore
from bot.store.ports import Store
from bot.settings import Settings
from bot.settings.governance import GovernanceSettings
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
        graph_token: Callable[[], Awaitable[str]] | None = None,  # tests: a token for the fake Graph
        graph_ssl: ssl.SSLContext | None = None,  # tests: trust the fake Graph's own certificate
    ) -> None:
        self.settings = settings
        self.provider = provider
        self.access = access
        self.outbox = Outbox()
        for ch in channels:
            self.outbox.register(ch)
        self.store = make_store(settings)
        self.runner = TaskRunner()
        limits = policy_from(settings)
        gov = settings.governance or GovernanceSettings()
        self._graph = _Graph(settings, gov, graph_token, graph_ssl)  # Microsoft Graph, once the HTTP session exists
        governance = GovernanceConfig(gov.approvers, gov.approval, gov.approval_timeout_minutes, gov.policy_file, gov.policy, gov.policy_stamp)
        memberships = Memberships(self._graph, clock, gov.group_cache_seconds)
        self.policy = Policy(access, limits, self.store, clock, governance=governance, memberships=memberships)
        self.service = VpnService(self.store, provider, self.runner, self.outbox, limits, self.policy, clock=clock)
        self.registry = registry = build_registry(self.service)
        self.dispatcher = Dispatcher(registry, self.policy, self.store, self.outbox, help_card_for(registry), clock=clock,
                                     on_admitted=self.service.remember_contact)
        self.channels = list(channels)
        self.http: aiohttp.ClientSession | None = None  # one client session for every outbound call
        self._background = background
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> "Runtime":
        stack = self._stack
        await self.store.open()
        stack.push_async_callback(self.store.close)
        self.provider.bind_deployment(self.settings.deployment_id or await self.store.deployment_id())
        stack.push_async_callback(self.provider.close)
        self.http = aiohttp.ClientSession()
        stack.push_async_callback(self.http.close)  # after the runner: tasks finishing in its grace period still send
        self._graph.open(self.http)
        stack.push_async_callback(self.runner.shutdown)
        deps = ChatDeps(
            http=self.http,
            clock=self.service.clock,
            runner=self.runner,
            handle=self.dispatcher.handle,
            notify=self.outbox.text,
            welcome=welcome_card_for(self.registry, self.policy),  # the allowlist and the policy file (no group lookups)
            configs=self.store,
            sessions=self.store,
        )
        web_deps = WebDeps(
            http=self.http,
            clock=self.service.clock,
            engine=self.service,
            policy=self.policy,
            limits=self.service.limits,
            regions=tuple(self.provider.regions),
            accounts=self.store,
            progress=self.store,
            configs=self.store,
            sessions=self.store,
        )
        for ch in self.channels:
            await ch.attach(web_deps if ch.name == "web" else deps)  # each channel gets what it uses
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


class _Graph:
    """The group lookup the policy asks: Microsoft Graph with the bot's own app (bot/graph.py), built
    once the HTTP session exists; with no app id configured every lookup fails closed."""

    def __init__(self, settings: Settings, gov: GovernanceSettings, token: Callable[[], Awaitable[str]] | None, ssl_context: ssl.SSLContext | None) -> None:
        self._settings, self._gov, self._token, self._ssl = settings, gov, token, ssl_context
        self._lookup: GroupLookup = NoGraph()

    def open(self, http: aiohttp.ClientSession) -> None:
        token = self._token
        s = self._settings
        if token is None and s.teams_app_id:
            from bot.graph import AppToken

            token = AppToken(s.teams_app_id, s.teams_app_password, s.teams_app_type, s.teams_tenant_id, self._gov.graph_endpoint)
        if token is not None:
            from bot.graph import GraphClient

            self._lookup = GraphClient(http, self._gov.graph_endpoint, token, ssl_context=self._ssl)

    async def member_groups(self, object_id: str, group_ids: Sequence[str]) -> frozenset[str]:
        return await self._lookup.member_groups(object_id, group_ids)


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
