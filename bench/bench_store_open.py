"""How many Table Storage requests `serve` and `reap` make before they do their work (issue 20.2: goal <= 3).

Runs the real `app.py serve` and `app.py reap` (dryrun provider, VPN_STORE=azure-tables) against an
in-memory Azurite this script starts, through a counting proxy on 127.0.0.1. "Before their work" is
every request up to the first one on a table other than the table list and `meta` (the deployment
id): the start-up sweep's first store call. Three runs: `serve` on a fresh account (it creates the
tables), `serve` again and `reap` (the tables exist: the case every replica start and every
per-minute `reap` run meets). Prints the counts and the requests; asserts nothing.

    python bench/bench_store_open.py

Imports nothing from tests/: bench/azurite_server.py starts Azurite the way tests/fakes/azurite.py does.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from azurite_server import AzuriteServer, CountingProxy, connection_string, free_port  # noqa: E402  (bench/ is the script's folder)


def before_work(seen: list[tuple[str, str, str]], prefix: str) -> list[tuple[str, str, str]]:
    out = []
    for method, table, path in seen:
        if table not in ("Tables", f"{prefix}meta"):
            break
        out.append((method, table, path))
    return out


async def run(command: str, env: dict[str, str], port: int) -> float:
    """`serve` until /healthz answers and the start-up sweep has had a moment; `reap` to its end."""
    t = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(sys.executable, str(ROOT / "app.py"), command, env=env, cwd=str(ROOT),
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    if command == "reap":
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        if proc.returncode:
            print(err.decode(errors="replace")[-2000:])
        return time.perf_counter() - t
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.02)
    up = time.perf_counter() - t
    await asyncio.sleep(1.5)
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    if proc.returncode:
        print(err.decode(errors="replace")[:3000])
    return up


async def main() -> None:
    with AzuriteServer() as azurite, tempfile.TemporaryDirectory() as data:
        proxy = CountingProxy(azurite)
        await proxy.start()
        try:
            prefix = "o" + secrets.token_hex(5)
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith(("VPN_", "WG_", "AZURE_", "GROUPME_", "Microsoft"))}
            env.update(VPN_DATA_DIR=data, VPN_STORE="azure-tables", AZURE_STORAGE_CONNECTION_STRING=connection_string(proxy.port),
                       VPN_TABLE_PREFIX=prefix, VPN_PROVIDER="dryrun", PORT=str(port), VPN_METRICS_PORT="0",
                       APPLICATION_INSIGHTS_NO_STATSBEAT="1", PYTHONUNBUFFERED="1")
            for label, command in (("serve, fresh account (creates the tables)", "serve"),
                                   ("serve, tables present", "serve"),
                                   ("reap, tables present", "reap")):
                proxy.clear()
                took = await run(command, env, port)
                setup = before_work(proxy.seen, prefix)
                print(f"{label}: {len(setup)} Table requests before its work ({len(proxy.seen)} in all; {took:.2f} s"
                      f"{' to /healthz' if command == 'serve' else ''})")
                for method, _table, path in setup:
                    print(f"    {method:6} {path}")
        finally:
            await proxy.stop()


if __name__ == "__main__":
    asyncio.run(main())
