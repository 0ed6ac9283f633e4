"""Prometheus metrics for operators, served on their own port (`VPN_METRICS_PORT`), never the bot's.

Counters and histograms live in this process (Prometheus scrapes each replica and sums); sessions by
state are read from the shared store, so every replica reports the same truth, at most once every
`STORE_GAUGES_SECONDS` however often (and however many at once) anyone scrapes. The port binds
127.0.0.1 unless `VPN_METRICS_HOST` says otherwise (it is unauthenticated). No label ever carries a
user's identity: only provider, state, stage, channel, outcome, reason, route.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import secrets
import time
from datetime import datetime
from typing import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from bot.logs import bind
from bot.store.model import ACTIVE_STATES

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
PROVISION_BUCKETS = (0.5, 1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15)
# A closed set: a new failure kind maps to one of these, never to free text.
FAILURE_REASONS = ("provider", "timeout", "delivery", "interrupted", "internal")
CHAT_OUTCOMES = ("handled", "duplicate", "ignored", "refused", "usage", "error")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
STORE_GAUGES_SECONDS = 5.0  # a scrape inside this reuses the last store read (Prometheus scrapes every 15-60 s)

PROVISION_SECONDS = Histogram(
    "vpn_provision_seconds",
    "From /vpn start to the config delivered (stage=config) and to the server up (stage=server_up).",
    ["provider", "stage"],
    buckets=PROVISION_BUCKETS,
    registry=REGISTRY,
)
FAILURES = Counter("vpn_session_failures", "Sessions that failed before ready, by reason.", ["reason"], registry=REGISTRY)
TEARDOWNS = Counter("vpn_teardowns", "Sessions torn down (stop, expiry, admin).", ["provider"], registry=REGISTRY)
RECONCILE_DELETED = Counter(
    "vpn_reconcile_deleted", "Provider resources deleted by reconcile because no active session owned them.", ["provider"], registry=REGISTRY
)
CHAT_MESSAGES = Counter("vpn_chat_messages", "Chat messages by channel and outcome.", ["channel", "outcome"], registry=REGISTRY)
HTTP_SECONDS = Histogram(
    "vpn_http_request_seconds", "HTTP request latency by route template.", ["route", "method", "status"], buckets=HTTP_BUCKETS, registry=REGISTRY
)
for _reason in FAILURE_REASONS:
    FAILURES.labels(_reason)


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


# ----- calls from the service and the dispatcher (one line each) --------------------------------------


def config_delivered(session, now: datetime) -> None:
    seconds = _seconds(session.created_at, now)
    if seconds is not None:
        PROVISION_SECONDS.labels(session.provider, "config").observe(seconds)


def session_ready(session) -> None:
    seconds = _seconds(session.created_at, session.ready_at)
    if seconds is not None:
        PROVISION_SECONDS.labels(session.provider, "server_up").observe(seconds)


def failure_reason(exc: BaseException) -> str:
    """The closed-set label for why provisioning failed."""
    from bot.replies import DeliveryError
    from provisioner.base import ProvisionError

    if isinstance(exc, DeliveryError):
        return "delivery"
    if isinstance(exc, (TimeoutError,)):
        return "timeout"
    if isinstance(exc, ProvisionError):
        return "interrupted" if "restarted" in str(exc) else "provider"
    return "internal"


def session_failed(exc: BaseException) -> None:
    FAILURES.labels(failure_reason(exc)).inc()


def teardown_done(session) -> None:
    TEARDOWNS.labels(session.provider).inc()


def reconcile_deleted(provider: str, count: int = 1) -> None:
    if count:
        RECONCILE_DELETED.labels(provider).inc(count)


def chat_message(channel: str, outcome: str) -> None:
    CHAT_MESSAGES.labels(channel[:32], outcome if outcome in CHAT_OUTCOMES else "handled").inc()


# ----- HTTP: latency and request ids (middleware on the bot's app) -------------------------------------


@web.middleware
async def observe_requests(request: web.Request, handler) -> web.StreamResponse:
    """Times every request by route template (never the raw path: it may hold a secret) and binds a request id for the logs."""
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if _REQUEST_ID.fullmatch(incoming) else secrets.token_hex(8)
    bind(request_id=request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        HTTP_SECONDS.labels(route, method, str(status)).observe(time.perf_counter() - started)


# ----- the /metrics endpoint on its own port ------------------------------------------------------------


class _Snapshot:
    """Sessions by state and provider, read from the store for one scrape."""

    def __init__(self, counts: dict[tuple[str, str], int] | None, providers: set[str]) -> None:
        self.counts, self.providers = counts, providers

    def collect(self):
        up = GaugeMetricFamily("vpn_store_up", "1 if the session store answered this scrape.")
        up.add_metric([], 1.0 if self.counts is not None else 0.0)
        yield up
        if self.counts is None:
            return
        gauge = GaugeMetricFamily("vpn_sessions", "Sessions holding (or about to hold) resources, by state and provider.", labels=["state", "provider"])
        for provider in sorted(self.providers | {p for _, p in self.counts}):
            for state in ACTIVE_STATES:
                gauge.add_metric([state.value, provider], float(self.counts.get((state.value, provider), 0)))
        yield gauge


class StoreGauges:
    """Active sessions by (state, provider), read from the store at most once per `ttl` seconds;
    scrapes arriving meanwhile, or together, share that read (a failed read too: None)."""

    def __init__(self, store, ttl: float | None = None) -> None:
        self._store = store
        self._ttl = STORE_GAUGES_SECONDS if ttl is None else ttl
        self._read_at = float("-inf")
        self._counts: dict | None = None
        self._lock = asyncio.Lock()

    async def counts(self) -> dict | None:
        async with self._lock:
            if time.monotonic() - self._read_at < self._ttl:
                return self._counts
            try:
                active = await self._store.sessions(list(ACTIVE_STATES))
                self._counts = collections.Counter((s.state.value, s.provider) for s in active)
            except Exception:
                log.exception("metrics: the store did not answer")
                self._counts = None
            self._read_at = time.monotonic()
            return self._counts


async def scrape(gauges: StoreGauges, provider_name: str) -> bytes:
    counts = await gauges.counts()
    snapshot = CollectorRegistry(auto_describe=False)
    snapshot.register(_Snapshot(counts, {provider_name}))
    return generate_latest(REGISTRY) + generate_latest(snapshot)


@contextlib.asynccontextmanager
async def serving(runtime) -> AsyncIterator[int]:
    """Serve /metrics on `VPN_METRICS_PORT` (on `VPN_METRICS_HOST`, 127.0.0.1 by default and always in dev mode) while the runtime lives; yields the port (0: off)."""
    settings = runtime.settings
    if not settings.metrics_port:
        yield 0
        return
    gauges = StoreGauges(runtime.store)

    async def handle(request: web.Request) -> web.Response:
        body = await scrape(gauges, runtime.provider.name)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host = "127.0.0.1" if settings.dev_mode else settings.metrics_host
    site = web.TCPSite(runner, host, settings.metrics_port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        log.error("metrics: cannot listen on %s:%d (%s); serving without /metrics", host, settings.metrics_port, exc.strerror or exc)
        yield 0
        return
    log.info("metrics on http://%s:%d/metrics", host, settings.metrics_port)
    try:
        yield settings.metrics_port
    finally:
        await runner.cleanup()
