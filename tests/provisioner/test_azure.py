"""The Azure provider: the real async SDK clients against a fake ARM server on 127.0.0.1."""
from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from bot.engine import ready_tokens
from bot.store.model import SessionState
from bot.wiring import build_http_app
from provisioner import bootconfig
from provisioner.azure import AzureConfig, AzureProvider, deployment_mark
from tests.fakes.arm import FakeArm, FakeCredential, Fault, LroFailure
from tests.support.factories import incoming
from tests.support.qrtools import decode_qr


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
        polling_interval=0.01,
        watch_scale=0,  # every step polled at 0.01 s from its start, unpaced: tests do not wait for real-ARM timings
        polls_per_second=0,
        retry_backoff=0.01,
        cleanup_retry_seconds=0.05,
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
        delivered_at["vms"] = [arm._state(vm) for vm in arm.of_type("virtualMachines")]
        return await original(conv, recipient, delivery)

    channel.deliver_config = spy
    arm.op_seconds["PUT virtualMachines"] = 0.5
    async with make_runtime(provider=azure(arm), VPN_HOURLY_COST=0) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        assert "Succeeded" not in delivered_at["vms"]  # the config went out while the VM was still being made
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
        stored = await rt.store.deployment_id()
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
        assert tags["vpn-deployment"] == rt.provider.default_deployment_id()  # from subscription, group and instance: survives the store
        assert tags["vpn-store"] == stored  # the store's own id: tells a lost store's resources from ours
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
    assert arm.session_resources(s.id) == [] and not [k for k in arm.resources if s.id in k] and arm.billed() == []
    assert fault.code in caplog.text  # the admin's log line names ARM's error code


@pytest.mark.slow
async def test_boot_timeout_fails_cleanly(make_runtime, channel, arm):
    arm.vm_agent_ready = False
    async with make_runtime(provider=azure(arm, boot_timeout=0.5)) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (s,) = await rt.store.sessions(list(SessionState))
    assert s.state is SessionState.FAILED
    assert "the server did not come up" in channel.all_text()
    assert arm.session_resources(s.id) == [] and arm.billed() == []


async def test_reconcile_deletes_unknown_and_leaves_others_alone(make_runtime, arm):
    async with make_runtime(provider=azure(arm)) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (live,) = await rt.store.sessions([SessionState.READY])
        base = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/vpn-rg/providers/Microsoft.Network/publicIPAddresses"
        for name, tags in (
            ("vpn-lost1-ip", {"managed-by": "vpn-bot", "vpn-deployment": rt.provider.deployment_id, "vpn-session": "lost1", "expires-at": "2026-01-01T00:00:00+00:00"}),
            ("theirs-ip", {"managed-by": "another-bot", "vpn-session": "zzz"}),
            ("same-name-other-deployment-ip", {"managed-by": "vpn-bot", "vpn-deployment": "d-other", "vpn-session": "zzz"}),
            ("untagged-ip", {}),
        ):
            arm.resources[f"{base}/{name}".lower()] = {"id": f"{base}/{name}", "name": name, "type": "Microsoft.Network/publicIPAddresses", "tags": tags, "properties": {}}
        assert await rt.service.reconcile() == 1
    names = {r["name"] for r in arm.resources.values()}
    assert "vpn-lost1-ip" not in names and {"theirs-ip", "untagged-ip", "same-name-other-deployment-ip"} <= names
    assert len(arm.session_resources(live.id)) == 3


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_vm_calls_back_to_another_replica(channel, arm, make_runtime, tmp_path):
    """With VPN_PUBLIC_URL, "server up" comes from the VM itself: its one-time callback lands on a
    second replica (same store), which verifies it against the store; the provisioning replica sees it
    there. The VM agent never turns Ready here, so the callback is the only way up."""
    arm.vm_agent_ready = False
    arm.boot_seconds = 0.2
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    other = build_http_app(make_runtime(provider=azure(arm)))
    server = TestServer(other, host="127.0.0.1", port=port)
    await server.start_server()
    try:
        async with make_runtime(provider=azure(arm), VPN_PUBLIC_URL=base) as rt:
            await rt.dispatcher.handle(incoming("/vpn start"))
            await settle(rt)
            (s,) = await rt.store.sessions(list(SessionState))
            assert s.state is SessionState.READY and s.server_up_at is not None
            assert "Your VPN server is up" in channel.all_text()
        files = boot_files(customdata_of(arm))
        url = files[bootconfig.CALLBACK_FILE].strip()
        token = url.rsplit("/", 1)[1]
        assert url == f"{base}/api/server-up/{s.id}/{token}" and arm.callbacks == [(f"/api/server-up/{s.id}/{token}", 204)]
        assert s.ready_token_hash == ready_tokens.token_hash(token)
        assert token.encode() not in (tmp_path / "data" / "vpn-bot.sqlite3").read_bytes()  # only its hash is stored
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/api/server-up/{s.id}/{'A' * 43}") as forged:
                assert forged.status == 404
            async with http.post(url) as again:  # repeats are harmless
                assert again.status == 204
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

    from tests.support.apprun import app_env

    launcher = str(Path(__file__).resolve().parents[1] / "support" / "azure_app.py")
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


# ----- real ARM's behaviour: Retry-After, Updating, failed operations, held NICs, conflicts ---------


async def test_retry_after_is_capped_by_our_own_poll_interval(make_runtime, channel):
    """ARM says Retry-After: 10 on every PUT and poll; honouring it would cost 10 s per step."""
    arm = await FakeArm(retry_after=10, op_seconds={"PUT publicIPAddresses": 0.2, "PUT networkInterfaces": 0.2, "PUT virtualMachines": 0.3}).start()
    try:
        loop = asyncio.get_running_loop()
        async with make_runtime(provider=azure(arm, polling_interval=0.05)) as rt:
            started = loop.time()
            await rt.dispatcher.handle(incoming("/vpn start"))
            await settle(rt)
            elapsed = loop.time() - started
            assert [s.state for s in await rt.store.sessions(list(SessionState))] == [SessionState.READY]
        assert elapsed < 4, elapsed
        # The NIC went out the moment the IP had succeeded, never while it was still Creating (ARM
        # refuses that with ReferencedResourceNotProvisioned); the address was read only once it existed.
        assert not [r for r in arm.requests if r.status >= 400 and not (r.method == "GET" and r.status == 404)]  # 404: shared network looked up
        ip_reads = [r for r in arm.requests if r.method == "GET" and r.path.endswith("-ip")]
        assert ip_reads and all(r.status == 200 for r in ip_reads)
        assert "Endpoint = 203.0.113.10:51820" in next(x for x in channel.sent if x.kind == "config").text
    finally:
        await arm.stop()


async def test_a_burst_of_faults_is_retried_and_leaves_nothing(make_runtime, channel, arm):
    arm.faults += [
        Fault("PUT", "publicIPAddresses", 429, times=3),
        Fault("PUT", "networkInterfaces", 503, times=2),
        Fault("GET", "virtualMachines", 500, times=2),
        Fault("DELETE", "virtualMachines", 502, times=2),
        Fault("DELETE", "networkInterfaces", 409, "AnotherOperationInProgress", times=2),
    ]
    async with make_runtime(provider=azure(arm)) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        assert [s.state for s in await rt.store.sessions(list(SessionState))] == [SessionState.READY]
        await rt.dispatcher.handle(incoming("/vpn stop"))
        await settle(rt)
        assert [s.state for s in await rt.store.sessions(list(SessionState))] == [SessionState.DELETED]
    assert arm.billed() == [] and all(f.times == 0 for f in arm.faults)
    assert "has ended" in channel.all_text()


@pytest.mark.parametrize("rtype", ["publicIPAddresses", "virtualNetworks", "networkSecurityGroups", "networkInterfaces", "virtualMachines"])
async def test_a_failed_operation_at_each_step_is_told_and_cleaned_up(make_runtime, channel, arm, rtype):
    """The PUT is accepted, runs, and ends Failed (as ARM reports it): the session fails, the user
    hears why, and in the end nothing billed is left — even the NIC Azure holds after a failed VM."""
    arm.nic_reserved_seconds = 0.3
    arm.lro_failures.append(LroFailure("PUT", rtype, "AllocationFailed" if rtype == "virtualMachines" else "InternalServerError"))
    async with make_runtime(provider=azure(arm)) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (s,) = await rt.store.sessions(list(SessionState))
        assert s.state is SessionState.FAILED
        await asyncio.sleep(0.4)
        await rt.service.reconcile()  # what the sweeper does every minute
    text = channel.all_text()
    assert "could not set up your VPN" in text and "Your VPN server is up" not in text
    if rtype == "virtualMachines":
        assert "not available in this region" in text
    assert arm.billed() == []


@pytest.mark.slow
async def test_a_nic_held_after_a_failed_vm_is_removed_once_azure_lets_go(make_runtime, channel, arm):
    arm.nic_reserved_seconds = 0.6
    arm.lro_failures.append(LroFailure("PUT", "virtualMachines", "AllocationFailed"))
    async with make_runtime(provider=azure(arm)) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        for _ in range(200):  # until the failure was told
            if "could not set up" in channel.all_text():
                break
            await asyncio.sleep(0.02)
        (s,) = await rt.store.sessions(list(SessionState))
        held = arm.billed()
        assert f"vpn-{s.id}-nic" in held and f"vpn-{s.id}-ip" in held  # Azure refuses to delete them yet
        text = channel.all_text()
        assert "released within a few minutes" in text and "Nothing was left running" not in text
        assert "will not work; please delete it" in text  # the config went out before the VM failed
        await settle(rt)
        assert await rt.service.reconcile() == 0  # still held: tried, kept for the next pass
        assert f"vpn-{s.id}-nic" in arm.billed()
        await asyncio.sleep(0.7)  # Azure lets go
        assert await rt.service.reconcile() == 1
    assert arm.billed() == []
    codes = [r for r in arm.requests if r.method == "DELETE" and r.path.endswith(f"vpn-{s.id}-nic")]
    assert len(codes) >= 2  # refused while reserved, retried until it went


async def test_stop_while_creating_meets_conflicts_and_still_removes_everything(make_runtime, channel, arm):
    """A stop while the NIC operation runs: ARM answers 409 to the NIC delete; teardown keeps trying."""
    arm.op_seconds["PUT networkInterfaces"] = 0.5
    async with make_runtime(provider=azure(arm)) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        for _ in range(200):
            if arm.puts("networkInterfaces"):
                break
            await asyncio.sleep(0.01)
        await rt.dispatcher.handle(incoming("/vpn stop"))
        await settle(rt)
        (s,) = await rt.store.sessions(list(SessionState))
        assert s.state is SessionState.DELETED
    assert arm.billed() == []
    nic_deletes = [r.status for r in arm.requests if r.method == "DELETE" and "networkInterfaces" in r.path]
    assert nic_deletes[0] == 409 and nic_deletes[-1] in (202, 204)  # refused while its PUT ran, then gone


@pytest.mark.slow
async def test_the_wireguard_step_failing_never_reports_up(make_runtime, channel, arm):
    """cloud-init reports the VM agent Ready before the boot script ran: that alone is not "up"."""
    arm.boot_ok = False
    async with make_runtime(provider=azure(arm, boot_timeout=0.6)) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (s,) = await rt.store.sessions(list(SessionState))
    assert s.state is SessionState.FAILED and s.server_up_at is None
    assert "Your VPN server is up" not in channel.all_text() and "did not come up" in channel.all_text()
    assert arm.billed() == []
    assert any(r.path.endswith("/retrieveBootDiagnosticsData") for r in arm.requests)


async def test_a_disk_left_behind_is_found_by_reconcile(make_runtime, arm):
    async with make_runtime(provider=azure(arm)) as rt:
        mine = deployment_mark(rt.provider.deployment_id)
        arm.add("disks", f"vpn-0123456789-osdisk-{mine}", ns="Microsoft.Compute")  # untagged, as Azure makes them
        arm.add("disks", "vpn-0123456789-osdisk-00000000", ns="Microsoft.Compute")  # another deployment's
        arm.add("disks", "somebody-elses-disk", ns="Microsoft.Compute")
        assert await rt.service.reconcile() == 1
    assert arm.billed() == ["somebody-elses-disk", "vpn-0123456789-osdisk-00000000"]


async def test_two_deployments_in_one_group_leave_each_other_alone(arm, channel, clock, tmp_path):
    """Same resource group, same default VPN_INSTANCE_NAME, no VPN_DEPLOYMENT_ID, two stores: the
    same derived deployment id, but each leaves the other's live sessions alone (made with another
    store, not expired yet) and reconciles only its own."""
    from bot.settings import Settings
    from bot.wiring import Runtime
    from tests.support.factories import RecordingChannel

    def runtime(folder: str, ch) -> Runtime:
        settings = Settings.from_env({"VPN_DATA_DIR": str(tmp_path / folder), "VPN_USERS": "test:alice,test:bob"})
        provider = azure(arm)
        provider.clock = clock
        return Runtime(settings, provider, [ch], clock=clock, background=False)

    other = RecordingChannel()
    async with runtime("one", channel) as one, runtime("two", other) as two:
        assert one.provider.deployment_id == two.provider.deployment_id  # issue 18: derived, so it survives a lost store
        await one.dispatcher.handle(incoming("/vpn start"))
        await two.dispatcher.handle(incoming("/vpn start", user="test:bob"))
        await settle(one)
        await settle(two)
        (a,) = await one.store.sessions([SessionState.READY])
        (b,) = await two.store.sessions([SessionState.READY])
        assert await one.service.reconcile() == 0 and await two.service.reconcile() == 0
        await one.dispatcher.handle(incoming("/vpn stop"))
        await settle(one)
        assert await one.service.reconcile() == 0 and await two.service.reconcile() == 0
        assert arm.session_resources(a.id) == [] and len(arm.session_resources(b.id)) == 3
        assert any(d["name"].startswith(f"vpn-{b.id}-osdisk-") for d in arm.of_type("disks"))


async def test_shared_network_is_found_not_recreated_after_a_restart(make_runtime, arm):
    async with make_runtime(provider=azure(arm)) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
    async with make_runtime(provider=azure(arm), users="test:bob") as rt:
        await rt.dispatcher.handle(incoming("/vpn start", user="test:bob"))
        await settle(rt)
    assert len(arm.puts("virtualNetworks")) == 1 and len(arm.puts("networkSecurityGroups")) == 1


async def test_config_after_vm_accepted_never_delivers_a_dead_config(make_runtime, channel, arm):
    arm.faults.append(Fault("PUT", "virtualMachines", 409, "SkuNotAvailable"))
    async with make_runtime(provider=azure(arm, config_after_vm_accepted=True)) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
    assert not [x for x in channel.sent if x.kind == "config"]
    assert "not available in this region" in channel.all_text() and "will not work" not in channel.all_text()
    assert arm.billed() == []


def test_ipv6_pool_is_refused_for_azure_at_start_up():
    from bot.settings import Settings, SettingsError

    env = {"VPN_PROVIDER": "azure", "AZURE_SUBSCRIPTION_ID": "s", "AZURE_RESOURCE_GROUP": "rg", "WG_POOL": "fd00:77::/64"}
    with pytest.raises(SettingsError, match="IPv6"):
        Settings.from_env(env)


async def test_full_tunnel_gets_the_servers_resolver_unless_wg_dns_is_set(make_runtime, channel, arm):
    async with make_runtime(provider=azure(arm)) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
    config = next(x for x in channel.sent if x.kind == "config").text
    assert "DNS = 10.77.0.1" in config
    assert boot_files(customdata_of(arm))[bootconfig.RESOLVED_DROPIN] == "[Resolve]\nDNSStubListenerExtra=10.77.0.1\n"
    provider = azure(arm, dns=("9.9.9.9",))
    assert provider.tunnel_dns is False
    assert azure(arm, full_tunnel=False).tunnel_dns is False


def test_token_scope_follows_the_sdks_cloud_table():
    from provisioner.azure import credential_scopes

    assert credential_scopes("https://management.usgovcloudapi.net") == ["https://management.core.usgovcloudapi.net/.default"]
    assert credential_scopes("https://management.azure.com") == ["https://management.azure.com/.default"]
    assert credential_scopes("https://management.chinacloudapi.cn/") == ["https://management.chinacloudapi.cn/.default"]


async def test_unreachable_public_url_falls_back_to_the_serial_console(make_runtime, channel, arm):
    """The VMs cannot reach VPN_PUBLIC_URL: the boot script's line on the serial console still says up."""
    async with make_runtime(provider=azure(arm), VPN_PUBLIC_URL=f"http://127.0.0.1:{_free_port()}") as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (s,) = await rt.store.sessions(list(SessionState))
    assert s.state is SessionState.READY and s.server_up_at is None
    assert [status for _, status in arm.callbacks] == [0]  # the callback was tried and could not arrive
    assert "Your VPN server is up" in channel.all_text()
