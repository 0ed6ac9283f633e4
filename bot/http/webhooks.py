"""The engine's webhook POST (bot/engine/notify.py), over the runtime's one aiohttp client session.

No redirects (a signed body goes where it was configured to, nowhere else), a bounded time, the
response body unread: the engine only needs the status.
"""
from __future__ import annotations

import aiohttp

TIMEOUT = aiohttp.ClientTimeout(total=15)


class WebhookClient:
    def __init__(self) -> None:
        self._http: aiohttp.ClientSession | None = None

    def open(self, http: aiohttp.ClientSession) -> None:
        self._http = http

    async def __call__(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        if self._http is None:
            raise RuntimeError("the HTTP client is not open yet")
        async with self._http.post(url, data=body, headers=headers, timeout=TIMEOUT, allow_redirects=False) as resp:
            return resp.status
