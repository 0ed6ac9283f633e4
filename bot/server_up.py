"""The server's "my tunnel is up" callback, safe with any number of replicas.

Each provisioning attempt gets a random one-time token; only its SHA-256 is stored with the session
and only the server's boot config holds the token (in a URL). The callback may land on any replica:
it is verified against the store and recorded there (`server_up_at`), and the provisioning side,
wherever it runs, polls the store for it. Nothing depends on one process's memory or secret.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from typing import Awaitable, Callable

from aiohttp import web

from bot.sessions.model import SessionState
from bot.sessions.store import Store
from provisioner.wireguard import Secret

log = logging.getLogger(__name__)
PATH = "/api/server-up"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_callback(public_url: str, session_id: str) -> tuple[Secret | None, str]:
    """(the URL for the server, the hash to store); (None, "") when the bot has no public URL."""
    if not public_url:
        return None, ""
    token = secrets.token_urlsafe(32)
    return Secret(f"{public_url.rstrip('/')}{PATH}/{session_id}/{token}"), token_hash(token)


def recorded(store: Store, session_id: str) -> Callable[[], Awaitable[bool]]:
    """A check for the waiting side: has any replica recorded the callback?"""

    async def check() -> bool:
        s = await store.get(session_id)
        return s is not None and s.server_up_at is not None

    return check


async def handler(request: web.Request) -> web.Response:
    """204 once recorded (repeats too); 404 for anything else, so a prober learns nothing."""
    from bot.web import RUNTIME  # bot.web imports the runtime, which imports the service, which imports this

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
