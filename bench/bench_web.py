"""The web API's costs: a local login (the real PBKDF2 cost), start -> config ready, polling, and refusing bad tokens.

Runs the real web channel, service, SQLite store and dryrun provider in-process behind real HTTP on
127.0.0.1. Prints numbers; asserts nothing.

    python bench/bench_web.py [--sessions 10] [--polls 300] [--bad 1000]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402

from tests.support.webharness import Client, WebApp  # noqa: E402


def ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:.1f} ms, max {max(values) * 1000:.1f} ms"


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        app = await WebApp(Path(tmp) / "data", VPN_USERS="local:bench@example.org", VPN_MAX_SESSIONS="1000").start()
        try:
            await app.add_user("bench@example.org", iterations=600_000)  # the real cost
            async with aiohttp.ClientSession() as http:
                anon = Client(http, app.base)
                logins = []
                for _ in range(3):
                    t = time.perf_counter()
                    client = await anon.login("bench@example.org")
                    logins.append(time.perf_counter() - t)
                print(f"login (PBKDF2-SHA256, 600k iterations): {ms(logins)}")

                ready = []
                for _ in range(args.sessions):
                    t = time.perf_counter()
                    _, headers, s = await client.json("POST", "/api/sessions")
                    await client.wait_for(headers["Location"], lambda b: b["config_ready"])
                    ready.append(time.perf_counter() - t)
                    await client.call("GET", f"/api/sessions/{s['id']}/config")
                    await client.call("DELETE", f"/api/sessions/{s['id']}")
                    await app.settle()
                print(f"POST /api/sessions -> config_ready (dryrun, no step delay, 50 ms polls): {ms(ready)} over {args.sessions}")

                _, headers, s = await client.json("POST", "/api/sessions")
                t = time.perf_counter()
                for _ in range(args.polls):
                    await client.call("GET", headers["Location"])
                elapsed = time.perf_counter() - t
                print(f"GET /api/sessions/{{id}} sequential: {args.polls / elapsed:.0f} requests/s")

                bad = Client(http, app.base, "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl")
                t = time.perf_counter()
                for _ in range(args.bad):
                    status, _, _ = await bad.call("POST", "/api/sessions")
                    assert status == 401
                elapsed = time.perf_counter() - t
                print(f"invalid bearer token -> 401: {args.bad / elapsed:.0f} requests/s ({elapsed / args.bad * 1000:.2f} ms each)")
        finally:
            await app.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--polls", type=int, default=300)
    parser.add_argument("--bad", type=int, default=1000)
    asyncio.run(main(parser.parse_args()))
