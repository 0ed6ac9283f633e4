"""N concurrent `/vpn start` against the fake ARM with realistic per-call latencies, next to the old
design (VNet → NSG → IP → NIC → VM → Run Command, all sequential, config known only at the end).

Prints time to config delivered, time to server up, and the sequential ARM operations on the
critical path. Latencies default to the public figures in shared/reference/azure.md and run
`--scale` times faster (numbers are printed scaled back). Nothing here touches Azure.

    python bench/bench_azure.py [--sessions 5] [--scale 0.05] [--vm 35] [--ip 3] [--nic 2] [--boot 15]
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

from bot.access import AccessPolicy  # noqa: E402
from bot.messages import ConversationRef, Identity, Incoming, UserKey  # noqa: E402
from bot.runtime import Runtime  # noqa: E402
from bot.settings import Settings  # noqa: E402
from provisioner.azure import AzureConfig, AzureProvider  # noqa: E402
from tests.fake_arm import FakeArm, FakeCredential  # noqa: E402


class Timing:
    name = "bench"

    def __init__(self) -> None:
        self.config_at: dict[str, float] = {}
        self.up_at: dict[str, float] = {}

    async def send_text(self, conv, text):
        if text.startswith("Your VPN server is up"):
            self.up_at[conv.data["user"]] = time.perf_counter()

    async def send_card(self, conv, card): ...

    async def send_progress(self, conv, text, handle):
        return "p"

    def can_deliver_privately(self, conv):
        return True

    async def deliver_config(self, conv, recipient, delivery):
        self.config_at[conv.data["user"]] = time.perf_counter()
        return "sent"


def latencies(args) -> dict[str, float]:
    s = args.scale
    return {"PUT publicIPAddresses": args.ip * s, "PUT networkInterfaces": args.nic * s, "PUT virtualMachines": args.vm * s,
            "PUT virtualNetworks": args.shared * s, "PUT networkSecurityGroups": args.shared * s}


async def new_design(args) -> None:
    arm = FakeArm(op_seconds=latencies(args), boot_seconds=args.boot * args.scale)
    await arm.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            users = [f"bench:u{i}" for i in range(args.sessions)]
            settings = Settings.from_env({"VPN_DATA_DIR": tmp, "VPN_MAX_SESSIONS": str(args.sessions)})
            provider = AzureProvider(
                AzureConfig("sub", "rg", "eastus", arm_endpoint=arm.base_url, polling_interval=2 * args.scale, boot_timeout=600),
                FakeCredential(),
            )
            channel = Timing()
            async with Runtime(settings, provider, AccessPolicy.from_text(",".join(users), ""), [channel], background=False) as rt:
                t0 = time.perf_counter()
                for user in users:
                    await rt.dispatcher.handle(Incoming(Identity(UserKey.parse(user)), "/vpn start", ConversationRef("bench", {"user": user})))
                await rt.runner.wait_idle()
            cfg = sorted((channel.config_at[u] - t0) / args.scale for u in users)
            up = sorted((channel.up_at[u] - t0) / args.scale for u in users)
            per_session = [r for r in arm.requests if "/u0" in r.path or "vpn-" in r.path]
            print(f"new design, {args.sessions} concurrent sessions (first of the region, so the shared network is created too):")
            print(f"  config delivered: median {statistics.median(cfg):.1f} s, max {cfg[-1]:.1f} s")
            print(f"  server up:        median {statistics.median(up):.1f} s, max {up[-1]:.1f} s")
            print("  sequential ARM operations on the critical path: 1 to the config (public IP; VNet and NSG in parallel),"
                  " 3 to server up (IP → NIC → VM) + boot")
            print(f"  ARM requests in all: {len(arm.requests)} ({len(per_session)} naming a session resource)")
    finally:
        await arm.stop()


async def old_design(args) -> None:
    """The same latencies, the old way: every step waits for the one before; the config is known
    only when Run Command returns the server's key."""
    arm = FakeArm(op_seconds=latencies(args))
    await arm.start()
    try:
        provider = AzureProvider(AzureConfig("sub", "rg", "eastus", arm_endpoint=arm.base_url, polling_interval=30 * args.scale), FakeCredential())
        net, rg = provider.network, "rg"

        async def one(i: int) -> float:
            t0 = time.perf_counter()
            await (await net.virtual_networks.begin_create_or_update(rg, f"old-vnet-{i}", {"location": "eastus", "properties": {"addressSpace": {"addressPrefixes": ["10.0.0.0/24"]}, "subnets": [{"name": "s", "properties": {"addressPrefix": "10.0.0.0/24"}}]}})).result()
            await (await net.network_security_groups.begin_create_or_update(rg, f"old-nsg-{i}", {"location": "eastus", "properties": {}})).result()
            await (await net.public_ip_addresses.begin_create_or_update(rg, f"old-ip-{i}", {"location": "eastus", "sku": {"name": "Standard"}, "properties": {"publicIPAllocationMethod": "Static"}})).result()
            await (await net.network_interfaces.begin_create_or_update(rg, f"old-nic-{i}", {"location": "eastus", "properties": {"ipConfigurations": []}})).result()
            await (await provider.compute.virtual_machines.begin_create_or_update(rg, f"old-vm-{i}", {"location": "eastus", "properties": {}})).result()
            await asyncio.sleep(args.run_command * args.scale)  # Run Command: install WireGuard, print the key
            return (time.perf_counter() - t0) / args.scale

        times = sorted(await asyncio.gather(*(one(i) for i in range(args.sessions))))
        print(f"old design (SDK default 30 s polling), {args.sessions} concurrent sessions:")
        print(f"  config delivered = server up: median {statistics.median(times):.1f} s, max {times[-1]:.1f} s")
        print("  sequential ARM operations on the critical path: 6 (VNet → NSG → IP → NIC → VM → Run Command)")
        await provider.close()
    finally:
        await arm.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--sessions", type=int, default=5)
    p.add_argument("--scale", type=float, default=0.05, help="run latencies this many times faster")
    p.add_argument("--ip", type=float, default=3.0)
    p.add_argument("--nic", type=float, default=2.0)
    p.add_argument("--vm", type=float, default=35.0, help="VM PUT to Succeeded (27-48 s reported)")
    p.add_argument("--shared", type=float, default=3.0, help="VNet / NSG PUT")
    p.add_argument("--boot", type=float, default=15.0, help="VM Succeeded to WireGuard up (cloud-init)")
    p.add_argument("--run-command", type=float, default=45.0, help="one Run Command (>= 20 s, often ~60 s)")
    args = p.parse_args()
    print(f"latencies (s): IP {args.ip}, NIC {args.nic}, VM {args.vm}, VNet/NSG {args.shared}, boot {args.boot}, Run Command {args.run_command}")
    asyncio.run(new_design(args))
    asyncio.run(old_design(args))
