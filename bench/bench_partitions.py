"""Where Table Storage's writes land (issue 25.2, no hot partition): per-partition write counts for N
starts and a pass of ends, and the requests per start and per end, table by table.

Runs the real dispatcher, service, sweeper and dryrun provider (0 s steps) on the Table Storage store
against an in-memory Azurite this script starts on 127.0.0.1, every request counted at the SDK's
transport. Each delivered config is held once in the store as a one-time claim (what the GroupMe and
web channels do). Then the clock passes every session's end and one sweep expires them all (their
teardowns run). For each table it prints the writes, how many partitions took them, the busiest
partition's share, and that partition's rate at 1,000 starts (and ends) per minute, against Table
Storage's ~2,000 entities/s per partition. Asserts nothing.

    python bench/bench_partitions.py [--starts 1000] [--concurrency 50]

Imports nothing from tests/: bench/azurite_server.py starts Azurite the way tests/fakes/azurite.py does.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from azure.data.tables.aio import TableServiceClient  # noqa: E402
from azurite_server import AzuriteServer, connection_string  # noqa: E402  (bench/ is the script's folder)
from common import TimingChannel  # noqa: E402

from bot import one_time_configs  # noqa: E402
from bot.messages import ConversationRef, Identity, Incoming, UserKey  # noqa: E402
from bot.settings import Settings  # noqa: E402
from bot.store.model import ACTIVE_STATES, utcnow  # noqa: E402
from bot.wiring import Runtime  # noqa: E402
from provisioner.dryrun import DryRunProvider  # noqa: E402

PREFIX = "bench"
PARTITION_LIMIT = 2000  # entities per second per partition (Azure Table Storage's scalability target)
RATE_PER_MINUTE = 1000  # starts (and ends) per minute in the design note
_KEYS = re.compile(r"^([^(]+)\(PartitionKey='((?:[^']|'')*)'")
_BATCH = re.compile(rb"(?:PUT|POST|DELETE|PATCH|MERGE) \S*/([^/(\s]+)\(PartitionKey='((?:[^']|'')*)'")
_KEYED = re.compile(r"PartitionKey (eq|ge|gt|le|lt) ")  # a query that names no partition key reads the whole table


class Recorder:
    """(table, kind, partition, filter) of every request: kind is insert, update, delete, batch, get or query."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str, str]] = []

    def __call__(self, pipeline_request) -> None:
        r = pipeline_request.http_request
        path, _, query = r.url.partition("?")
        last = unquote(path.rsplit("/", 1)[-1])
        if last == "$batch":
            body = r.body if isinstance(r.body, bytes) else str(r.body or "").encode()
            for table, partition in sorted({(unquote(t.decode()), unquote(p.decode())) for t, p in _BATCH.findall(body)})[:1]:
                self._add(table, "batch", partition)
        elif last.endswith("()"):
            self._add(last[:-2], "query", "", parse_qs(query).get("$filter", [""])[0])
        elif keyed := _KEYS.match(last):
            self._add(keyed.group(1), {"GET": "get", "DELETE": "delete"}.get(r.method, "update"), keyed.group(2).replace("''", "'"))
        elif r.method == "POST" and last != "Tables":
            try:
                self._add(last, "insert", json.loads(r.body).get("PartitionKey", ""))
            except (TypeError, ValueError, AttributeError):
                self._add(last, "insert", "")

    def _add(self, table: str, kind: str, partition: str, found: str = "") -> None:
        if table.startswith(PREFIX):
            self.requests.append((table[len(PREFIX):], kind, partition, found))


class HoldingChannel(TimingChannel):
    """Records deliveries, and holds each config once in the store as a one-time claim (as GroupMe and the web do)."""

    store = None
    clock = staticmethod(utcnow)

    async def deliver_config(self, conv, recipient, delivery):
        await one_time_configs.hold(self.store, session_id=delivery.session_id, user=str(recipient.key), tunnel_name=delivery.tunnel_name,
                                    config=delivery.config.reveal(), now=self.clock(), lifetime=timedelta(minutes=10))
        return await super().deliver_config(conv, recipient, delivery)


def report(title: str, requests: list[tuple[str, str, str, str]], n: int, per: str) -> None:
    writes = Counter((t, p) for t, kind, p, _ in requests if kind in ("insert", "update", "delete", "batch"))
    by_table = Counter(t for t, _, _, _ in requests)
    scans = Counter(t for t, kind, _, f in requests if kind == "query" and not _KEYED.search(f))
    print(f"\n{title}: {len(requests)} Table requests, {len(requests) / n:.1f} per {per}; writes {sum(writes.values())}")
    print(f"  {'table':<10}{'requests/' + per:>14}{'scans':>7}{'writes':>8}{'partitions':>11}  {'busiest partition':<28}{'share':>7}"
          f"{'rate at ' + str(RATE_PER_MINUTE) + '/min':>17}")
    for table in sorted(by_table, key=lambda t: -by_table[t]):
        mine = {p: c for (t, p), c in writes.items() if t == table}
        total = sum(mine.values())
        if mine:
            busiest, most = max(mine.items(), key=lambda kv: kv[1])
            rate = most / n * RATE_PER_MINUTE / 60  # entities/s in that partition when n of these happen per RATE_PER_MINUTE
            tail = f"  {busiest[:28]:<28}{most / total:>7.1%}{rate:>11.2f}/s ({rate / PARTITION_LIMIT:.2%})"
        else:
            tail = ""
        print(f"  {table:<10}{by_table[table] / n:>14.2f}{scans[table]:>7}{total:>8}{len(mine):>11}{tail}")
    busiest_all, most_all = max(writes.items(), key=lambda kv: kv[1])
    print(f"  busiest partition overall: {busiest_all[0]}/{busiest_all[1]} with {most_all} of {sum(writes.values())} writes "
          f"({most_all / sum(writes.values()):.1%})")


async def run(starts: int, concurrency: int) -> None:
    with AzuriteServer() as port, tempfile.TemporaryDirectory() as tmp:
        users = ",".join(f"bench:u{i}" for i in range(starts))
        env = {"VPN_DATA_DIR": tmp, "VPN_USERS": users, "VPN_MAX_SESSIONS": "10000", "VPN_DRYRUN_STEP_SECONDS": "0",
               "VPN_STORE": "azure-tables", "AZURE_STORAGE_CONNECTION_STRING": connection_string(port), "VPN_TABLE_PREFIX": PREFIX}
        settings = Settings.from_env(env)
        provider = DryRunProvider(Path(tmp) / "dryrun.json", pool=settings.provider.wireguard.pool.supernet(new_prefix=12), step_seconds=0)
        now = [utcnow()]
        channel = HoldingChannel()
        runtime = Runtime(settings, provider, [channel], background=False, clock=lambda: now[0])
        recorder = Recorder()
        runtime.store._service = TableServiceClient.from_connection_string(connection_string(port), raw_request_hook=recorder)  # counted
        channel.store, channel.clock = runtime.store, (lambda: now[0])
        async with runtime:
            gate = asyncio.Semaphore(concurrency)

            async def start(i: int) -> None:
                async with gate:
                    msg = Incoming(Identity(UserKey.parse(f"bench:u{i}")), "/vpn start", ConversationRef("bench", {"user": i}), f"m{i}")
                    await runtime.dispatcher.handle(msg)

            await runtime.service.sweep()  # the process's first pass (housekeeping, first looks)
            recorder.requests.clear()
            t = time.perf_counter()
            await asyncio.gather(*(start(i) for i in range(starts)))
            await runtime.runner.wait_idle()
            took = time.perf_counter() - t
            started = list(recorder.requests)
            print(f"{starts} starts through the service (dryrun, 0 s steps), {concurrency} at a time: {took:.1f} s; "
                  f"configs delivered: {len(channel.delivered)}")
            report(f"{starts} starts", started, starts, "start")

            recorder.requests.clear()
            now[0] = now[0] + timedelta(hours=2)  # past every session's end
            t = time.perf_counter()
            await runtime.service.sweep()
            await runtime.runner.wait_idle()
            took = time.perf_counter() - t
            ended = list(recorder.requests)
            live = len(await runtime.store.sessions(list(ACTIVE_STATES)))
            print(f"\na pass of ends: one sweep expires them all, teardowns included: {took:.1f} s; live afterwards: {live}")
            report("a pass of ends", ended, starts, "end")
            recorder.requests.clear()
            await runtime.service.sweep()
            print(f"\nthe next pass, nothing due: {len(recorder.requests)} Table requests")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(run(args.starts, args.concurrency))
