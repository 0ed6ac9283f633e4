"""The route a server (an Azure VM) calls when its tunnel is up: verified against the store, recorded once.

The same authenticated URL carries the VM's traffic report every minute (issue 23): a JSON body
{"handshake": <epoch seconds, 0 = never>, "rx": <bytes the server received>, "tx": <bytes it sent>},
recorded by compare-and-set on whichever replica it reaches.

The tokens themselves are made and checked by the engine (bot/engine/ready_tokens.py); this module
is only the HTTP side, so the engine never imports aiohttp's server. The route is an object built
with exactly what it uses — a session reader and the engine's "record server up" — and registers itself.
"""
from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone

from aiohttp import web

from bot.engine.ready_tokens import PATH, token_hash
from bot.store.model import Session, SessionState
from bot.store.ports import SessionReader
from provisioner.base import Traffic

log = logging.getLogger(__name__)
MAX_REPORT = 1024  # bytes of a traffic report
MAX_COUNTER = 2**63 - 1


class ReadyCallback:
    def __init__(
        self, sessions: SessionReader, record_server_up: Callable[[str], Awaitable[Session | None]],
        record_traffic: Callable[[str, Traffic], Awaitable[Session | None]] | None = None,
    ) -> None:
        self.sessions = sessions
        self.record_server_up = record_server_up
        self.record_traffic = record_traffic

    def register(self, app: web.Application, path: str = PATH) -> None:
        app.router.add_post(path + "/{session:[0-9a-f]{1,32}}/{token:[A-Za-z0-9_-]{20,100}}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        """204 once recorded (repeats too); 404 for anything else, so a prober learns nothing."""
        session_id, token = request.match_info["session"], request.match_info["token"]
        s = await self.sessions.get(session_id)
        if s is None or not s.ready_token_hash or not hmac.compare_digest(token_hash(token), s.ready_token_hash):
            return web.Response(status=404)
        body = await request.content.read(MAX_REPORT + 1)
        if body.strip():
            return await self._report(s, body)
        if s.state is SessionState.PROVISIONING and s.server_up_at is None:
            if await self.record_server_up(s.id) is not None:  # a compare-and-set: once, whoever gets it
                log.info("session %s: the server reports its tunnel up", s.id)
        elif s.state not in (SessionState.PROVISIONING, SessionState.READY):
            return web.Response(status=404)
        return web.Response(status=204)

    async def _report(self, s: Session, body: bytes) -> web.Response:
        """A traffic report: 204 recorded (or unchanged), 400 malformed, 404 once the session is not live."""
        if s.state not in (SessionState.PROVISIONING, SessionState.READY):
            return web.Response(status=404)
        traffic = parse_report(body)
        if traffic is None:
            return web.Response(status=400, text="expected {\"handshake\": <epoch seconds>, \"rx\": <bytes>, \"tx\": <bytes>}")
        if self.record_traffic is not None:
            await self.record_traffic(s.id, traffic)
        return web.Response(status=204)


def parse_report(body: bytes) -> Traffic | None:
    """The VM's figures from the server's side: what it sent (tx) reached the user (bytes_in)."""
    if len(body) > MAX_REPORT:
        return None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    values = [data.get(k) for k in ("handshake", "rx", "tx")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_COUNTER for v in values):
        return None
    handshake, rx, tx = (int(v) for v in values)  # type: ignore[arg-type]  # checked above: whole numbers
    try:
        at = datetime.fromtimestamp(handshake, timezone.utc) if handshake else None
    except (OverflowError, OSError, ValueError):
        return None
    return Traffic(at, bytes_in=tx, bytes_out=rx)
