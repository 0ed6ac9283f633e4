"""Start a fake platform server on 127.0.0.1 (a free port): the only place any fake listens."""
from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web


async def serve_on_loopback(app: web.Application) -> tuple[web.AppRunner, str]:
    """Returns the runner (clean it up to stop) and the base URL, e.g. http://127.0.0.1:41234."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - aiohttp exposes no public getter
    return runner, f"http://127.0.0.1:{port}"


def free_port() -> int:
    """A port nothing listens on right now, for a subprocess to bind."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_until_stopped(start: Callable[[], Awaitable[Any]]) -> None:
    """The body of `python -m tests.fakes.<name>` (how bench/ runs a fake: its own process, reached only
    over HTTP): start the fake, print its base URL as the first line, serve until SIGTERM or Ctrl-C."""

    async def main() -> None:
        fake = await start()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(fake.base_url, flush=True)
        try:
            await stop.wait()
        finally:
            await fake.stop()

    asyncio.run(main())
