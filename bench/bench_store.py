"""Store operation latency and sweep time: SQLite (a file) against Azure Table Storage (Azurite).

Per operation (get, compare-and-set save, create with both caps, first_seen) it prints p50/p99 in
milliseconds; then the time of one sweep over 1,000 live sessions (nothing due, and all 1,000 due
for their warning, i.e. 1,000 compare-and-set writes and notices). Azurite runs on 127.0.0.1 in
memory; a real storage account adds the network round trip (a few ms in one region). Asserts nothing.

    python bench/bench_store.py [--ops 300] [--sessions 1000]
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import TimingChannel, fake_process  # bench/ is the script's folder

from bot.access import AccessPolicy
from bot.engine.config import SessionPolicy  # noqa: E402
from bot.engine.policy import Policy
from bot.engine.service import VpnService
from bot.engine.tasks import TaskRunner  # noqa: E402
from bot.messages import ConversationRef
from bot.replies import Outbox  # noqa: E402
from bot.store.model import Session, SessionState, utcnow  # noqa: E402
from bot.store.sqlite import SqliteStore  # noqa: E402
from bot.store.tables import TableStore  # noqa: E402
from provisioner.dryrun import DryRunProvider  # noqa: E402


def requested(owner: str, session_id: str, now: datetime, **changes) -> Session:
    """A session as `/vpn start` records it (bot/engine/service.py), with `changes` on top."""
    fields = dict(id=session_id, owner=owner, owner_label=owner, conversation=ConversationRef("bench", {"user": owner}),
                  state=SessionState.REQUESTED, provider="dryrun", region="local", created_at=now, expires_at=now + timedelta(minutes=30),
                  minutes=30, updated_at=now)
    return Session(**{**fields, **changes})


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] * 1000


async def timed(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        await fn(i)
        out.append(time.perf_counter() - t)
    return out


async def bench(name: str, store, ops: int, sessions: int, tmp: Path) -> dict:
    await store.open()
    try:
        now = utcnow()
        ids = [f"op{i:05d}" for i in range(ops)]
        res: dict[str, list[float]] = {}
        res["create"] = await timed(lambda i: store.create_session(requested(f"bench:u{i}", ids[i], now), per_user=1, total=100_000), ops)
        res["get"] = await timed(lambda i: store.get(ids[i]), ops)

        async def cas(i: int) -> None:
            s = await store.get(ids[i])
            await store.save(dataclasses.replace(s, attempts=s.attempts + 1))

        t_get = statistics.median(res["get"])
        res["get+CAS save"] = await timed(cas, ops)
        res["first_seen"] = await timed(lambda i: store.first_seen("teams", f"activity-{i}", now), ops)
        for i in range(ops):  # out of the way of the sweep
            s = await store.get(ids[i])
            await store.save(s.moved(SessionState.FAILED, now))

        # 1,000 live sessions, then one sweep with nothing due and one with every warning due.
        live = [f"live{i:05d}" for i in range(sessions)]
        t = time.perf_counter()
        await asyncio.gather(*(store.create_session(
            requested(f"bench:l{i}", sid, now, state=SessionState.READY, ready_at=now), per_user=1, total=100_000)
            for i, sid in enumerate(live)))
        create_all = time.perf_counter() - t
        outbox = Outbox()
        outbox.register(TimingChannel())
        provider = DryRunProvider(tmp / f"{name}-dryrun.json", pool=__import__("ipaddress").ip_network("10.0.0.0/16"), step_seconds=0)
        runner = TaskRunner()
        clock_now = [now]
        limits = SessionPolicy(max_sessions=100_000)
        # The owners are on the allowlist: the sweep re-checks each live session's owner (revocation, issue 22).
        allowed = AccessPolicy.from_text(",".join(f"bench:l{i}" for i in range(sessions)), "")
        policy = Policy(allowed, limits, store, lambda: clock_now[0])
        service = VpnService(store, provider, runner, outbox, limits, policy, clock=lambda: clock_now[0])
        idle = []
        for _ in range(3):
            t = time.perf_counter()
            await service.sweep()
            idle.append(time.perf_counter() - t)
        clock_now[0] = now + timedelta(minutes=26)  # every session is inside its warning window
        t = time.perf_counter()
        await service.sweep()
        warn_all = time.perf_counter() - t
        warned = sum(s.warned for s in await store.sessions([SessionState.READY]))
        await runner.shutdown(0)
        return {
            "ops": {k: (statistics.median(v) * 1000, pct(v, 99)) for k, v in res.items()},
            "create_all": create_all,
            "sweep_idle": statistics.median(idle),
            "sweep_warn_all": warn_all,
            "warned": warned,
            "get_ms": t_get * 1000,
        }
    finally:
        await store.close()


async def main(ops: int, sessions: int) -> None:
    with fake_process("azurite") as (connection_string, _), tempfile.TemporaryDirectory() as tmp:
        results = {
            "sqlite": await bench("sqlite", SqliteStore(Path(tmp) / "bench.sqlite3"), ops, sessions, Path(tmp)),
            "azure-tables (Azurite)": await bench("tables", TableStore.from_connection_string(connection_string, prefix="bench"), ops, sessions, Path(tmp)),
        }
    print(f"store operation latency, {ops} sequential operations each (ms, p50 / p99)")
    print(f"{'operation':<16}" + "".join(f"{name:>26}" for name in results))
    for op in next(iter(results.values()))["ops"]:
        print(f"{op:<16}" + "".join(f"{r['ops'][op][0]:>15.2f} / {r['ops'][op][1]:>7.2f}" for r in results.values()))
    print(f"\n{sessions} live sessions (seconds)")
    for label, key in (("create all (concurrent)", "create_all"), ("sweep, nothing due", "sweep_idle"), ("sweep, every warning due", "sweep_warn_all")):
        print(f"{label:<26}" + "".join(f"{r[key]:>26.3f}" for r in results.values()))
    print("warned after that sweep: " + ", ".join(f"{n}={r['warned']}" for n, r in results.items()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=300)
    parser.add_argument("--sessions", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.ops, args.sessions))
