"""Issue 25.5: what stands between `/vpn start` and the config, and between the VM and "server up".

- A session's way to its config and its server (shared network, public IP, NIC, VM, serial
  console) never waits for the management SDKs to import (half a second of CPU, seconds on a busy
  machine): it speaks ARM through azure-core's pipeline; the SDKs serve reconcile and deletion.
- Polls keep to a schedule: ARM's Retry-After honoured while a step cannot be done yet, then our
  interval on a grid that does not drift, all of a process's polls paced; the serial console is
  not read before the boot script could have run, and its SAS URL is asked for once, not per look.
"""
from __future__ import annotations

import asyncio
import threading

import pytest
from aiohttp import web

import provisioner.azure as azure_module
from bot.store.model import SessionState
from provisioner.azure import WATCH_AFTER, Pace, poll_delay
from tests.fakes.arm import FakeArm
from tests.provisioner.test_azure import arm, azure, settle  # noqa: F401 (arm: the fixture)
from tests.support.factories import incoming


def _diagnostics_reads(arm) -> int:
    return sum(1 for r in arm.requests if r.method == "POST" and r.path.endswith("/retrieveBootDiagnosticsData"))


def _instance_views(arm) -> int:
    return sum(1 for r in arm.requests if r.method == "GET" and r.query.get("$expand") == "instanceView")


async def test_the_way_to_server_up_does_not_wait_for_the_management_sdks(make_runtime, channel, arm, monkeypatch):
    """With the SDKs' import held back, the session gets its config and its server anyway: the
    shared network, IP, NIC, VM and the serial console speak ARM through azure-core's pipeline. Only
    the deletion waits for the SDK clients, and they speak the same api-versions."""
    loaded = threading.Event()
    real = azure_module._load_sdk

    def held() -> None:
        loaded.wait(30)
        real()

    monkeypatch.setattr(azure_module, "_load_sdk", held)
    try:
        async with make_runtime(provider=azure(arm)) as rt:
            await rt.dispatcher.handle(incoming("/vpn start"))
            for _ in range(500):
                if "Your VPN server is up" in channel.all_text():
                    break
                await asyncio.sleep(0.01)
            assert "Your VPN server is up" in channel.all_text(), "the way to server up waited for the SDKs"
            assert [s.state for s in await rt.store.sessions(list(SessionState))] == [SessionState.READY]
            loaded.set()
            await rt.dispatcher.handle(incoming("/vpn stop"))
            await settle(rt)
            assert [s.state for s in await rt.store.sessions(list(SessionState))] == [SessionState.DELETED]
    finally:
        loaded.set()
    assert arm.billed() == []

    def api_versions(method: str, rtype: str) -> set[str]:
        return {r.query["api-version"] for r in arm.requests if r.method == method and f"/{rtype}/".lower() in r.path.lower()}

    for rtype, ours in (("publicIPAddresses", azure_module.NETWORK_API_VERSION), ("networkInterfaces", azure_module.NETWORK_API_VERSION),
                        ("virtualMachines", azure_module.COMPUTE_API_VERSION)):
        assert api_versions("PUT", rtype) == api_versions("DELETE", rtype) == {ours}, rtype  # ours == the SDK client's
    (ip,), (nic,) = arm.puts("publicIPAddresses"), arm.puts("networkInterfaces")
    assert ip.body["sku"] == {"name": "Standard", "tier": "Regional"} and ip.body["location"] == "eastus"
    assert ip.body["properties"] == {"publicIPAllocationMethod": "Static", "publicIPAddressVersion": "IPv4"}
    assert ip.body["tags"]["vpn-session"] and ip.body["tags"] == nic.body["tags"]


def test_poll_delay_honours_retry_after_until_the_step_could_be_done_then_keeps_to_a_grid():
    # Before the watch: ARM's Retry-After, never past the watch; without one (offered = our interval) ours.
    assert poll_delay(0.0, offered=10.0, interval=0.25, watch_after=25.0) == 10.0
    assert poll_delay(20.0, offered=10.0, interval=0.25, watch_after=25.0) == 5.0
    assert poll_delay(0.0, offered=0.25, interval=0.25, watch_after=25.0) == 0.25
    # From the watch on: the next grid point, however late this poll's answer came.
    assert poll_delay(25.0, offered=10.0, interval=0.25, watch_after=25.0) == pytest.approx(0.25)
    assert poll_delay(25.31, offered=10.0, interval=0.25, watch_after=25.0) == pytest.approx(0.19)
    assert poll_delay(25.499, offered=10.0, interval=0.25, watch_after=25.0) == pytest.approx(0.251)  # a slot just missed: the next
    # A Retry-After shorter than our interval is honoured; interval 0 polls back to back.
    assert poll_delay(30.0, offered=0.1, interval=0.25, watch_after=25.0) == 0.1
    assert poll_delay(30.0, offered=10.0, interval=0.0, watch_after=25.0) == 0.0


def test_polls_do_not_drift_by_their_round_trips():
    """Each poll taking 20 ms, 40 polls at 0.25 s still land on the grid: the 40th at 10 s, not 10.8 s."""
    elapsed = 0.0
    for _ in range(40):
        elapsed += poll_delay(elapsed, offered=10.0, interval=0.25) + 0.02  # sleep, then the poll's round trip
    assert elapsed == pytest.approx(10.02, abs=1e-6)


def test_pace_lets_a_burst_through_then_spaces_polls():
    pace = Pace(rate=8, burst=8)
    slots = [pace.slot(100.0) for _ in range(12)]
    assert slots[:8] == [100.0] * 8
    assert slots[8:] == pytest.approx([100.125, 100.25, 100.375, 100.5])
    assert Pace(rate=0).slot(5.0) == 5.0


async def test_a_long_step_is_polled_sparsely_until_it_could_be_done():
    """The VM takes 1.3 s; ARM says Retry-After: 10. Scaled so that the VM could be done after 1.0 s:
    one poll at once (azure-core's), one at 1.0 s, then every 0.05 s — not one every 0.05 s throughout."""
    scale = 1.0 / WATCH_AFTER["virtualMachines"]
    fake = await FakeArm(retry_after=10, op_seconds={"PUT virtualMachines": 1.3}).start()
    try:
        provider = azure(fake, polling_interval=0.05, watch_scale=scale, polls_per_second=0)
        await provider._clients()
        loop = asyncio.get_running_loop()
        body = {"location": "eastus", "properties": {}}
        t0 = loop.time()
        await provider._lro(provider.compute.virtual_machines.begin_create_or_update, "vm-x", body, step="virtualMachines")
        took = loop.time() - t0
        await provider.close()
    finally:
        await fake.stop()
    polls = [r for r in fake.requests if r.path.startswith("/fakearm/operations/")]
    assert 4 <= len(polls) <= 10, len(polls)  # 1 + 1 + ~6; every 0.05 s from the start would be ~26
    assert took < 1.3 + 0.05 + 0.25, took  # done within about one interval of the VM


async def test_the_console_is_read_once_the_boot_could_be_done_and_its_sas_url_asked_for_once(make_runtime, channel, arm):
    """No VPN_PUBLIC_URL (as `app.py console`): the serial console is the proof. The agent says Ready
    0.6 s before the boot script is done; the log is then read every 0.02 s through one SAS URL."""
    arm.boot_seconds, arm.agent_ready_early = 1.0, 0.6
    arm.polls_before_done = 0  # each step done at its first poll: only the boot's watch is timed here
    watch = 0.3
    async with make_runtime(provider=azure(arm, polling_interval=0.02, watch_scale=watch / WATCH_AFTER["boot"])) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (s,) = await rt.store.sessions(list(SessionState))
    assert s.state is SessionState.READY and "Your VPN server is up" in channel.all_text()
    assert _diagnostics_reads(arm) == 1  # ~25 looks after Ready: one boot diagnostics request, the rest storage reads
    # No instance view before the watch: from 0.3 s to 0.4 s (Ready) every 0.02 s, about 5; every 0.02 s from 0 would be ~20.
    assert 1 <= _instance_views(arm) <= 10, _instance_views(arm)


async def test_a_refused_serial_log_url_is_asked_for_again(make_runtime, channel, arm):
    """The SAS URL stops working (expired, or replaced by another reader's): the next look asks for a new one."""
    arm.boot_seconds, arm.agent_ready_early = 0.6, 0.5
    original = arm._serial_log
    refused = {"n": 0}

    def serial_log(token):
        if refused["n"] < 3:
            refused["n"] += 1
            return web.Response(status=403)
        return original(token)

    arm._serial_log = serial_log
    async with make_runtime(provider=azure(arm, polling_interval=0.02)) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (s,) = await rt.store.sessions(list(SessionState))
    assert s.state is SessionState.READY
    assert _diagnostics_reads(arm) == 4  # one per refusal, then the one that worked

