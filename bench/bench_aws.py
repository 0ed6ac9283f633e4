"""Time to config and to "server up" for `/vpn start` on AWS, against moto's server behind a proxy that
adds a region's latencies (tests/fakes/aws.py, run as its own process), in the same form as bench/bench_azure.py.

The real service, provider (aiobotocore) and server-up route run: RunInstances → (address shows in
DescribeInstances: config) → the instance's boot script calls back. Latencies default to estimates
for EC2 (every API call 0.1 s; RunInstances 1.0 s; the public address visible 3 s after launch; the
boot script done 35 s after launch: Ubuntu 24.04 on t4g.nano, cloud-init, WireGuard proven up) and
run `--scale` times faster; numbers are printed scaled back. Each case is run `--runs` times,
`--sessions` concurrent sessions per run. Nothing here touches AWS.

    python bench/bench_aws.py [--scale 0.1] [--runs 5] [--sessions 1] [--cases warm,cold]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web  # noqa: E402
from common import TimingChannel, fake_process  # bench/ is the script's folder

from bot.http.ready_callback import ReadyCallback  # noqa: E402
from bot.messages import ConversationRef, Identity, Incoming, UserKey  # noqa: E402
from bot.settings import Settings  # noqa: E402
from bot.wiring import Runtime  # noqa: E402
from provisioner.aws import AwsProvider  # noqa: E402
from provisioner.aws_config import AwsConfig  # noqa: E402


class Timing(TimingChannel):
    def __init__(self) -> None:
        super().__init__()
        self.up_at: dict[str, float] = {}

    async def send_text(self, conv, text):
        if text.startswith("Your VPN server is up"):
            self.up_at[conv.data["user"]] = time.perf_counter()


def local_aws_only(proxy_url: str) -> None:
    """This process talks to the proxy only: fake credentials, no instance-metadata probe, no profile."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        del os.environ[name]
    os.environ.update(AWS_ENDPOINT_URL=proxy_url, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)


def fake_aws(args, scale: float):
    """moto behind the delay proxy, its own process (tests/fakes/aws.py), with these latencies; moto has
    read its tables and built the region before the URL is printed, so no measured call pays for that."""
    fields = {"latency": {"*": args.api * scale, "RunInstances": args.run * scale}, "address_seconds": args.address * scale,
              "boot_seconds": args.boot * scale}
    return fake_process("aws", "--fields", json.dumps(fields), "--warm", "us-east-1")


async def one_run(args, *, warm: bool, scale: float | None = None) -> tuple[list[float], list[float]]:
    s = args.scale if scale is None else scale
    with socket.socket() as sock:  # the bot's public URL must be known before its runtime starts
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    runner = None

    def provider() -> AwsProvider:
        return AwsProvider(AwsConfig(poll_interval=args.poll * s, boot_timeout=600, retry_backoff=0.5 * s))

    try:
        with fake_aws(args, s) as (proxy_url, _), tempfile.TemporaryDirectory() as tmp:
            local_aws_only(proxy_url)
            users = [f"bench:u{i}" for i in range(args.sessions)]
            settings = Settings.from_env({"VPN_DATA_DIR": tmp, "VPN_MAX_SESSIONS": str(args.sessions + 1), "VPN_PUBLIC_URL": base_url,
                                          "VPN_METRICS_PORT": "0", "VPN_USERS": ",".join(users)})
            if warm:  # a region that has had a session before: VPC, subnet and security group exist
                aws = provider()
                async with Runtime(settings, aws, [Timing()], background=False):
                    await aws._shared_network("us-east-1")
            channel = Timing()
            async with Runtime(settings, provider(), [channel], background=False) as rt:
                routes = web.Application()
                ReadyCallback(rt.store, rt.service.record_server_up).register(routes)  # the instance's callback, verified against the store
                runner = web.AppRunner(routes, access_log=None)
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", port).start()
                t0 = time.perf_counter()
                for user in users:
                    await rt.dispatcher.handle(Incoming(Identity(UserKey.parse(user)), "/vpn start", ConversationRef("bench", {"user": user})))
                await rt.runner.wait_idle()
            missing = [u for u in users if u not in channel.up_at]
            if missing:
                raise SystemExit(f"sessions never came up: {missing}")
            return ([(channel.delivered[u] - t0) / s for u in users], [(channel.up_at[u] - t0) / s for u in users])
    finally:
        if runner is not None:
            await runner.cleanup()


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):5.1f} s  (min {min(values):.1f}, max {max(values):.1f})"


async def main(args) -> None:
    # Warm-up: this process parses the SDK's models once (a worker thread, ~0.4 s of CPU), as a bot does at its first
    # session; moto's own first-call work is done by the fake before it prints its URL.
    await one_run(argparse.Namespace(**{**vars(args), "sessions": 1}), warm=False, scale=0.01)
    cases = {"warm": ("region seen before (VPC, subnet, security group exist)", True), "cold": ("region's first session (network made too)", False)}
    for title, warm in (cases[c] for c in args.cases.split(",")):
        config, up = [], []
        for _ in range(args.runs):
            c, u = await one_run(args, warm=warm)
            config += c
            up += u
        print(title)
        # Floors: the network/image look-ups (one call's time, in parallel), RunInstances, then the address
        # showing and one DescribeInstances; or the boot script's callback.
        config_floor = args.api + args.run + args.address + args.api
        up_floor = args.api + args.run + args.boot
        print(f"  config delivered: {summary(config)}   floor {config_floor:.1f} s")
        print(f"  server up:        {summary(up)}   floor {up_floor:.1f} s, goal <= {up_floor * 1.05:.1f} s")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--cases", default="warm,cold", help="warm (the region's network exists), cold (made too), or both")
    p.add_argument("--sessions", type=int, default=1, help="concurrent sessions per run")
    p.add_argument("--scale", type=float, default=0.1, help="run latencies this many times faster")
    p.add_argument("--poll", type=float, default=0.5, help="our DescribeInstances / server-up poll interval (AWS_POLL_SECONDS)")
    p.add_argument("--api", type=float, default=0.1, help="every EC2/SSM call")
    p.add_argument("--run", type=float, default=1.0, help="RunInstances")
    p.add_argument("--address", type=float, default=3.0, help="RunInstances to the public address in DescribeInstances")
    p.add_argument("--boot", type=float, default=35.0, help="RunInstances to the boot script's callback")
    args = p.parse_args()
    print(f"latencies (s): API call {args.api}, RunInstances {args.run}, address {args.address}, boot {args.boot}; "
          f"poll {args.poll}; scale {args.scale}; {args.runs} runs x {args.sessions} session(s)")
    asyncio.run(main(args))
