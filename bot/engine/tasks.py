"""One owner for every background task: named, strongly referenced, failures reported, awaited on shutdown.

Modelled on python-telegram-bot's `Application.create_task`. A name is also a lock: starting a task
whose name is already running returns the running one, so a job can never run twice at once.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any, Awaitable, Callable, Coroutine

from bot.logs import bind

log = logging.getLogger(__name__)

ErrorHandler = Callable[[str, BaseException], Awaitable[None]]


class TaskRunner:
    def __init__(self, on_error: ErrorHandler | None = None) -> None:
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._on_error = on_error
        self._closing = False

    def set_error_handler(self, handler: ErrorHandler) -> None:
        self._on_error = handler

    def start(self, name: str, factory: Callable[[], Coroutine[Any, Any, Any]]) -> asyncio.Task[Any]:
        """Run `factory()` as task `name`, unless a task of that name is still running."""
        if self._closing:
            raise RuntimeError("task runner is shutting down")
        running = self._tasks.get(name)
        if running is not None and not running.done():
            return running
        context = contextvars.copy_context()
        kind, _, subject = name.partition(":")
        if kind in ("provision", "teardown"):  # its log lines carry the session id
            context.run(bind, session_id=subject)
        task = asyncio.get_running_loop().create_task(factory(), name=name, context=context)
        self._tasks[name] = task
        task.add_done_callback(self._finished)
        return task

    def get(self, name: str) -> asyncio.Task[Any] | None:
        task = self._tasks.get(name)
        return task if task is not None and not task.done() else None

    def names(self) -> list[str]:
        return [n for n, t in self._tasks.items() if not t.done()]

    async def cancel(self, name: str) -> None:
        task = self.get(name)
        if task is None:
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        name = task.get_name()
        if self._tasks.get(name) is task:
            del self._tasks[name]
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        log.error("task %s failed", name, exc_info=exc)
        if self._on_error is not None and not self._closing:
            # Reporting is itself a tracked task, so its own failure is logged too.
            self.start(f"report:{name}", lambda: self._report(name, exc))

    async def _report(self, name: str, exc: BaseException) -> None:
        assert self._on_error is not None
        try:
            await self._on_error(name, exc)
        except Exception:
            log.exception("error handler for task %s failed", name)

    async def wait_idle(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 (a deadline callers pass; asyncio.timeout inside)
        """Wait until no task runs (tasks may start others); False if `timeout` ran out first."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            pending = [t for t in self._tasks.values() if not t.done()]
            if not pending:
                return True
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            await asyncio.wait(pending, timeout=remaining)

    async def shutdown(self, grace: float = 5.0) -> None:
        """Let running work finish for `grace` seconds, then cancel what is left and await it."""
        if grace > 0:
            await self.wait_idle(grace)
        self._closing = True
        pending = [t for t in self._tasks.values() if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            log.info("cancelled %d background task(s) at shutdown", len(pending))
