"""The AWS provider: the real SDK (aiobotocore) against moto's server on 127.0.0.1, behind a proxy that
adds latency, faults, Canonical's image parameters and the instance's boot (tests/fakes/aws.py).

Nothing here reaches AWS: every test runs with AWS_ENDPOINT_URL on the proxy, fake credentials, no
instance-metadata probing and no profile or config file (the `aws` fixture)."""
from __future__ import annotations

import asyncio
import base64
import logging
import os
import shutil
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from bot.engine import ready_tokens
from bot.store.model import SessionState
from bot.wiring import build_http_app
from provisioner import bootconfig
from provisioner.aws import AwsProvider, default_deployment_id
from provisioner.aws_config import UBUNTU_SSM_PARAMETER, AwsConfig, architecture
from tests.fakes.aws import AwsProxy, Fault, LocalAws, MotoServer, aws_environment, without_aws
from tests.support.factories import incoming

ENDED = ("shutting-down", "terminated")


@pytest.fixture(scope="module")
def moto_server():
    server = MotoServer().start()
    yield server
    server.stop()


@pytest.fixture
async def aws(moto_server, monkeypatch):
    """A clean moto behind a fresh proxy; this process talks to it only (see the module docstring)."""
    moto_server.reset()
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    proxy = await AwsProxy(moto_server.url).start()
    for name, value in aws_environment(proxy.base_url).items():
        monkeypatch.setenv(name, value)
    local = LocalAws(moto_server, proxy)
    yield local
    await local.close()
    await proxy.stop()


def aws_provider(**overrides) -> AwsProvider:
    """Endpoint and credentials come from the environment, as the SDK reads them in production."""
    fields = dict(region="us-east-1", allowed_regions=("eu-west-1",), poll_interval=0.01, retry_backoff=0.01, cleanup_retry_seconds=0.05, boot_timeout=5)
    fields.update(overrides)
    return AwsProvider(AwsConfig(**fields))


async def settle(rt):
    await rt.runner.wait_idle(30)


def launch_params(aws: LocalAws) -> dict:
    (call,) = aws.proxy.calls("RunInstances", status=200)
    return call.params


def user_data_files(user_data: str) -> dict[str, str]:
    assert user_data.startswith("#cloud-config\n")
    return {f["path"]: f["content"] for f in yaml.safe_load(user_data)["write_files"]}


def tags_of(params: dict, spec: int) -> dict[str, str]:
    """TagSpecification.<spec>.Tag.<n>.Key/Value of a query-API request, as a dict."""
    tags, n = {}, 1
    while f"TagSpecification.{spec}.Tag.{n}.Key" in params:
        tags[params[f"TagSpecification.{spec}.Tag.{n}.Key"]] = params[f"TagSpecification.{spec}.Tag.{n}.Value"]
        n += 1
    return tags


# ----- the whole way through the service -------------------------------------------------------------


async def test_start_delivers_the_config_at_the_address_then_up_and_stop_leaves_nothing(make_runtime, channel, aws):
    aws.proxy.boot_seconds = 0.4
    aws.proxy.address_seconds = 0.1  # RunInstances' reply has no address yet: it shows a little later
    booted_at_delivery, looks_before_delivery = [], []
    original = channel.deliver_config

    async def spy(conv, recipient, delivery):
        now = asyncio.get_running_loop().time()
        booted_at_delivery.extend(now >= b.launched_at + aws.proxy.boot_seconds for b in aws.proxy.launched.values())
        looks_before_delivery.append(len(aws.proxy.calls("DescribeInstances")))
        return await original(conv, recipient, delivery)

    channel.deliver_config = spy
    async with make_runtime(provider=aws_provider()) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        assert booted_at_delivery == [False]  # the config went out while the server was still booting
        progress = channel.texts("progress")
        for step in ("creating server", "server booting"):
            assert any(step in p for p in progress), progress
        texts = channel.texts("text")
        assert any("within about a minute" in t for t in texts) and any("Your VPN server is up" in t for t in texts)
        (s,) = await rt.store.sessions([SessionState.READY])
        (instance,) = await aws.instances(session=s.id)
        config = next(x for x in channel.sent if x.kind == "config").text
        assert f"Endpoint = {instance['PublicIpAddress']}:51820" in config
        assert s.provider == "aws" and s.region == "us-east-1" and s.server_size == "t4g.nano"
        assert s.resource_id == f"us-east-1/{instance['InstanceId']}"
        assert looks_before_delivery[0] >= 1  # RunInstances' reply had no address: looked until it was there
        assert s.hourly_cost == pytest.approx(0.0042 + 0.005 + 0.0009)  # instance + public IPv4 + 8 GiB gp3
        await rt.dispatcher.handle(incoming("/vpn list", user="test:root"))
        assert "aws/us-east-1 (t4g.nano)" in channel.all_text()
        await rt.dispatcher.handle(incoming("/vpn stop"))
        await settle(rt)
        assert "has ended" in channel.all_text()
        assert await rt.service.reconcile() == 0  # nothing of it is left to find
    assert await aws.leftovers(s.id) == []
    assert {i["State"]["Name"] for i in await aws.instances(session=s.id, states=("terminated", "shutting-down"))} <= set(ENDED)
    assert len(await aws.security_groups()) == 1  # shared and free: kept


async def test_the_launch_request(make_runtime, channel, aws):
    async with make_runtime(provider=aws_provider()) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (s,) = await rt.store.sessions([SessionState.READY])
        stored = await rt.store.deployment_id()
    config = next(x for x in channel.sent if x.kind == "config").text
    client_private = config.split("PrivateKey = ")[1].split("\n")[0]
    psk = config.split("PresharedKey = ")[1].split("\n")[0]
    p = launch_params(aws)

    assert p["InstanceType"] == "t4g.nano" and p["ImageId"] == aws.proxy.images["arm64"]
    (lookup,) = aws.proxy.calls("GetParameter")
    assert lookup.params["Name"] == UBUNTU_SSM_PARAMETER.format(arch="arm64") and lookup.region == "us-east-1"
    assert p["MetadataOptions.HttpTokens"] == "required" and p["MetadataOptions.HttpPutResponseHopLimit"] == "1"
    assert "KeyName" not in p  # no key pair: nobody logs in
    assert p["NetworkInterface.1.AssociatePublicIpAddress"] == "true" and p["NetworkInterface.1.DeleteOnTermination"] == "true"
    assert p["InstanceInitiatedShutdownBehavior"] == "terminate" and p["CreditSpecification.CpuCredits"] == "standard"
    assert "InstanceMarketOptions.MarketType" not in p
    kinds = {p[f"TagSpecification.{i}.ResourceType"]: tags_of(p, i) for i in (1, 2, 3)}
    assert set(kinds) == {"instance", "volume", "network-interface"}
    for tags in kinds.values():
        assert tags["managed-by"] == "vpn-bot" and tags["vpn-session"] == s.id and tags["vpn-owner"] == "test:alice"
        assert tags["vpn-deployment"] == rt.provider.default_deployment_id()  # from the instance name: survives the store
        assert tags["vpn-store"] == stored  # the store's own id: tells a lost store's resources from ours
        assert tags["expires-at"].endswith("+00:00")
    (group,) = await aws.security_groups()
    assert p["NetworkInterface.1.SecurityGroupId.1"] == group["GroupId"]
    rules = [(r["IpProtocol"], r["FromPort"], r["ToPort"], [x["CidrIp"] for x in r["IpRanges"]]) for r in group["IpPermissions"]]
    assert rules == [("udp", 51820, 51820, ["0.0.0.0/0"])]  # WireGuard only: no SSH, nothing else

    user_data = base64.b64decode(p["UserData"]).decode()
    assert user_data == await aws.user_data(s.resource_id.split("/")[1])
    files = user_data_files(user_data)
    netdev = files[bootconfig.NETDEV]
    assert f"PublicKey={s.client_public_key}" in netdev and "AllowedIPs=10.77.0.2/32" in netdev and "ListenPort=51820" in netdev
    assert psk in "".join(files.values()) and client_private not in user_data
    assert yaml.safe_load(user_data)["runcmd"] == [["bash", bootconfig.SERVER_UP]]  # the same boot script as Azure
    server_private = files[bootconfig.KEY].strip()
    everything_else = repr([r.params for r in aws.proxy.requests if r.action != "RunInstances"]) + repr({k: v for k, v in p.items() if k != "UserData"})
    for secret in (client_private, psk, server_private):
        assert secret not in everything_else


@pytest.mark.netns
async def test_the_user_data_boots_into_wireguard_and_carries_the_clients_traffic(lab, make_runtime, channel, aws, tmp_path):
    """What the instance received as user-data, applied with wireguard-go in the server namespace the way
    systemd-networkd would, proven up by the boot script itself, carries the delivered config's traffic."""
    from tests.fakes.netns import SERVER_LAN, TUNNEL_SERVER, run
    from tests.provisioner.test_azure_boot import DNS_CLIENT, DNS_SERVER, apply_like_networkd, run_server_up_script

    aws.proxy.public_ip = SERVER_LAN  # the "instance" is the server namespace
    async with make_runtime(provider=aws_provider()) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (s,) = await rt.store.sessions([SessionState.READY])
    user_data = await aws.user_data(s.resource_id.split("/")[1])
    files = user_data_files(user_data)
    apply_like_networkd(lab, files, tmp_path)
    conf = tmp_path / "vpn-aws.conf"
    conf.write_text(next(x for x in channel.sent if x.kind == "config").text)
    assert f"Endpoint = {SERVER_LAN}:51820" in conf.read_text()
    dns = next(line.split("=", 1)[1].strip() for line in conf.read_text().splitlines() if line.startswith("DNS"))
    assert dns == TUNNEL_SERVER
    lab.spawn(lab.in_server(sys.executable, "-c", DNS_SERVER, dns, "192.0.2.53"))
    code, console, hits = run_server_up_script(lab, files, tmp_path)
    assert code == 0 and "vpn-wg-up" in console and len(hits) == 1
    lab.apply_client_config(conf)
    assert lab.tcp_through_tunnel() == "echo:through the tunnel"
    assert run(*lab.in_client(sys.executable, "-c", DNS_CLIENT, dns, "intranet.example.org")).strip() == "192.0.2.53"


async def test_a_region_is_picked_by_its_aws_name_and_others_are_refused(make_runtime, channel, aws):
    async with make_runtime(provider=aws_provider()) as rt:
        await rt.dispatcher.handle(incoming("/vpn start ap-south-1"))
        await settle(rt)
        assert "Region 'ap-south-1' is not available. Choose one of: us-east-1, eu-west-1." in channel.all_text()
        assert aws.proxy.requests == []  # refused before anything reached AWS
        await rt.dispatcher.handle(incoming("/vpn start eu-west-1"))
        await settle(rt)
        (s,) = await rt.store.sessions([SessionState.READY])
    assert s.region == "eu-west-1" and s.resource_id.startswith("eu-west-1/")
    assert len(await aws.instances("eu-west-1", session=s.id)) == 1 and await aws.instances("us-east-1") == []
    assert {r.region for r in aws.proxy.requests} == {"eu-west-1"}


async def test_throttling_is_retried_with_backoff_and_launches_once(make_runtime, channel, aws, caplog):
    aws.proxy.faults += [
        Fault("GetParameter", "ThrottlingException", 400, times=2),
        Fault("CreateSecurityGroup", times=1),
        Fault("RunInstances", times=2),
        Fault("DescribeInstances", times=3),
        Fault("GetConsoleOutput", times=1),
    ]
    async with make_runtime(provider=aws_provider()) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (s,) = await rt.store.sessions(list(SessionState))
        assert s.state is SessionState.READY
    assert all(f.times == 0 for f in aws.proxy.faults)
    assert len(aws.proxy.calls("RunInstances")) == 3 and len(await aws.instances(session=s.id)) == 1
    tokens = {c.params["ClientToken"] for c in aws.proxy.calls("RunInstances")}
    assert len(tokens) == 1  # retries of one launch share its idempotency token
    assert "RequestLimitExceeded; retry 1 of 6" in caplog.text


@pytest.mark.parametrize(
    "fault, told",
    [
        (Fault("RunInstances", "InsufficientInstanceCapacity", 500), "AWS has no spare capacity for this server in us-east-1 right now"),
        (Fault("RunInstances", "Unsupported", 400), "the server type t4g.nano is not available in us-east-1"),
        (Fault("RunInstances", "UnauthorizedOperation", 403), "not allowed to create servers in AWS"),
        (Fault("RunInstances", "VcpuLimitExceeded", 400), "reached its quota"),
        (Fault("CreateVpc", "VpcLimitExceeded", 400), "reached its quota"),
        (Fault("GetParameter", "AccessDeniedException", 400), "not allowed to create servers in AWS"),
    ],
)
async def test_a_refusal_is_told_plainly_and_nothing_is_left(make_runtime, channel, aws, fault, told, caplog):
    aws.proxy.faults.append(fault)
    async with make_runtime(provider=aws_provider()) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (s,) = await rt.store.sessions(list(SessionState))
        assert s.state is SessionState.FAILED
    text = channel.all_text()
    assert told in text and "Nothing was left running" in text and "Traceback" not in text
    assert not [x for x in channel.sent if x.kind == "config"]  # refused before the address existed: no dead config
    assert await aws.leftovers(s.id) == [] and await aws.instances() == []
    assert fault.code in caplog.text  # the admin's log names AWS's error code


async def test_an_instance_that_ends_while_booting_fails_plainly(make_runtime, channel, aws):
    aws.proxy.boot_seconds = 30  # never up within the test
    async with make_runtime(provider=aws_provider()) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        for _ in range(500):
            if [x for x in channel.sent if x.kind == "config"]:
                break
            await asyncio.sleep(0.01)
        (instance,) = await aws.instances()
        await (await aws.ec2()).terminate_instances(InstanceIds=[instance["InstanceId"]])  # as a Spot reclaim would
        await settle(rt)
        (s,) = await rt.store.sessions(list(SessionState))
    assert s.state is SessionState.FAILED
    text = channel.all_text()
    assert "the server stopped before it came up" in text and "will not work; please delete it" in text
    assert await aws.leftovers(s.id) == []


async def test_no_sign_of_the_tunnel_fails_within_the_boot_timeout(make_runtime, channel, aws):
    """The instance runs, but its boot script never says the tunnel is up: that alone is never "up"."""
    aws.proxy.boot_ok = False
    async with make_runtime(provider=aws_provider(boot_timeout=0.5)) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (s,) = await rt.store.sessions(list(SessionState))
    assert s.state is SessionState.FAILED and s.server_up_at is None
    assert "did not come up within" in channel.all_text() and "Your VPN server is up" not in channel.all_text()
    assert aws.proxy.calls("GetConsoleOutput") and await aws.leftovers(s.id) == []


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_the_server_calls_back_to_another_replica(make_runtime, channel, aws, tmp_path):
    """With VPN_PUBLIC_URL, "server up" is the instance's own authenticated callback, landing on a second
    replica (same store); the console never shows the line here, so the callback is the only way up."""
    aws.proxy.console_up = False
    aws.proxy.boot_seconds = 0.2
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    other = build_http_app(make_runtime(provider=aws_provider()))
    server = TestServer(other, host="127.0.0.1", port=port)
    await server.start_server()
    try:
        async with make_runtime(provider=aws_provider(), VPN_PUBLIC_URL=base) as rt:
            await rt.dispatcher.handle(incoming("/vpn start"))
            await settle(rt)
            (s,) = await rt.store.sessions(list(SessionState))
            assert s.state is SessionState.READY and s.server_up_at is not None
        url = user_data_files(await aws.user_data(s.resource_id.split("/")[1]))[bootconfig.CALLBACK_FILE].strip()
        token = url.rsplit("/", 1)[1]
        assert url == f"{base}/api/server-up/{s.id}/{token}" and aws.proxy.callbacks == [(f"/api/server-up/{s.id}/{token}", 204)]
        assert s.ready_token_hash == ready_tokens.token_hash(token)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/api/server-up/{s.id}/{'A' * 43}") as forged:
                assert forged.status == 404
    finally:
        await server.close()


async def test_unreachable_public_url_falls_back_to_the_console_output(make_runtime, channel, aws):
    async with make_runtime(provider=aws_provider(), VPN_PUBLIC_URL=f"http://127.0.0.1:{_free_port()}") as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (s,) = await rt.store.sessions(list(SessionState))
    assert s.state is SessionState.READY and s.server_up_at is None
    assert [status for _, status in aws.proxy.callbacks] == [0]  # tried, could not arrive
    assert [c.params.get("Latest") for c in aws.proxy.calls("GetConsoleOutput")][:1] == ["true"]


# ----- crashes, lost stores, other deployments ----------------------------------------------------------


@pytest.mark.slow
async def test_sigkill_mid_provisioning_then_restart_leaves_one_sessions_worth(aws, tmp_path):
    """SIGKILL the app while RunInstances is in flight; the restarted app starts over, terminating what the
    dead one launched, and AWS ends with one live instance, and none after /vpn stop."""
    import signal

    from tests.support.apprun import APP, app_env

    env = without_aws(app_env(tmp_path / "data", VPN_PROVIDER="aws", AWS_POLL_SECONDS="0.02", VPN_LEASE_SECONDS="3"))
    env.update(aws_environment(aws.proxy.base_url))
    aws.proxy.latency["RunInstances"] = 1.0
    first = await asyncio.create_subprocess_exec(
        sys.executable, APP, "console", "--out", str(tmp_path / "first"),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True,
    )
    first.stdin.write(b"/vpn start\n")
    await first.stdin.drain()
    for _ in range(1500):
        if aws.proxy.calls("RunInstances"):
            break
        await asyncio.sleep(0.02)
    assert aws.proxy.calls("RunInstances"), (await first.stderr.read(4000)).decode()
    await asyncio.sleep(0.3)  # the launch is in flight: AWS has the request, the app has no reply
    os.killpg(first.pid, signal.SIGKILL)
    await first.wait()
    aws.proxy.latency.clear()
    for _ in range(300):  # AWS carries out the request the dead process sent
        if aws.proxy.launched:
            break
        await asyncio.sleep(0.01)
    (orphan,) = aws.proxy.launched
    await asyncio.sleep(3)  # the dead process's lease runs out

    async def console(*commands: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, APP, "console", "--out", str(tmp_path / "second"),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )
        out, err = await asyncio.wait_for(proc.communicate("".join(c + "\n" for c in commands).encode()), 60)
        assert proc.returncode == 0, err.decode()
        return out.decode()

    resumed = await console("/vpn status")
    assert "restarted while setting up" in resumed and "Your VPN server is up" in resumed
    (session_id,) = {t["Value"] for i in await aws.instances(states=("pending", "running", "shutting-down", "terminated"))
                     for t in i.get("Tags", []) if t["Key"] == "vpn-session"}
    (live,) = await aws.instances(session=session_id)
    assert live["InstanceId"] != orphan and await aws.instances(session=session_id, states=ENDED)  # the orphan was terminated
    stopped = await console("/vpn stop")
    assert "has ended" in stopped
    assert await aws.leftovers(session_id) == []


def _provider_on(clock) -> AwsProvider:
    provider = aws_provider()
    provider.clock = clock  # the engine's clock wrote the expires-at tags
    return provider


async def _run_instance(aws: LocalAws, tags: dict[str, str] | None = None) -> str:
    specs = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}] if tags else []
    reply = await (await aws.ec2()).run_instances(ImageId="ami-0a1b2c3d4e5f60718", MinCount=1, MaxCount=1, TagSpecifications=specs)
    return reply["Instances"][0]["InstanceId"]


async def test_a_lost_store_leaves_nothing_behind_once_its_sessions_expire(make_runtime, aws, clock, tmp_path, caplog):
    """Issue 18.2 on AWS: the default deployment id survives losing the store; what the lost store made
    is left while it would still run (reported), and removed once it has expired; another
    deployment's instance and an untagged one are never touched, and the first is reported."""
    async with make_runtime(provider=_provider_on(clock)) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (lost,) = await rt.store.sessions([SessionState.READY])
    (instance,) = await aws.instances(session=lost.id)
    theirs = await _run_instance(aws, {"managed-by": "vpn-bot", "vpn-deployment": "d-two", "vpn-session": "0123456789",
                                       "expires-at": "2026-01-01T00:00:00+00:00"})
    untagged = await _run_instance(aws)

    shutil.rmtree(tmp_path / "data")  # the store is gone; the instance is not
    caplog.set_level(logging.WARNING, logger="provisioner.aws")
    clock.advance(minutes=10)  # the session would still run: a reap now leaves it (and reports it)
    async with make_runtime(provider=_provider_on(clock)) as rt:
        assert (await rt.service.reap_once()).removed == 0
    assert [i["InstanceId"] for i in await aws.instances(session=lost.id)] == [instance["InstanceId"]]
    assert "made with another store" in caplog.text and instance["InstanceId"] in caplog.text

    clock.advance(minutes=25)  # past its expiry
    caplog.clear()
    async with make_runtime(provider=_provider_on(clock)) as rt:
        assert (await rt.service.reap_once()).removed == 1
        assert await rt.service.reconcile() == 0
    assert await aws.leftovers(lost.id) == []
    assert {i["InstanceId"] for i in await aws.instances()} == {theirs, untagged}
    reported = [r.getMessage() for r in caplog.records if "another deployment" in r.getMessage()]
    assert any("vpn-bot/d-two" in m and theirs in m and "us-east-1" in m for m in reported), reported
    assert not any(r.exc_info for r in caplog.records)


async def test_a_lost_store_with_a_set_deployment_id_too(make_runtime, aws, clock, tmp_path):
    """VPN_DEPLOYMENT_ID set: the same, under that id (branch aws's test, with issue 18.2's store tag)."""
    async with make_runtime(provider=_provider_on(clock), VPN_DEPLOYMENT_ID="d-one") as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (lost,) = await rt.store.sessions([SessionState.READY])
        assert rt.provider.deployment_id == "d-one"
    shutil.rmtree(tmp_path / "data")
    clock.advance(minutes=35)
    async with make_runtime(provider=_provider_on(clock), VPN_DEPLOYMENT_ID="d-one") as rt:
        assert (await rt.service.reap_once()).removed == 1
        assert await rt.service.reconcile() == 0
    assert await aws.leftovers(lost.id) == []


async def test_upgrading_keeps_the_sessions_made_under_the_stores_random_id(make_runtime, aws):
    """Before issue 18.2 the default id was the store's random one; a live session made then is neither
    orphaned nor deleted after the upgrade, its stop still ends it, and its leftovers still count as ours."""
    async with make_runtime(provider=aws_provider()) as rt:
        stored = await rt.store.deployment_id()
    old = aws_provider(deployment_id=stored)
    async with make_runtime(provider=old) as rt:
        old._store_id = ""  # the old version: the store's id as the deployment, no store tag
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (s,) = await rt.store.sessions([SessionState.READY])
    (instance,) = await aws.instances(session=s.id)
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags["vpn-deployment"] == stored and "vpn-store" not in tags
    ec2 = await aws.ec2()
    await ec2.create_volume(AvailabilityZone="us-east-1a", Size=8, TagSpecifications=[{"ResourceType": "volume", "Tags": [
        {"Key": "managed-by", "Value": "vpn-bot"}, {"Key": "vpn-deployment", "Value": stored}, {"Key": "vpn-session", "Value": "1b1b1b1b1b"}]}])

    async with make_runtime(provider=aws_provider()) as new:
        assert new.provider.deployment_id == new.provider.default_deployment_id() != stored
        assert await new.service.reconcile() == 1  # the old version's leftover volume: still ours
        assert len(await aws.instances(session=s.id)) == 1  # the live one: still there
        await new.dispatcher.handle(incoming("/vpn stop"))
        await settle(new)
        assert await new.service.reconcile() == 0
    assert await aws.leftovers(s.id) == [] and await aws.leftovers("1b1b1b1b1b") == []


def test_the_default_id_depends_on_the_instance_name_only():
    made = default_deployment_id("vpn-bot")
    assert made.startswith("vpn-bot-") and len(made) <= 64 and made != default_deployment_id("vpn-bot2")
    assert AwsProvider(AwsConfig(region="eu-west-1", allowed_regions=("us-east-1",))).default_deployment_id() == made
    assert AwsProvider(AwsConfig(instance_name="vpn-bot2")).deployment_id == default_deployment_id("vpn-bot2")


async def test_reconcile_finds_a_volume_that_outlived_its_instance(make_runtime, aws):
    async with make_runtime(provider=aws_provider()) as rt:
        tags = [{"Key": "managed-by", "Value": "vpn-bot"}, {"Key": "vpn-deployment", "Value": rt.provider.deployment_id}, {"Key": "vpn-session", "Value": "00aa11bb22"}]
        ec2 = await aws.ec2("eu-west-1")
        await ec2.create_volume(AvailabilityZone="eu-west-1a", Size=8, TagSpecifications=[{"ResourceType": "volume", "Tags": tags}])
        await ec2.create_volume(AvailabilityZone="eu-west-1a", Size=8)  # somebody else's
        (found,) = await rt.provider.list_managed()
        assert found.session_id == "00aa11bb22" and found.resource_id == "eu-west-1/"
        assert await rt.service.reconcile() == 1
    assert len((await ec2.describe_volumes())["Volumes"]) == 1


# ----- the shared network -------------------------------------------------------------------------------


async def test_the_shared_network_is_made_once_and_found_after_a_restart(make_runtime, aws):
    async with make_runtime(provider=aws_provider()) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
    (group,) = await aws.security_groups()
    await (await aws.ec2()).authorize_security_group_ingress(GroupId=group["GroupId"], IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])  # someone opened SSH
    async with make_runtime(provider=aws_provider(), users="test:bob") as rt:
        await rt.dispatcher.handle(incoming("/vpn start", user="test:bob"))
        await settle(rt)
        assert [s.owner for s in await rt.store.sessions([SessionState.READY])] == ["test:alice", "test:bob"]
    assert len(aws.proxy.calls("CreateVpc")) == 1 and len(aws.proxy.calls("CreateSecurityGroup")) == 1 and len(await aws.vpcs()) == 1
    (group,) = await aws.security_groups()
    assert [(r["IpProtocol"], r["FromPort"]) for r in group["IpPermissions"]] == [("udp", 51820)]  # SSH closed again


async def test_a_given_subnet_and_security_group_are_used_as_they_are(make_runtime, aws):
    ec2 = await aws.ec2()
    vpc = (await ec2.create_vpc(CidrBlock="10.50.0.0/16"))["Vpc"]["VpcId"]
    subnet = (await ec2.create_subnet(VpcId=vpc, CidrBlock="10.50.1.0/24", AvailabilityZone="us-east-1b"))["Subnet"]["SubnetId"]
    group = (await ec2.create_security_group(GroupName="mine", Description="admin's", VpcId=vpc))["GroupId"]
    async with make_runtime(provider=aws_provider(subnet_id=subnet, security_group_id=group)) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        assert [s.state for s in await rt.store.sessions(list(SessionState))] == [SessionState.READY]
    p = launch_params(aws)
    assert p["NetworkInterface.1.SubnetId"] == subnet and p["NetworkInterface.1.SecurityGroupId.1"] == group
    assert aws.proxy.calls("CreateVpc") == [] and aws.proxy.calls("CreateSecurityGroup") == []


async def test_spot_and_a_given_image(make_runtime, channel, aws):
    async with make_runtime(provider=aws_provider(spot=True, instance_type="t3.nano", ami_id="ami-0123456789abcdef0")) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (s,) = await rt.store.sessions([SessionState.READY])
        await rt.dispatcher.handle(incoming("/vpn stop"))
        await settle(rt)
    p = launch_params(aws)
    assert p["InstanceMarketOptions.MarketType"] == "spot" and p["InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior"] == "terminate"
    assert "spot-instances-request" in {p[f"TagSpecification.{i}.ResourceType"] for i in (1, 2, 3, 4)}
    assert p["ImageId"] == "ami-0123456789abcdef0" and aws.proxy.calls("GetParameter") == []
    assert s.server_size == "t3.nano spot" and s.hourly_cost == pytest.approx(0.0052 + 0.005 + 0.0009)
    assert await aws.leftovers(s.id) == []


# ----- secrets, settings, small parts ---------------------------------------------------------------------


async def test_debug_logging_never_shows_the_servers_private_key(make_runtime, channel, aws, caplog):
    caplog.set_level(logging.DEBUG)
    async with make_runtime(provider=aws_provider()) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
    user_data = base64.b64decode(launch_params(aws)["UserData"]).decode()
    server_private = user_data_files(user_data)[bootconfig.KEY].strip()
    encoded = launch_params(aws)["UserData"]
    assert server_private not in caplog.text and encoded[:200] not in caplog.text
    assert logging.getLogger("botocore").getEffectiveLevel() >= logging.WARNING


def test_make_provider_wires_the_settings():
    from bot.settings import Settings
    from bot.wiring import make_provider

    provider = make_provider(Settings.from_env({"VPN_PROVIDER": "aws", "AWS_REGION": "eu-west-1", "AWS_ALLOWED_REGIONS": "us-east-1",
                                                "AWS_ENDPOINT_URL": "http://127.0.0.1:1", "VPN_DEPLOYMENT_ID": "d-x"}))
    assert isinstance(provider, AwsProvider) and provider.name == "aws"
    assert provider.regions == ("eu-west-1", "us-east-1") and provider.deployment_id == "d-x"
    assert provider.config.endpoint_url == "http://127.0.0.1:1" and provider.hourly_cost("eu-west-1") == pytest.approx(0.0101)
    plain = make_provider(Settings.from_env({"VPN_PROVIDER": "aws", "VPN_INSTANCE_NAME": "vpn-x"}))
    assert plain.deployment_id == plain.default_deployment_id() == default_deployment_id("vpn-x") and plain.config.endpoint_url is None


def test_an_http_endpoint_only_on_loopback():
    with pytest.raises(ValueError):
        AwsProvider(AwsConfig(endpoint_url="http://192.0.2.1:4566"))
    AwsProvider(AwsConfig(endpoint_url="http://localhost:4566"))


def test_architecture_follows_the_instance_family():
    arm = ("t4g.nano", "m7g.large", "c6gn.xlarge", "m6gd.large", "im4gn.large", "is4gen.large", "x2gd.large", "g5g.xlarge", "a1.medium", "r8g.large")
    x86 = ("t3.nano", "t3a.nano", "t2.micro", "m7i.large", "m7i-flex.large", "g4dn.xlarge", "g5.xlarge", "c5n.large", "inf2.xlarge", "m6a.large")
    assert {architecture(t) for t in arm} == {"arm64"} and {architecture(t) for t in x86} == {"amd64"}


def test_preflight_says_in_one_line_when_there_are_no_credentials(tmp_path, monkeypatch):
    from bot import preflight
    from bot.settings import Settings

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    import socket

    with socket.socket() as listener:  # something to be reachable: the check is about credentials
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        settings = Settings.from_env({"VPN_PROVIDER": "aws", "VPN_DATA_DIR": str(tmp_path), "AWS_ENDPOINT_URL": url})
        with pytest.raises(preflight.StartupError, match="no AWS credentials found"):
            preflight.check(settings, "serve")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        preflight.check(settings, "serve")


def test_the_iam_policy_allows_every_call_the_provider_makes_and_nothing_unconditioned_that_changes_things():
    """docs/aws-iam.json against the calls in provisioner/aws.py (their names, as the SDK spells them)."""
    import json
    import re

    import botocore.session
    from botocore import xform_name

    root = Path(__file__).resolve().parents[2]
    session = botocore.session.get_session()
    known = {f"{prefix}:{op}": xform_name(op) for service, prefix in (("ec2", "ec2"), ("ssm", "ssm"))
             for op in session.get_service_model(service).operation_names}
    source = (root / "provisioner" / "aws.py").read_text()
    called = {action for action, snake in known.items() if f'"{snake}"' in source}
    assert {"ec2:RunInstances", "ec2:TerminateInstances", "ec2:GetConsoleOutput", "ssm:GetParameter"} <= called
    policy = json.loads((root / "docs" / "aws-iam.json").read_text())
    allowed: dict[str, list[dict]] = {}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        for action in [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]:
            allowed.setdefault(action, []).append(statement)
    assert called <= set(allowed), called - set(allowed)
    for action, statements in allowed.items():
        if not re.match(r"ec2:Describe", action) and action.startswith("ec2:"):
            assert all("Condition" in s for s in statements), f"{action} is allowed without a tag condition"


async def test_a_refused_termination_is_retried_until_aws_lets_go(make_runtime, channel, aws, caplog):
    """destroy tries everything, reports what AWS still holds (CleanupIncomplete), and the teardown tries
    again after `retry_after` until it is gone; the user hears "has ended" only then."""
    async with make_runtime(provider=aws_provider()) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (s,) = await rt.store.sessions([SessionState.READY])
        aws.proxy.faults.append(Fault("TerminateInstances", "UnauthorizedOperation", 403, times=2))
        await rt.dispatcher.handle(incoming("/vpn stop"))
        await settle(rt)
        (s,) = await rt.store.sessions(list(SessionState))
        assert s.state is SessionState.DELETED
    assert len(aws.proxy.calls("TerminateInstances")) == 3 and "not deleted yet" in caplog.text
    assert "has ended" in channel.all_text() and await aws.leftovers(s.id) == []
