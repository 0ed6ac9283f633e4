"""What a usage report costs (issue 23): Table Storage requests and time for a month's report over 10,000
usage records, against Azurite on 127.0.0.1 (in memory), and SQLite (a file) for comparison.

The reported month holds `--rows` records (by default 10,000, of 200 users); the months before and after
hold a fifth as many each, to show that a month's report reads its own partition only. Measured: the
store's read (`usage`) plus the summary per user and per day (`bot/engine/reports.py`), as /vpn report
and GET /api/usage do it; requests counted at the SDK's transport. Asserts nothing.

    python bench/bench_usage.py [--rows 10000] [--runs 3]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from azure.data.tables.aio import TableServiceClient
from azurite_server import AzuriteServer, connection_string  # bench/ is the script's folder

from bot.engine.reports import summarize
from bot.store.ports import UsageRecord
from bot.store.sqlite import SqliteStore
from bot.store.tables import TableStore
from bot.store.usage_codec import encode_usage, month_of

MONTH = (datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 12, 1, tzinfo=timezone.utc))


def records(n: int, since: datetime, days: int, prefix: str) -> list[UsageRecord]:
    out = []
    for i in range(n):
        at = since + timedelta(seconds=i * days * 86400 // max(n, 1))
        user = f"teams:user{i % 200:03d}"
        out.append(UsageRecord(
            session_id=f"{prefix}{i:08d}", owner=user, owner_label=f"user{i % 200:03d}@example.org", channel="teams", provider="azure",
            region="westeurope", requested_at=at, ready_at=at + timedelta(seconds=70), ended_at=at + timedelta(minutes=61), minutes=60.0,
            cost=0.0208, bytes_in=40_000_000 + i, bytes_out=9_000_000 + i, end_reason=("expired", "stopped", "idle")[i % 3], detail="time is up",
        ))
    return out


async def fill_tables(conn: str, prefix: str, rows: list[UsageRecord]) -> None:
    """Setup, not measured: upserts in batches of 100 per partition (one request each)."""
    async with TableServiceClient.from_connection_string(conn) as service:
        table = service.get_table_client(f"{prefix}usage")
        by_month: dict[str, list[UsageRecord]] = {}
        for r in rows:
            by_month.setdefault(month_of(r.requested_at), []).append(r)
        for month, group in by_month.items():
            for i in range(0, len(group), 100):
                ops = [("upsert", {"PartitionKey": month, "RowKey": r.session_id,
                                   **{k: v for k, v in encode_usage(r).items() if v is not None}}) for r in group[i:i + 100]]
                await table.submit_transaction(ops)


async def measure(store, runs: int, since: datetime, until: datetime, user: str | None, requests: list[str] | None) -> tuple[float, int, int]:
    times, count, n = [], 0, 0
    for _ in range(runs):
        if requests is not None:
            requests.clear()
        t = time.perf_counter()
        report = summarize(await store.usage(since, until, user), since, until, user)
        times.append(time.perf_counter() - t)
        n = len(report.records)
        count = len(requests) if requests is not None else 0
    return statistics.median(times), count, n


async def main(rows: int, runs: int) -> None:
    month = records(rows, MONTH[0], 30, "n")
    around = records(rows // 5, datetime(2026, 10, 1, tzinfo=timezone.utc), 31, "o") + records(rows // 5, MONTH[1], 31, "d")
    everything = month + around
    thirty = (datetime(2026, 11, 15, tzinfo=timezone.utc), datetime(2026, 12, 15, tzinfo=timezone.utc))
    cases = [("month 2026-11, everyone", *MONTH, None), ("month 2026-11, one user", *MONTH, "teams:user007"),
             ("30 days over two months", *thirty, None)]
    print(f"{rows} usage records in the reported month, {len(around)} in the months around it; median of {runs} run(s)")
    with AzuriteServer() as port:
        conn = connection_string(port)
        requests: list[str] = []
        store = TableStore(TableServiceClient.from_connection_string(conn, raw_request_hook=lambda r: requests.append(r.http_request.url)),
                           prefix="bench")
        await store.open()
        t = time.perf_counter()
        await fill_tables(conn, "bench", everything)
        print(f"  (setup: {len(everything)} records written in {time.perf_counter() - t:.1f} s)")
        for name, since, until, user in cases:
            seconds, count, n = await measure(store, runs, since, until, user, requests)
            print(f"  azure-tables (Azurite)  {name:26s} {n:6d} rows  {count:3d} requests  {seconds * 1000:8.0f} ms")
        await store.close()
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = SqliteStore(Path(tmp) / "bench.sqlite3")
        await sqlite.open()
        for r in everything:
            await sqlite.put_usage(r)
        for name, since, until, user in cases:
            seconds, _, n = await measure(sqlite, runs, since, until, user, None)
            print(f"  sqlite                  {name:26s} {n:6d} rows  {'-':>3s} requests  {seconds * 1000:8.0f} ms")
        await sqlite.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.runs))
