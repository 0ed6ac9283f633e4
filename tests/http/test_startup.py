"""Listen first (issue 20 item 1): `vpn-bot serve` on Table Storage that refuses (403) or is not listening yet.

The first replica of a new deployment meets a store it cannot use yet: the identity's role
assignment is still propagating (403) or the endpoint does not answer. The process must answer
/healthz at once, say 503 on /readyz and to requests that need the store (with Retry-After), and
turn ready by itself once the store answers — no crash, no restart. A small proxy on 127.0.0.1 in
front of Azurite plays the store: first closed or refusing, then forwarding.
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time

import aiohttp
import pytest

from tests.support.apprun import APP, app_env
from tests.support.loopback import free_port

SECRET = "startup-test-local-auth-secret-0123456789"
FORBIDDEN = (
    b'{"odata.error":{"code":"AuthorizationPermissionMismatch","message":{"lang":"en-US",'
    b'"value":"This request is not authorized to perform this operation using this permission."}}}'
)


class StoreDoor:
    """A loopback TCP front for Azurite: closed (nothing listens), refusing (every request 403, as Table
    Storage answers before a role assignment takes effect), or forwarding bytes both ways."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.mode = "closed"
        self.refused = 0
        self._server: asyncio.AbstractServer | None = None

    async def set(self, mode: str) -> None:
        self.mode = mode
        if self._server is None and mode != "closed":
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.mode == "refuse":
                await self._refuse(reader, writer)
            else:
                await self._forward(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        await reader.readexactly(int(length.group(1)) if length else 0)
        self.refused += 1
        writer.write(
            b"HTTP/1.1 403 This request is not authorized to perform this operation using this permission.\r\n"
            b"Content-Type: application/json;odata=minimalmetadata\r\nx-ms-error-code: AuthorizationPermissionMismatch\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(FORBIDDEN)).encode() + b"\r\n\r\n" + FORBIDDEN
        )
        await writer.drain()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def status(http: aiohttp.ClientSession, url: str) -> tuple[int, dict]:
    try:
        async with http.get(url) as resp:
            await resp.read()
            return resp.status, dict(resp.headers)
    except aiohttp.ClientConnectionError:
        return 0, {}


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used so far (/proc/<pid>/stat): unlike wall time, not slowed by a busy machine."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> bool:
    return os.getloadavg()[0] > (os.cpu_count() or 1)


async def wait_for(http: aiohttp.ClientSession, url: str, want: int, seconds: float, proc) -> float:
    """Polls `url` until it answers `want`; returns how long that took. The process must stay up throughout."""
    started = time.monotonic()
    while (await status(http, url))[0] != want:
        assert proc.returncode is None, "serve exited (a crash or a restart) instead of waiting for the store"
        assert time.monotonic() - started < seconds, f"{url} did not answer {want} within {seconds} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.parametrize("before", ["not listening", "refusing with 403"])
async def test_serve_listens_first_and_turns_ready_when_the_store_comes_up(azurite, tmp_path, before):
    door = StoreDoor(azurite.port)
    await door.set("refuse" if before.startswith("refusing") else "closed")
    port = free_port()
    env = app_env(
        tmp_path / "data", PORT=str(port), VPN_STORE="azure-tables", VPN_TABLE_PREFIX=azurite.prefix(),
        AZURE_STORAGE_CONNECTION_STRING=azurite.connection_string.replace(f":{azurite.port}/", f":{door.port}/"),
        VPN_LOCAL_AUTH_SECRET=SECRET,  # the web API: a route that needs the store
    )
    base = f"http://127.0.0.1:{port}"
    exec_at = time.monotonic()
    proc = await asyncio.create_subprocess_exec(sys.executable, APP, "serve", env=env, stderr=asyncio.subprocess.PIPE)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
            await wait_for(http, f"{base}/healthz", 200, 10, proc)
            to_healthz, cpu = time.monotonic() - exec_at, cpu_seconds(proc.pid)
            # Within 1 s of exec; on a machine busier than its cores, the process's own CPU time says the same.
            assert cpu < 1.0 and (to_healthz < 1.0 or machine_busy()), f"/healthz answered {to_healthz:.2f} s after exec ({cpu:.2f} s CPU)"
            assert (await status(http, f"{base}/readyz"))[0] == 503
            # A request that needs the store waits a little, then gets a clear 503 with Retry-After (not a 500).
            code, headers = await status(http, f"{base}/api/me")
            assert code == 503 and headers.get("Retry-After") == "5"
            assert (await status(http, f"{base}/healthz"))[0] == 200
            if door.mode == "refuse":
                assert door.refused >= 2  # tried again, not given up after the first 403
            await door.set("forward")
            to_ready = await wait_for(http, f"{base}/readyz", 200, 10, proc)
            assert to_ready < 5.0, f"/readyz turned 200 only {to_ready:.2f} s after the store came up"
            assert (await status(http, f"{base}/api/me"))[0] == 401  # served now: the store answers, the token is missing
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        await door.close()
    log = err.decode()
    assert proc.returncode == 0, log
    assert "Traceback" not in log and azurite.connection_string.split("AccountKey=")[1][:20] not in log
    waiting = [line for line in log.splitlines() if "the store is not reachable yet" in line]
    assert 1 <= len(waiting) <= 3, log  # one line per new reason, not one per retry
    print(f"{before}: /healthz {to_healthz:.2f} s after exec ({cpu:.2f} s CPU); /readyz 200 {to_ready:.2f} s after the store came up")
