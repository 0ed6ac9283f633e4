"""The local AWS: moto's server in a subprocess on 127.0.0.1, and a small proxy in front of it that adds
what a region has and moto has not; plus the views a test asks about it, read straight from moto (not
through the proxy, so a view never meets an injected fault or latency).

The real SDK talks to the proxy (AWS_ENDPOINT_URL), the proxy to moto. On top of moto it adds:
- per-action latency (`latency["RunInstances"] = 1.5`; `"*"` for every call), as a region has;
- faults: the next `times` calls of an action answer AWS's error (RequestLimitExceeded with 503,
  InsufficientInstanceCapacity with 500, anything else), in EC2's XML or SSM's JSON;
- Canonical's public SSM parameters (/aws/service/canonical/...), which moto does not ship;
- the instance booting: `boot_seconds` after RunInstances its boot script has run, so
  GetConsoleOutput shows `vpn-wg-up <hostname>` (unless `boot_ok` is False) and, with `calls_back`,
  the proxy POSTs the server-up URL the user-data names, as the real boot script does;
- `public_ip`: the address DescribeInstances reports (a test puts a network namespace there).
Every call is recorded (service, region, action, parameters, status).

Nothing here reaches real AWS: the provider under test gets AWS_ENDPOINT_URL (the proxy), fake
credentials, and no instance-metadata probing (`aws_environment`). bench/bench_aws.py runs it as its
own process (`python -m tests.fakes.aws`, the block at the end), reached over HTTP only.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web

from tests.support.loopback import free_port, serve_on_loopback

LIVE = ("pending", "running", "stopping", "stopped")
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


SAMPLE_CONSOLE = "[    0.000000] Linux version 6.8.0-1016-aws (buildd@lcy02-amd64-011)\r\ncloud-init: modules-final running\r\n"
HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"}


class MotoServer:
    """`python -m moto.server` on 127.0.0.1 (a process of its own: its Flask server never competes with
    the test's event loop for the GIL). `reset()` empties every backend between tests."""

    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "MotoServer":
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        for _ in range(3):  # a free port can be taken between the probe and moto's bind: try another
            self.port = free_port()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2) as reply:
                        if reply.status == 200:
                            return self
                except OSError:
                    time.sleep(0.1)
            self.stop()
        raise RuntimeError("moto's server did not start")

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=10).close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Fault:
    """The next `times` calls of `action` answer `code` with HTTP `status`."""

    action: str  # e.g. "RunInstances", "GetParameter"
    code: str = "RequestLimitExceeded"
    status: int = 503
    times: int = 1
    message: str = "injected by the test"


@dataclass
class Recorded:
    service: str
    region: str
    action: str
    params: dict
    status: int = 0
    code: str = ""  # an injected fault's code
    upstream_seconds: float = 0.0  # how long moto took


@dataclass
class Launched:
    instance_id: str
    region: str
    user_data: str
    launched_at: float
    callback_url: str | None = None


@dataclass
class AwsProxy:
    upstream: str
    latency: dict[str, float] = field(default_factory=dict)
    public_ip: str | None = None
    address_seconds: float = 0.0  # after RunInstances, until DescribeInstances shows the public address
    boot_seconds: float = 0.0
    boot_ok: bool = True
    calls_back: bool = True
    console_up: bool = True  # False: the console never shows the line (only the callback can say up)
    images: dict[str, str] = field(default_factory=lambda: {"amd64": "ami-0a1b2c3d4e5f60718", "arm64": "ami-0f1e2d3c4b5a69788"})
    callback_file: str = "/etc/vpn-bot/server-up-url"  # where the boot config keeps the server-up URL
    marker: str = "vpn-wg-up"  # what the boot script writes to the console once the tunnel is up
    faults: list[Fault] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.base_url = ""
        self.launched: dict[str, Launched] = {}
        self.callbacks: list[tuple[str, int]] = []  # (URL path, status; 0: unreachable) of each boot's POST
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> "AwsProxy":
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, self.base_url = await serve_on_loopback(app)
        # A new connection per call: moto's development server may close a kept-alive one under us.
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), connector=aiohttp.TCPConnector(force_close=True))
        return self

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def calls(self, action: str, *, status: int | None = None) -> list[Recorded]:
        return [r for r in self.requests if r.action == action and (status is None or r.status == status)]

    # ----- the wire -----------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        scope = re.search(r"Credential=[^/]+/\d{8}/([^/]+)/([^/]+)/", request.headers.get("Authorization", ""))
        region, service = (scope.group(1), scope.group(2)) if scope else ("", "")
        target = request.headers.get("X-Amz-Target", "")
        if target:
            action = target.rsplit(".", 1)[-1]
            params = json.loads(body or b"{}")
        else:
            params = dict(parse_qsl(body.decode(errors="replace"), keep_blank_values=True))
            action = params.get("Action", "")
        record = Recorded(service, region, action, params)
        self.requests.append(record)
        delay = self.latency.get(action, self.latency.get("*", 0.0))
        if delay:
            await asyncio.sleep(delay)
        fault = next((f for f in self.faults if f.action == action and f.times > 0), None)
        if fault is not None:
            fault.times -= 1
            record.status, record.code = fault.status, fault.code
            return self._error(service, fault)
        if service == "ssm" and action == "GetParameter" and str(params.get("Name", "")).startswith("/aws/service/canonical/"):
            record.status = 200
            return self._parameter(region, params["Name"])
        if service == "ec2" and action == "GetConsoleOutput" and params.get("InstanceId") in self.launched:
            record.status = 200
            return self._console(self.launched[params["InstanceId"]])
        assert self._http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        started = time.perf_counter()
        async with self._http.request(request.method, self.upstream + request.path_qs, data=body, headers=headers) as reply:
            data = await reply.read()
            record.upstream_seconds = time.perf_counter() - started
            status = reply.status
            out_headers = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_BY_HOP}
        record.status = status
        if status == 200 and action == "RunInstances":
            self._boot(region, params, data.decode(errors="replace"))
        if self.address_seconds and status == 200 and action in ("RunInstances", "DescribeInstances"):
            data = self._hide_new_addresses(data)
        if self.public_ip and action in ("RunInstances", "DescribeInstances", "DescribeNetworkInterfaces"):
            address = self.public_ip.encode()
            data = re.sub(rb"<(ipAddress|publicIp)>[0-9.]+</\1>", lambda m: b"<%s>%s</%s>" % (m[1], address, m[1]), data)
        return web.Response(body=data, status=status, headers=out_headers)

    def _hide_new_addresses(self, data: bytes) -> bytes:
        """An instance launched less than `address_seconds` ago has no public address yet (as on EC2,
        where it shows once the network interface is attached, a few seconds into `pending`)."""
        import xml.etree.ElementTree as ET

        root = ET.fromstring(data)
        namespace = root.tag[1:].split("}")[0] if root.tag.startswith("{") else ""
        ET.register_namespace("", namespace)
        q = (lambda name: f"{{{namespace}}}{name}") if namespace else (lambda name: name)
        now = asyncio.get_running_loop().time()
        for instances in root.iter(q("instancesSet")):
            for item in instances.findall(q("item")):
                launched = self.launched.get(item.findtext(q("instanceId")) or "")
                if launched is None or now >= launched.launched_at + self.address_seconds:
                    continue
                for name in ("ipAddress", "dnsName"):
                    for element in item.findall(q(name)):
                        item.remove(element)
        return ET.tostring(root, xml_declaration=True, encoding="UTF-8")

    @staticmethod
    def _error(service: str, fault: Fault) -> web.Response:
        if service == "ec2":
            xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{fault.code}</Code>'
                   f"<Message>{fault.message}</Message></Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>")
            return web.Response(status=fault.status, body=xml.encode(), content_type="text/xml")
        return web.Response(status=fault.status, body=json.dumps({"__type": fault.code, "message": fault.message}).encode(),
                            content_type="application/x-amz-json-1.1")

    def _parameter(self, region: str, name: str) -> web.Response:
        arch = "arm64" if "/arm64/" in name else "amd64"
        if arch not in self.images:
            missing = {"__type": "ParameterNotFound", "message": f"Parameter {name} not found."}
            return web.Response(status=400, body=json.dumps(missing).encode(), content_type="application/x-amz-json-1.1")
        body = {"Parameter": {"Name": name, "Type": "String", "Value": self.images[arch], "Version": 1, "DataType": "aws:ec2:image",
                              "LastModifiedDate": time.time(), "ARN": f"arn:aws:ssm:{region}::parameter{name}"}}
        return web.Response(body=json.dumps(body).encode(), content_type="application/x-amz-json-1.1")

    def _console(self, launched: Launched) -> web.Response:
        text = SAMPLE_CONSOLE
        if self.boot_ok and self.console_up and asyncio.get_running_loop().time() >= launched.launched_at + self.boot_seconds:
            text += f"{self.marker} ip-10-200-0-10\r\n"
        elif not self.boot_ok:
            text += "vpn-boot: wgs0 did not come up\r\n"
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        xml = ('<?xml version="1.0" encoding="UTF-8"?>\n<GetConsoleOutputResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
               f"<requestId>{uuid.uuid4()}</requestId><instanceId>{launched.instance_id}</instanceId><timestamp>{stamp}</timestamp>"
               f"<output>{base64.b64encode(text.encode()).decode()}</output></GetConsoleOutputResponse>")
        return web.Response(body=xml.encode(), content_type="text/xml")

    # ----- the instance's boot ------------------------------------------------------------------------

    def _boot(self, region: str, params: dict, reply: str) -> None:
        user_data = base64.b64decode(params.get("UserData", "")).decode(errors="replace")
        url = self._callback_url(user_data)
        now = asyncio.get_running_loop().time()
        for instance_id in dict.fromkeys(re.findall(r"<instanceId>(i-[0-9a-f]+)</instanceId>", reply)):
            launched = self.launched[instance_id] = Launched(instance_id, region, user_data, now, url)
            if url and self.calls_back and self.boot_ok:
                task = asyncio.get_running_loop().create_task(self._call_back(launched))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _callback_url(self, user_data: str) -> str | None:
        """The URL cloud-init would write to `callback_file` (a JSON-quoted YAML scalar in write_files)."""
        match = re.search(rf"- path: {re.escape(self.callback_file)}\n(?:    .*\n)*?    content: (\".*\")", user_data)
        return json.loads(match.group(1)).strip() if match else None

    async def _call_back(self, launched: Launched) -> None:
        await asyncio.sleep(self.boot_seconds)
        from urllib.parse import urlsplit

        path = urlsplit(launched.callback_url or "").path
        try:
            assert self._http is not None
            async with self._http.post(launched.callback_url or "", data=b"") as reply:
                self.callbacks.append((path, reply.status))
        except (aiohttp.ClientError, OSError):
            self.callbacks.append((path, 0))


def aws_environment(endpoint: str) -> dict[str, str]:
    """What a process needs to talk to the local AWS only: the endpoint, fake credentials, no IMDS
    probe, no profile or config file of the machine's."""
    return {
        **FAKE_CREDENTIALS,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


def without_aws(env: dict[str, str]) -> dict[str, str]:
    """`env` minus every AWS_ variable (a developer's profile, role or region must not leak in)."""
    return {k: v for k, v in env.items() if not k.startswith("AWS_")}


@dataclass
class LocalAws:
    moto: MotoServer
    proxy: AwsProxy
    _clients: dict = field(default_factory=dict)

    async def ec2(self, region: str = "us-east-1"):
        """An EC2 client on moto itself (views for assertions)."""
        if region not in self._clients:
            from aiobotocore.session import get_session

            context = get_session().create_client(
                "ec2", region_name=region, endpoint_url=self.moto.url,
                aws_access_key_id="testing", aws_secret_access_key="testing",
            )
            self._clients[region] = (context, await context.__aenter__())
        return self._clients[region][1]

    async def close(self) -> None:
        for context, _ in self._clients.values():
            await context.__aexit__(None, None, None)
        self._clients.clear()

    async def instances(self, region: str = "us-east-1", *, session: str | None = None, states=LIVE) -> list[dict]:
        filters = [{"Name": "instance-state-name", "Values": list(states)}]
        if session:
            filters.append({"Name": "tag:vpn-session", "Values": [session]})
        reply = await (await self.ec2(region)).describe_instances(Filters=filters)
        return [i for r in reply["Reservations"] for i in r["Instances"]]

    async def leftovers(self, session: str, regions=("us-east-1", "eu-west-1")) -> list[str]:
        """Everything of the session AWS would still bill or hold: live instances, volumes, network
        interfaces that are not about to go with their terminated instance, Elastic IPs."""
        left = []
        for region in regions:
            ec2 = await self.ec2(region)
            left += [i["InstanceId"] for i in await self.instances(region, session=session)]
            tag = [{"Name": "tag:vpn-session", "Values": [session]}]
            left += [v["VolumeId"] for v in (await ec2.describe_volumes(Filters=tag))["Volumes"]]
            left += [n["NetworkInterfaceId"] for n in (await ec2.describe_network_interfaces(Filters=tag))["NetworkInterfaces"]]
            left += [a.get("AllocationId", a.get("PublicIp")) for a in (await ec2.describe_addresses())["Addresses"]]
        return left

    async def security_groups(self, region: str = "us-east-1") -> list[dict]:
        reply = await (await self.ec2(region)).describe_security_groups(Filters=[{"Name": "tag:managed-by", "Values": ["vpn-bot"]}])
        return reply["SecurityGroups"]

    async def vpcs(self, region: str = "us-east-1") -> list[dict]:
        return (await (await self.ec2(region)).describe_vpcs(Filters=[{"Name": "tag:vpn-role", "Values": ["shared"]}]))["Vpcs"]

    async def user_data(self, instance_id: str, region: str = "us-east-1") -> str:
        import base64

        reply = await (await self.ec2(region)).describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        return base64.b64decode(reply["UserData"]["Value"]).decode()


# ----- as its own process (bench/) ------------------------------------------------------------------------

def warm(moto: MotoServer, region: str) -> None:
    """moto reads its instance-type tables (~2 s of CPU) and builds a region's backend at the first call
    there: done before the URL is printed, so no measured call pays for it."""
    body = "Action=DescribeInstanceTypeOfferings&Version=2016-11-15&LocationType=availability-zone"
    scope = f"AWS4-HMAC-SHA256 Credential=testing/20240101/{region}/ec2/aws4_request, SignedHeaders=host, Signature=00"
    request = urllib.request.Request(f"{moto.url}/", data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": scope})
    urllib.request.urlopen(request, timeout=60).close()


@dataclass
class Served:
    """moto and the proxy as one fake with a `base_url` (the proxy's) and one `stop`."""

    moto: MotoServer
    proxy: AwsProxy

    @property
    def base_url(self) -> str:
        return self.proxy.base_url

    async def stop(self) -> None:
        await self.proxy.stop()
        self.moto.stop()


if __name__ == "__main__":  # for bench/: moto and the proxy as their own processes, reached over HTTP only
    import argparse

    from tests.support.loopback import serve_until_stopped

    parser = argparse.ArgumentParser(prog="python -m tests.fakes.aws",
                                     description="Serve moto behind the AWS proxy on 127.0.0.1 until SIGTERM; prints the proxy's base URL.")
    parser.add_argument("--fields", type=json.loads, default={}, metavar="JSON",
                        help='AwsProxy fields, e.g. {"latency": {"*": 0.1, "RunInstances": 1.0}, "address_seconds": 3, "boot_seconds": 35}')
    parser.add_argument("--warm", action="append", default=[], metavar="REGION", help="a region moto prepares before the URL is printed (repeatable)")
    cli = parser.parse_args()
    server = MotoServer().start()
    try:
        for name in cli.warm:
            warm(server, name)
    except BaseException:
        server.stop()
        raise

    async def start() -> Served:
        return Served(server, await AwsProxy(server.url, **cli.fields).start())

    serve_until_stopped(start)
