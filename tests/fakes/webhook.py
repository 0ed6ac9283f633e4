"""A webhook receiver on 127.0.0.1 that does what docs/usage.md tells a receiver to do: verify every
signature (HMAC-SHA256 over the body) and the timestamp against replays, and count what arrives per
event id. Bad signatures are kept apart (and answered 401); `fail` makes chosen events answer 503, and
`down` every request (after verifying it)."""
from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

from tests.support.loopback import serve_on_loopback

REPLAY_WINDOW = 300


@dataclass
class WebhookReceiver:
    secret: str
    fail: dict[str, int] = field(default_factory=dict)  # event type or id -> how many first attempts answer 503
    received: list[dict] = field(default_factory=list)  # every verified body, in order
    accepted: Counter = field(default_factory=Counter)  # event id -> 2xx answers given
    refused: list[str] = field(default_factory=list)  # why a request was not verified
    raw: list[bytes] = field(default_factory=list)
    base_url: str = ""
    down: bool = False

    async def start(self) -> "WebhookReceiver":
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner, self.base_url = await serve_on_loopback(app)
        return self

    @property
    def url(self) -> str:
        return f"{self.base_url}/hook"

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.raw.append(body)
        expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("X-VPN-Signature", ""), expected):
            self.refused.append("signature")
            return web.Response(status=401)
        event = json.loads(body)
        stamp = request.headers.get("X-VPN-Timestamp", "")
        if stamp != str(event.get("timestamp")) or abs(time.time() - int(stamp)) > REPLAY_WINDOW:
            self.refused.append("timestamp")
            return web.Response(status=401)
        if request.headers.get("X-VPN-Event-Id") != event["id"] or request.headers.get("X-VPN-Event") != event["type"]:
            self.refused.append("headers")
            return web.Response(status=400)
        self.received.append(event)
        if self.down:
            return web.Response(status=503)
        for key in (event["id"], event["type"]):
            if self.fail.get(key, 0) > 0:
                self.fail[key] -= 1
                return web.Response(status=503)
        self.accepted[event["id"]] += 1
        return web.Response(status=204)

    def types(self) -> list[str]:
        return [e["type"] for e in self.received if self.accepted[e["id"]]]
