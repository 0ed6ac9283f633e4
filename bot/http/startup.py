"""Listen first: the port opens before the store does, and requests that need it wait a little or get 503.

On a first deployment the store may refuse for minutes (a role assignment still propagating: 403)
or not listen yet; the process must not crash-loop meanwhile. `/healthz` answers at once, `/readyz`
says 503 until the wiring calls `ready()`, and every other route waits up to `wait_seconds` (a cold
start's first message usually arrives while the store is opening) and then gets a 503 with
Retry-After, which Teams redelivers and the web page retries.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RETRY_AFTER_SECONDS = 5


class Startup:
    """Whether the parts behind the routes are up. Set once, by the wiring; read by /readyz and the gate."""

    def __init__(self, wait_seconds: float = 5.0) -> None:
        self.wait_seconds = wait_seconds
        self._ready = asyncio.Event()
        self.failed = False  # start-up hit something retrying cannot fix (logged): /healthz says so, so the process is replaced

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set()

    def ready(self) -> None:
        self._ready.set()

    def fail(self) -> None:
        self.failed = True

    async def wait(self, seconds: float) -> bool:
        """True once ready; False after `seconds` or when start-up failed."""
        if self._ready.is_set():
            return True
        if self.failed:
            return False
        try:
            await asyncio.wait_for(self._ready.wait(), seconds)
        except TimeoutError:
            return False
        return True


STARTUP = web.AppKey("startup", Startup)
UNGATED = frozenset({"/healthz", "/readyz"})


def gate(startup: Startup) -> Any:  # an aiohttp middleware (its Protocol type is private)
    """The middleware: routes other than the probes run only once start-up is done."""

    @web.middleware
    async def wait_for_startup(request: web.Request, handler: Handler) -> web.StreamResponse:
        if startup.is_ready or request.path in UNGATED or request.match_info.http_exception is not None:
            return await handler(request)  # unknown paths and methods get their 404/405 at once
        if await startup.wait(startup.wait_seconds):
            return await handler(request)
        return web.json_response(
            {"error": "The service is starting and cannot reach its store yet. Try again in a few seconds."},
            status=503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS), "Cache-Control": "no-store"},
        )

    return wait_for_startup
