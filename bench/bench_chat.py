"""The Teams chat path under load, against the floor of its design and a bare botbuilder echo bot.

Starts a fake Bot Connector (tests/fakes/connector.py) and three bots, each in its own process: the
project (`app.py serve`, dev mode, dryrun with 0 s steps); the floor (this file with --floor-bot:
aiohttp alone, no botbuilder, none of the project's code, that acks an activity and posts the
project's own `/vpn help` reply, copied byte for byte from the connector, through one reused
ClientSession: the least this design can cost in Python on this machine); and a minimal botbuilder
echo bot (--echo-bot). No bot gets a token (dev mode): the last line prints what checking one costs.

    python bench/bench_chat.py [--rounds 3] [--window 64] [--help-seconds 3] [--start-rate 50] [--start-seconds 4]

Scenarios, interleaved over rounds: `help` (all three bots, the same closed loop: `--window`
requests in flight, each until its reply reached the connector; prints replies/s, ack and delivery
p50/p99, and the CPU per reply of the bot, the connector and the client), `paced` (the project's
/vpn help at the echo bot's measured throughput, open loop: ack p99 there), and `start` (project
only, open loop at --start-rate; delivered = the QR card; a second QR card for one user is a
duplicate). Then the medians, the project/floor ratio (median of the rounds' ratios) and the
project/echo ratio. `--profile FILE` samples the project's CPU (run_profiled_app). Asserts nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
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


# ----- the floor: what this design costs at the least (aiohttp alone, no botbuilder, none of our code) -----

def run_floor_bot(port: int, template_file: str) -> None:
    """Acknowledge a Bot Framework activity and post a reply to its conversation through one reused
    ClientSession: the least any bot of this design (ack at once, reply over the Bot Connector's REST
    API) can do in Python. The reply is the project's own `/vpn help` activity, byte for byte apart
    from the addressing (`template_file`: copied from the fake connector by main())."""
    from urllib.parse import quote

    from aiohttp import web

    template = json.loads(Path(template_file).read_text())
    for key in ("conversation", "from", "recipient", "channelId", "serviceUrl", "replyToId", "id"):
        template.pop(key, None)
    pending: set[asyncio.Task] = set()

    async def reply(http: aiohttp.ClientSession, act: dict) -> None:
        conv = act["conversation"]["id"]
        url = f"{act['serviceUrl'].rstrip('/')}/v3/conversations/{quote(conv, safe='')}/activities/{quote(act['id'], safe='')}"
        body = {**template, "conversation": {"id": conv}, "from": act["recipient"], "recipient": act["from"],
                "channelId": act["channelId"], "serviceUrl": act["serviceUrl"], "replyToId": act["id"]}
        try:
            async with http.post(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}) as resp:
                await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass

    async def messages(request: web.Request) -> web.Response:
        try:
            act = json.loads(await request.read())
        except ValueError:
            return web.Response(status=400)
        if act.get("type") == "message":
            task = asyncio.create_task(reply(request.app["http"], act))
            pending.add(task)
            task.add_done_callback(pending.discard)
        return web.Response(status=201)  # what botbuilder's CloudAdapter answers for a message

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def session(app: web.Application):
        async with aiohttp.ClientSession() as http:  # aiohttp's defaults, as the project's app-wide session
            app["http"] = http
            yield

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_post("/api/messages", messages)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# ----- processes ----------------------------------------------------------------------------------------

def run_profiled_app(out: str, argv: list[str]) -> int:
    """app.py's main(argv) with a sampling CPU profiler: every millisecond of the process's CPU time
    (SIGPROF) records the event loop thread's stack. Unlike cProfile it costs next to nothing and
    counts CPU, not the wall time a busy machine stretches. Writes FILE: the functions by samples in
    them and below them (inclusive) and by samples in them alone (self)."""
    import collections
    import signal

    import app

    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0

    def sample(signum, frame) -> None:
        nonlocal total
        total += 1
        seen = set()
        leaf = True
        while frame is not None:
            code = frame.f_code
            where = f"{code.co_filename.replace(str(ROOT) + '/', '').split('site-packages/')[-1]}:{code.co_firstlineno}({code.co_name})"
            if leaf:
                own[where] += 1
                leaf = False
            if where not in seen:
                seen.add(where)
                inclusive[where] += 1
            frame = frame.f_back

    signal.signal(signal.SIGPROF, sample)
    signal.setitimer(signal.ITIMER_PROF, 0.001, 0.001)
    try:
        return app.main(argv)
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        with open(out, "w") as f:
            f.write(f"{total} samples (1 ms of process CPU each; the leaf is the loop thread's frame when the signal is handled)\n")
            for title, counts in (("inclusive", inclusive), ("self", own)):
                f.write(f"\n{title}:\n")
                for where, n in counts.most_common(150):
                    f.write(f"{n:7d} {100 * n / max(1, total):5.1f}%  {where}\n")


def cpu_seconds(pid: int, main_thread: bool = False) -> float:
    """User + system CPU a process has used so far (Linux /proc); `main_thread`: its main thread's only
    (the event loop's; the rest of the project's is its store's thread, SQLite's work)."""
    try:
        fields = Path(f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    window: int = 0  # closed loop: requests in flight until replied (drive_window); 0 = open loop at `offered`
    cpu_ms: float = float("nan")  # the target's CPU per reply delivered, from the first request to the drain's end
    others_ms: tuple[float, float] = (float("nan"), float("nan"))  # the same for the fake connector and this process (the client)
    store_ms: float = float("nan")  # of cpu_ms: the project's threads other than the event loop's (its SQLite store's)


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


class Sender:
    """Posts activities to the bot, recording when each conversation's was sent, each ack's latency and the failures."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url
        self.sent_at: dict[str, float] = {}
        self.acks: list[float] = []
        self.bad = 0

    async def post(self, conv: str, body: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.sent_at[conv] = time.time()
        t = loop.time()
        try:
            async with self.http.post(self.url, data=body, headers={"Content-Type": "application/json"}) as resp:
                await resp.read()
                ok = resp.status < 300
        except (aiohttp.ClientError, asyncio.TimeoutError):
            ok = False
        if ok:
            self.acks.append(loop.time() - t)
        else:
            self.bad += 1


def _client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60))


async def drive(url: str, activities: list[dict], rate: float) -> tuple[dict[str, float], list[float], int]:
    """Open loop: activity i leaves at t0 + i/rate. Returns send times by conversation, ack latencies, failures."""
    loop = asyncio.get_running_loop()
    bodies = [(act["conversation"]["id"], json.dumps(act).encode()) for act in activities]  # before the clock starts
    async with _client() as http:
        sender = Sender(http, url)
        t0 = loop.time()
        tasks = []
        for i, (conv, body) in enumerate(bodies):
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(sender.post(conv, body)))
        await asyncio.gather(*tasks)
    return sender.sent_at, sender.acks, sender.bad


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


async def drive_window(url: str, connector: str, make: Callable[[int], dict], window: int, seconds: float) -> tuple[dict[str, float], list[float], int, list[str]]:
    """Closed loop for `seconds`: `window` requests in flight, each counted until its reply reached the
    connector (not until its ack: the floor and the project ack first and reply after). Returns send
    times by conversation, ack latencies, failures, and the conversations in the order sent."""
    loop = asyncio.get_running_loop()
    convs: list[str] = []
    async with _client() as http, aiohttp.ClientSession() as probe:
        sender = Sender(http, url)
        tasks = []
        delivered = 0
        t_end = loop.time() + seconds
        while loop.time() < t_end:
            while len(convs) - delivered - sender.bad < window:
                act = make(len(convs))
                convs.append(act["conversation"]["id"])
                tasks.append(asyncio.create_task(sender.post(convs[-1], json.dumps(act).encode())))
            await asyncio.sleep(0.005)
            async with probe.get(connector + "_bench/count") as resp:
                delivered = await resp.json()
        await asyncio.gather(*tasks)
    return sender.sent_at, sender.acks, sender.bad, convs


async def run_scenario(target: str, url: str, connector: str, scenario: str, round_no: int, rate: float, seconds: float, drain: float,
                       groupme: str = "", pid: int = 0, window: int = 0, connector_pid: int = 0) -> Result:
    """`window` > 0: closed loop (drive_window) for `seconds`; else open loop at `rate`."""
    await reset_connector(connector)
    n = max(1, int(rate * seconds))
    if window:
        acts = []
        convs = []
    elif scenario == "start":
        users = [aad("start", round_no, i) for i in range(n)]
        convs = [f"a:1personal-{u}" for u in users]
        acts = [message(connector, u, c, "/vpn start") for u, c in zip(users, convs)]
    else:
        users = [aad("help", 0, i % 200) for i in range(n)]
        convs = [f"a:1{scenario}-{target}-{round_no}-{i}" for i in range(n)]
        acts = [message(connector, u, c, "/vpn help") for u, c in zip(users, convs)]
    result = Result(target, scenario, rate, sent=n, window=window)
    cpu_before = cpu_seconds(pid) if pid else float("nan")
    loop_before = cpu_seconds(pid, main_thread=True) if pid and target == "project" else float("nan")
    others_before = (cpu_seconds(connector_pid) if connector_pid else float("nan"), time.process_time())
    t_first = time.time()
    stop = asyncio.Event()
    prober = asyncio.create_task(probe_groupme(groupme, stop, result)) if groupme else None
    try:
        if window:
            def make(i: int) -> dict:
                return message(connector, aad("help", 0, i % 200), f"a:1{scenario}-{target}-{round_no}-{i}", "/vpn help")

            sent_at, result.acks, result.bad_acks, convs = await drive_window(url, connector, make, window, seconds)
            result.sent = len(convs)
        else:
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
        result.cpu_ms = (cpu_seconds(pid) - cpu_before) * 1000 / len(firsts) if pid else float("nan")
        result.store_ms = result.cpu_ms - (cpu_seconds(pid, main_thread=True) - loop_before) * 1000 / len(firsts)
        result.others_ms = ((cpu_seconds(connector_pid) - others_before[0]) * 1000 / len(firsts) if connector_pid else float("nan"),
                            (time.process_time() - others_before[1]) * 1000 / len(firsts))
    return result


def show(r: Result) -> None:
    load = f"window {r.window:4d}  " if r.window else f"offered {r.offered:5.0f}/s"
    print(f"  {r.target:7s} {r.scenario:6s} {load} x{r.sent:5d}: throughput {r.throughput:6.1f}/s  "
          f"ack p50 {pct(r.acks, .5) * 1000:7.1f} ms p99 {pct(r.acks, .99) * 1000:7.1f} ms (failed {r.bad_acks})  "
          f"delivery p50 {pct(r.delivery, .5):6.2f} s p99 {pct(r.delivery, .99):6.2f} s  lost {r.lost}  duplicated {r.duplicated}  "
          f"CPU {r.cpu_ms:.2f} ms/reply" + (f" (off the event loop {r.store_ms:.2f})" if r.store_ms == r.store_ms else "")
          + f", connector {r.others_ms[0]:.2f}, client {r.others_ms[1]:.2f}"
          + (f"  GroupMe ack p99 {pct(r.groupme_acks, .99) * 1000:.1f} ms max {max(r.groupme_acks) * 1000:.1f} ms (x{len(r.groupme_acks)}, failed {r.groupme_bad})"
             if r.groupme_acks else ""), flush=True)


async def last_reply(connector: str) -> dict | None:
    async with aiohttp.ClientSession() as http:
        async with http.get(connector + "_bench/last") as resp:
            return await resp.json()


async def project_help_reply(url: str, connector: str, user: str) -> dict:
    """The activity the project posts for `/vpn help` (the floor bot sends the same bytes)."""
    await reset_connector(connector)
    conv = "a:1warm-up"
    await drive(url, [message(connector, user, conv, "/vpn help")], 1.0)
    for _ in range(100):
        body = await last_reply(connector)
        if body:
            return body
        await asyncio.sleep(0.1)
    raise SystemExit("the project did not answer /vpn help")


async def token_check_costs(n: int = 300) -> tuple[float, float, float]:
    """CPU per request of checking a Bot Framework channel token, in this process: (botbuilder's
    authentication as bot/channels/teams/auth.py sets it up, keys already downloaded, what the project
    does for a token it has not seen; the project's check of a plain message whose token it verified
    before, auth.py InboundTokens; PyJWT's decode alone with the key at hand, what a bare bot would
    do). The bots above run without
    tokens (dev mode), so neither cost is in their numbers: see docs/decisions.md, issue 25.4."""
    import jwt
    from aiohttp import web
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    from bot.channels.teams.auth import InboundTokens, build_adapter
    from bot.channels.teams.config import TeamsConfig
    from bot.channels.teams.inbound import auth_view

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issuer, app_id, service = "https://api.botframework.com", "00000000-0000-0000-0000-00000000000a", "https://smba.trafficmanager.net/emea/"
    jwk = {**json.loads(RSAAlgorithm.to_jwk(key.public_key())), "kid": "bench", "endorsements": ["msteams"]}

    async def metadata(request: web.Request) -> web.Response:
        return web.json_response({"issuer": issuer, "jwks_uri": str(request.url.with_path("/keys"))})

    async def keys(request: web.Request) -> web.Response:
        return web.json_response({"keys": [jwk]})

    app = web.Application()
    app.router.add_get("/openid", metadata)
    app.router.add_get("/keys", keys)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        config = TeamsConfig(app_id=app_id, app_password="not-used", tenant_id="00000000-0000-0000-0000-00000000000b",
                             channel_keys_url=f"http://127.0.0.1:{port}/openid")
        auth = build_adapter(config).bot_framework_authentication
        now = int(time.time())
        token = jwt.encode({"serviceurl": service, "nbf": now - 5, "exp": now + 3600, "iss": issuer, "aud": app_id}, key,
                           algorithm="RS256", headers={"kid": "bench"})
        activity = message(service, aad("help", 0, 0), "a:1token", "/vpn help")
        await auth.authenticate_request(auth_view(activity), f"Bearer {token}")  # downloads the keys once
        started = time.process_time()
        for _ in range(n):
            await auth.authenticate_request(auth_view(activity), f"Bearer {token}")
        project = (time.process_time() - started) / n
        inbound = InboundTokens(config, auth)
        await inbound.check(activity, f"Bearer {token}")  # verified by botbuilder once, then remembered
        started = time.process_time()
        for _ in range(n):
            await inbound.check(activity, f"Bearer {token}")
        remembered = (time.process_time() - started) / n
        public = key.public_key()
        started = time.process_time()
        for _ in range(n):
            claims = jwt.decode(token, public, algorithms=["RS256"], audience=app_id, issuer=issuer)
            if claims["serviceurl"] != activity["serviceUrl"]:
                raise AssertionError("serviceurl")
        bare = (time.process_time() - started) / n
    finally:
        await runner.cleanup()
    return project, remembered, bare


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-chat-"))
    procs: list[subprocess.Popen] = []
    try:
        conn = subprocess.Popen([sys.executable, "-m", "tests.fakes.connector"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        procs.append(conn)
        connector = conn.stdout.readline().strip()
        users = [aad("help", 0, i) for i in range(200)]
        users += [aad("start", r, i) for r in range(args.rounds) for i in range(int(args.start_rate * args.start_seconds))]
        project_port, echo_port, floor_port = free_port(), free_port(), free_port()
        env = app_env(**{
            "VPN_DEV_MODE": "1", "PORT": str(project_port), "VPN_DATA_DIR": str(tmp / "data"), "VPN_PROVIDER": "dryrun",
            "VPN_DRYRUN_STEP_SECONDS": "0", "VPN_MAX_SESSIONS": "10000",
            "WG_POOL": "10.64.0.0/12", "GROUPME_BOT_ID": "bench-bot", "GROUPME_GROUP_ID": GROUPME_GROUP,
            "GROUPME_CALLBACK_SECRET": GROUPME_SECRET, "GROUPME_API_URL": connector.rstrip("/"), "VPN_METRICS_PORT": "0", "VPN_USERS": ",".join(f"teams:{u}" for u in users), "PYTHONUNBUFFERED": "1",
        })
        project_log = open(tmp / "project.log", "w")
        command = [__file__, "--profiled-app", str(Path(args.profile).resolve())] if args.profile else [str(ROOT / "app.py")]
        project = subprocess.Popen([sys.executable, *command, "serve"], env=env, cwd=ROOT, stderr=project_log, stdout=project_log)
        echo = subprocess.Popen([sys.executable, __file__, "--echo-bot", str(echo_port)], cwd=ROOT, stderr=subprocess.DEVNULL)
        procs += [project, echo]
        await wait_healthy(f"http://127.0.0.1:{project_port}/healthz", project, "the project")
        targets = {"project": f"http://127.0.0.1:{project_port}/api/messages", "echo": f"http://127.0.0.1:{echo_port}/api/messages",
                   "floor": f"http://127.0.0.1:{floor_port}/api/messages"}
        template = tmp / "help-reply.json"
        template.write_text(json.dumps(await project_help_reply(targets["project"], connector, users[0])))
        floor = subprocess.Popen([sys.executable, __file__, "--floor-bot", str(floor_port), str(template)], cwd=ROOT)
        procs.append(floor)
        pids = {"project": project.pid, "echo": echo.pid, "floor": floor.pid}
        await wait_healthy(f"http://127.0.0.1:{echo_port}/healthz", echo, "the echo bot")
        await wait_healthy(f"http://127.0.0.1:{floor_port}/healthz", floor, "the floor bot")
        print(f"pids: project {project.pid}, floor {floor.pid}, echo {echo.pid}, connector {conn.pid}; project log {tmp / 'project.log'}; "
              f"the /vpn help reply is {len(template.read_bytes())} bytes of JSON")
        results: list[Result] = []
        for round_no in range(args.rounds):
            print(f"round {round_no + 1}", flush=True)
            # the same closed loop for all three; floor and project alternate which goes first
            order = ["floor", "project", "echo"] if round_no % 2 == 0 else ["project", "floor", "echo"]
            echo_tp = None
            for target in ([] if args.only_start else order):
                r = await run_scenario(target, targets[target], connector, "help", round_no, 0, args.help_seconds, args.drain,
                                       pid=pids[target], window=args.window, connector_pid=conn.pid)
                show(r)
                results.append(r)
                if target == "echo":
                    echo_tp = r.throughput
                await asyncio.sleep(0.5)
            if not args.only_start:
                paced = await run_scenario("project", targets["project"], connector, "paced", round_no, max(1.0, echo_tp or 50), args.help_seconds,
                                           args.drain, pid=project.pid, connector_pid=conn.pid)
                show(paced)
                results.append(paced)
            if args.start_seconds > 0:
                r = await run_scenario("project", targets["project"], connector, "start", round_no, args.start_rate, args.start_seconds, args.drain,
                                       groupme=f"http://127.0.0.1:{project_port}/api/groupme/{GROUPME_SECRET}", pid=project.pid, connector_pid=conn.pid)
                show(r)
                results.append(r)
            await asyncio.sleep(0.5)
        print("medians over rounds:")

        def med(target: str, scenario: str, fn) -> float:
            values = [fn(r) for r in results if r.target == target and r.scenario == scenario]
            return statistics.median(values) if values else float("nan")

        if not args.only_start:
            tp = {t: med(t, "help", lambda r: r.throughput) for t in ("floor", "project", "echo")}
            for t, what in (("floor", "floor bot (aiohttp only)"), ("project", "project /vpn help"), ("echo", "botbuilder echo bot")):
                print(f"  {what:25s} {tp[t]:7.1f} replies/s  ack p50 {med(t, 'help', lambda r: pct(r.acks, .5)) * 1000:6.1f} ms "
                      f"p99 {med(t, 'help', lambda r: pct(r.acks, .99)) * 1000:7.1f} ms  delivery p50 {med(t, 'help', lambda r: pct(r.delivery, .5)):5.2f} s "
                      f"p99 {med(t, 'help', lambda r: pct(r.delivery, .99)):5.2f} s  CPU {med(t, 'help', lambda r: r.cpu_ms):.2f} ms/reply")
            # Each round ran floor and project back to back: the median of their per-round ratios is steadier than
            # the ratio of medians when other work on the machine comes and goes.
            pairs = [(f.throughput, p.throughput) for f, p in zip(*([r for r in results if r.target == t and r.scenario == "help"]
                                                                     for t in ("floor", "project")))]
            ratio = statistics.median(p / f for f, p in pairs) if pairs else float("nan")
            print(f"  /vpn help throughput: project/floor {ratio:.2f}x (median of the rounds' {', '.join(f'{p / f:.2f}' for f, p in pairs)}; "
                  f"goal >= 0.8x), project/echo {tp['project'] / tp['echo']:.2f}x (goal >= 2x)")
            cpu_pairs = [(f.cpu_ms, p.cpu_ms) for f, p in zip(*([r for r in results if r.target == t and r.scenario == "help"]
                                                               for t in ("floor", "project")))]
            cpu_ratio = statistics.median(p / f for f, p in cpu_pairs) if cpu_pairs else float("nan")
            print(f"  CPU per reply: floor {med('floor', 'help', lambda r: r.cpu_ms):.2f} ms, project {med('project', 'help', lambda r: r.cpu_ms):.2f} ms "
                  f"(of which off the event loop, in its SQLite thread, {med('project', 'help', lambda r: r.store_ms):.2f} ms), echo {med('echo', 'help', lambda r: r.cpu_ms):.2f} ms; "
                  f"project/floor {cpu_ratio:.2f}x (median of the rounds' {', '.join(f'{p / f:.2f}' for f, p in cpu_pairs)}; steadier than replies/s on a shared machine)")
            print(f"  /vpn help ack p99 at the echo bot's maximum rate: {med('project', 'paced', lambda r: pct(r.acks, .99)) * 1000:.1f} ms (goal <= 100 ms)")
        if args.start_seconds > 0:
            print(f"  /vpn start at {args.start_rate:.0f}/s for {args.start_seconds:.0f} s: delivery p99 {med('project', 'start', lambda r: pct(r.delivery, .99)):.2f} s "
                  f"(goal <= 5 s), lost {med('project', 'start', lambda r: r.lost):.0f}, duplicated {med('project', 'start', lambda r: r.duplicated):.0f} (goal 0 and 0); "
                  f"GroupMe callbacks meanwhile: ack p99 {med('project', 'start', lambda r: pct(r.groupme_acks, .99)) * 1000:.1f} ms, "
                  f"max {med('project', 'start', lambda r: max(r.groupme_acks, default=float('nan'))) * 1000:.1f} ms (goal <= 100 ms)")
        project_log.flush()
        restarts = (tmp / "project.log").read_text().count("starting over")
        print(f"  project log: {restarts} 'starting over' restarts")
        if not args.only_start:
            project_check, remembered_check, bare_check = await token_check_costs()
            print(f"  token check per request in production (not in the runs above: all three bots run without tokens): "
                  f"a token the project has not seen (botbuilder's check) {project_check * 1e6:.0f} us, one it verified before "
                  f"{remembered_check * 1e6:.0f} us, PyJWT alone (what the floor would add) {bare_check * 1e6:.0f} us")
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
    if len(sys.argv) > 2 and sys.argv[1] == "--profiled-app":
        sys.exit(run_profiled_app(sys.argv[2], sys.argv[3:]))
    if len(sys.argv) == 4 and sys.argv[1] == "--floor-bot":
        run_floor_bot(int(sys.argv[2]), sys.argv[3])
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=int, default=64, help="/vpn help requests in flight (until replied) per bot")
    parser.add_argument("--help-seconds", type=float, default=3.0)
    parser.add_argument("--start-rate", type=float, default=50.0)
    parser.add_argument("--start-seconds", type=float, default=4.0, help="0 skips the /vpn start scenario")
    parser.add_argument("--drain", type=float, default=60.0, help="seconds to wait for replies after the last request")
    parser.add_argument("--profile", metavar="FILE", help="sample the project's CPU (run_profiled_app), the report written to FILE at the end")
    parser.add_argument("--only-start", action="store_true", help="skip the /vpn help scenarios (e.g. to profile starts)")
    asyncio.run(main(parser.parse_args()))
