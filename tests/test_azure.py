"""The Azure provider: the real async SDK clients against a fake ARM server on 127.0.0.1."""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from bot.sessions.model import SessionState
from bot.web import RUNTIME, create_app
from provisioner import bootconfig
from provisioner.azure import AzureConfig, AzureProvider, ready_signature
from tests.conftest import incoming
from tests.fake_arm import FakeArm, FakeCredential, Fault
from tests.qrtools import decode_qr


@pytest.fixture
async def arm():
    fake = await FakeArm().start()
    yield fake
    await fake.stop()


def azure(arm: FakeArm, **overrides) -> AzureProvider:
    fields = dict(
        subscription_id="00000000-0000-0000-0000-000000000001",
        resource_group="vpn-rg",
        location="eastus",
        allowed_locations=("westeurope",),
        arm_endpoint=arm.base_url,
        polling_interval=0,
        retry_backoff=0.01,
        boot_timeout=5,
    )
    fields.update(overrides)
    return AzureProvider(AzureConfig(**fields), FakeCredential())


async def settle(rt):
    await rt.runner.wait_idle(30)


def customdata_of(arm: FakeArm) -> str:
    (vm_put,) = arm.puts("virtualMachines")
    return base64.b64decode(vm_put.body["properties"]["osProfile"]["customData"]).decode()


def boot_files(cloud_config: str) -> dict[str, str]:
    assert cloud_config.startswith("#cloud-config\n")
    doc = yaml.safe_load(cloud_config)  # what cloud-init itself parses it with
    return {f["path"]: f["content"] for f in doc["write_files"]}


async def test_config_is_delivered_once_the_address_is_known_then_server_up(make_runtime, channel, arm):
    delivered_at = {}
    original = channel.deliver_config

    async def spy(conv, recipient, delivery):
        delivered_at["vms"] = len(arm.of_type("virtualMachines"))
        return await original(conv, recipient, delivery)

    channel.deliver_config = spy
    async with make_runtime(provider=azure(arm), VPN_HOURLY_COST=0) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        assert delivered_at["vms"] == 0  # the config went out before the VM existed
        progress = channel.texts("progress")
        for step in ("reserving address", "creating server", "server booting"):
            assert any(step in p for p in progress), progress
        texts = channel.texts("text")
        assert any("within about a minute" in t for t in texts)
        assert any("Your VPN server is up" in t for t in texts)
        config = next(s for s in channel.sent if s.kind == "config")
        assert "Endpoint = 203.0.113.10:51820" in config.text
        assert decode_qr(config.delivery.qr_png) == config.text
        (s,) = await rt.store.sessions([SessionState.READY])
        assert s.provider == "azure" and s.region == "eastus" and s.hourly_cost == pytest.approx(0.0123)
        assert s.server_size == "Standard_B1ls"
        await rt.dispatcher.handle(incoming("/vpn list", user="test:root"))
        assert "azure/eastus (Standard_B1ls)" in channel.all_text()


async def test_request_bodies(make_runtime, channel, arm):
    async with make_runtime(provider=azure(arm)) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (s,) = await rt.store.sessions([SessionState.READY])
    config = next(x for x in channel.sent if x.kind == "config").text
    client_private = config.split("PrivateKey = ")[1].split("\n")[0]
    psk = config.split("PresharedKey = ")[1].split("\n")[0]

    (ip,) = arm.puts("publicIPAddresses")
    assert ip.body["sku"] == {"name": "Standard", "tier": "Regional"}
    assert ip.body["properties"]["publicIPAllocationMethod"] == "Static"

    (nsg,) = arm.puts("networkSecurityGroups")
    rules = nsg.body["properties"]["securityRules"]
    assert [(r["properties"]["protocol"], r["properties"]["destinationPortRange"], r["properties"]["access"]) for r in rules] == [("Udp", "51820", "Allow")]

    (nic,) = arm.puts("networkInterfaces")
    ipconf = nic.body["properties"]["ipConfigurations"][0]["properties"]
    assert ipconf["publicIPAddress"]["properties"]["deleteOption"] == "Delete"
    assert nic.body["properties"]["networkSecurityGroup"]["id"].endswith("/networkSecurityGroups/vpn-bot-nsg-eastus")

    (vm,) = arm.puts("virtualMachines")
    props = vm.body["properties"]
    assert props["networkProfile"]["networkInterfaces"][0]["properties"]["deleteOption"] == "Delete"
    assert props["storageProfile"]["osDisk"]["deleteOption"] == "Delete"
    assert props["storageProfile"]["imageReference"] == {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "minimal", "version": "latest"}
    assert props["osProfile"]["linuxConfiguration"]["disablePasswordAuthentication"] is True
    assert props["hardwareProfile"]["vmSize"] == "Standard_B1ls"
    assert "userData" not in props  # readable through IMDS by any process on the VM: never used

    for put in (ip, nic, vm):
        tags = put.body["tags"]
        assert tags["managed-by"] == "vpn-bot" and tags["vpn-session"] == s.id and tags["vpn-owner"] == "test:alice"
        assert tags["expires-at"].endswith("+00:00")

    files = boot_files(customdata_of(arm))
    netdev = files[bootconfig.NETDEV]
    assert f"PublicKey={s.client_public_key}" in netdev and "AllowedIPs=10.77.0.2/32" in netdev and "ListenPort=51820" in netdev
    assert psk in "".join(files.values())  # the server needs the preshared key...
    assert client_private not in customdata_of(arm)  # ...but never the client's private key
    assert "Address=10.77.0.1/24" in files[bootconfig.NETWORK] and "IPMasquerade=ipv4" in files[bootconfig.NETWORK]
    assert files[bootconfig.SYSCTL] == "net.ipv4.ip_forward = 1\n"

    everything_but_customdata = json.dumps([r.path for r in arm.requests]) + json.dumps([r.body.get("tags") for r in arm.requests if r.body])
    server_private = files[bootconfig.KEY].strip()
    for secret in (client_private, psk, server_private):
        assert secret not in everything_but_customdata


async def test_ssh_is_opened_only_when_configured(make_runtime, arm):
    async with make_runtime(provider=azure(arm, ssh_public_key="ssh-ed25519 AAAA admin", ssh_source="198.51.100.7/32")) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
    rules = arm.puts("networkSecurityGroups")[0].body["properties"]["securityRules"]
    ssh = [r["properties"] for r in rules if r["properties"]["destinationPortRange"] == "22"]
    assert ssh and ssh[0]["sourceAddressPrefix"] == "198.51.100.7/32"


async def test_stop_and_expiry_remove_every_session_resource(make_runtime, channel, arm, clock):
    async with make_runtime(provider=azure(arm), users="test:alice,test:bob") as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await rt.dispatcher.handle(incoming("/vpn start westeurope", user="test:bob"))
        await settle(rt)
        alice, bob = sorted(await rt.store.sessions([SessionState.READY]), key=lambda s: s.owner)
        assert {r["location"] for r in arm.session_resources(bob.id)} == {"westeurope"}
        assert len(arm.session_resources(alice.id)) == 3
        await rt.dispatcher.handle(incoming("/vpn stop"))
        await settle(rt)
        assert arm.session_resources(alice.id) == [] and not [k for k in arm.resources if alice.id in k]
        clock.advance(minutes=31)
        await rt.service.sweep()
        await settle(rt)
        assert not [k for k in arm.resources if bob.id in k]
        assert len(arm.of_type("virtualNetworks")) == 2  # shared, free: kept


async def test_throttling_and_server_errors_are_retried(make_runtime, channel, arm):
    arm.faults += [Fault("PUT", "publicIPAddresses", 429, times=2), Fault("PUT", "virtualMachines", 500, times=2)]
    async with make_runtime(provider=azure(arm)) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        assert [s.state for s in await rt.store.sessions(list(SessionState))] == [SessionState.READY]
    assert len(arm.puts("publicIPAddresses")) == 3 and len(arm.puts("virtualMachines")) == 3


@pytest.mark.parametrize(
    "fault, told",
    [
        (Fault("PUT", "networkSecurityGroups", 403, "AuthorizationFailed"), "not allowed to create servers in Azure"),
        (Fault("PUT", "publicIPAddresses", 409, "PublicIPCountLimitReached"), "reached its quota"),
        (Fault("PUT", "networkInterfaces", 409, "QuotaExceeded"), "reached its quota"),
        (Fault("PUT", "virtualMachines", 409, "SkuNotAvailable"), "not available in this region"),
        (Fault("PUT", "virtualMachines", 400, "InvalidParameter"), "Azure refused to create the server"),
    ],
)
async def test_a_failure_at_any_step_tells_the_user_and_deletes_what_was_made(make_runtime, channel, arm, fault, told, caplog):
    arm.faults.append(fault)
    async with make_runtime(provider=azure(arm)) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (s,) = await rt.store.sessions(list(SessionState))
        assert s.state is SessionState.FAILED
    assert told in channel.all_text() and "Nothing was left running" in channel.all_text()
    assert arm.session_resources(s.id) == [] and not [k for k in arm.resources if s.id in k]
    assert fault.code in caplog.text  # the admin's log line names ARM's error code


async def test_boot_timeout_fails_cleanly(make_runtime, channel, arm):
    arm.vm_agent_ready = False
    async with make_runtime(provider=azure(arm, boot_timeout=0.5)) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (s,) = await rt.store.sessions(list(SessionState))
    assert s.state is SessionState.FAILED
    assert "the server did not come up" in channel.all_text()
    assert arm.session_resources(s.id) == []


async def test_reconcile_deletes_unknown_and_leaves_others_alone(make_runtime, arm):
    async with make_runtime(provider=azure(arm)) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (live,) = await rt.store.sessions([SessionState.READY])
        base = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/vpn-rg/providers/Microsoft.Network/publicIPAddresses"
        for name, tags in (
            ("vpn-lost1-ip", {"managed-by": "vpn-bot", "vpn-session": "lost1", "expires-at": "2026-01-01T00:00:00+00:00"}),
            ("theirs-ip", {"managed-by": "another-bot", "vpn-session": "zzz"}),
            ("untagged-ip", {}),
        ):
            arm.resources[f"{base}/{name}".lower()] = {"id": f"{base}/{name}", "name": name, "type": "Microsoft.Network/publicIPAddresses", "tags": tags, "properties": {}}
        assert await rt.service.reconcile() == 1
    names = {r["name"] for r in arm.resources.values()}
    assert "vpn-lost1-ip" not in names and {"theirs-ip", "untagged-ip"} <= names
    assert len(arm.session_resources(live.id)) == 3


async def test_vm_calls_back_when_up(channel, arm, make_runtime):
    """With VPN_PUBLIC_URL set, "server up" comes from the VM itself, on a signed URL."""
    secret = b"s" * 32
    provider = azure(arm, public_url="http://127.0.0.1:1", ready_secret=secret)
    app = create_app(lambda: make_runtime(provider=provider), [provider.route_hook()])
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    provider.config = dataclasses.replace(provider.config, public_url=base)
    try:
        rt = app[RUNTIME]
        await rt.dispatcher.handle(incoming("/vpn start"))
        for _ in range(250):
            if arm.puts("virtualMachines"):
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        (s,) = await rt.store.sessions(list(SessionState))
        assert s.state is SessionState.PROVISIONING  # booting: it waits for the VM, not for ARM
        command = yaml.safe_load(customdata_of(arm))["runcmd"][-1]
        url = re.search(r"'(http[^']+)'", command[2]).group(1)
        assert url == f"{base}/api/azure/ready/{s.id}/{ready_signature(secret, s.id)}"
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/api/azure/ready/{s.id}/{'0' * 64}") as forged:
                assert forged.status == 404
            async with http.post(url) as ok:  # what the VM's last boot step does
                assert ok.status == 204
        await settle(rt)
        assert [x.state for x in await rt.store.sessions(list(SessionState))] == [SessionState.READY]
    finally:
        await server.close()


def test_http_arm_endpoint_only_on_loopback():
    with pytest.raises(ValueError):
        AzureProvider(AzureConfig("s", "rg", "eastus", arm_endpoint="http://10.1.2.3"), FakeCredential())


async def test_crash_between_steps_then_restart_leaves_one_sessions_worth(arm, tmp_path):
    """SIGKILL the service while the VM is being created; the restarted one starts over and the fake
    ARM ends with the new attempt's resources only, and with none after /vpn stop."""
    import os
    import signal
    import sys

    from tests.apprun import app_env

    launcher = str(Path(__file__).parent / "azure_app.py")
    env = app_env(
        tmp_path / "data",
        VPN_PROVIDER="azure",
        AZURE_SUBSCRIPTION_ID="00000000-0000-0000-0000-000000000001",
        AZURE_RESOURCE_GROUP="vpn-rg",
        AZURE_ARM_ENDPOINT=arm.base_url,
        AZURE_POLL_SECONDS="0",
        VPN_LEASE_SECONDS="3",  # the killed process's lease: the next one takes over once it expires
    )
    arm.latency["PUT virtualMachines"] = 5.0
    first = await asyncio.create_subprocess_exec(
        sys.executable, launcher, "console", "--out", str(tmp_path / "first"),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True,
    )
    first.stdin.write(b"/vpn start\n")
    await first.stdin.drain()
    seen = b""
    while b"creating server" not in seen:
        line = await asyncio.wait_for(first.stdout.readline(), 30)
        assert line, seen.decode()
        seen += line
    await asyncio.sleep(0.3)  # the VM PUT is in flight
    os.killpg(first.pid, signal.SIGKILL)
    await first.wait()
    (session_id,) = {r["tags"]["vpn-session"] for r in arm.resources.values() if "vpn-session" in (r.get("tags") or {})}
    assert arm.session_resources(session_id)  # the crash left resources behind

    arm.latency.clear()
    await asyncio.sleep(3)  # the dead process's lease runs out

    async def console(*commands: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, launcher, "console", "--out", str(tmp_path / "second"),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )
        out, err = await asyncio.wait_for(proc.communicate("".join(c + "\n" for c in commands).encode()), 60)
        assert proc.returncode == 0, err.decode()
        return out.decode()

    resumed = await console("/vpn status")
    assert "restarted while setting up" in resumed and "Your VPN server is up" in resumed
    assert len(arm.session_resources(session_id)) == 3  # IP, NIC, VM of the new attempt; nothing doubled
    assert len(arm.of_type("virtualMachines")) == 1
    stopped = await console("/vpn stop")
    assert "has ended" in stopped
    assert arm.session_resources(session_id) == [] and not [k for k in arm.resources if session_id in k]
