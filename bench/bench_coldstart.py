"""Cold start: how long from process start to `/healthz` (and `/readyz`) answering 200, and to a Teams reply.

With Container Apps at zero replicas the first Teams message waits for the platform to start a
replica (public reports: ~20 s even for a hello-world image) plus this app's own start-up, which is
what this measures: interpreter + imports + store open + start-up sweep/reconcile + SDK clients.
Goal (issue 20.11): the first Teams reply within 1.5 s of exec on the 2-core development machine.
Also prints what each heavy import costs.

    python bench/bench_coldstart.py [--runs 5] [--arm-latency 0.2]

Configurations:
  dryrun         `app.py serve` on defaults (SQLite, dryrun provider, no channels)
  azure+teams    what the Azure deployment runs: the azure provider against a fake ARM on 127.0.0.1
                 (list calls delayed by --arm-latency, like real ARM) and the Teams channel with a
                 UserAssignedMSI identity, JSON logs and metrics on
  tables+teams   end to end on Table Storage (Azurite on 127.0.0.1, by connection string), Teams in dev
                 mode (VPN_DEV_MODE=1) replying to a fake Bot Connector, JSON logs and metrics on: exec
                 -> /healthz 200 -> /readyz 200 -> the `/vpn help` reply at the connector. The activity
                 is posted as soon as /healthz answers (the platform's proxy holds the first request
                 while a replica starts) and posted again after a 503 (Teams redelivers). Two cases:
                 `fresh` (a table prefix never used: the app creates its tables, as on a new account)
                 and `present` (the same prefix again: what every later replica start meets).
                 Skipped, with a note, when azurite-table is not installed.
Prints numbers; asserts nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from azurite_server import AzuriteServer, connection_string  # bench/ is the script's folder
from common import app_env, fake_process, free_port

GOAL_SECONDS = 1.5  # issue 20.11: exec -> the first Teams reply
TEAMS_TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
TEAMS_USER = "00000000-0000-0000-0000-00000000c01d"

IMPORTS = (
    "app",
    "bot.channels.teams.channel",
    "provisioner.azure",
    "prometheus_client",
    "azure.identity.aio",
    "azure.data.tables.aio",
    "bot.store.tables",
)


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


def teams_help(service_url: str, conversation: str) -> dict:
    """A Teams `/vpn help` activity in a 1:1 chat, as the Bot Connector posts it to /api/messages."""
    return {
        "type": "message", "id": uuid.uuid4().hex, "timestamp": "2026-12-08T12:00:00.000Z", "serviceUrl": service_url,
        "channelId": "msteams", "from": {"id": f"29:{TEAMS_USER}", "name": "Bench User", "aadObjectId": TEAMS_USER},
        "conversation": {"conversationType": "personal", "isGroup": False, "tenantId": TEAMS_TENANT, "id": conversation},
        "recipient": {"id": "28:bench-bot", "name": "VPN Bot"}, "textFormat": "plain", "text": "/vpn help",
        "channelData": {"tenant": {"id": TEAMS_TENANT}},
    }


async def time_to_reply(argv: list[str], env: dict[str, str], port: int, connector: str) -> tuple[float, float, float, float, int]:
    """Seconds from exec to /healthz 200, /readyz 200 and the `/vpn help` reply arriving at the fake
    connector; the CPU seconds the process used; how many 503s the message met before it was taken.

    The message leaves as soon as /healthz answers and is posted again after a 503 or a dropped
    connection (Teams redelivers; here at once, so the figure is the app's, not Teams' back-off)."""
    conversation = f"a:1coldstart-{uuid.uuid4().hex}"
    body = json.dumps(teams_help(connector, conversation)).encode()
    base = f"http://127.0.0.1:{port}"
    cpu0 = children_cpu()
    wall0, t0 = time.time(), time.perf_counter()  # the connector stamps calls with time.time()
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)

    async def failed(what: str) -> RuntimeError:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        return RuntimeError(f"{what}: " + (await proc.stderr.read(4000)).decode(errors="replace"))

    async def poll(http: aiohttp.ClientSession, path: str) -> float:
        while True:
            if time.perf_counter() - t0 > 60:
                raise await failed(f"no {path} 200 within 60 s")
            try:
                async with http.get(base + path) as resp:
                    if resp.status == 200:
                        return time.perf_counter() - t0
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.005)

    async def deliver(http: aiohttp.ClientSession) -> int:
        refused = 0
        while True:
            if time.perf_counter() - t0 > 60:
                raise await failed("the message was not taken within 60 s")
            try:
                async with http.post(base + "/api/messages", data=body, headers={"Content-Type": "application/json"}) as resp:
                    await resp.read()
                    if resp.status < 300:
                        return refused
                    if resp.status != 503:
                        raise await failed(f"/api/messages answered {resp.status}")
                    refused += 1
            except aiohttp.ClientError:
                refused += 1
            await asyncio.sleep(0.05)

    async def reply(http: aiohttp.ClientSession) -> float:
        while True:
            if time.perf_counter() - t0 > 60:
                raise await failed("no reply at the connector within 60 s")
            async with http.get(connector + "_bench/calls") as resp:
                calls = await resp.json()
            sent = [at for method, path, at, _qr, _consent in calls
                    if method == "POST" and f"/conversations/{conversation}/activities" in path]
            if sent:
                return min(sent) - wall0
            await asyncio.sleep(0.02)

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            healthy = await poll(http, "/healthz")
            ready_task = asyncio.create_task(poll(http, "/readyz"))
            try:
                refused = await deliver(http)
                replied = await reply(http)  # the connector's own clock: polling late does not add to it
                ready = await ready_task
            finally:
                ready_task.cancel()
                await asyncio.gather(ready_task, return_exceptions=True)
    finally:
        if proc.returncode is None:
            proc.kill()  # at once: CPU spent on shutdown is not start-up
        await proc.wait()
    return healthy, ready, replied, children_cpu() - cpu0, refused


async def tables_end_to_end(runs: int) -> dict[str, list[float]] | None:
    """The tables+teams configuration, `fresh` then `present` for each run; None without Azurite."""
    if shutil.which("azurite-table") is None:
        print("tables+teams: skipped, azurite-table is not installed (bash scripts/install-test-deps.sh)")
        return None
    results: dict[str, list[tuple[float, float, float, float, int]]] = {"fresh": [], "present": []}
    with AzuriteServer() as azurite, fake_process("connector") as (connector, _):
        for _ in range(runs):
            prefix = "c" + uuid.uuid4().hex[:10]  # never used: none of its tables exist yet
            for case in ("fresh", "present"):
                with tempfile.TemporaryDirectory() as tmp:
                    port = free_port()
                    env = app_env(
                        VPN_DATA_DIR=tmp, PYTHONUNBUFFERED="1", PORT=str(port), VPN_METRICS_PORT=str(free_port()),
                        VPN_STORE="azure-tables", AZURE_STORAGE_CONNECTION_STRING=connection_string(azurite), VPN_TABLE_PREFIX=prefix,
                        VPN_DEV_MODE="1", VPN_USERS=f"teams:{TEAMS_USER}", VPN_LOG_FORMAT="json", APPLICATION_INSIGHTS_NO_STATSBEAT="1",
                    )
                    results[case].append(await time_to_reply([sys.executable, "app.py", "serve"], env, port, connector))
    print(f"exec -> 200 -> Teams reply on Table Storage (Azurite), dev-mode Teams (median / max of {runs}):")
    replies: dict[str, list[float]] = {}
    for case, rows in results.items():
        healthy, ready, replied, cpu, refused = (list(col) for col in zip(*rows, strict=True))
        replies[case] = replied
        print(
            f"  tables+teams {case:7s} /healthz {statistics.median(healthy):.2f} s   /readyz {statistics.median(ready):.2f} s"
            f"   reply {statistics.median(replied):.2f} s (max {max(replied):.2f})   CPU {statistics.median(cpu):.2f} s"
            f"   503s {sum(refused)}"
        )
    return replies


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

    latency = {f"GET {rtype}": arm_latency for rtype in ("virtualMachines", "publicIPAddresses", "networkInterfaces", "disks")}
    with fake_process("arm", "--fields", json.dumps({"latency": latency})) as (arm_url, _):
        configs = {
            "dryrun": (["app.py", "serve"], {}),
            "azure+teams": (
                [str(ROOT / "bench" / "common.py"), "serve"],  # the app with a static Azure credential
                {
                    "VPN_PROVIDER": "azure",
                    "AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000001",
                    "AZURE_RESOURCE_GROUP": "vpn-bench",
                    "AZURE_ARM_ENDPOINT": arm_url,
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
                    env = app_env(VPN_DATA_DIR=tmp, PYTHONUNBUFFERED="1", PORT=str(port), VPN_METRICS_PORT=str(free_port()), **extra)
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
    replies = await tables_end_to_end(runs)
    verdicts = "not measured" if replies is None else ", ".join(
        f"{case} {statistics.median(values):.2f} s ({'met' if statistics.median(values) <= GOAL_SECONDS else 'missed'})"
        for case, values in replies.items()
    )
    print(f"goal: the Teams reply within {GOAL_SECONDS} s of exec (median): {verdicts}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--arm-latency", type=float, default=0.2, help="seconds fake ARM waits before answering a list call")
    ns = parser.parse_args()
    os.chdir(ROOT)
    asyncio.run(main(ns.runs, ns.arm_latency))
