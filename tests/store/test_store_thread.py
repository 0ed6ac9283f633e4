"""The SQLite store's worker thread (bot/store/thread.py): calls run in order in one thread, what is
submitted in one turn of the event loop reaches the thread together, errors and cancellation behave
as with run_in_executor, and shutdown runs what was submitted."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from bot.store.thread import StoreThread


async def test_calls_run_in_order_in_one_thread_and_errors_reach_the_caller():
    worker = StoreThread("test-store")
    seen: list[tuple[int, str]] = []

    def op(i: int) -> int:
        seen.append((i, threading.current_thread().name))
        if i == 3:
            raise ValueError("three")
        return i * 10

    results = await asyncio.gather(*(worker.run(op, i) for i in range(6)), return_exceptions=True)
    worker.shutdown()
    assert results[:3] == [0, 10, 20] and isinstance(results[3], ValueError) and results[4:] == [40, 50]
    assert [i for i, _ in seen] == list(range(6))
    assert {name for _, name in seen} == {"test-store"} != {threading.current_thread().name}


async def test_one_turn_of_the_loop_is_one_hand_over_and_one_wake_up_of_the_loop():
    worker = StoreThread("test-store")
    handed: list[int] = []
    jobs = worker._jobs

    class Counting:  # SimpleQueue's methods cannot be patched: count the hand-overs around it
        get, get_nowait = jobs.get, jobs.get_nowait

        def put(self, batch) -> None:
            handed.append(len(batch))
            jobs.put(batch)

    worker._jobs = Counting()  # type: ignore[assignment]
    wakes = 0
    loop = asyncio.get_running_loop()
    threadsafe = loop.call_soon_threadsafe

    def counting(*args):
        nonlocal wakes
        wakes += 1
        return threadsafe(*args)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:
        assert await asyncio.gather(*(worker.run(lambda i=i: i) for i in range(50))) == list(range(50))
    finally:
        loop.call_soon_threadsafe = threadsafe  # type: ignore[method-assign]
    assert handed == [50]  # run_in_executor: 50 submits
    assert wakes == 1  # run_in_executor: 50 call_soon_threadsafe
    worker.shutdown()


async def test_a_call_cancelled_before_the_thread_reaches_it_does_not_run():
    worker = StoreThread("test-store")
    ran: list[str] = []
    gate = threading.Event()
    first = worker.run(lambda: (gate.wait(5), ran.append("first")))
    await asyncio.sleep(0.05)  # the thread is inside the first call
    second = worker.run(lambda: ran.append("second"))
    second.cancel()
    gate.set()
    await first
    worker.shutdown()
    assert ran == ["first"]
    with pytest.raises(asyncio.CancelledError):
        await second


async def test_shutdown_runs_what_was_submitted_then_refuses_new_calls():
    worker = StoreThread("test-store")
    ran: list[int] = []
    await worker.run(ran.append, 0)
    pending = worker.run(lambda: (time.sleep(0.05), ran.append(1)))  # not yet handed to the thread
    worker.shutdown()
    assert ran == [0, 1]
    await asyncio.sleep(0)  # its answer was handed to the loop
    assert pending.done()
    with pytest.raises(RuntimeError):
        worker.run(ran.append, 2)


def test_a_worker_serves_one_loop_after_another():
    worker = StoreThread("test-store")

    async def ask(value: int) -> int:
        return await worker.run(lambda: value)

    assert asyncio.run(ask(1)) == 1
    assert asyncio.run(ask(2)) == 2
    worker.shutdown()
