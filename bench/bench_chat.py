"""The Teams chat path under load, side by side with a bare botbuilder echo bot.

Starts a fake Bot Connector (tests/fakes/connector.py), the project (`app.py serve`, dev mode, dryrun
with 0 s steps) and a minimal botbuilder echo bot (this file with --echo-bot), each in its own
process. Drives them with the same open-loop generator (requests leave on schedule whether or not
earlier ones were answered), interleaved over rounds, and prints per run: throughput, ack p50/p99,
delivery p99, lost and duplicated replies; then the medians and the project/echo ratio.

    python bench/bench_chat.py [--rounds 3] [--help-rate 250] [--help-seconds 6] [--start-rate 50] [--start-seconds 10]

Scenarios: `help` (both bots; delivered = the first reply in that conversation), `paced` (the
project's /vpn help at the echo bot's measured throughput: ack p99 there), and `start` (project
only; delivered = the QR card; a second QR card for one user is a duplicate). Asserts nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import app_env, free_port, wait_healthy  # bench/ is the script's folder

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


# ----- the bare echo bot (what botbuilder's samples do, nothing more) ----------------------------------

def run_echo_bot(port: int) -> None:
    from aiohttp import web
    from botbuilder.core import ActivityHandler, TurnContext
    from botbuilder.integration.aiohttp import CloudAdapter, ConfigurationBotFrameworkAuthentication

    class Config:
        APP_ID = ""
        APP_PASSWORD = ""
        APP_TYPE = "MultiTenant"
        APP_TENANTID = ""

    class EchoBot(ActivityHandler):
        async def on_message_activity(self, turn_context: TurnContext) -> None:
            await turn_context.send_activity(f"Echo: {turn_context.activity.text}")

    adapter = CloudAdapter(ConfigurationBotFrameworkAuthentication(Config()))
    bot = EchoBot()

    async def messages(request: web.Request) -> web.Response:
        return await adapter.process(request, bot)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/api/messages", messages)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# ----- processes ----------------------------------------------------------------------------------------

def aad(kind: str, round_no: int, i: int) -> str:
    return f"00000000-0000-{ {'help': 1, 'start': 2}[kind]:04d}-{round_no:04d}-{i:012d}"


# ----- load ---------------------------------------------------------------------------------------------

@dataclass
class Result:
    target: str
    scenario: str
    offered: float
    sent: int = 0
    acks: list[float] = field(default_factory=list)
    bad_acks: int = 0
    delivery: list[float] = field(default_factory=list)
    lost: int = 0
    duplicated: int = 0
    throughput: float = 0.0
    groupme_acks: list[float] = field(default_factory=list)  # GroupMe callbacks acked during the run
    groupme_bad: int = 0


def message(service_url: str, user: str, conv: str, text: str) -> dict:
    return {
        "type": "message", "id": uuid.uuid4().hex, "timestamp": "2026-11-25T12:00:00.000Z", "serviceUrl": service_url,
        "channelId": "msteams", "from": {"id": f"29:{user}", "name": "Bench User", "aadObjectId": user},
        "conversation": {"conversationType": "personal", "isGroup": False, "tenantId": TENANT, "id": conv},
        "recipient": {"id": "28:bench-bot", "name": "VPN Bot"}, "textFormat": "plain", "text": text,
        "channelData": {"tenant": {"id": TENANT}},
    }


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def drive(url: str, activities: list[dict], rate: float) -> tuple[dict[str, float], list[float], int]:
    """Open loop: activity i leaves at t0 + i/rate. Returns send times by conversation, ack latencies, failures."""
    loop = asyncio.get_running_loop()
    sent_at: dict[str, float] = {}
    acks: list[float] = []
    bad = 0
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as http:
        async def post(act: dict) -> None:
            nonlocal bad
            body = json.dumps(act).encode()
            sent_at[act["conversation"]["id"]] = time.time()
            t = loop.time()
            try:
                async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                    await resp.read()
                    ok = resp.status < 300
            except (aiohttp.ClientError, asyncio.TimeoutError):
                ok = False
            if ok:
                acks.append(loop.time() - t)
            else:
                bad += 1

        t0 = loop.time()
        tasks = []
        for i, act in enumerate(activities):
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(post(act)))
        await asyncio.gather(*tasks)
    return sent_at, acks, bad


GROUPME_SECRET = "bench-groupme-callback-secret"
GROUPME_GROUP = "4242"


async def probe_groupme(url: str, stop: asyncio.Event, result: Result, rate: float = 20.0) -> None:
    """A /vpn help callback every 1/rate s from a rotating GroupMe user: its ack time is what the
    issue's isolation goal bounds (another channel's backlog must not delay it)."""
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        i = 0
        while not stop.is_set():
            i += 1
            msg = {"group_id": GROUPME_GROUP, "id": str(10**12 + i), "user_id": str(1000 + i % 500), "sender_type": "user",
                   "system": False, "text": "/vpn help", "attachments": [], "name": "Bench"}
            t = loop.time()
            try:
                async with http.post(url, json=msg) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                ok = False
            if ok:
                result.groupme_acks.append(loop.time() - t)
            else:
                result.groupme_bad += 1
            await asyncio.sleep(max(0.0, t + 1 / rate - loop.time()))


async def connector_calls(base: str) -> list[list]:
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "_bench/calls") as resp:
            return await resp.json()


async def reset_connector(base: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(base + "_bench/reset") as resp:
            await resp.read()


def deliveries(calls: list[list], want_qr: bool) -> dict[str, list[float]]:
    """Times of the replies each conversation got: every POST (help) or every QR card (start)."""
    out: dict[str, list[float]] = {}
    for method, path, at, qr, _consent in calls:
        if method != "POST" or "/activities" not in path or (want_qr and not qr):
            continue
        conv = path.split("/conversations/", 1)[1].split("/activities", 1)[0]
        out.setdefault(conv, []).append(at)
    return out


async def run_scenario(target: str, url: str, connector: str, scenario: str, round_no: int, rate: float, seconds: float, drain: float, groupme: str = "") -> Result:
    await reset_connector(connector)
    n = max(1, int(rate * seconds))
    if scenario == "start":
        users = [aad("start", round_no, i) for i in range(n)]
        convs = [f"a:1personal-{u}" for u in users]
        acts = [message(connector, u, c, "/vpn start") for u, c in zip(users, convs)]
    else:
        users = [aad("help", 0, i % 200) for i in range(n)]
        convs = [f"a:1{scenario}-{target}-{round_no}-{i}" for i in range(n)]
        acts = [message(connector, u, c, "/vpn help") for u, c in zip(users, convs)]
    result = Result(target, scenario, rate, sent=n)
    t_first = time.time()
    stop = asyncio.Event()
    prober = asyncio.create_task(probe_groupme(groupme, stop, result)) if groupme else None
    try:
        sent_at, result.acks, result.bad_acks = await drive(url, acts, rate)
        want_qr = scenario == "start"
        deadline = time.time() + drain
        while True:  # GroupMe keeps calling until the backlog is delivered
            got = deliveries(await connector_calls(connector), want_qr)
            if all(c in got for c in convs) or time.time() > deadline:
                break
            await asyncio.sleep(0.5)
    finally:
        stop.set()
        if prober:
            await prober
    if want_qr:
        await asyncio.sleep(2)  # a duplicate would arrive after the first config
        got = deliveries(await connector_calls(connector), want_qr)
    firsts = [min(got[c]) for c in convs if c in got]
    result.delivery = [min(got[c]) - sent_at[c] for c in convs if c in got and c in sent_at]
    result.lost = sum(1 for c in convs if c not in got)
    result.duplicated = sum(1 for c in convs if len(got.get(c, ())) > 1) if want_qr else 0
    if firsts:
        result.throughput = len(firsts) / max(1e-6, max(firsts) - t_first)
    return result


def show(r: Result) -> None:
    print(f"  {r.target:7s} {r.scenario:6s} offered {r.offered:5.0f}/s x{r.sent:5d}: throughput {r.throughput:6.1f}/s  "
          f"ack p50 {pct(r.acks, .5) * 1000:7.1f} ms p99 {pct(r.acks, .99) * 1000:7.1f} ms (failed {r.bad_acks})  "
          f"delivery p99 {pct(r.delivery, .99):6.2f} s  lost {r.lost}  duplicated {r.duplicated}"
          + (f"  GroupMe ack p99 {pct(r.groupme_acks, .99) * 1000:.1f} ms max {max(r.groupme_acks) * 1000:.1f} ms (x{len(r.groupme_acks)}, failed {r.groupme_bad})"
             if r.groupme_acks else ""), flush=True)


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-chat-"))
    procs: list[subprocess.Popen] = []
    try:
        conn = subprocess.Popen([sys.executable, "-m", "tests.fakes.connector"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        procs.append(conn)
        connector = conn.stdout.readline().strip()
        users = [aad("help", 0, i) for i in range(200)]
        users += [aad("start", r, i) for r in range(args.rounds) for i in range(int(args.start_rate * args.start_seconds))]
        project_port, echo_port = free_port(), free_port()
        env = app_env(**{
            "VPN_DEV_MODE": "1", "PORT": str(project_port), "VPN_DATA_DIR": str(tmp / "data"), "VPN_PROVIDER": "dryrun",
            "VPN_DRYRUN_STEP_SECONDS": "0", "VPN_MAX_SESSIONS": "10000",
            "WG_POOL": "10.64.0.0/12", "GROUPME_BOT_ID": "bench-bot", "GROUPME_GROUP_ID": GROUPME_GROUP,
            "GROUPME_CALLBACK_SECRET": GROUPME_SECRET, "GROUPME_API_URL": connector.rstrip("/"), "VPN_METRICS_PORT": "0", "VPN_USERS": ",".join(f"teams:{u}" for u in users), "PYTHONUNBUFFERED": "1",
        })
        project_log = open(tmp / "project.log", "w")
        project = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "serve"], env=env, cwd=ROOT, stderr=project_log, stdout=project_log)
        echo = subprocess.Popen([sys.executable, __file__, "--echo-bot", str(echo_port)], cwd=ROOT, stderr=subprocess.DEVNULL)
        procs += [project, echo]
        await wait_healthy(f"http://127.0.0.1:{project_port}/healthz", project, "the project")
        await wait_healthy(f"http://127.0.0.1:{echo_port}/healthz", echo, "the echo bot")
        targets = {"project": f"http://127.0.0.1:{project_port}/api/messages", "echo": f"http://127.0.0.1:{echo_port}/api/messages"}
        print(f"pids: project {project.pid}, echo {echo.pid}, connector {conn.pid}; project log {tmp / 'project.log'}")
        results: list[Result] = []
        for round_no in range(args.rounds):
            print(f"round {round_no + 1}", flush=True)
            order = ["echo", "project"] if round_no % 2 == 0 else ["project", "echo"]
            echo_tp = None
            for target in ([] if args.only_start else order):
                r = await run_scenario(target, targets[target], connector, "help", round_no, args.help_rate, args.help_seconds, args.drain)
                show(r)
                results.append(r)
                if target == "echo":
                    echo_tp = r.throughput
                await asyncio.sleep(1)
            if not args.only_start:
                paced = await run_scenario("project", targets["project"], connector, "paced", round_no, max(1.0, echo_tp or 50), args.help_seconds, args.drain)
                show(paced)
                results.append(paced)
            if args.start_seconds > 0:
                r = await run_scenario("project", targets["project"], connector, "start", round_no, args.start_rate, args.start_seconds, args.drain,
                                       groupme=f"http://127.0.0.1:{project_port}/api/groupme/{GROUPME_SECRET}")
                show(r)
                results.append(r)
            await asyncio.sleep(1)
        print("medians over rounds:")

        def med(target: str, scenario: str, fn) -> float:
            values = [fn(r) for r in results if r.target == target and r.scenario == scenario]
            return statistics.median(values) if values else float("nan")

        if not args.only_start:
            echo_tp = med("echo", "help", lambda r: r.throughput)
            project_tp = med("project", "help", lambda r: r.throughput)
            print(f"  /vpn help throughput: project {project_tp:.1f}/s, echo {echo_tp:.1f}/s, ratio {project_tp / echo_tp:.2f}x (goal >= 2x)")
            print(f"  /vpn help ack p99 at the echo bot's maximum rate: {med('project', 'paced', lambda r: pct(r.acks, .99)) * 1000:.1f} ms (goal <= 100 ms)")
        if args.start_seconds > 0:
            print(f"  /vpn start at {args.start_rate:.0f}/s for {args.start_seconds:.0f} s: delivery p99 {med('project', 'start', lambda r: pct(r.delivery, .99)):.2f} s "
                  f"(goal <= 5 s), lost {med('project', 'start', lambda r: r.lost):.0f}, duplicated {med('project', 'start', lambda r: r.duplicated):.0f} (goal 0 and 0); "
                  f"GroupMe callbacks meanwhile: ack p99 {med('project', 'start', lambda r: pct(r.groupme_acks, .99)) * 1000:.1f} ms, "
                  f"max {med('project', 'start', lambda r: max(r.groupme_acks, default=float('nan'))) * 1000:.1f} ms (goal <= 100 ms)")
        project_log.flush()
        restarts = (tmp / "project.log").read_text().count("starting over")
        print(f"  project log: {restarts} 'starting over' restarts")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--echo-bot":
        run_echo_bot(int(sys.argv[2]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--help-rate", type=float, default=250.0, help="offered /vpn help rate (above both bots' capacity)")
    parser.add_argument("--help-seconds", type=float, default=6.0)
    parser.add_argument("--start-rate", type=float, default=50.0)
    parser.add_argument("--start-seconds", type=float, default=10.0, help="0 skips the /vpn start scenario")
    parser.add_argument("--drain", type=float, default=60.0, help="seconds to wait for replies after the last request")
    parser.add_argument("--only-start", action="store_true", help="skip the /vpn help scenarios (e.g. to profile starts)")
    asyncio.run(main(parser.parse_args()))
