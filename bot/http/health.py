"""/healthz (liveness: the process answers) and /readyz (readiness: start-up is done and the store answers)."""
from __future__ import annotations

import logging

from aiohttp import web

from bot.http.startup import Startup
from bot.store.ports import SessionReader

log = logging.getLogger(__name__)


class Health:
    """The two probes, built with exactly what they read: the provider's name, the store, the start-up state."""

    def __init__(self, provider_name: str, sessions: SessionReader, startup: Startup) -> None:
        self.provider_name = provider_name
        self.sessions = sessions
        self.startup = startup

    def register(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)

    async def healthz(self, request: web.Request) -> web.Response:
        """Cheap, touches nothing outside the process (a probe may call it every few seconds); 200 while
        the store is still opening, 503 only when start-up failed in a way retrying cannot fix."""
        if self.startup.failed:
            return web.json_response({"status": "failed", "provider": self.provider_name}, status=503)
        return web.json_response({"status": "ok", "provider": self.provider_name})

    async def readyz(self, request: web.Request) -> web.Response:
        """The store answers, so a message routed here can be handled."""
        if not self.startup.is_ready:
            return web.json_response({"status": "starting"}, status=503, headers={"Retry-After": "1"})
        try:
            await self.sessions.sessions([])
        except Exception:
            log.exception("readiness check: store unavailable")
            return web.json_response({"status": "unavailable"}, status=503)
        return web.json_response({"status": "ready"})
