"""Isolation between channels: are GroupMe callbacks still acknowledged quickly while Teams is
flooded with `/vpn start`? (issue 10, item 4; goal: GroupMe acks within 100 ms during the burst.)

Separate processes, so that no measuring side steals the loop of the measured one:
  1. the fakes: a Bot Connector and a GroupMe API on 127.0.0.1 (`python -m tests.fakes.connector`,
     `python -m tests.fakes.groupme`, which prints the time each GroupMe post arrived);
  2. `python app.py serve` in dev mode (dryrun, 0 s steps) with Teams and GroupMe on;
  3. this script: an open-loop generator of Teams `/vpn start` from distinct users at --rate per
     second for --seconds, and one GroupMe `/vpn help` callback every --groupme-every seconds.

Prints ack p50/p99/max for both channels, GroupMe callback -> reply, and Teams configs delivered.
Asserts nothing. `--app` runs another checkout's app.py (e.g. a baseline worktree of main).

    python bench/bench_isolation.py [--rate 50] [--seconds 10] [--app path/to/app.py]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import app_env, fake_process  # bench/ is the script's folder

GROUP, SECRET, GM_USER = "4242", "bench-secret-0123456789", "111"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
FIRST_GM_ID = 9_000_000


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


# ----- the generator (process 3) ------------------------------------------------------------------------


async def wait_up(http: aiohttp.ClientSession, base: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            async with http.get(f"{base}/healthz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("serve did not come up")
        await asyncio.sleep(0.1)


def teams_activity(connector: str, aad: str, n: int) -> dict:
    return {
        "type": "message", "id": f"bench-{n}", "serviceUrl": connector, "channelId": "msteams",
        "from": {"id": f"29:user-{n}", "name": f"User {n}", "aadObjectId": aad},
        "conversation": {"conversationType": "personal", "tenantId": TENANT, "id": f"a:1personal-{n}"},
        "recipient": {"id": "28:vpn-bot", "name": "VPN Bot"}, "text": "/vpn start",
        "channelData": {"tenant": {"id": TENANT}},
    }


async def drive(args, urls: dict, base: str, aads: list[str], gm_posts: list[float]) -> dict:
    teams_acks: list[float] = []
    gm_acks: list[float] = []
    gm_sent: list[float] = []
    failures = {"teams": 0, "groupme": 0}
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as http:
        await wait_up(http, base)

        async def teams_one(n: int) -> None:
            t = time.perf_counter()
            try:
                async with http.post(f"{base}/api/messages", json=teams_activity(urls["connector"], aads[n], n)) as resp:
                    await resp.read()
                    ok = resp.status < 300
            except Exception:
                ok = False
            if ok:
                teams_acks.append(time.perf_counter() - t)
            else:
                failures["teams"] += 1

        async def groupme_one(i: int) -> None:
            msg = {"attachments": [], "created_at": int(time.time()), "group_id": GROUP, "id": str(FIRST_GM_ID + i),
                   "sender_type": "user", "system": False, "text": "/vpn help", "user_id": GM_USER, "sender_id": GM_USER}
            t = time.perf_counter()
            gm_sent.append(time.time())
            try:
                async with http.post(f"{base}/api/groupme/{SECRET}", json=msg, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except Exception:
                ok = False
            if ok:
                gm_acks.append(time.perf_counter() - t)
            else:
                failures["groupme"] += 1

        tasks = []
        start = time.perf_counter()
        total = int(args.rate * args.seconds)
        gm_count = int(args.seconds / args.groupme_every)
        gm_at = [start + 0.5 + i * args.groupme_every for i in range(gm_count)]
        teams_at = [start + i / args.rate for i in range(total)]
        events = sorted([(t, "teams", i) for i, t in enumerate(teams_at)] + [(t, "groupme", i) for i, t in enumerate(gm_at)])
        for at, kind, i in events:  # open loop: send on schedule whatever the answers do
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(teams_one(i) if kind == "teams" else groupme_one(i)))
        await asyncio.gather(*tasks)
        deadline = time.monotonic() + args.settle
        while True:
            async with http.get(urls["connector"] + "_bench/calls") as resp:  # [method, path, time, has QR, has file consent]
                calls = await resp.json()
            configs = sum(1 for method, path, _, _, consent in calls if method == "POST" and "/activities" in path and consent)
            stats = {"gm_posts": list(gm_posts), "teams_calls": len(calls), "teams_configs": configs}
            if (stats["teams_configs"] >= total and len(stats["gm_posts"]) >= gm_count) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    replies = sorted(stats["gm_posts"])
    reply_lat = [r - s for s, r in zip(sorted(gm_sent), replies)]  # n-th reply answers the n-th callback (one post each)
    return {"teams_acks": teams_acks, "gm_acks": gm_acks, "gm_reply": reply_lat, "failures": failures, "stats": stats,
            "teams_total": total, "gm_total": gm_count}


async def main(args) -> None:
    now = int(time.time())
    held = [{"attachments": [], "created_at": now, "group_id": GROUP, "id": str(FIRST_GM_ID + i), "name": "Bench", "sender_id": GM_USER,
             "sender_type": "user", "system": False, "text": "/vpn help", "user_id": GM_USER}
            for i in range(int(args.seconds / args.groupme_every) + 10)]  # what GroupMe holds, so the bot's verification finds each callback
    with fake_process("connector") as (connector, _), fake_process("groupme", json.dumps(held)) as (groupme, gm):
        gm_posts: list[float] = []  # when each of the bot's GroupMe posts arrived: the fake prints one JSON line per post
        threading.Thread(target=lambda: gm_posts.extend(json.loads(line)["at"] for line in gm.stdout), daemon=True).start()
        r = await run_app(args, {"connector": connector, "groupme": groupme}, gm_posts)
    show(args, r)


async def run_app(args, urls: dict, gm_posts: list[float]) -> dict:
    port = 20000 + os.getpid() % 20000
    base = f"http://127.0.0.1:{port}"
    aads = [str(uuid.UUID(int=i + 1)) for i in range(int(args.rate * args.seconds))]
    with tempfile.TemporaryDirectory() as tmp:
        env = app_env(**{
            "VPN_DATA_DIR": tmp, "PORT": str(port), "VPN_DEV_MODE": "1", "VPN_DRYRUN_STEP_SECONDS": "0", "VPN_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
            "VPN_USERS": ",".join([f"groupme:{GM_USER}"] + [f"teams:{a}" for a in aads]), "VPN_MAX_SESSIONS": "10000",
            "WG_POOL": "10.64.0.0/12", "VPN_PUBLIC_URL": base,
            "GROUPME_BOT_ID": "bench-bot", "GROUPME_GROUP_ID": GROUP, "GROUPME_CALLBACK_SECRET": SECRET,
            "GROUPME_ACCESS_TOKEN": "service-token", "GROUPME_API_URL": urls["groupme"],
            "GROUPME_USER_PER_MINUTE": "1000", "GROUPME_GROUP_PER_MINUTE": "10000",
        })
        serve = await asyncio.create_subprocess_exec(sys.executable, args.app, "serve", env=env, stderr=open(args.log, "w") if args.log else asyncio.subprocess.DEVNULL)
        try:
            return await drive(args, urls, base, aads, gm_posts)
        finally:
            serve.send_signal(signal.SIGTERM)
            await asyncio.wait_for(serve.wait(), 60)


def show(args, r: dict) -> None:
    ms = lambda v: f"{v * 1000:.0f} ms"  # noqa: E731
    print(f"app {args.app}: Teams /vpn start at {args.rate}/s for {args.seconds}s, GroupMe /vpn help every {args.groupme_every}s")
    print(f"  Teams acks:   n={len(r['teams_acks'])}/{r['teams_total']} p50 {ms(pct(r['teams_acks'], 50))} p99 {ms(pct(r['teams_acks'], 99))} max {ms(max(r['teams_acks'], default=0))}; failed {r['failures']['teams']}")
    print(f"  Teams configs delivered: {r['stats']['teams_configs']}/{r['teams_total']} ({r['stats']['teams_calls']} connector calls)")
    print(f"  GroupMe acks: n={len(r['gm_acks'])}/{r['gm_total']} p50 {ms(pct(r['gm_acks'], 50))} p99 {ms(pct(r['gm_acks'], 99))} max {ms(max(r['gm_acks'], default=0))}; failed/timed out {r['failures']['groupme']}"
          + f"; within 100 ms: {sum(1 for a in r['gm_acks'] if a <= 0.1)}")
    if r["gm_reply"]:
        print(f"  GroupMe callback -> reply posted: p50 {ms(statistics.median(r['gm_reply']))} max {ms(max(r['gm_reply']))} ({len(r['stats']['gm_posts'])} replies)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--groupme-every", type=float, default=0.2)
    parser.add_argument("--settle", type=float, default=60, help="seconds to wait for deliveries after the burst")
    parser.add_argument("--app", default=str(ROOT / "app.py"))
    parser.add_argument("--log", help="write the served app's log here")
    asyncio.run(main(parser.parse_args()))
