"""Time to config and to "server up" for `/vpn start` on Azure, against the fake ARM behaving like
real ARM (Retry-After: 10 on every PUT and poll, resources Updating until done, per-type operation
latencies), next to the old design, polled alike.

The new design runs the real service, provider and server-up route: IP → (address known: config) →
NIC → VM → the VM's boot script calls back. The old design: VNet → NSG → IP → NIC → VM → Run Command,
each waiting for the one before, the config known only at the end. Both poll long-running operations
the same way (our capped interval); nothing here touches Azure.

Latencies default to the public figures in the shared reference (IP 2 s, NIC 2 s, VNet/NSG 3 s,
VM 35 s, boot 8 s) and run `--scale` times faster; numbers are printed scaled back. Each case is
run `--runs` times (median of 5 by default), `--sessions` concurrent sessions per run.

    python bench/bench_azure.py [--scale 0.1] [--runs 5] [--sessions 1]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web  # noqa: E402
from common import StaticCredential, TimingChannel, fake_process  # bench/ is the script's folder

from bot.http.ready_callback import ReadyCallback  # noqa: E402
from bot.messages import ConversationRef, Identity, Incoming, UserKey  # noqa: E402
from bot.settings import Settings  # noqa: E402
from bot.wiring import Runtime  # noqa: E402
from provisioner.azure import AzureConfig, AzureProvider  # noqa: E402


class Timing(TimingChannel):
    """Also records when each person was told their server is up."""

    def __init__(self) -> None:
        super().__init__()
        self.up_at: dict[str, float] = {}

    async def send_text(self, conv, text):
        if text.startswith("Your VPN server is up"):
            self.up_at[conv.data["user"]] = time.perf_counter()


def fake_arm(args, *, warm: bool = False):
    """The fake ARM (its own process) with these latencies; `warm`: a region that has had a session
    before, so the VNet and NSG exist (found by a GET)."""
    s = args.scale
    ops = {"PUT publicIPAddresses": args.ip * s, "PUT networkInterfaces": args.nic * s, "PUT virtualMachines": args.vm * s,
           "PUT virtualNetworks": args.shared * s, "PUT networkSecurityGroups": args.shared * s}
    fields = {"op_seconds": ops, "boot_seconds": args.boot * s, "retry_after": max(1, round(args.retry_after * s))}
    sub, rg, shared = "00000000-0000-0000-0000-000000000001", "rg", {"managed-by": "vpn-bot", "role": "shared"}
    existing = [
        {"rtype": "virtualNetworks", "name": "vpn-bot-vnet-eastus", "sub": sub, "rg": rg, "tags": shared,
         "properties": {"subnets": [{"name": "vpn", "id": f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/virtualNetworks/vpn-bot-vnet-eastus/subnets/vpn"}]}},
        {"rtype": "networkSecurityGroups", "name": "vpn-bot-nsg-eastus", "sub": sub, "rg": rg, "tags": shared,
         "properties": {"securityRules": [{"name": "allow-wireguard", "properties": {"destinationPortRange": "51820", "sourceAddressPrefix": "*"}}]}},
    ] if warm else []
    return fake_process("arm", "--fields", json.dumps(fields), *(a for r in existing for a in ("--add", json.dumps(r))))


async def new_design(args, *, warm: bool, after_vm_accepted: bool) -> tuple[list[float], list[float]]:
    with socket.socket() as sock:  # the bot's public URL must be known before its runtime starts
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    runner = None
    try:
        with fake_arm(args, warm=warm) as (arm_url, _), tempfile.TemporaryDirectory() as tmp:
            users = [f"bench:u{i}" for i in range(args.sessions)]
            settings = Settings.from_env({"VPN_DATA_DIR": tmp, "VPN_MAX_SESSIONS": str(args.sessions), "VPN_PUBLIC_URL": base_url,
                                          "VPN_USERS": ",".join(users)})
            provider = AzureProvider(
                AzureConfig("00000000-0000-0000-0000-000000000001", "rg", "eastus", arm_endpoint=arm_url,
                            polling_interval=args.poll * args.scale, boot_timeout=600, config_after_vm_accepted=after_vm_accepted,
                            watch_scale=args.scale, polls_per_second=8 / args.scale),  # the app's schedule and pace, scaled
                StaticCredential(),
            )
            channel = Timing()
            async with Runtime(settings, provider, [channel], background=False) as rt:
                routes = web.Application()
                ReadyCallback(rt.store, rt.service.record_server_up).register(routes)  # the VM's callback, verified against the store
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
            return ([(channel.delivered[u] - t0) / args.scale for u in users], [(channel.up_at[u] - t0) / args.scale for u in users])
    finally:
        if runner is not None:
            await runner.cleanup()


async def old_design(args) -> list[float]:
    """The same latencies, the old way: every step waits for the one before; the config is known
    only when Run Command returns the server's key. Polled exactly like the new design."""
    with fake_arm(args) as (arm_url, _):
        provider = AzureProvider(AzureConfig("sub", "rg", "eastus", arm_endpoint=arm_url, polling_interval=args.poll * args.scale,
                                             watch_scale=args.scale, polls_per_second=8 / args.scale), StaticCredential())
        net, compute = provider.network, provider.compute

        async def one(i: int) -> float:
            t0 = time.perf_counter()
            sub_id = f"/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/old-vnet-{i}/subnets/s"
            await provider._lro(net.virtual_networks.begin_create_or_update, f"old-vnet-{i}", {"location": "eastus", "properties": {"addressSpace": {"addressPrefixes": ["10.0.0.0/24"]}, "subnets": [{"name": "s", "properties": {"addressPrefix": "10.0.0.0/24"}}]}})
            await provider._lro(net.network_security_groups.begin_create_or_update, f"old-nsg-{i}", {"location": "eastus", "properties": {}})
            ip = await provider._lro(net.public_ip_addresses.begin_create_or_update, f"old-ip-{i}", {"location": "eastus", "sku": {"name": "Standard"}, "properties": {"publicIPAllocationMethod": "Static"}}, step="publicIPAddresses")
            nic = await provider._lro(net.network_interfaces.begin_create_or_update, f"old-nic-{i}", {"location": "eastus", "properties": {"ipConfigurations": [{"name": "c", "properties": {"subnet": {"id": sub_id}, "publicIPAddress": {"id": ip.id}}}]}}, step="networkInterfaces")
            await provider._lro(compute.virtual_machines.begin_create_or_update, f"old-vm-{i}", {"location": "eastus", "properties": {"networkProfile": {"networkInterfaces": [{"id": nic.id}]}}}, step="virtualMachines")
            await asyncio.sleep(args.run_command * args.scale)  # Run Command: install WireGuard, print the key
            return (time.perf_counter() - t0) / args.scale

        times = list(await asyncio.gather(*(one(i) for i in range(args.sessions))))
        await provider.close()
        return times


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):5.1f} s  (min {min(values):.1f}, max {max(values):.1f})"


async def main(args) -> None:
    floor = args.ip + args.nic + args.vm + args.boot
    cases = [
        ("new design, region seen before (VNet/NSG exist)", dict(warm=True, after_vm_accepted=False)),
        ("new design, region's first session (VNet/NSG made too)", dict(warm=False, after_vm_accepted=False)),
        ("new design, config only after the VM PUT is accepted", dict(warm=True, after_vm_accepted=True)),
    ]
    for title, kw in cases:
        config, up = [], []
        for _ in range(args.runs):
            c, u = await new_design(args, **kw)
            config += c
            up += u
        print(title)
        print(f"  config delivered: {summary(config)}")
        # On a region's first session the NIC waits for the VNet/NSG too.
        case_floor = floor if kw["warm"] else max(args.ip, args.shared) + args.nic + args.vm + args.boot
        print(f"  server up:        {summary(up)}   floor {case_floor:.1f} s, goal <= {case_floor * 1.05:.1f} s")
    old = []
    for _ in range(args.runs):
        old += await old_design(args)
    print("old design (VNet → NSG → IP → NIC → VM → Run Command), polled alike")
    print(f"  config delivered = server up: {summary(old)}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--sessions", type=int, default=1, help="concurrent sessions per run")
    p.add_argument("--scale", type=float, default=0.1, help="run latencies this many times faster")
    p.add_argument("--poll", type=float, default=0.25, help="our LRO / server-up poll interval (AZURE_POLL_SECONDS)")
    p.add_argument("--retry-after", type=float, default=10.0, help="what ARM sends in Retry-After")
    p.add_argument("--ip", type=float, default=2.0)
    p.add_argument("--nic", type=float, default=2.0)
    p.add_argument("--vm", type=float, default=35.0, help="VM PUT to Succeeded (27-48 s reported)")
    p.add_argument("--shared", type=float, default=3.0, help="VNet / NSG PUT")
    p.add_argument("--boot", type=float, default=8.0, help="VM Succeeded to WireGuard up (cloud-init)")
    p.add_argument("--run-command", type=float, default=45.0, help="one Run Command (>= 20 s, often ~60 s)")
    args = p.parse_args()
    print(f"latencies (s): IP {args.ip}, NIC {args.nic}, VM {args.vm}, VNet/NSG {args.shared}, boot {args.boot}, "
          f"Run Command {args.run_command}; Retry-After {args.retry_after}; poll {args.poll}; scale {args.scale}; "
          f"{args.runs} runs x {args.sessions} session(s)")
    asyncio.run(main(args))
