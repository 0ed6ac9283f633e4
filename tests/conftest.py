"""Shared fixtures: a fake clock, a recording channel, a runtime on tmp_path, Azurite, the namespace lab (factories: tests/support/factories.py)."""
from __future__ import annotations

import pytest

from bot.settings import Settings
from bot.wiring import Runtime, make_provider
from tests.support.factories import FakeClock, RecordingChannel, Sent, conversation, incoming  # noqa: F401 (re-exported for fixtures)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def channel() -> RecordingChannel:
    return RecordingChannel()


@pytest.fixture(scope="session")
def azurite():
    """Azurite's table service on 127.0.0.1, shared by the session; tests isolate by table prefix."""
    from tests.fakes.azurite import Azurite

    server = Azurite().start()
    yield server
    server.stop()


@pytest.fixture
def store_backend(request) -> str:
    """sqlite unless a test module parametrises it (indirect) over both back ends."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def store_env(request, store_backend) -> dict[str, str]:
    """The settings that put a runtime on the chosen store; one test's tables are its own."""
    if store_backend == "sqlite":
        return {"VPN_STORE": "sqlite"}
    server = request.getfixturevalue("azurite")
    return {"VPN_STORE": "azure-tables", "AZURE_STORAGE_CONNECTION_STRING": server.connection_string, "VPN_TABLE_PREFIX": server.prefix()}


@pytest.fixture
def make_runtime(tmp_path, clock, channel, store_env):
    """Build a Runtime on tmp_path with settings from keyword overrides; enter it with `async with`."""

    def build(*, users: str = "test:alice,test:bob", admins: str = "test:root", provider=None, channels=None, clock_fn=None,
              runtime_kw: dict | None = None, **env) -> Runtime:
        values = {"VPN_DATA_DIR": str(tmp_path / "data"), "VPN_USERS": users, "VPN_ADMINS": admins, "VPN_METRICS_PORT": "0", **store_env}
        values.update({k: str(v) for k, v in env.items()})
        settings = Settings.from_env(values)
        settings.ops.data_dir.mkdir(parents=True, exist_ok=True)
        provider = provider or make_provider(settings)
        return Runtime(settings, provider, [channel] if channels is None else channels, clock=clock_fn or clock, background=False,
                       **(runtime_kw or {}))  # e.g. a fake Graph's token and certificate (tests/support/governance.py)

    return build


@pytest.fixture
def lab():
    """A two-namespace WireGuard lab (tests/fakes/netns.py); skipped where namespaces are impossible, never in CI."""
    import os

    from tests.fakes.netns import Lab, why_no_netns

    reason = why_no_netns()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the tunnel tests, but: {reason}")
        pytest.skip(reason)
    with Lab() as made:
        yield made
