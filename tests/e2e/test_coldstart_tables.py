"""Issue 25.3: a cold start on Table Storage holding live sessions. The real `app.py serve` (Teams in
dev mode, a fake Bot Connector on 127.0.0.1) reaches Azurite through a front that notes every request:
at most 3 before the port listens and none of them a listing of sessions; the sweeper's first listing
(and its heartbeat) come after the reply to the message that woke the replica, not ahead of it.
"""
from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from datetime import timedelta
from urllib.parse import unquote

import aiohttp
from aiohttp import web
from yarl import URL

from bot.store.model import SessionState, utcnow
from bot.store.tables import TableStore
from tests.channels.teams.harness import ALICE_AAD, TENANT, activity
from tests.fakes.azurite import DEV_ACCOUNT
from tests.fakes.connector import FakeConnector
from tests.support.apprun import APP, app_env
from tests.support.factories import new_session
from tests.support.loopback import free_port, serve_on_loopback

HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


class CountingFront:
    """Forwards to Azurite; notes (time.time() on arrival, method, table, decoded path) of each request."""

    def __init__(self, upstream: int) -> None:
        self.upstream = f"http://127.0.0.1:{upstream}"
        self.log: list[tuple[float, str, str, str]] = []

    async def start(self) -> str:
        self._http = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner, base = await serve_on_loopback(app)
        return base

    async def stop(self) -> None:
        await self._runner.cleanup()
        await self._http.close()

    async def _forward(self, request: web.Request) -> web.Response:
        path = unquote(request.raw_path)
        table = re.split(r"[(/?]", path.removeprefix(f"/{DEV_ACCOUNT}/"), maxsplit=1)[0]
        self.log.append((time.time(), request.method, table, path))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()  # None when empty: aiohttp would add a Content-Type, which the signature covers
        async with self._http.request(request.method, URL(self.upstream + request.raw_path, encoded=True), headers=headers,
                                      data=body or None, skip_auto_headers=("Content-Type",)) as up:
            out = {k: v for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=up.status, headers=out, body=await up.read())

    def listings(self, prefix: str) -> list[float]:
        """When the sessions table was listed by state (the sweeper; /readyz's probe is not a listing)."""
        return [at for at, method, table, path in self.log if method == "GET" and table == f"{prefix}sessions" and "state eq" in path]

    def sweeping(self, prefix: str) -> list[float]:
        """When the sweeper was at work: its listings and its heartbeat (the workers table), whichever comes first."""
        return sorted([*self.listings(prefix), *(at for at, _method, table, _path in self.log if table == f"{prefix}workers")])


async def listening(port: int, proc, deadline: float) -> float:
    """time.time() of the first TCP connect that succeeds."""
    while True:
        assert proc.returncode is None and time.monotonic() < deadline, "serve did not listen"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.002)
            continue
        at = time.time()
        writer.close()
        return at


async def test_a_cold_start_with_live_sessions_answers_before_it_sweeps(azurite, tmp_path):
    prefix, now = azurite.prefix(), utcnow()
    owners = [f"test:user{i}" for i in range(3)]
    store = TableStore.from_connection_string(azurite.connection_string, prefix=prefix)
    await store.open()  # the tables are present, as on every start after a deployment's first
    for owner in owners:
        live = new_session(owner, state=SessionState.READY, created_at=now - timedelta(minutes=5), ready_at=now - timedelta(minutes=4),
                           updated_at=now, expires_at=now + timedelta(hours=2), minutes=120)
        await store.create_session(live, per_user=1, total=100)
    await store.close()
    front = CountingFront(azurite.port)
    front_base = await front.start()
    connector = await FakeConnector().start()
    port = free_port()
    env = app_env(tmp_path / "data", PORT=str(port), VPN_DEV_MODE="1", VPN_USERS=",".join([f"teams:{ALICE_AAD}", *owners]),
                  VPN_STORE="azure-tables", VPN_TABLE_PREFIX=prefix,
                  AZURE_STORAGE_CONNECTION_STRING=azurite.connection_string.replace(f"http://127.0.0.1:{azurite.port}", front_base))
    message = activity("personal_message", serviceUrl=connector.base_url, aadObjectId=ALICE_AAD, tenantId=TENANT, text="vpn help")
    deadline = time.monotonic() + 30
    proc = await asyncio.create_subprocess_exec(sys.executable, APP, "serve", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        listened = await listening(port, proc, deadline)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{port}/api/messages", json=message) as resp:
                assert resp.status < 300, await resp.text()  # held at the start-up gate while the store opens, then taken
        while not connector.sent():
            assert time.monotonic() < deadline, "no reply"
            await asyncio.sleep(0.02)
        replied = connector.sent()[0].at
        while not front.listings(prefix):
            assert time.monotonic() < deadline, "the sweeper never listed the sessions"
            await asyncio.sleep(0.05)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        await connector.stop()
        await front.stop()
    assert proc.returncode == 0, err.decode()
    early = [(method, table) for at, method, table, _path in front.log if at < listened]
    assert len(early) <= 3, early  # issue 25.3: at most the table list and the deployment id before the port listens
    assert not any(table == f"{prefix}sessions" for _method, table in early), early
    assert replied < front.sweeping(prefix)[0], "the start-up sweep began before the first reply"
