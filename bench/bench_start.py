"""How long from `/vpn start` to config delivered, and what it costs in memory.

Runs the real dispatcher, service, SQLite store and dryrun provider in-process with a channel that
records deliveries. Prints numbers; asserts nothing.

    python bench/bench_start.py [--sessions 50] [--step-seconds 0]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import TimingChannel  # noqa: E402  (bench/ is the script's folder)

from bot.messages import ConversationRef, Identity, Incoming, UserKey  # noqa: E402
from bot.settings import Settings  # noqa: E402
from bot.wiring import Runtime  # noqa: E402
from cards.qr import qr_png  # noqa: E402
from provisioner.dryrun import DryRunProvider  # noqa: E402
from provisioner.wireguard import generate_keypair  # noqa: E402


async def run(sessions: int, step_seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        users = ",".join(f"bench:u{i}" for i in range(sessions))
        env = {"VPN_DATA_DIR": tmp, "VPN_USERS": users, "VPN_MAX_SESSIONS": str(max(sessions, 1)), "VPN_DRYRUN_STEP_SECONDS": str(step_seconds)}
        settings = Settings.from_env(env)
        provider = DryRunProvider(Path(tmp) / "dryrun.json", pool=settings.provider.wireguard.pool.supernet(new_prefix=16), step_seconds=step_seconds)
        channel = TimingChannel()
        runtime = Runtime(settings, provider, [channel], background=False)
        async with runtime:
            started: dict[str, float] = {}
            ack: list[float] = []

            async def one(i: int) -> None:
                key = f"bench:u{i}"
                msg = Incoming(Identity(UserKey.parse(key)), "/vpn start", ConversationRef("bench", {}), f"m{i}")
                started[key] = time.perf_counter()
                await runtime.dispatcher.handle(msg)
                ack.append(time.perf_counter() - started[key])

            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(sessions)))
            await runtime.runner.wait_idle()
            wall = time.perf_counter() - t0
        lat = sorted(channel.delivered[k] - started[k] for k in started)
        print(f"sessions={sessions} step_seconds={step_seconds}")
        print(f"  acknowledged: median {statistics.median(ack) * 1000:.1f} ms, max {max(ack) * 1000:.1f} ms")
        print(f"  start -> config delivered: median {statistics.median(lat) * 1000:.1f} ms, "
              f"p95 {lat[int(0.95 * (len(lat) - 1))] * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms")
        print(f"  all {sessions} delivered in {wall:.2f} s ({sessions / wall:.0f} sessions/s)")


def micro() -> None:
    n = 200
    t = time.perf_counter()
    for _ in range(n):
        generate_keypair()
    print(f"key pair: {(time.perf_counter() - t) / n * 1e6:.0f} µs")
    kp = generate_keypair()
    config = f"[Interface]\nPrivateKey = {kp.private.reveal()}\nAddress = 10.77.0.2/32\n\n[Peer]\nPublicKey = {kp.public}\nPresharedKey = {kp.public}\nAllowedIPs = 0.0.0.0/0, ::/0\nEndpoint = 192.0.2.10:51820\nPersistentKeepalive = 25\n"
    t = time.perf_counter()
    for _ in range(20):
        png = qr_png(config)
    print(f"QR PNG: {(time.perf_counter() - t) / 20 * 1000:.1f} ms per image, {len(png)} bytes (runs in a thread)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--step-seconds", type=float, default=0.0)
    args = parser.parse_args()
    micro()
    asyncio.run(run(1, args.step_seconds))
    asyncio.run(run(args.sessions, args.step_seconds))
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (pid {os.getpid()})")
