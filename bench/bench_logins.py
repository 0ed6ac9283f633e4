"""A login flood on one account over Azure Table Storage (Azurite): does it stall everyone else?

Runs the real local sign-in (bot/channels/web/signin_local.py, the real PBKDF2 cost) on the real Table
Storage store against an in-memory Azurite this script starts on 127.0.0.1. Two floods of N concurrent
bad logins on one account: from N different addresses (a botnet; the per-address limit does not
help) and from one address. Meanwhile another user signs in from their usual address, a few times.
Prints the flood's p50/p99/max, its answers (refused / too many), the Table requests it made, and
the other user's login latency. Asserts nothing. Goals (issue 25): flood p99 <= 1.5 s in a few
hundred requests, the other user's login <= 0.6 s.

    python bench/bench_logins.py [--flood 150]

Imports nothing from tests/: bench/azurite_server.py starts Azurite the way tests/fakes/azurite.py does.
"""
from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from azure.data.tables.aio import TableServiceClient  # noqa: E402
from azurite_server import AzuriteServer, connection_string  # noqa: E402  (bench/ is the script's folder)

from bot.channels.web import signin_local as local  # noqa: E402
from bot.store.ports import LocalUser  # noqa: E402
from bot.store.tables import TableStore  # noqa: E402

SECRET = "bench-secret-" + "x" * 40
PASSWORD = "the right password"


def hash_cost() -> float:
    t = time.perf_counter()
    local.verify_password(PASSWORD, local._DUMMY_HASH)
    return time.perf_counter() - t


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def flood(auth, n: int, addresses, other_logins: int) -> dict:
    """n concurrent bad logins on victim@; meanwhile other@ signs in `other_logins` times, one after another."""
    latencies: list[float] = []
    answers: dict[str, int] = {}

    async def bad(i: int) -> None:
        t = time.perf_counter()
        try:
            await asyncio.wait_for(auth.login("victim@example.org", "a wrong password", addresses(i)), 120)
            answer = "signed in"
        except local.LoginRefused:
            answer = "refused"
        except local.TooManyAttempts:
            answer = "too many"
        except asyncio.TimeoutError:
            answer = "timed out (120 s)"
        except Exception as exc:  # noqa: BLE001 - a benchmark reports what happened
            answer = f"error {type(exc).__name__}"
        latencies.append(time.perf_counter() - t)
        answers[answer] = answers.get(answer, 0) + 1

    others: list[float] = []

    async def other() -> None:
        await asyncio.sleep(0.05)  # the flood is under way
        for _ in range(other_logins):
            t = time.perf_counter()
            await auth.login("other@example.org", PASSWORD, "192.0.2.44")
            others.append(time.perf_counter() - t)
            await asyncio.sleep(0.2)

    t0 = time.perf_counter()
    await asyncio.gather(*(bad(i) for i in range(n)), other())
    return {"latencies": latencies, "answers": answers, "others": others, "wall": time.perf_counter() - t0}


async def main(args: argparse.Namespace) -> None:
    with AzuriteServer() as port:
        requests = 0

        def count(_request) -> None:
            nonlocal requests
            requests += 1

        service = TableServiceClient.from_connection_string(connection_string(port), raw_request_hook=count)
        store = TableStore(service, prefix="b" + secrets.token_hex(5))
        await store.open()
        try:
            now = datetime.now(timezone.utc)
            for email in ("victim@example.org", "other@example.org"):
                await store.put_user(LocalUser(email, local.hash_password(PASSWORD), now))
            auth = local.LocalAuth(SECRET, store, lambda: datetime.now(timezone.utc))
            await auth.login("other@example.org", PASSWORD, "192.0.2.44")  # their usual address
            t = time.perf_counter()
            await auth.login("other@example.org", PASSWORD, "192.0.2.44")
            print(f"a quiet login: {(time.perf_counter() - t) * 1000:.0f} ms (of it one PBKDF2 hash: {hash_cost() * 1000:.0f} ms)")
            floods = {
                "many": (f"{args.flood} bad logins on one account from {args.flood} addresses", lambda i: f"10.1.{i // 250}.{i % 250 + 1}"),
                "one": (f"{args.flood} bad logins on one account from one address", lambda i: "198.51.100.7"),
            }
            for label, addresses in (floods[k] for k in args.scenarios.split(",")):
                auth = local.LocalAuth(SECRET, store, lambda: datetime.now(timezone.utc))  # a fresh process
                await auth.login("other@example.org", PASSWORD, "192.0.2.44")
                before = requests
                r = await flood(auth, args.flood, addresses, args.others)
                lat, others = r["latencies"], r["others"]
                print(f"\n{label}:")
                print(f"  answers: {dict(sorted(r['answers'].items()))}; wall {r['wall']:.2f} s")
                print(f"  latency p50 {pct(lat, 50):.3f} s, p99 {pct(lat, 99):.3f} s, max {max(lat):.3f} s")
                print(f"  Table requests during the flood (all logins): {requests - before}")
                print("  the other user's logins meanwhile: " + ", ".join(f"{o:.3f}" for o in others) + f" s (max {max(others):.3f} s)")
                await _reset(store)  # the next flood must not start inside this one's limits
        finally:
            await store.close()


async def _reset(store) -> None:
    """Forget every attempt counter (between the two floods), whatever the store's layout."""
    table = store._table("attempts")
    async for e in table.list_entities(select=["PartitionKey", "RowKey"]):
        await table.delete_entity(e["PartitionKey"], e["RowKey"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=150)
    parser.add_argument("--scenarios", default="many,one", help="which floods: many (addresses), one (address)")
    parser.add_argument("--others", type=int, default=3, help="the other user's logins during each flood")
    asyncio.run(main(parser.parse_args()))
