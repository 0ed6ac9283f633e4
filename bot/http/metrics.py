"""Metrics over HTTP: the middleware that times every request of the bot's app, and /metrics on its own
port (`VPN_METRICS_PORT`, bound 127.0.0.1 unless `VPN_METRICS_HOST` says otherwise: it is
unauthenticated), never the bot's. Sessions by state are read from the shared store, so every
replica reports the same truth, at most once every `STORE_GAUGES_SECONDS` however often (and however
many at once) anyone scrapes.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import re
import secrets
import time
from typing import Any, AsyncIterator, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from bot.logs import bind
from bot.metrics import HTTP_CHILDREN, REGISTRY
from bot.store.model import ACTIVE_STATES
from bot.store.ports import SessionReader

log = logging.getLogger(__name__)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# A request without an id gets this process's random prefix and a count: unique across replicas for
# the logs, without a call to os.urandom per request (it is no secret).
_ID_PREFIX, _ID_COUNTER = secrets.token_hex(4), itertools.count()
STORE_GAUGES_SECONDS = 30.0  # a scrape inside this reuses the last store read (Prometheus scrapes every 15-60 s; the read is O(live))


@web.middleware
async def observe_requests(request: web.Request, handler) -> web.StreamResponse:
    """Times every request by route template (never the raw path: it may hold a secret) and binds a request id for the logs."""
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if _REQUEST_ID.fullmatch(incoming) else f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"
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
        HTTP_CHILDREN.of(route, method, str(status)).observe(time.perf_counter() - started)




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

    def __init__(self, store: SessionReader, ttl: float | None = None) -> None:
        self._store = store
        self._ttl = STORE_GAUGES_SECONDS if ttl is None else ttl
        self._read_at = float("-inf")
        self._counts: dict[Any, int] | None = None
        self._lock = asyncio.Lock()

    async def counts(self) -> dict[Any, int] | None:
        async with self._lock:
            if time.monotonic() - self._read_at < self._ttl:
                return self._counts
            try:
                self._counts = collections.Counter(await self._store.live_counts())
            except Exception:
                log.exception("metrics: the store did not answer")
                self._counts = None
            self._read_at = time.monotonic()
            return self._counts


async def scrape(gauges: StoreGauges, provider_name: str, store_open: bool = True) -> bytes:
    counts = await gauges.counts() if store_open else None  # vpn_store_up 0: also while start-up is still opening the store
    snapshot = CollectorRegistry(auto_describe=False)
    snapshot.register(_Snapshot(counts, {provider_name}))
    return generate_latest(REGISTRY) + generate_latest(snapshot)


@contextlib.asynccontextmanager
async def serving(store: SessionReader, provider_name: str, host: str, port: int, store_open: Callable[[], bool] = lambda: True) -> AsyncIterator[int]:
    """Serve /metrics on `port` (VPN_METRICS_PORT; 0: off) and `host` while the context lives; yields the port (0: off)."""
    if not port:
        yield 0
        return
    gauges = StoreGauges(store)

    async def handle(request: web.Request) -> web.Response:
        body = await scrape(gauges, provider_name, store_open())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        log.error("metrics: cannot listen on %s:%d (%s); serving without /metrics", host, port, exc.strerror or exc)
        yield 0
        return
    log.info("metrics on http://%s:%d/metrics", host, port)
    try:
        yield port
    finally:
        await runner.cleanup()
