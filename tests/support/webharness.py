"""The web channel in-process on a loopback port, with real HTTP clients; several replicas can share one store."""
from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from bot.channels.web.signin_local import hash_password
from bot.settings import Settings
from bot.store.ports import LocalUser
from bot.wiring import Runtime, build_http_app, make_channels, make_provider
from tests.support.loopback import serve_on_loopback

SECRET = "test-secret-" + "x" * 40
PASSWORD = "correct horse battery staple"


class WebApp:
    """One replica: `vpn-bot serve` as bot/wiring.py builds it, minus the signal handling."""

    def __init__(self, data_dir: Path, **env: str) -> None:
        values = {"VPN_DATA_DIR": str(data_dir), "VPN_LOCAL_AUTH_SECRET": SECRET, "VPN_DRYRUN_STEP_SECONDS": "0", **env}
        self.settings = Settings.from_env(values)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.provider = make_provider(self.settings)
        self.channels = make_channels(self.settings)
        self.runtime = Runtime(self.settings, self.provider, self.channels, background=False)
        self.base = ""
        self._runner = None

    async def start(self) -> "WebApp":
        self.app = build_http_app(self.runtime)
        self._runner, self.base = await serve_on_loopback(self.app)
        await self.runtime.opened()
        return self

    async def add_user(self, email: str, password: str = PASSWORD, iterations: int = 1000) -> None:
        """Tests hash with few iterations (the check reads them from the hash); one test covers the real cost."""
        await self.runtime.store.put_user(LocalUser(email, hash_password(password, iterations=iterations), self.runtime.service.clock()))

    async def settle(self) -> None:
        await self.runtime.runner.wait_idle()

    async def close(self) -> None:
        if self._runner:
            await self._runner.cleanup()


class Client:
    def __init__(self, http: aiohttp.ClientSession, base: str, token: str | None = None) -> None:
        self.http, self.base, self.token = http, base, token

    def headers(self, extra: dict | None = None) -> dict:
        h = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return {**h, **(extra or {})}

    async def call(self, method: str, path: str, *, json=None, data=None, headers: dict | None = None):
        async with self.http.request(method, self.base + path, json=json, data=data, headers=self.headers(headers), allow_redirects=False) as resp:
            body = await resp.read()
            return resp.status, resp.headers, body

    async def json(self, method: str, path: str, **kw):
        status, headers, body = await self.call(method, path, **kw)
        import json as _json

        return status, headers, (_json.loads(body) if body else None)

    async def login(self, email: str, password: str = PASSWORD) -> "Client":
        status, _, body = await self.json("POST", "/api/login", json={"email": email, "password": password})
        assert status == 200, body
        return Client(self.http, self.base, body["token"])

    async def wait_for(self, path: str, predicate, timeout: float = 20) -> dict:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            status, _, body = await self.json("GET", path)
            assert status == 200, body
            if predicate(body):
                return body
            assert asyncio.get_running_loop().time() < deadline, f"timed out; last: {body}"
            await asyncio.sleep(0.05)
