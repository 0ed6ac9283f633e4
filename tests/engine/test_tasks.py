"""The task runner: one task per name, failures reach the error handler, shutdown leaves nothing running."""
import asyncio
import logging

from bot.engine.tasks import TaskRunner
from bot.logs import RedactSecrets


async def test_same_name_runs_once():
    runner = TaskRunner()
    started = []

    async def job():
        started.append(1)
        await asyncio.sleep(0.05)

    a = runner.start("provision:x", job)
    b = runner.start("provision:x", job)
    assert a is b
    await runner.wait_idle()
    assert started == [1]
    runner.start("provision:x", job)  # finished names can run again
    await runner.wait_idle()
    assert started == [1, 1]


async def test_failures_are_logged_and_reported(caplog):
    reported = []

    async def on_error(name, exc):
        reported.append((name, str(exc)))

    runner = TaskRunner(on_error)

    async def boom():
        raise RuntimeError("provider exploded")

    runner.start("teardown:abc", boom)
    await runner.wait_idle()
    assert reported == [("teardown:abc", "provider exploded")]
    assert "task teardown:abc failed" in caplog.text


async def test_shutdown_cancels_and_awaits():
    runner = TaskRunner()
    cancelled = asyncio.Event()

    async def forever():
        try:
            await asyncio.sleep(3600)
        finally:
            cancelled.set()

    runner.start("provision:slow", forever)
    await runner.shutdown(grace=0.05)
    assert cancelled.is_set() and runner.names() == []


async def test_wait_idle_times_out():
    runner = TaskRunner()
    runner.start("x", lambda: asyncio.sleep(1))
    assert await runner.wait_idle(0.05) is False
    await runner.shutdown(0)


def test_log_filter_masks_wireguard_secrets():
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "bad config: %s", ("PrivateKey = abc123=\nPresharedKey=xyz=",), None)
    RedactSecrets().filter(record)
    message = record.getMessage()
    assert "abc123" not in message and "xyz" not in message and "[redacted]" in message
    try:
        raise ValueError("private_key: sekrit==")
    except ValueError:
        import sys

        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "oops", (), sys.exc_info())
    RedactSecrets().filter(record)
    assert "sekrit" not in (record.exc_text or "")


def test_retry_delay_honours_retry_after_and_grows_with_jitter():
    from bot.backoff import retry_delay

    for _ in range(200):
        assert 0.25 <= retry_delay(0, 0.5) <= 0.5
        assert 1.0 <= retry_delay(2, 0.5) <= 2.0
        assert 1.5 <= retry_delay(0, 0.5, "3") <= 3.0
        assert 0.25 <= retry_delay(0, 0.5, "Wed, 21 Oct 2026 07:28:00 GMT") <= 0.5
    assert len({retry_delay(3, 1.0) for _ in range(20)}) > 1  # jittered, not lockstep
