"""The aiohttp application: an app factory, typed keys, one cleanup context for the runtime.

Channels that speak HTTP (Teams, GroupMe) attach their routes here through `RouteHook`s.
"""
from __future__ import annotations

import logging
from typing import AsyncIterator, Callable

from aiohttp import web

from bot import metrics
from bot.runtime import Runtime

log = logging.getLogger(__name__)
RUNTIME = web.AppKey("runtime", Runtime)
MAX_BODY = 256 * 1024
RouteHook = Callable[[web.Application], None]


async def healthz(request: web.Request) -> web.Response:
    """Liveness: cheap, touches nothing outside the process (a probe may call it every few seconds)."""
    return web.json_response({"status": "ok", "provider": request.app[RUNTIME].provider.name})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the store answers, so a message routed here can be handled."""
    try:
        await request.app[RUNTIME].store.sessions([])
    except Exception:
        log.exception("readiness check: store unavailable")
        return web.json_response({"status": "unavailable"}, status=503)
    return web.json_response({"status": "ready"})


def create_app(make_runtime: Callable[[], Runtime], hooks: list[RouteHook] = ()) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[metrics.observe_requests])

    async def runtime_ctx(app: web.Application) -> AsyncIterator[None]:
        async with make_runtime() as runtime, metrics.serving(runtime):
            app[RUNTIME] = runtime
            yield

    app.cleanup_ctx.append(runtime_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    for hook in hooks:
        hook(app)
    return app
