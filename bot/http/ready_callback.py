"""The route a server (an Azure VM) calls when its tunnel is up: verified against the store, recorded once.

The tokens themselves are made and checked by the engine (bot/engine/ready_tokens.py); this module
is only the HTTP side, so the engine never imports aiohttp's server. The route is an object built
with exactly what it uses — a session reader and the engine's "record server up" — and registers itself.
"""
from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from bot.engine.ready_tokens import PATH, token_hash
from bot.store.model import Session, SessionState
from bot.store.ports import SessionReader

log = logging.getLogger(__name__)


class ReadyCallback:
    def __init__(self, sessions: SessionReader, record_server_up: Callable[[str], Awaitable[Session | None]]) -> None:
        self.sessions = sessions
        self.record_server_up = record_server_up

    def register(self, app: web.Application, path: str = PATH) -> None:
        app.router.add_post(path + "/{session:[0-9a-f]{1,32}}/{token:[A-Za-z0-9_-]{20,100}}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        """204 once recorded (repeats too); 404 for anything else, so a prober learns nothing."""
        session_id, token = request.match_info["session"], request.match_info["token"]
        s = await self.sessions.get(session_id)
        if s is None or not s.ready_token_hash or not hmac.compare_digest(token_hash(token), s.ready_token_hash):
            return web.Response(status=404)
        if s.state is SessionState.PROVISIONING and s.server_up_at is None:
            if await self.record_server_up(s.id) is not None:  # a compare-and-set: once, whoever gets it
                log.info("session %s: the server reports its tunnel up", s.id)
        elif s.state not in (SessionState.PROVISIONING, SessionState.READY):
            return web.Response(status=404)
        return web.Response(status=204)
