"""GroupMe chatter: what a busy group costs the bot, and what it costs in Container Apps (issue 20.10).

GroupMe posts every message of a group to the bot's callback. A busy group: 200 messages an hour,
5 of them `/vpn` commands, plus the bot's own replies (GroupMe posts those back too: ~2 per command).

    python bench/bench_groupme_chatter.py [--requests 3000] [--per-hour 200] [--commands 5]

1. The callback handler alone, built directly (GroupMeChannel + a recording task runner), on a
   corpus of realistic chatter: µs per message with the early filter (as the code is) and without
   it ("before": the same code with chatter.py's two checks switched off, which is exactly the path
   every group message took before issue 20.10).
2. The whole app as a subprocess (`app.py serve`, GroupMe configured against a stub GroupMe on
   127.0.0.1 started here): server CPU per chatter callback over real HTTP (utime+stime from
   /proc), before and after, next to a `/healthz` request as the floor (aiohttp + middlewares).
3. The bill: Container Apps consumption, scale to zero with the default 300 s cool-down, and the
   alternative designs the issue lists (cool-down, concurrency, minReplicas=1, a front that drops
   chatter before anything wakes). List prices as docs/deploy.md uses them; check your region.

Imports nothing from tests/. Prints numbers (checks only that every chatter callback answers 200). Linux only (reads /proc).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp import streams, web  # noqa: E402
from aiohttp.test_utils import make_mocked_request  # noqa: E402

GROUP = "4242"
SECRET = "bench-secret-0123456789abcdef"
MONTH_S = 730 * 3600  # Azure's month

# Consumption plan list prices (USD, East US, as in docs/deploy.md) and the monthly free grant.
ACTIVE_VCPU_S, ACTIVE_GIB_S = 0.000024, 0.000003
GRANT_VCPU_S, GRANT_GIB_S, GRANT_REQUESTS = 180_000, 360_000, 2_000_000
REAP_VCPU_S, REAP_GIB_S = 108_000, 216_000  # the per-minute reap job's share of the grant (docs/deploy.md)
# Azure Functions Flex Consumption, on demand (the front): list prices and free grant as we know them.
FLEX_GB_S, FLEX_PER_MILLION, FLEX_GRANT_GB_S, FLEX_GRANT_EXECUTIONS = 0.000026, 0.40, 100_000, 250_000

WORDS = ("meeting tomorrow slides coffee lunch the a to is we are going late sorry thanks great idea "
         "who has the keys parking weekend game score photos link agenda notes budget report ok yes no maybe").split()
EMOJI = ("😂", "👍", "🎉", "❤️", "🙏", "😅", "🔥")
ZWJ = ("👨\u200d👩\u200d👧", "🏳️\u200d🌈", "🧑\u200d💻")


def corpus(seed: int = 20, bot_posts: int = 10) -> list[dict]:
    """One hour of non-command callbacks in a busy group: 195 messages from people plus the bot's
    own replies to the 5 commands (GroupMe posts them back to the callback, `sender_type: bot`)."""
    rnd = random.Random(seed)
    ids = iter(range(180_000_000_000_000_000, 10**19))

    def sentence(n: int) -> str:
        return " ".join(rnd.choice(WORDS) for _ in range(n)).capitalize() + rnd.choice((".", "?", "!", ""))

    def msg(text, *, sender_type="user", attachments=()):
        user = str(rnd.randint(10_000_000, 99_999_999))
        return {"attachments": list(attachments), "avatar_url": f"https://i.groupme.com/1024x1024.jpeg.{rnd.getrandbits(128):032x}",
                "created_at": 1_700_000_000 + rnd.randint(0, 3600), "favorited_by": [], "group_id": GROUP, "id": str(next(ids)),
                "name": rnd.choice(("Alice", "Bob", "Chen", "Dana", "Eve")), "platform": "gm", "sender_id": user,
                "sender_type": sender_type, "source_guid": f"{rnd.getrandbits(128):032x}", "system": False, "text": text, "user_id": user}

    out = [msg(sentence(rnd.randint(2, 30))) for _ in range(120)]                                      # plain ASCII talk
    out += [msg(f"{sentence(rnd.randint(2, 20))} {rnd.choice(EMOJI)}") for _ in range(30)]            # with emoji
    out += [msg(f"{sentence(rnd.randint(2, 10))} {rnd.choice(ZWJ)}") for _ in range(5)]               # emoji joined by U+200D
    out += [msg(rnd.choice(("", None)), attachments=[{"type": "image", "url": f"https://i.groupme.com/960x1280.jpeg.{rnd.getrandbits(64):016x}"}])
            for _ in range(15)]                                                                       # photos
    out += [msg(f"@Dana {sentence(rnd.randint(2, 15))}", attachments=[{"type": "mentions", "user_ids": ["123"], "loci": [[0, 5]]}])
            for _ in range(10)]                                                                       # @mentions
    out += [msg(f"is the vpn {rnd.choice(('down', 'slow', 'working'))} for anyone {rnd.choice(('today', 'else'))}?") for _ in range(10)]
    out += [msg(sentence(120)) for _ in range(5)]                                                     # > 500 characters
    out += [msg(rnd.choice(("Starting your VPN session (about a minute)...", "I sent you a direct message with a one-time link to your config.",
                            "Your VPN session ends at 14:30. /vpn extend 30 adds time.")), sender_type="bot") for _ in range(bot_posts)]
    rnd.shuffle(out)
    return out


def encode(msgs: list[dict], escaped: bool) -> list[bytes]:
    """GroupMe's JSON: compact; raw UTF-8 unless --escaped (\\uXXXX for everything non-ASCII)."""
    return [json.dumps(m, separators=(",", ":"), ensure_ascii=escaped).encode() for m in msgs]


# ----- 1. the handler alone ---------------------------------------------------------------------------


class _Runner:
    """Records what the callback hands to the task runner (a message that goes on to GroupMe, the store, a reply)."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def start(self, name, factory):
        self.started.append(name)


class _Protocol:
    _reading_paused = False

    def pause_reading(self, *args, **kwargs) -> None: ...
    def resume_reading(self, *args, **kwargs) -> None: ...


def _request(body: bytes, loop: asyncio.AbstractEventLoop):
    payload = streams.StreamReader(_Protocol(), 2**17, loop=loop)  # type: ignore[arg-type]
    payload.feed_data(body)
    payload.feed_eof()
    return make_mocked_request("POST", f"/api/groupme/{SECRET}", match_info={"secret": SECRET}, payload=payload,
                               headers={"Content-Type": "application/json", "Content-Length": str(len(body))})


def _filter_off() -> dict:
    """Switch the early filter off in the channel module ("before"); returns what to put back."""
    import bot.channels.groupme.channel as module

    saved = {name: getattr(module, name) for name in ("cannot_be_a_command", "addressed") if hasattr(module, name)}
    if "cannot_be_a_command" in saved:
        module.cannot_be_a_command = lambda body: False
    if "addressed" in saved:
        module.addressed = lambda text: True
    return saved


def _restore(saved: dict) -> None:
    import bot.channels.groupme.channel as module

    for name, value in saved.items():
        setattr(module, name, value)


async def handler_cost(bodies: list[bytes], rounds: int) -> dict:
    from bot.channels.deps import ChatDeps
    from bot.channels.groupme.channel import GroupMeChannel
    from bot.channels.groupme.config import GroupMeConfig

    loop = asyncio.get_running_loop()
    never = lambda *a, **k: (_ for _ in ()).throw(AssertionError("chatter reached a dependency"))  # noqa: E731
    # Limits far above the corpus: what is measured is the path each message takes, not the limiter's refusals.
    channel = GroupMeChannel(GroupMeConfig(bot_id="b", group_ids=(GROUP,), callback_secret=SECRET, access_token="svc",
                                           public_url="http://127.0.0.1:1", per_user_per_minute=1000, per_group_per_minute=10_000))
    runner = _Runner()
    async with aiohttp.ClientSession() as http:
        await channel.attach(ChatDeps(http=http, clock=never, runner=runner, handle=never, notify=never, welcome=never,
                                      configs=None, sessions=None))  # type: ignore[arg-type]
        per_round: list[float] = []
        per_message = [0.0] * len(bodies)
        for r in range(rounds):
            requests = [_request(b, loop) for b in bodies]
            total = 0
            for i, req in enumerate(requests):
                t = time.perf_counter_ns()
                resp = await channel._callback(req)  # noqa: SLF001 - the handler is what is measured
                dt = time.perf_counter_ns() - t
                total += dt
                per_message[i] = dt if r == 0 else min(per_message[i], dt)
                assert resp.status == 200, resp.status
            per_round.append(total / len(bodies) / 1000)
            if r == 0:
                first_round_starts = len(runner.started)
    return {"mean_us": min(per_round), "median_round_us": statistics.median(per_round), "per_message_us": [x / 1000 for x in per_message],
            "runner_starts_per_corpus": first_round_starts}


# ----- 2. the app as a subprocess ---------------------------------------------------------------------


BOOT = """
import sys
sys.path.insert(0, {root!r})
if sys.argv[1] == "before":
    import bot.channels.groupme.channel as module
    if hasattr(module, "cannot_be_a_command"):
        module.cannot_be_a_command = lambda body: False
        module.addressed = lambda text: True
import app
sys.exit(app.main(["serve"]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of the process, in ns resolution (schedstat; /proc/<pid>/stat counts 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that just ended
    return total / 1e9


async def stub_groupme() -> tuple[web.AppRunner, str, dict]:
    """GroupMe as far as the bot reaches it here: posts accepted, no stored messages (304), DMs accepted."""
    seen = {"bots/post": 0, "messages": 0, "direct_messages": 0}

    def count(key: str, status: int):
        async def handle(request: web.Request) -> web.Response:
            seen[key] += 1
            await request.read()
            return web.Response(status=status)
        return handle

    app = web.Application()
    app.router.add_post("/v3/bots/post", count("bots/post", 202))
    app.router.add_get("/v3/groups/{group}/messages", count("messages", 304))
    app.router.add_post("/v3/direct_messages", count("direct_messages", 201))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001
    return runner, f"http://127.0.0.1:{port}/v3", seen


async def server_cost(mode: str, bodies: list[bytes], n: int, stub_url: str, seen: dict, blocks: int = 5) -> dict:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VPN_", "WG_", "AZURE_", "GROUPME_", "Microsoft"))}
        env.update(PYTHONUNBUFFERED="1", VPN_DATA_DIR=tmp, PORT=str(port), VPN_PUBLIC_URL=f"http://127.0.0.1:{port}", VPN_USERS="groupme:1",
                   GROUPME_BOT_ID="bot-1", GROUPME_GROUP_ID=GROUP, GROUPME_CALLBACK_SECRET=SECRET, GROUPME_ACCESS_TOKEN="svc",
                   GROUPME_API_URL=stub_url, VPN_LOG_LEVEL="WARNING")
        proc = subprocess.Popen([sys.executable, "-c", BOOT.format(root=str(ROOT)), mode], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as http:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        async with http.get(f"{base}/healthz") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        pass
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit(f"serve did not come up: {proc.stderr.read().decode()[-2000:] if proc.poll() is not None else ''}")
                    await asyncio.sleep(0.05)
                url = f"{base}/api/groupme/{SECRET}"
                headers = {"Content-Type": "application/json"}

                async def post(body: bytes) -> None:
                    async with http.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        assert resp.status == 200, resp.status

                async def health() -> None:
                    async with http.get(f"{base}/healthz") as resp:
                        await resp.read()

                for i in range(300):  # warm-up: imports on first use, caches
                    await post(bodies[i % len(bodies)])
                    await health()
                await asyncio.sleep(2.0)  # let the warm-up's background work finish
                before_calls = dict(seen)
                healthz, callbacks = [], []
                per_block = n // blocks
                for block in range(blocks):  # alternating blocks: drift on a shared machine hits both alike
                    c0 = cpu_seconds(proc.pid)
                    for _ in range(per_block):
                        await health()
                    c1 = cpu_seconds(proc.pid)
                    for i in range(per_block):
                        await post(bodies[(block * per_block + i) % len(bodies)])
                    c2 = cpu_seconds(proc.pid)
                    healthz.append((c1 - c0) / per_block * 1e6)
                    callbacks.append((c2 - c1) / per_block * 1e6)
                c2 = cpu_seconds(proc.pid)
                await asyncio.sleep(2.0)  # the last background work the callbacks started (GroupMe re-fetch, retry after 1 s, replies)
                background_ms = (cpu_seconds(proc.pid) - c2) * 1e3
                calls = {k: seen[k] - before_calls[k] for k in seen}
        finally:
            proc.terminate()
            proc.wait(20)
    return {"healthz_us": statistics.median(healthz), "callback_us": statistics.median(callbacks),
            "background_ms": background_ms, "groupme_calls": calls}


# ----- 3. the bill ------------------------------------------------------------------------------------


def dollars(vcpu_s: float, gib_s: float, reap_uses_grant: bool) -> tuple[float, float]:
    """(gross, after the free grant) for one month at active rates."""
    gross = vcpu_s * ACTIVE_VCPU_S + gib_s * ACTIVE_GIB_S
    left_vcpu = GRANT_VCPU_S - (REAP_VCPU_S if reap_uses_grant else 0)
    left_gib = GRANT_GIB_S - (REAP_GIB_S if reap_uses_grant else 0)
    net = max(0.0, vcpu_s - left_vcpu) * ACTIVE_VCPU_S + max(0.0, gib_s - left_gib) * ACTIVE_GIB_S
    return gross, net


def replica_seconds_per_hour(wakes_per_hour: float, cooldown: float, cold_start: float, polling: float) -> float:
    """Replica time per hour for wakes evenly spread: each wake keeps it up for the cool-down (noticed
    at the next KEDA poll) after the last request; wakes closer together than that never let it stop."""
    if wakes_per_hour <= 0:
        return 0.0
    gap = 3600 / wakes_per_hour
    stay = cooldown + polling / 2  # on average half a polling interval before the cool-down is noticed
    if gap <= stay:
        return 3600.0
    return min(3600.0, wakes_per_hour * (cold_start + stay))


def bill(args: argparse.Namespace, after_us: float, before_us: float) -> None:
    cpu, mem = args.cpu, args.memory
    callbacks_h = args.per_hour + args.bot_posts
    chatter_h = callbacks_h - args.commands
    month_callbacks = callbacks_h * 730

    def line(label: str, seconds_h: float, extra: str = "") -> float:
        up = seconds_h / 3600
        vcpu_s, gib_s = cpu * seconds_h * 730, mem * seconds_h * 730
        gross, net = dollars(vcpu_s, gib_s, not args.grant_unused)
        print(f"  {label:<58} up {up:6.1%}  {vcpu_s:>10,.0f} vCPU-s {gib_s:>10,.0f} GiB-s  ${gross:6.2f} gross  ${net:6.2f} net{extra}")
        return net

    print(f"\n3. Container Apps consumption, {cpu} vCPU / {mem} GiB per replica, minReplicas=0, cool-down {args.cooldown:.0f} s, "
          f"KEDA polling {args.polling:.0f} s, cold start ~{args.cold_start:.0f} s")
    print(f"   {args.per_hour} messages/h ({args.commands} commands) + {args.bot_posts} bot posts/h = {callbacks_h} callbacks/h, one every "
          f"{3600 / callbacks_h:.1f} s evenly spread: shorter than the cool-down, so the replica NEVER scales to zero.")
    print("   A replica above minReplicas is billed at the active rate; the idle rate also needs a minute with no request,")
    print("   which never comes either, so minReplicas=1 costs the same. Free grant "
          + ("after the reap job's share (72,000 vCPU-s, 144,000 GiB-s left)" if not args.grant_unused else "unused elsewhere (180,000 vCPU-s, 360,000 GiB-s)")
          + f"; requests: {month_callbacks:,.0f}/month, inside the 2 million free.")
    always = replica_seconds_per_hour(callbacks_h, args.cooldown, args.cold_start, args.polling)
    base = line("no filter (before)", always)
    line("early filter in the app (after): same replica time", always)
    cpu_used_before = month_callbacks * before_us / 1e6
    cpu_used_after = month_callbacks * after_us / 1e6
    print(f"     CPU the app actually spends on the callbacks: {cpu_used_before:,.0f} s/month before, {cpu_used_after:,.0f} s after "
          f"({cpu_used_after / (cpu * MONTH_S):.4%} of the vCPU-s billed): the bill is the cool-down, not the µs.")
    for cooldown in (60, 15):
        line(f"scale rule cooldownPeriod={cooldown} s (API 2024-10-02-preview+)",
             replica_seconds_per_hour(callbacks_h, cooldown, args.cold_start, min(args.polling, cooldown)),
             "  (and a message may meet a cold start)" if 3600 / callbacks_h > cooldown else "")
    line("concurrentRequests (scale-out only: one replica either way)", always)
    line("minReplicas=1 (never idle: a request every minute)", always)
    front = replica_seconds_per_hour(args.commands, args.cooldown, args.cold_start, args.polling)
    net_front = line(f"a front drops chatter; the app wakes for the {args.commands} commands/h", front)
    # The front itself (Flex Consumption on demand, 512 MB instances): every callback runs it; a command
    # waits for the app's cold start before the front answers GroupMe.
    executions = month_callbacks
    gb_s = 0.5 * (chatter_h * 730 * args.front_seconds + args.commands * 730 * (args.cold_start + args.front_seconds))
    flex = max(0, gb_s - FLEX_GRANT_GB_S) * FLEX_GB_S + max(0, executions - FLEX_GRANT_EXECUTIONS) / 1e6 * FLEX_PER_MILLION
    print(f"     the front: {executions:,.0f} executions/month (free: {FLEX_GRANT_EXECUTIONS:,}), ~{gb_s:,.0f} GB-s (free: {FLEX_GRANT_GB_S:,}) "
          f"on Flex Consumption: ${flex:.2f}; as the Static Web App's managed API (item 9's site): no separate resource")
    print(f"   => cheapest honest design: the front, ${net_front + flex:.2f}/month instead of ${base:.2f} (saves ${base - net_front - flex:.2f}); "
          "the early filter stays in the app (it fixes what chatter triggered, and guards the app when no front is deployed).")


async def main(args: argparse.Namespace) -> None:
    msgs = corpus(bot_posts=args.bot_posts)
    bodies = encode(msgs, args.escaped)
    try:
        from bot.channels.groupme.chatter import cannot_be_a_command
    except ImportError:  # run on a tree from before issue 20.10
        cannot_be_a_command = lambda body: False  # noqa: E731
    quick = [cannot_be_a_command(b) for b in bodies]
    encoding = "with \\uXXXX escapes" if args.escaped else "in raw UTF-8"
    print(f"Corpus: {len(bodies)} non-command callbacks per hour of a busy group ({sum(m['sender_type'] == 'bot' for m in msgs)} of them the bot's own posts), "
          f"JSON {encoding}, median {statistics.median(map(len, bodies))} bytes; "
          f"{sum(quick)} decided from the bytes alone, {len(bodies) - sum(quick)} need the JSON read.")

    print("\n1. The callback handler alone (GroupMeChannel built directly; best of rounds; µs per message)")
    saved = _filter_off()
    try:
        before = await handler_cost(bodies, args.rounds)
    finally:
        _restore(saved)
    after = await handler_cost(bodies, args.rounds)
    stage1 = [us for us, q in zip(after["per_message_us"], quick) if q]
    stage2 = [us for us, q in zip(after["per_message_us"], quick) if not q]
    print(f"   before (no early filter): {before['mean_us']:6.1f} µs mean   (median of rounds {before['median_round_us']:.1f}); "
          f"task runner started for {before['runner_starts_per_corpus']} of {len(bodies)} (long messages, U+200D emoji: "
          "re-fetched from GroupMe, then answered in the group)")
    print(f"   after  (early filter):    {after['mean_us']:6.1f} µs mean   (median of rounds {after['median_round_us']:.1f}); "
          f"task runner started for {after['runner_starts_per_corpus']}")
    if stage1:
        print(f"     decided from the bytes: median {statistics.median(stage1):.1f} µs; after reading the JSON: median "
              f"{statistics.median(stage2) if stage2 else float('nan'):.1f} µs")

    if args.skip_server:
        bill(args, after["mean_us"], before["mean_us"])
        return
    print(f"\n2. The app as a subprocess (`app.py serve`, real HTTP, keep-alive), server CPU per request over {args.requests} requests (schedstat, all threads)")
    runner, stub_url, seen = await stub_groupme()
    try:
        results = {}
        for mode in ("before", "after"):
            results[mode] = r = await server_cost(mode, bodies, args.requests, stub_url, seen)
            print(f"   {mode:<6}  /healthz {r['healthz_us']:5.0f} µs   chatter callback {r['callback_us']:5.0f} µs   (medians of 5 alternating blocks)   "
                  f"(+{r['background_ms']:.0f} ms CPU in the 2 s after), GroupMe calls {r['groupme_calls']}")
    finally:
        await runner.cleanup()
    print("   (/healthz is the floor: aiohttp, the metrics and error middlewares, a JSON answer. The GroupMe calls in 'before' are the\n"
          "   long and U+200D messages re-fetched and answered, their CPU inside the callback figure; the group limit of 60\n"
          "   commands a minute cut the rest. At 210 callbacks an hour nothing is cut: 10 answers an hour posted into the group.)")
    bill(args, results["after"]["callback_us"], results["before"]["callback_us"])


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=3000, help="callbacks (and /healthz requests) per server run")
    p.add_argument("--rounds", type=int, default=10, help="passes over the corpus for the handler timing")
    p.add_argument("--per-hour", type=int, default=200)
    p.add_argument("--commands", type=int, default=5)
    p.add_argument("--bot-posts", type=int, default=10, help="the bot's own replies GroupMe posts back, per hour")
    p.add_argument("--escaped", action="store_true", help="GroupMe's JSON with \\uXXXX escapes instead of raw UTF-8")
    p.add_argument("--cpu", type=float, default=0.5)
    p.add_argument("--memory", type=float, default=1.0, help="GiB")
    p.add_argument("--cooldown", type=float, default=300)
    p.add_argument("--polling", type=float, default=30)
    p.add_argument("--cold-start", type=float, default=15, help="platform + app, seconds")
    p.add_argument("--front-seconds", type=float, default=0.05, help="billed execution per callback in the front")
    p.add_argument("--grant-unused", action="store_true", help="the free grant is not already used by the reap job")
    p.add_argument("--skip-server", action="store_true")
    asyncio.run(main(p.parse_args()))
