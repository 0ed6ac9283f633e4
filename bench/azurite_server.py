"""Azurite's table service on 127.0.0.1 for the benchmarks (bench/ imports nothing from tests/).

The same start as tests/fakes/azurite.py: in memory, telemetry off, a free port, the well-known
development account (not a secret: it only opens a local emulator).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from urllib.parse import unquote

DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connection_string(port: int) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
            f"TableEndpoint=http://127.0.0.1:{port}/{DEV_ACCOUNT};")


class AzuriteServer:
    """`with AzuriteServer() as port:` Azurite listening on 127.0.0.1:port until the block ends."""

    def __enter__(self) -> int:
        exe = shutil.which("azurite-table")
        if exe is None:
            raise SystemExit("azurite-table is not installed: run scripts/install-test-deps.sh")
        self._workspace = tempfile.mkdtemp(prefix="azurite-bench-")
        self.port = free_port()
        env = dict(os.environ, APPLICATION_INSIGHTS_NO_STATSBEAT="1", AZURITE_DISABLE_TELEMETRY="1")
        self._proc = subprocess.Popen(
            [exe, "--tableHost", "127.0.0.1", "--tablePort", str(self.port), "--inMemoryPersistence", "--disableTelemetry",
             "--silent", "--skipApiVersionCheck"],
            env=env, cwd=self._workspace, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise SystemExit("azurite-table exited at start")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self.port
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        raise SystemExit("azurite-table did not listen within 30 s")

    @property
    def pid(self) -> int:
        return self._proc.pid

    def __exit__(self, *exc) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._workspace, ignore_errors=True)


class CountingProxy:
    """Forwards to Azurite (on `upstream`, its port) and notes each request in `log` as (time.time() on
    arrival, method, table, path with its query decoded). Start and stop it on a running loop."""

    HOP_BY_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})

    def __init__(self, upstream: int) -> None:
        self.upstream = f"http://127.0.0.1:{upstream}"
        self.log: list[tuple[float, str, str, str]] = []
        self.port = free_port()

    @property
    def seen(self) -> list[tuple[str, str, str]]:
        """(method, table, the path's first 90 characters) of each request."""
        return [(method, table, path[:90]) for _at, method, table, path in self.log]

    @property
    def times(self) -> list[float]:
        return [at for at, *_ in self.log]

    def clear(self) -> None:
        self.log.clear()

    async def start(self) -> None:
        import aiohttp
        from aiohttp import web

        self._http = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        await self._runner.cleanup()
        await self._http.close()

    async def _forward(self, request):
        from aiohttp import web
        from yarl import URL

        path = unquote(request.raw_path)
        table = re.split(r"[(/?]", path.removeprefix(f"/{DEV_ACCOUNT}/"), maxsplit=1)[0]
        self.log.append((time.time(), request.method, table, path))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in self.HOP_BY_HOP}
        body = await request.read()  # None when empty: aiohttp would add a Content-Type, which the signature covers
        async with self._http.request(request.method, URL(self.upstream + request.raw_path, encoded=True), headers=headers,
                                      data=body or None, skip_auto_headers=("Content-Type",)) as up:
            body = await up.read()
            out = {k: v for k, v in up.headers.items() if k.lower() not in self.HOP_BY_HOP}
            return web.Response(status=up.status, headers=out, body=body)
