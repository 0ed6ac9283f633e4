"""A second OS process on the same store, for the contract tests: `python -m tests.support.store_worker SPEC`.

SPEC is JSON: {"store": "sqlite"|"azure-tables", "path"|"conn"+"prefix", "op": ..., ...}. It waits for
a start time (so both processes race for real), runs its operations concurrently, prints results as JSON.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path


def open_store(spec: dict):
    if spec["store"] == "sqlite":
        from bot.store.sqlite import SqliteStore

        return SqliteStore(Path(spec["path"]))
    from bot.store.tables import TableStore

    return TableStore.from_connection_string(spec["conn"], prefix=spec["prefix"])


async def main(spec: dict) -> list:
    from tests.support.factories import new_session

    store = open_store(spec)
    await store.open()
    try:
        await asyncio.sleep(max(0.0, spec["start_at"] - time.time()))
        if spec["op"] == "create":
            sessions = [new_session(owner=o, session_id=i) for o, i in zip(spec["owners"], spec["ids"])]
            outcomes = await asyncio.gather(*(store.create_session(s, per_user=spec["per_user"], total=spec["total"]) for s in sessions))
            return [o.value for o in outcomes]
        raise SystemExit(f"unknown op {spec['op']}")
    finally:
        await store.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
