"""Cold start: how long from process start to `/healthz` (and `/readyz`) answering 200.

With Container Apps at zero replicas the first Teams message waits for the platform to start a
replica (public reports: ~20 s even for a hello-world image) plus this app's own start-up, which is
what this measures: interpreter + imports + store open + start-up sweep/reconcile + SDK clients.
Goal: <= 1.5 s on the 2-core development machine. Also prints what each heavy import costs.

    python bench/bench_coldstart.py [--runs 5] [--arm-latency 0.2]

Configurations:
  dryrun         `app.py serve` on defaults (SQLite, dryrun provider, no channels)
  azure+teams    what the Azure deployment runs: the azure provider against a fake ARM on 127.0.0.1
                 (list calls delayed by --arm-latency, like real ARM) and the Teams channel with a
                 UserAssignedMSI identity, JSON logs and metrics on
Prints numbers; asserts nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.arm import FakeArm  # noqa: E402

IMPORTS = (
    "app",
    "bot.channels.teams.channel",
    "provisioner.azure",
    "prometheus_client",
    "azure.identity.aio",
    "azure.data.tables.aio",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(data_dir: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VPN_", "WG_", "AZURE_", "GROUPME_", "Microsoft"))}
    env.update({"VPN_DATA_DIR": data_dir, "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def time_to_ready(argv: list[str], env: dict[str, str], port: int) -> tuple[float, float, float]:
    """Seconds from spawning the process to /healthz 200 and to /readyz 200, and the CPU seconds it used.

    CPU time does not grow when other work shares the machine, so it is the number to compare."""
    cpu0 = children_cpu()
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    healthy = ready = None
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while ready is None:
                if time.perf_counter() - t0 > 60:
                    raise RuntimeError("no /readyz within 60 s: " + (await proc.stderr.read(4000)).decode())
                path = "/healthz" if healthy is None else "/readyz"
                try:
                    async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                        if resp.status == 200:
                            now = time.perf_counter() - t0
                            if healthy is None:
                                healthy = now
                            else:
                                ready = now
                            continue
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.005)
    finally:
        proc.kill()  # at once: CPU spent on shutdown is not start-up
        await proc.wait()
    return healthy, ready, children_cpu() - cpu0


def import_seconds(module: str) -> float | None:
    """Cumulative import time of one module in a fresh interpreter (python -X importtime)."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        return None
    for line in reversed(out.stderr.splitlines()):
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S+)$", line.strip())
        if m and m.group(2).strip() == module:
            return int(m.group(1)) / 1e6
    return None


def interpreter_seconds() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - t0


async def main(runs: int, arm_latency: float) -> None:
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {runs} runs per configuration")
    print(f"bare interpreter start: {statistics.median(interpreter_seconds() for _ in range(5)) * 1000:.0f} ms")
    print("imports (fresh interpreter, cumulative):")
    for module in IMPORTS:
        seconds = import_seconds(module)
        print(f"  {module:24s} {'not installed' if seconds is None else f'{seconds * 1000:6.0f} ms'}")

    arm = await FakeArm().start()
    for rtype in ("virtualMachines", "publicIPAddresses", "networkInterfaces", "disks"):
        arm.latency[f"GET {rtype}"] = arm_latency
    try:
        configs = {
            "dryrun": (["app.py", "serve"], {}),
            "azure+teams": (
                [str(ROOT / "tests" / "support" / "azure_app.py"), "serve"],
                {
                    "VPN_PROVIDER": "azure",
                    "AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000001",
                    "AZURE_RESOURCE_GROUP": "vpn-bench",
                    "AZURE_ARM_ENDPOINT": arm.base_url,
                    "MicrosoftAppId": "00000000-0000-0000-0000-00000000000a",
                    "MicrosoftAppType": "UserAssignedMSI",
                    "MicrosoftAppTenantId": "00000000-0000-0000-0000-00000000000b",
                    "VPN_LOG_FORMAT": "json",
                },
            ),
        }
        print(f"process start -> 200 (median / min of {runs}; goal /healthz <= 1.5 s):")
        for name, (args, extra) in configs.items():
            healthy, ready, cpu = [], [], []
            for _ in range(runs):
                with tempfile.TemporaryDirectory() as tmp:
                    port = free_port()
                    env = base_env(tmp, PORT=str(port), VPN_METRICS_PORT=str(free_port()), **extra)
                    h, r, c = await time_to_ready([sys.executable, *args], env, port)
                    healthy.append(h)
                    ready.append(r)
                    cpu.append(c)
            print(
                f"  {name:12s} /healthz {statistics.median(healthy):.2f} s (min {min(healthy):.2f})"
                f"   /readyz {statistics.median(ready):.2f} s (min {min(ready):.2f})   CPU {statistics.median(cpu):.2f} s"
            )
        if arm_latency:
            print(f"  (fake ARM answers list calls after {arm_latency:.2f} s, like a real region)")
    finally:
        await arm.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--arm-latency", type=float, default=0.2, help="seconds fake ARM waits before answering a list call")
    ns = parser.parse_args()
    os.chdir(ROOT)
    asyncio.run(main(ns.runs, ns.arm_latency))
