"""Issue 18.3: boot diagnostics that cannot be read (the role lacks the action, an ARM error) used to
log a warning every poll for the whole boot. Now: one line, no traceback, reads backing off, and the
user told that the server's own proof is unavailable; the callback remains the proof."""
from __future__ import annotations

import asyncio
import logging

from bot.store.model import SessionState
from tests.fakes.arm import Fault
from tests.provisioner.test_azure import _free_port, arm, azure, settle  # noqa: F401 (arm: the fixture)
from tests.support.factories import incoming


def _refuse_boot_diagnostics(arm) -> None:
    # POST .../virtualMachines/<vm>/retrieveBootDiagnosticsData: 403, as ARM answers a role without the action.
    arm.faults.append(Fault("POST", "virtualMachines", 403, "AuthorizationFailed", times=10**6))


def _noise(caplog) -> list[logging.LogRecord]:
    """Our records at WARNING and above (the Azure SDK's own request logging is configured away in production)."""
    return [r for r in caplog.records if r.levelno >= logging.WARNING and not r.name.startswith("azure")]


def _diagnostics_reads(arm) -> int:
    return sum(1 for r in arm.requests if r.method == "POST" and r.path.endswith("/retrieveBootDiagnosticsData"))


async def test_unreadable_boot_diagnostics_with_a_callback_log_one_line_and_tell_the_user(make_runtime, channel, arm, caplog):
    _refuse_boot_diagnostics(arm)
    arm.calls_back = False  # the VM reports itself below, a while after its agent is Ready
    caplog.set_level(logging.DEBUG)
    # VPN_PUBLIC_URL makes a callback part of the boot (nothing listens there: this test records it itself).
    async with make_runtime(provider=azure(arm, boot_timeout=20, polling_interval=0.01), VPN_PUBLIC_URL=f"http://127.0.0.1:{_free_port()}") as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        for _ in range(500):
            if _diagnostics_reads(arm):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(2.0)  # 200 polls, 20 console looks without back-off
        (s,) = await rt.store.sessions([SessionState.PROVISIONING])
        assert await rt.service.record_server_up(s.id) is not None  # what POST /api/server-up/<id>/<token> does
        await settle(rt)
        (s,) = await rt.store.sessions(list(SessionState))
    assert s.state is SessionState.READY
    lines = [r for r in _noise(caplog) if r.name == "provisioner.azure"]
    assert len(lines) == 1 and lines[0].exc_info is None, [r.getMessage() for r in _noise(caplog)]
    assert "retrieveBootDiagnosticsData/action" in lines[0].getMessage() and "AuthorizationFailed" in lines[0].getMessage()
    assert not any(r.exc_info for r in _noise(caplog))
    assert 2 <= _diagnostics_reads(arm) <= 6  # 0.1 s apart at first, then 0.2, 0.4, 0.8 s...
    progress = " ".join(channel.texts("progress"))
    assert "boot log cannot be read" in progress and "report its tunnel up itself" in progress
    assert "Your VPN server is up" in channel.all_text()


async def test_unreadable_boot_diagnostics_without_a_callback_fail_with_the_reason(make_runtime, channel, arm, caplog):
    _refuse_boot_diagnostics(arm)
    caplog.set_level(logging.DEBUG)
    async with make_runtime(provider=azure(arm, boot_timeout=2.5, polling_interval=0.01)) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (s,) = await rt.store.sessions(list(SessionState))
    assert s.state is SessionState.FAILED
    lines = [r for r in _noise(caplog) if r.name == "provisioner.azure"]
    assert len(lines) == 1 and lines[0].exc_info is None, [r.getMessage() for r in _noise(caplog)]
    assert _diagnostics_reads(arm) <= 10  # backing off from 0.02 s: not one read per 0.01 s poll
    progress = " ".join(channel.texts("progress"))
    assert "the server's own proof that the tunnel is up, cannot be read" in progress
    assert "its boot log) could not be read within 2 seconds" in channel.all_text()
    assert arm.billed() == []
