"""CappedPolling overrides a private hook of azure-core's poller (`_extract_delay`) so that ARM's
`Retry-After` (commonly 10 s) never makes a session wait longer than our own poll interval.

A private hook can move in any azure-core release (the version is pinned in requirements.txt for
that reason). These tests drive the real SDK poller, through the provider's own `_lro` path, against
the fake ARM answering `Retry-After: 3600`: if the override stops being called, the poller sleeps an
hour and the operation misses its few-second deadline.
"""
from __future__ import annotations

import asyncio
import time

import pytest

from provisioner.azure import AzureConfig, AzureProvider, CappedPolling
from tests.fakes.arm import FakeArm, FakeCredential

POLL = 0.05  # our interval (AZURE_POLL_SECONDS)
HOUR = 3600  # what the fake ARM asks for in Retry-After
POLLS = 3  # operation polls answered InProgress before Succeeded
DEADLINE = 10.0  # far below one Retry-After, far above POLLS * POLL


@pytest.fixture
async def arm():
    fake = await FakeArm(retry_after=HOUR, polls_before_done=POLLS).start()
    yield fake
    await fake.stop()


@pytest.fixture
async def provider(arm):
    p = AzureProvider(AzureConfig("00000000-0000-0000-0000-000000000001", "vpn-rg", "eastus",
                                  arm_endpoint=arm.base_url, polling_interval=POLL, polls_per_second=0, retry_total=0), FakeCredential())
    await p._clients()
    yield p
    await p.close()


@pytest.fixture
def delays(monkeypatch):
    """Every delay CappedPolling's override chose, and the Retry-After it was offered (still the real
    method underneath: the wrapper only records)."""
    seen: list[tuple[float, float]] = []
    own = CappedPolling._extract_delay
    base = super(CappedPolling, CappedPolling)._extract_delay

    def recording(self):
        chosen = own(self)
        seen.append((chosen, base(self)))
        return chosen

    monkeypatch.setattr(CappedPolling, "_extract_delay", recording)
    return seen


async def _within_deadline(coro, what: str):
    start = time.monotonic()
    try:
        result = await asyncio.wait_for(coro, DEADLINE)
    except asyncio.TimeoutError:
        pytest.fail(f"{what} did not finish within {DEADLINE} s although our poll interval is {POLL} s: azure-core's "
                    f"poller no longer takes its delay from CappedPolling._extract_delay (Retry-After {HOUR} s won)")
    return result, time.monotonic() - start


def _operation_polls(arm: FakeArm) -> list:
    return [r for r in arm.requests if r.path.startswith("/fakearm/operations/")]


def test_the_hook_is_azure_cores_and_ours_overrides_it():
    """The method we override is defined by azure-core's poller, and CappedPolling defines its own."""
    from azure.core.polling.async_base_polling import AsyncLROBasePolling

    owner = next(cls for cls in CappedPolling.__mro__[1:] if "_extract_delay" in vars(cls))
    assert owner.__module__.startswith("azure.core.polling."), owner
    assert issubclass(CappedPolling, AsyncLROBasePolling)
    assert "_extract_delay" in vars(CappedPolling)


async def test_a_put_is_polled_at_our_interval_not_at_retry_after(arm, provider, delays):
    body = {"location": "eastus", "sku": {"name": "Standard"}, "properties": {"publicIPAllocationMethod": "Static"}}
    result, elapsed = await _within_deadline(
        provider._lro(provider.network.public_ip_addresses.begin_create_or_update, "vpn-x-ip", body), "the public IP PUT")
    assert result.provisioning_state == "Succeeded"
    polls = _operation_polls(arm)
    assert len(polls) == POLLS + 1  # InProgress x POLLS, then Succeeded: each wait in between was ours
    # The override was what the poller asked: offered an hour, it chose our interval (less the time the
    # poll itself took: polls keep to a grid), every time.
    assert len(delays) == POLLS and all(offered == HOUR and 0 < chosen <= POLL for chosen, offered in delays), delays
    assert elapsed < DEADLINE


async def test_a_delete_is_polled_at_our_interval_not_at_retry_after(arm, provider, delays):
    """DELETE uses ARM's Location polling (202 + Location, 202 while running): the same hook."""
    arm.add("publicIPAddresses", "vpn-y-ip", properties={"provisioningState": "Succeeded"})
    _, elapsed = await _within_deadline(provider._lro(provider.network.public_ip_addresses.begin_delete, "vpn-y-ip"),
                                        "the public IP DELETE")
    assert len(_operation_polls(arm)) == POLLS + 1
    assert len(delays) == POLLS and all(0 < chosen <= POLL for chosen, _ in delays), delays
    assert elapsed < DEADLINE
