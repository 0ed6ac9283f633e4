"""The SQLite store's one worker thread: its calls run in order, and what queues while it works runs
in one go, answered to the event loop with one wake-up.

`loop.run_in_executor` on a one-thread `ThreadPoolExecutor` costs the loop, per call, a
`concurrent.futures.Future` (with its own Condition), the pool's locks and idle semaphore, a wake of
the thread, and on completion a `call_soon_threadsafe` (a write to the loop's self-pipe and a read
back) per call. A busy bot makes two store calls per chat message (the message-id de-duplication and
the audit row): that hop was about a tenth of the event loop's CPU per `/vpn help`
(bench/bench_chat.py). Here a call is an asyncio future and one `SimpleQueue.put`; the thread takes
every call that is waiting, runs them one after the other as before (one connection, one thread:
SQLite's serial order is unchanged), and hands all their results back with one
`call_soon_threadsafe`. Nothing is reordered. Calls submitted with `run_grouped` that follow one
another in a hand-over may be run together by the owner's `group` function (the SQLite store: in one
transaction, each call in its own savepoint, so one that fails undoes only itself); every other call
runs alone, as before, so every compare-and-set stays what it was.

The thread is a daemon: a store nobody closed does not hold up the interpreter's exit (the runtime
closes its store, which runs what was submitted first); a write cut short at exit is, to SQLite, a
transaction never committed.
"""
from __future__ import annotations

import asyncio
import functools
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_STOP = object()
_Job = tuple[Callable[..., Any], tuple, "asyncio.Future[Any]", asyncio.AbstractEventLoop, bool]  # ..., grouped
Outcome = tuple[bool, Any]  # (True, the value) or (False, the exception)
# Runs calls that may share a transaction, in order: one outcome per call, in their order.
Group = Callable[[list[Callable[[], Any]]], list[Outcome]]


def run_alone(calls: list[Callable[[], Any]]) -> list[Outcome]:
    """Each call on its own (what a group of one, or a thread without a `group`, does)."""
    outcomes: list[Outcome] = []
    for call in calls:
        try:
            outcomes.append((True, call()))
        except BaseException as exc:  # handed to the awaiting coroutine, as run_in_executor does
            outcomes.append((False, exc))
    return outcomes


class StoreThread:
    """A one-thread executor for coroutines: `await run(fn, *args)` runs `fn(*args)` in the thread."""

    def __init__(self, name: str, group: Group = run_alone) -> None:
        self._group = group
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._started = False
        self._closed = False
        self._lock = threading.Lock()
        self._pending: list[_Job] = []  # submitted during this turn of the event loop, not yet handed over
        self._handing_over: asyncio.AbstractEventLoop | None = None  # the loop where _hand_over is scheduled

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """A future of `fn(*args)`, run in the thread after every call submitted before it. A call
        whose future is cancelled before the thread reaches it is not run (as run_in_executor)."""
        return self._submit(fn, args, False)

    def run_grouped(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """As `run`, but `fn(*args)` may run in one group with the grouped calls next to it in the
        same hand-over (`group`); its future is answered once the whole group is done."""
        return self._submit(fn, args, True)

    def _submit(self, fn: Callable[..., T], args: tuple, grouped: bool) -> asyncio.Future[T]:
        if not self._started or self._closed:
            self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((fn, args, future, loop, grouped))
        if self._handing_over is not loop:  # the calls of this turn of the loop go to the thread together
            self._handing_over = loop
            loop.call_soon(self._hand_over)
        return future

    def _hand_over(self) -> None:
        pending, self._pending, self._handing_over = self._pending, [], None
        if pending:
            self._jobs.put(pending)

    def _start(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if not self._started:
                self._thread.start()
                self._started = True

    def shutdown(self) -> None:
        """Runs what was submitted, then stops the thread (blocking, as ThreadPoolExecutor.shutdown(wait=True))."""
        with self._lock:
            self._closed = True
            started = self._started
            self._started = True  # a run() after this raises in _start, never starts the thread
        if started:
            self._hand_over()
            self._jobs.put((_STOP,))
            self._thread.join()

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            batch = list(jobs.get())
            while True:  # everything that queued meanwhile: one wake-up of the loop for all of it
                try:
                    batch.extend(jobs.get_nowait())
                except queue.Empty:
                    break
            stop = False
            done: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, bool, Any]]] = {}
            group: list[_Job] = []  # grouped calls next to each other, run together by self._group
            for job in batch:
                if job is _STOP:
                    stop = True
                    continue
                if job[2].cancelled():  # a read of a flag the loop sets: at worst the call runs anyway
                    continue
                if job[4]:
                    group.append(job)
                    continue
                if group:
                    self._run_group(group, done)
                    group = []
                self._run_group([job], done)
            if group:
                self._run_group(group, done)
            for loop, outcomes in done.items():
                try:
                    loop.call_soon_threadsafe(_deliver, outcomes)
                except RuntimeError:  # the loop closed while its calls ran: nobody is waiting any more
                    pass
            if stop:
                return

    def _run_group(self, jobs: list[_Job], done: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, bool, Any]]]) -> None:
        calls: list[Callable[[], Any]] = [functools.partial(fn, *args) for fn, args, _, _, _ in jobs]
        try:
            outcomes = self._group(calls) if len(calls) > 1 else run_alone(calls)
            if len(outcomes) != len(calls):
                raise RuntimeError(f"a store group answered {len(outcomes)} of {len(calls)} calls")
        except BaseException as exc:  # the group itself failed (e.g. its commit): none of its calls took effect
            outcomes = [(False, exc)] * len(calls)
        for (_, _, future, loop, _), (ok, value) in zip(jobs, outcomes):
            done.setdefault(loop, []).append((future, ok, value))


def _deliver(outcomes: list[tuple[asyncio.Future, bool, Any]]) -> None:
    for future, ok, value in outcomes:
        if future.cancelled():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
