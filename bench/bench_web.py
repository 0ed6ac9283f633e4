"""The web API's costs: a local login (the real PBKDF2 cost), start -> config ready, polling, and refusing bad tokens.

Runs `app.py serve` (the real web channel, service, SQLite store and dryrun provider) as its own
process on 127.0.0.1 and talks to it over HTTP, as a browser would; the account is made by
`app.py users add`, so its password hash has the real cost. Prints numbers; asserts nothing.

    python bench/bench_web.py [--sessions 10] [--polls 300] [--bad 1000]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from common import ROOT, app_env, free_port, wait_healthy  # bench/ is the script's folder

EMAIL, PASSWORD = "bench@example.org", "correct horse battery staple"


def ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:.1f} ms, max {max(values) * 1000:.1f} ms"


async def call(http: aiohttp.ClientSession, method: str, url: str, token: str = "", **kw) -> tuple[int, str, object]:
    """One request; returns the status, the Location header and the body (parsed when it is JSON)."""
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, url, headers=auth, allow_redirects=False, **kw) as resp:
        body = await resp.read()
        parsed = json.loads(body) if body and resp.content_type == "application/json" else body
        return resp.status, resp.headers.get("Location", ""), parsed


async def poll(http: aiohttp.ClientSession, url: str, token: str, done) -> None:
    """GET `url` every 50 ms (the page's rate) until `done(body)`."""
    async with asyncio.timeout(20):
        while True:
            status, _, body = await call(http, "GET", url, token)
            if status != 200:
                raise SystemExit(f"GET {url}: {status} {body!r}")
            if done(body):
                return
            await asyncio.sleep(0.05)


async def measure(args: argparse.Namespace, base: str) -> None:
    async with aiohttp.ClientSession() as http:
        logins = []
        for _ in range(3):
            t = time.perf_counter()
            status, _, body = await call(http, "POST", f"{base}/api/login", json={"email": EMAIL, "password": PASSWORD})
            logins.append(time.perf_counter() - t)
            if status != 200:
                raise SystemExit(f"login: {status} {body!r}")
        token = body["token"]
        print(f"login (PBKDF2-SHA256, 600k iterations): {ms(logins)}")

        ready = []
        for _ in range(args.sessions):
            t = time.perf_counter()
            _, location, s = await call(http, "POST", f"{base}/api/sessions", token)
            await poll(http, base + location, token, lambda b: b["config_ready"])
            ready.append(time.perf_counter() - t)
            await call(http, "GET", f"{base}/api/sessions/{s['id']}/config", token)
            await call(http, "DELETE", f"{base}/api/sessions/{s['id']}", token)
            await poll(http, base + location, token, lambda b: b["state"] == "deleted")  # one session per person at a time
        print(f"POST /api/sessions -> config_ready (dryrun, no step delay, 50 ms polls): {ms(ready)} over {args.sessions}")

        _, location, _ = await call(http, "POST", f"{base}/api/sessions", token)
        t = time.perf_counter()
        for _ in range(args.polls):
            await call(http, "GET", base + location, token)
        elapsed = time.perf_counter() - t
        print(f"GET /api/sessions/{{id}} sequential: {args.polls / elapsed:.0f} requests/s")

        forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
        t = time.perf_counter()
        for _ in range(args.bad):
            status, _, _ = await call(http, "POST", f"{base}/api/sessions", forged)
            assert status == 401
        elapsed = time.perf_counter() - t
        print(f"invalid bearer token -> 401: {args.bad / elapsed:.0f} requests/s ({elapsed / args.bad * 1000:.2f} ms each)")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = app_env(VPN_DATA_DIR=str(Path(tmp) / "data"), PORT=str(port), VPN_LOCAL_AUTH_SECRET=secrets.token_urlsafe(32),
                      VPN_USERS=f"local:{EMAIL}", VPN_MAX_SESSIONS="1000", VPN_DRYRUN_STEP_SECONDS="0", VPN_METRICS_PORT="0")
        app = [sys.executable, str(ROOT / "app.py")]
        # cwd: an empty folder, so no ./.env of the developer's is read.
        subprocess.run([*app, "users", "add", EMAIL], input=PASSWORD + "\n", env=env, cwd=tmp, text=True, check=True, capture_output=True)
        serve = subprocess.Popen([*app, "serve"], env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await wait_healthy(f"http://127.0.0.1:{port}/healthz", serve, "app.py serve")
            await measure(args, f"http://127.0.0.1:{port}")
        finally:
            serve.terminate()
            serve.wait(30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--polls", type=int, default=300)
    parser.add_argument("--bad", type=int, default=1000)
    asyncio.run(main(parser.parse_args()))
