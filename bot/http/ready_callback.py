"""The route a server (an Azure VM) calls when its tunnel is up: verified against the store, recorded once.

The tokens themselves are made and checked by the engine (bot/engine/ready_tokens.py); this module
is only the HTTP side, so the engine never imports aiohttp's server.
"""
from __future__ import annotations

import hmac
import logging

from aiohttp import web

from bot.engine.ready_tokens import PATH, token_hash
from bot.http.app import RUNTIME
from bot.store.model import SessionState

log = logging.getLogger(__name__)


async def handler(request: web.Request) -> web.Response:
    """204 once recorded (repeats too); 404 for anything else, so a prober learns nothing."""
    runtime = request.app[RUNTIME]
    session_id, token = request.match_info["session"], request.match_info["token"]
    s = await runtime.store.get(session_id)
    if s is None or not s.ready_token_hash or not hmac.compare_digest(token_hash(token), s.ready_token_hash):
        return web.Response(status=404)
    if s.state is SessionState.PROVISIONING and s.server_up_at is None:
        if await runtime.service.record_server_up(s.id) is not None:  # a compare-and-set: once, whoever gets it
            log.info("session %s: the server reports its tunnel up", s.id)
    elif s.state not in (SessionState.PROVISIONING, SessionState.READY):
        return web.Response(status=404)
    return web.Response(status=204)


def routes(app: web.Application) -> None:
    app.router.add_post(PATH + "/{session:[0-9a-f]{1,32}}/{token:[A-Za-z0-9_-]{20,100}}", handler)
