"""Issue 25.3: what `serve` does after the store opens, in order. The sweeper's first pass lists every
live session (thousands, on a busy deployment), so the request that woke the replica, held at the
start-up gate while the store opened, is answered first — its work included — and the pass runs once,
not twice. In-process: the HTTP app as bot/wiring.py builds it, a store whose opening the test
releases, a channel whose one route answers at once and works in the task runner (as Teams does).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from bot import wiring
from bot.settings import Settings
from bot.wiring import Runtime, build_http_app, make_provider
from tests.support.factories import RecordingChannel
from tests.support.loopback import serve_on_loopback


@dataclass
class WorkingChannel(RecordingChannel):
    """POST /work: 202 at once, then `seconds` of work in the runner; notes when the work ended."""

    name: str = "working"
    seconds: float = 0.3
    events: list[tuple[str, float]] = field(default_factory=list)

    async def attach(self, deps):
        self.deps = deps

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/work", self._work)

    async def _work(self, request: web.Request) -> web.Response:
        self.deps.runner.start("work", self._run)
        return web.Response(status=202)

    async def _run(self) -> None:
        await asyncio.sleep(self.seconds)
        self.events.append(("work done", asyncio.get_running_loop().time()))


class Started:
    """`serve`'s HTTP app on a loopback port with the background sweeper on; the store opens when `release()` is called."""

    def __init__(self, tmp_path, channel: WorkingChannel) -> None:
        settings = Settings.from_env({"VPN_DATA_DIR": str(tmp_path / "data"), "VPN_USERS": "test:alice", "VPN_METRICS_PORT": "0"})
        settings.ops.data_dir.mkdir(parents=True, exist_ok=True)
        self.runtime = Runtime(settings, make_provider(settings), [channel], background=True)
        self.events = channel.events
        self._gate = asyncio.Event()
        loop = asyncio.get_running_loop()
        store, sweeper = self.runtime.store, self.runtime.service.sweeper
        real_open, real_sweep = store.open, sweeper.sweep

        async def open_when_released() -> None:
            await self._gate.wait()
            await real_open()
            self.events.append(("store open", loop.time()))

        async def sweep(*args, **kwargs):
            self.events.append(("sweep", loop.time()))
            return await real_sweep(*args, **kwargs)

        store.open = open_when_released
        sweeper.sweep = sweep

    async def __aenter__(self) -> Started:
        self._runner, self.base = await serve_on_loopback(build_http_app(self.runtime))
        return self

    async def __aexit__(self, *exc) -> None:
        await self._runner.cleanup()

    def release(self) -> None:
        self._gate.set()

    def at(self, event: str) -> list[float]:
        return [t for name, t in self.events if name == event]

    async def wait_for(self, event: str, seconds: float = 10.0) -> float:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self.at(event):
            assert loop.time() < deadline, f"no {event!r} within {seconds} s: {self.events}"
            await asyncio.sleep(0.01)
        return self.at(event)[0]


async def test_the_first_sweep_waits_for_the_request_start_up_held_back_and_runs_once(tmp_path, monkeypatch):
    monkeypatch.setattr(wiring, "SWEEP_DELAY_SECONDS", 0.05)
    monkeypatch.setattr(wiring, "SWEEP_GRACE_SECONDS", 5.0)
    async with Started(tmp_path, WorkingChannel(seconds=0.4)) as app, aiohttp.ClientSession() as http:
        post = asyncio.create_task(http.post(app.base + "/work"))  # arrives while the store is still opening
        await asyncio.sleep(0.2)
        assert not post.done()  # held at the start-up gate
        app.release()
        async with await post as resp:
            assert resp.status == 202
        opened, done, swept = await app.wait_for("store open"), await app.wait_for("work done"), await app.wait_for("sweep")
        assert opened < done < swept, app.events  # the held request's work first, then the sweeper
        await asyncio.sleep(0.5)
        assert len(app.at("sweep")) == 1, app.events  # one start-up pass: the sweeper's loop begins with it


async def test_the_first_sweep_waits_no_longer_than_the_grace(tmp_path, monkeypatch):
    monkeypatch.setattr(wiring, "SWEEP_DELAY_SECONDS", 0.05)
    monkeypatch.setattr(wiring, "SWEEP_GRACE_SECONDS", 0.5)
    async with Started(tmp_path, WorkingChannel(seconds=30)) as app, aiohttp.ClientSession() as http:
        post = asyncio.create_task(http.post(app.base + "/work"))
        await asyncio.sleep(0.2)
        app.release()
        async with await post as resp:
            assert resp.status == 202
        opened, swept = await app.wait_for("store open"), await app.wait_for("sweep")
        assert 0.4 < swept - opened < 3.0, app.events  # a /vpn start's provisioning does not hold the sweeper back
        assert not app.at("work done")
        await app.runtime.runner.cancel("work")  # not worth the runner's shutdown grace


async def test_ready_before_the_first_sweep_which_follows_a_short_delay_when_nothing_was_held(tmp_path, monkeypatch):
    monkeypatch.setattr(wiring, "SWEEP_DELAY_SECONDS", 0.5)
    loop = asyncio.get_running_loop()
    async with Started(tmp_path, WorkingChannel()) as app, aiohttp.ClientSession() as http:
        app.release()
        while True:
            async with http.get(app.base + "/readyz") as resp:
                if resp.status == 200:
                    break
            assert loop.time() - (app.at("store open") or [loop.time()])[0] < 5, "not ready 5 s after the store opened"
            await asyncio.sleep(0.01)
        ready = loop.time()
        assert not app.at("sweep")  # readiness = the store answers; the sweep catches up (decisions: issue 25.3)
        swept = await app.wait_for("sweep")
        assert 0.3 < swept - ready < 3.0, app.events
