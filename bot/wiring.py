"""The one place that builds everything: store, provider, engine, channels, the HTTP app.

`serve`, `console`, `reap` and `users` (app.py) all build a `Runtime`; everything with a lifetime is
started and stopped in order (store, client session, channels, sweeper), and teardown runs only for
what was set up. `serve` listens first and opens the store in the background (bot/http/startup.py).
"""
from __future__ import annotations

import asyncio
import logging
import random
import shlex
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from bot.access import AccessPolicy
from bot.channels.deps import ChatDeps
from bot.channels.web.deps import WebDeps
from bot.chat.dispatcher import Dispatcher
from bot.chat.vpn import build_registry, help_card_for, welcome_card_for
from bot.engine.config import GovernanceConfig, SessionPolicy
from bot.engine.groups import GroupLookup, Memberships, NoGraph
from bot.engine.notify import NotifyConfig, WebhookPost
from bot.engine.policy import Policy
from bot.engine.service import VpnService
from bot.engine.tasks import TaskRunner
from bot.engine.usage import UsageConfig
from bot.http.webhooks import WebhookClient
from bot.messages import Identity
from bot.replies import Channel, Outbox
from bot.settings import Settings
from bot.settings.governance import GovernanceSettings
from bot.settings.store import StoreSettings
from bot.store.model import utcnow
from bot.store.ports import Store
from cards.model import Card
from provisioner.base import Provider

if TYPE_CHECKING:
    from aiohttp import web

    from bot.http.startup import Startup

log = logging.getLogger(__name__)
STORE_RETRY_MAX_SECONDS = 2.0  # how long at most between tries to open the store at start-up
STORE_REMIND_SECONDS = 60.0  # the same reason is logged again this often while it lasts
# `serve`: the sweeper's first pass starts this long after the store opens, or later while the requests
# start-up held back are still being handled, but no later than SWEEP_GRACE_SECONDS (decisions: issue 25.3).
SWEEP_DELAY_SECONDS = 1.0
SWEEP_GRACE_SECONDS = 3.0


# ----- the parts -------------------------------------------------------------------------------------

def make_store(settings: StoreSettings, credential: Any = None) -> Store:
    """The configured store; the Table Storage SDK is imported only when it is chosen."""
    if settings.kind == "azure-tables":
        from bot.store.tables import TableStore

        if settings.connection_string:
            return TableStore.from_connection_string(settings.connection_string, prefix=settings.prefix)
        return TableStore.from_endpoint(settings.endpoint, prefix=settings.prefix, credential=credential)
    from bot.store.sqlite import SqliteStore

    return SqliteStore(settings.path)


def make_provider(settings: Settings, azure_credential: Any = None) -> Provider:
    """The configured back end; tests inject an Azure credential (never DefaultAzureCredential)."""
    p = settings.provider
    if p.kind == "host":
        from provisioner.host import HostProvider

        wg = p.wireguard
        return HostProvider(wg.interface, wg.endpoint, wg.pool, wg_command=shlex.split(wg.command), hourly_cost=p.hourly_cost)
    if settings.azure is not None:
        from provisioner import azure

        return azure.AzureProvider(settings.azure, azure_credential or azure.default_credential())
    if settings.aws is not None:
        from provisioner.aws import AwsProvider

        return AwsProvider(settings.aws)  # credentials: the AWS SDK's own chain (tests: fake keys in the environment)
    from provisioner.dryrun import DryRunProvider

    settings.ops.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return DryRunProvider(
        settings.ops.data_dir / "dryrun-servers.json",
        pool=p.wireguard.pool,
        regions=p.dryrun.regions,
        step_seconds=p.dryrun.step_seconds,
        fail_step=p.dryrun.fail_step or None,
        hourly_cost=p.hourly_cost,
    )


def make_channels(settings: Settings) -> list[Channel]:
    """The chat channels `serve` and `reap` run, from what is configured (each SDK loads only when chosen)."""
    channels: list[Channel] = []
    if settings.teams is not None:
        from bot.channels.teams.channel import TeamsChannel

        channels.append(TeamsChannel(settings.teams))
    if settings.groupme is not None:
        from bot.channels.groupme.channel import GroupMeChannel

        channels.append(GroupMeChannel(settings.groupme))
    if settings.web is not None:
        from bot.channels.web.channel import WebChannel

        channels.append(WebChannel(settings.web))
    return channels


def channels_off(settings: Settings) -> list[str]:
    """What `serve` says at start-up about channels that are off and how to turn them on."""
    notes = []
    if settings.teams is None:
        notes.append("Teams is off: set MicrosoftAppId (or VPN_DEV_MODE=1 to try it locally without credentials)")
    if settings.web is None:
        notes.append("The web page and API are off: set VPN_LOCAL_AUTH_SECRET (and VPN_ENTRA_* for Microsoft sign-in)")
    return notes


@dataclass(frozen=True)
class Engine:
    """What the engine gives the rest: the use cases, who may do what, the chat front door, a newcomer's card."""
    service: VpnService
    policy: Policy
    dispatcher: Dispatcher
    welcome: Callable[[Identity | None, bool], Card]


def build_engine(store: Store, provider: Provider, runner: TaskRunner, outbox: Outbox, limits: SessionPolicy,
                 access: AccessPolicy, clock: Callable[..., Any], *, governance: GovernanceConfig | None = None,
                 memberships: Memberships | None = None, usage: UsageConfig | None = None, notify: NotifyConfig | None = None,
                 webhook: WebhookPost | None = None) -> Engine:
    """The engine's constructor in one place: the policy both front doors ask, the use cases, the chat door."""
    policy = Policy(access, limits, store, clock, governance=governance, memberships=memberships)
    service = VpnService(store, provider, runner, outbox, limits, policy, clock=clock, usage_config=usage, notify_config=notify, webhook=webhook)
    registry = build_registry(service)
    dispatcher = Dispatcher(registry, policy, store, outbox, help_card_for(registry), clock=clock, on_admitted=service.remember_contact)
    # The welcome card reads the allowlist and the policy file (no group lookups).
    return Engine(service, policy, dispatcher, welcome_card_for(registry, policy))


class _Graph:
    """The group lookup the policy asks: Microsoft Graph with the bot's own app (bot/graph.py), built
    once the HTTP session exists; with no app id configured every lookup fails closed."""

    def __init__(self, settings: Settings, token: Callable[[], Awaitable[str]] | None, ssl_context: ssl.SSLContext | None) -> None:
        self._settings, self._token, self._ssl = settings, token, ssl_context
        self._lookup: GroupLookup = NoGraph()

    def open(self, http: aiohttp.ClientSession) -> None:
        token, teams, gov = self._token, self._settings.teams, self._settings.governance
        if token is None and teams is not None and teams.app_id:
            from bot.graph import AppToken

            token = AppToken(teams.app_id, teams.app_password, teams.app_type, teams.tenant_id, gov.graph_endpoint)
        if token is not None:
            from bot.graph import GraphClient

            self._lookup = GraphClient(http, gov.graph_endpoint, token, ssl_context=self._ssl)

    async def member_groups(self, object_id: str, group_ids: Sequence[str]) -> frozenset[str]:
        return await self._lookup.member_groups(object_id, group_ids)


def governance_of(gov: GovernanceSettings) -> GovernanceConfig:
    return GovernanceConfig(gov.approvers, gov.approval, gov.approval_timeout_minutes, gov.policy_file, gov.policy, gov.policy_stamp)


# ----- the runtime: everything with a lifetime ---------------------------------------------------------

class Runtime:
    def __init__(
        self,
        settings: Settings,
        provider: Provider,
        channels: Iterable[Channel] = (),
        *,
        access: AccessPolicy | None = None,
        clock: Callable[..., Any] = utcnow,
        background: bool = True,
        graph_token: Callable[[], Awaitable[str]] | None = None,  # tests: a token for the fake Graph
        graph_ssl: ssl.SSLContext | None = None,  # tests: trust the fake Graph's own certificate
    ) -> None:
        self.settings = settings
        self.provider = provider
        self.access = access or settings.access
        self.channels = list(channels)
        # Console conversations live only in the console's own process: elsewhere their notices are dropped quietly.
        self.outbox = Outbox(elsewhere=() if any(ch.name == "console" for ch in self.channels) else ("console",))
        for ch in self.channels:
            self.outbox.register(ch)
        self.store = make_store(settings.store)
        self.runner = TaskRunner()
        self._graph = _Graph(settings, graph_token, graph_ssl)  # Microsoft Graph, once the HTTP session exists
        memberships = Memberships(self._graph, clock, settings.governance.group_cache_seconds)
        self._webhooks = WebhookClient()  # notifications' webhooks, over the client session once it exists
        engine = build_engine(self.store, provider, self.runner, self.outbox, settings.sessions, self.access, clock,
                              governance=governance_of(settings.governance), memberships=memberships, usage=settings.usage,
                              notify=settings.notify, webhook=self._webhooks)
        self.service, self.policy, self.dispatcher, self._welcome = engine.service, engine.policy, engine.dispatcher, engine.welcome
        self.http: aiohttp.ClientSession | None = None  # one client session for every outbound call
        self._background = background
        self._stack = AsyncExitStack()
        self._opened = asyncio.Event()

    async def open(self, *, retry: bool = False) -> None:
        """Store (with `retry`: until it answers), deployment id, client session, channels."""
        stack = self._stack
        stack.push_async_callback(self.store.close)  # safe on a store that never opened
        await self._open_store(retry)
        stack.push_async_callback(self.provider.close)
        self.http = aiohttp.ClientSession()
        stack.push_async_callback(self.http.close)  # after the runner: tasks finishing in its grace period still send
        self._graph.open(self.http)
        self._webhooks.open(self.http)
        stack.push_async_callback(self.runner.shutdown)
        deps = ChatDeps(
            http=self.http,
            clock=self.service.clock,
            runner=self.runner,
            handle=self.dispatcher.handle,
            notify=self.outbox.text,
            welcome=self._welcome,
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
        self._opened.set()

    async def _open_store(self, retry: bool) -> None:
        """Open the store and bind the deployment id; with `retry`, keep trying (a role assignment still
        propagating answers 403, a store not up yet refuses) with one log line per new reason."""
        opened, attempt, last_reason, last_logged = False, 0, "", 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                if not opened:
                    await self.store.open()
                    opened = True
                stored = await self.store.deployment_id()  # issue 18.2: the default no longer lives (only) in the store
                self.provider.bind_deployment(self.settings.ops.deployment_id or self.provider.default_deployment_id() or stored, store_id=stored)
                if attempt:
                    log.info("the store answers now (after %d attempt(s))", attempt + 1)
                return
            except Exception as exc:
                if not retry:
                    raise
                reason = _one_line(exc)
                if reason != last_reason or loop.time() - last_logged >= STORE_REMIND_SECONDS:
                    log.warning("the store is not reachable yet (%s); /readyz says 503 and requests wait until it is", reason)
                    last_reason, last_logged = reason, loop.time()
                attempt += 1
                await asyncio.sleep(random.uniform(0.5, 1.0) * min(STORE_RETRY_MAX_SECONDS, 0.2 * 2**attempt))

    async def opened(self) -> None:
        """Returns once `open` is done (a test serving the HTTP app waits here before using the store)."""
        await self._opened.wait()

    async def start_sweeper(self, *, first_pass: bool = True) -> None:
        """The sweeper, in the background. With `first_pass`, one pass first (resume or clean up what a
        crash left, expire what is due), awaited: the console's prompt comes after it. `serve` leaves
        that pass to the sweeper task, whose loop begins with one (then reconciles: provider list calls,
        seconds on a cloud), so nothing that grows with live sessions runs on its start-up path."""
        if not self._background:
            return
        if first_pass:
            try:
                await self.service.sweep()
            except Exception:
                log.exception("start-up sweep failed; the sweeper will try again")
        sweeper = asyncio.get_running_loop().create_task(self.service.run_sweeper(), name="sweeper")
        self._stack.push_async_callback(_cancel, sweeper)

    async def aclose(self) -> None:
        await self._stack.aclose()

    async def __aenter__(self) -> Runtime:
        try:
            await self.open()
            await self.start_sweeper()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def reap_once(runtime: Runtime) -> str:
    """`reap`: one pass, then one line saying what it did (the per-session lines are INFO, below reap's level).
    No count of live sessions: that would read every one of them, which a pass no longer does (issue 25)."""
    done = await runtime.service.reap_once()
    return f"reap: {done.ended} session(s) ended, {done.warned} warned, {done.removed} orphaned resource(s) removed"


# ----- the HTTP app ------------------------------------------------------------------------------------

def build_http_app(runtime: Runtime, *, wait_seconds: float = 5.0) -> web.Application:
    """Probes, the VM callback and each channel's routes, around one runtime. The port opens before the
    store does: the cleanup context only starts the opening, in the background (bot/http/startup.py).
    The server side of aiohttp and these routes load here, not with this module: `console` and
    `reap` serve no HTTP and start without them."""
    from bot.http.app import create_app
    from bot.http.health import Health
    from bot.http.ready_callback import ReadyCallback
    from bot.http.startup import Startup

    startup = Startup(wait_seconds)
    hooks: list[Callable[[web.Application], None]] = [
        Health(runtime.provider.name, runtime.store, startup).register,
        ReadyCallback(runtime.store, runtime.service.record_server_up, runtime.service.record_traffic).register,  # "tunnel up", then traffic
        *(ch.routes for ch in runtime.channels),
    ]
    if runtime.settings.web is None:
        from bot.channels.web.page import WebOffPage

        hooks.append(WebOffPage().register)  # `/` says how to turn the web page on (issue 21.6)
    app = create_app(startup, hooks)
    app.cleanup_ctx.append(_lifetime(runtime, startup))
    return app


def _lifetime(runtime: Runtime, startup: Startup) -> Callable[[web.Application], AsyncIterator[None]]:
    from bot.http import metrics as http_metrics

    ops = runtime.settings.ops

    async def start() -> None:
        try:
            await runtime.open(retry=True)
        except Exception:
            log.exception("start-up failed: /healthz and /readyz say 503 until this process is replaced")
            startup.fail()
            return
        startup.ready()
        await _requests_first(runtime, startup)
        await runtime.start_sweeper(first_pass=False)

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            stack.push_async_callback(runtime.aclose)
            # /metrics at once too: vpn_store_up says 0 while the store is still opening.
            await stack.enter_async_context(
                http_metrics.serving(runtime.store, runtime.provider.name, ops.metrics_listen_host, ops.metrics_port, lambda: startup.is_ready)
            )
            task = asyncio.get_running_loop().create_task(start(), name="start-up")
            stack.push_async_callback(_cancel, task)
            yield

    return lifetime


async def _requests_first(runtime: Runtime, startup: Startup) -> None:
    """Before the sweeper's first pass: SWEEP_DELAY_SECONDS, and longer while a request start-up held
    back, or the work it started, is still running (at most SWEEP_GRACE_SECONDS). That pass and the
    reconcile after it list every live session (SQLite through its one worker thread, Table Storage in
    pages parsed on the loop): the message that woke this replica, held while the store opened or
    forwarded just after, is answered first."""
    loop = asyncio.get_running_loop()
    begun = loop.time()
    if await startup.settled(SWEEP_GRACE_SECONDS):
        await runtime.runner.wait_idle(max(0.0, begun + SWEEP_GRACE_SECONDS - loop.time()))
    await asyncio.sleep(max(0.0, begun + SWEEP_DELAY_SECONDS - loop.time()))


def _one_line(exc: BaseException) -> str:
    """An exception as one short line for the log: the type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

