"""Listen first: the port opens before the store does, and requests that need it wait a little or get 503.

On a first deployment the store may refuse for minutes (a role assignment still propagating: 403)
or not listen yet; the process must not crash-loop meanwhile. `/healthz` answers at once, `/readyz`
says 503 until the wiring calls `ready()`, and every other route waits up to `wait_seconds` (a cold
start's first message usually arrives while the store is opening) and then gets a 503 with
Retry-After, which Teams redelivers and the web page retries. The requests held back that way are
counted until answered, so the wiring can let them go before its own start-up work (`settled`).
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
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
        self._held = 0  # requests that arrived before start-up was done and are not answered yet
        self._settled = asyncio.Event()
        self._settled.set()

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set()

    def ready(self) -> None:
        self._ready.set()

    def fail(self) -> None:
        self.failed = True

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Around a request that arrived before start-up was done, until it is answered."""
        self._held += 1
        self._settled.clear()
        try:
            yield
        finally:
            self._held -= 1
            if not self._held:
                self._settled.set()

    async def settled(self, seconds: float) -> bool:
        """True once every request held back by start-up has been answered; False after `seconds`."""
        try:
            await asyncio.wait_for(self._settled.wait(), seconds)
        except TimeoutError:
            return False
        return True

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
        with startup.holding():
            if await startup.wait(startup.wait_seconds):
                return await handler(request)
        return web.json_response(
            {"error": "The service is starting and cannot reach its store yet. Try again in a few seconds."},
            status=503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS), "Cache-Control": "no-store"},
        )

    return wait_for_startup
