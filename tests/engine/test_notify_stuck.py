"""A teardown that cannot remove what the cloud holds tells the admins once (issue 23), however often the
sweeper tries again: "cleanup stuck" is one outbox item per session and target."""
from __future__ import annotations

import pytest

from bot.settings import Settings
from bot.store.model import SessionState
from bot.wiring import make_provider
from tests.fakes.webhook import WebhookReceiver
from tests.support.factories import incoming
from tests.support.governance import SpyProvider

SECRET = "notify-secret-" + "s" * 24


class Stuck(SpyProvider):
    async def destroy(self, session_id, *, resource_id=None, peer_public_key=None):
        raise RuntimeError("the cloud refuses to let go")


@pytest.mark.slow  # two teardowns of three attempts each, with their real back-off (1 s, 2 s)
async def test_a_stuck_cleanup_is_told_once(make_runtime, tmp_path, clock):
    hook = await WebhookReceiver(SECRET).start()
    settings = Settings.from_env({"VPN_DATA_DIR": str(tmp_path / "data"), "VPN_DRYRUN_STEP_SECONDS": "0"})
    (tmp_path / "data").mkdir(exist_ok=True)
    try:
        async with make_runtime(provider=Stuck(make_provider(settings)), VPN_NOTIFY=hook.url, VPN_NOTIFY_SECRET=SECRET,
                                VPN_DRYRUN_STEP_SECONDS=0) as rt:
            await rt.dispatcher.handle(incoming("/vpn start"))
            await rt.runner.wait_idle(10)
            await rt.dispatcher.handle(incoming("/vpn stop"))
            await rt.runner.wait_idle(20)
            clock.advance(seconds=60)  # the lease of the failed teardown ran out: the sweeper starts over, and fails again
            await rt.service.sweep()
            await rt.runner.wait_idle(20)
            await rt.service.sweeper.deliver_notifications()
            (s,) = await rt.store.sessions(list(SessionState))
            assert s.state is SessionState.EXPIRING  # still holding what it made
        stuck = [e for e in hook.received if e["type"] == "cleanup_stuck"]
        assert len(stuck) == 1 and stuck[0]["attempts"] == 3 and stuck[0]["session"]["id"] == s.id
        assert "ended" not in hook.types()
    finally:
        await hook.stop()
