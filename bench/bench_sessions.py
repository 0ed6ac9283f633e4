"""1,000 live sessions: memory, creation rate, event-loop lag, expiry time (issue 10, goals:
RSS <= 100 MB with 1,000 live sessions; creating them >= 50/s).

Runs the real dispatcher, service, SQLite store and dryrun provider (0 s steps) in-process, with a
channel that only records deliveries, so the numbers are the core's own; `--channels` also
imports (and attaches) the Teams and GroupMe channels, whose libraries are most of the baseline.
Prints RSS at each stage (where the memory goes), sessions/s, loop lag while creating (a 10 ms
ticker's overshoot), and how long expiring all of them takes. Asserts nothing.

    python bench/bench_sessions.py [--sessions 1000] [--rate 0 (as fast as it goes) | 50] [--channels] [--trace]
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import TimingChannel  # noqa: E402  (bench/ is the script's folder; no project imports)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class RecordingChannel(TimingChannel):
    """bench_start's channel (delivery times), also counting "ended" notices for the expiry figure."""

    def __init__(self) -> None:
        super().__init__()
        self.ended = 0

    async def send_text(self, conv, text):
        if "has ended" in text:
            self.ended += 1


async def lag_probe(samples: list[float], stop: asyncio.Event, tick: float = 0.01) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t = loop.time()
        await asyncio.sleep(tick)
        samples.append(loop.time() - t - tick)


async def run(args) -> None:
    stages: list[tuple[str, float]] = [("interpreter + bench imports", rss_mb())]
    from bot.messages import ConversationRef, Identity, Incoming, UserKey
    from bot.settings import Settings
    from bot.store.model import SessionState
    from bot.wiring import Runtime
    from provisioner.dryrun import DryRunProvider

    stages.append(("+ bot core imports", rss_mb()))
    channels: list = []
    if args.channels:
        from bot.channels.groupme.channel import GroupMeChannel
        from bot.channels.groupme.config import GroupMeConfig
        from bot.channels.teams.channel import TeamsChannel
        from bot.channels.teams.config import TeamsConfig

        channels = [TeamsChannel(TeamsConfig(dev_mode=True)),
                    GroupMeChannel(GroupMeConfig(bot_id="b", group_ids=("1",), callback_secret="s" * 20))]
        stages.append(("+ Teams (botbuilder) and GroupMe imports", rss_mb()))
    n = args.sessions
    clock_now = [None]

    with tempfile.TemporaryDirectory() as tmp:
        users = ",".join(f"bench:u{i}" for i in range(n))
        env = {"VPN_DATA_DIR": tmp, "VPN_USERS": users, "VPN_MAX_SESSIONS": str(max(n, 1)), "VPN_DRYRUN_STEP_SECONDS": "0",
               "VPN_SESSION_MINUTES": "30", "VPN_WARN_MINUTES": "0"}
        settings = Settings.from_env(env)
        provider = DryRunProvider(Path(tmp) / "dryrun.json", pool=settings.provider.wireguard.pool.supernet(new_prefix=16), step_seconds=0)
        recorder = RecordingChannel()
        from bot.store.model import utcnow

        start_time = utcnow()
        clock_now[0] = start_time
        runtime = Runtime(settings, provider, [recorder, *channels],
                          clock=lambda: clock_now[0], background=False)
        async with runtime:
            gc.collect()
            stages.append(("+ runtime open (store, HTTP client session)", rss_mb()))
            if args.trace:
                tracemalloc.start(10)
            before = tracemalloc.take_snapshot() if args.trace else None
            lag: list[float] = []
            stop = asyncio.Event()
            probe = asyncio.create_task(lag_probe(lag, stop))
            started: dict[str, float] = {}

            async def one(i: int) -> None:
                key = f"bench:u{i}"
                started[key] = time.perf_counter()
                await runtime.dispatcher.handle(Incoming(Identity(UserKey.parse(key)), "/vpn start", ConversationRef("bench", {"u": i}), f"m{i}"))

            t0 = time.perf_counter()
            tasks = []
            for i in range(n):
                if args.rate:
                    delay = t0 + i / args.rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)
            await runtime.runner.wait_idle()
            created_s = time.perf_counter() - t0
            stop.set()
            await probe
            live = await runtime.store.sessions([SessionState.READY])
            gc.collect()
            stages.append((f"+ {len(live)} live sessions", rss_mb()))
            top = []
            if args.trace:
                after = tracemalloc.take_snapshot()
                top = after.compare_to(before, "filename")[:12]
                tracemalloc.stop()

            # Expiry: move the clock past every session's end and let the sweeper's pass tear them down.
            clock_now[0] = start_time + timedelta(minutes=31)
            t1 = time.perf_counter()
            await runtime.service.sweep()
            await runtime.runner.wait_idle()
            expiry_s = time.perf_counter() - t1
            left = await runtime.store.sessions([SessionState.READY, SessionState.EXPIRING])
            stages.append(("after expiring them", rss_mb()))

    latencies = sorted(recorder.delivered[k] - started[k] for k in started if k in recorder.delivered)
    print(f"sessions={n} rate={'max' if not args.rate else args.rate}/s channels={'teams+groupme' if args.channels else 'none'}")
    print("RSS by stage:")
    previous = 0.0
    for name, value in stages:
        print(f"  {value:7.1f} MB  ({value - previous:+6.1f})  {name}")
        previous = value
    print(f"creation: {len(live)} ready in {created_s:.2f} s = {len(live) / created_s:.0f} sessions/s; "
          f"request -> config p50 {statistics.median(latencies) * 1000:.0f} ms, p99 {latencies[int(0.99 * (len(latencies) - 1))] * 1000:.0f} ms")
    lag.sort()
    print(f"loop lag while creating (10 ms ticker overshoot): p50 {lag[len(lag) // 2] * 1000:.1f} ms, "
          f"p99 {lag[int(0.99 * (len(lag) - 1))] * 1000:.1f} ms, max {lag[-1] * 1000:.1f} ms ({len(lag)} ticks)")
    print(f"expiry: {n} sessions torn down in {expiry_s:.2f} s ({n / expiry_s:.0f}/s); {recorder.ended} told; {len(left)} still live")
    if top:
        print("where the growth went (tracemalloc, by file):")
        for stat in top:
            print(f"  {stat.size_diff / 1024:8.0f} KiB  {stat.traceback[0].filename.replace(str(ROOT) + '/', '')}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0, help="open-loop requests per second (0: all at once)")
    parser.add_argument("--channels", action="store_true", help="also import and attach the Teams and GroupMe channels")
    parser.add_argument("--trace", action="store_true", help="tracemalloc: which files the growth comes from (slower)")
    asyncio.run(run(parser.parse_args()))
    print(f"peak RSS: {__import__('resource').getrusage(__import__('resource').RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (pid {os.getpid()})")
