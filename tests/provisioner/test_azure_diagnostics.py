"""Boot diagnostics unavailable (a missing role action, an ARM error): one log line, back-off, the user told."""
from __future__ import annotations

import logging

from bot.store.model import SessionState
from tests.fakes.arm import Fault
from tests.provisioner.test_azure import _free_port, arm, azure, settle  # noqa: F401 (arm: fixture)
from tests.support.factories import incoming


async def test_scratch(make_runtime, channel, arm, caplog):
    arm.boot_seconds = 1.5
    arm.faults.append(Fault("POST", "virtualMachines", 403, "AuthorizationFailed", times=10**6))
    caplog.set_level(logging.DEBUG)
    async with make_runtime(provider=azure(arm, boot_timeout=3)) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (s,) = await rt.store.sessions(list(SessionState))
    print("\n".join(f"{r.name} {r.levelname} {r.getMessage()} exc={bool(r.exc_info)}" for r in caplog.records if not r.name.startswith("azure")))
    print(channel.all_text())
    assert 0
