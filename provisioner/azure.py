"""Ephemeral WireGuard VMs on Azure: the only module that imports the Azure SDKs.

Per session, three dependent PUTs: a Standard static public IP (its address completes the client
config, which is delivered at once), a NIC (PUT the moment the IP succeeded), and a VM (the moment
the NIC did) that boots straight into WireGuard from customData and proves its tunnel up before it
says so. That way speaks ARM's REST API through azure-core's ARM pipeline, so it never waits for the
management SDKs to import (they serve reconcile and deletion). Every operation is polled on our
schedule: ARM's Retry-After (10 s) while it cannot be done yet, then our short interval.
Delete options make deleting the VM remove its NIC, IP and disk; `destroy` also tries each one and
reports what Azure still holds. Names derive from the session id and every resource carries this
deployment's id (OS disks in their name), so creates and deletes are idempotent and reconciliation
finds whatever a crash or a lost store left behind, and nothing of another deployment's (which it
reports). The default deployment id derives from the subscription, resource group and instance
name, so it survives losing the store; resources made with another store are left until they
expire (a lost store's, or those of a deployment configured the same way). Shared
per-region infrastructure (VNet, subnet, NSG allowing only UDP to WireGuard) is free, found by
name, and created once.
"""
from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import math
import platform
import random
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

import aiohttp
from azure.core import AzureClouds
from azure.core import __version__ as azure_core_version
from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError, ResourceExistsError, ResourceNotFoundError, map_error
from azure.core.pipeline import policies
from azure.core.pipeline.policies import AsyncRetryPolicy, SansIOHTTPPolicy
from azure.core.polling import AsyncLROPoller
from azure.core.rest import HttpRequest
from azure.mgmt.core import AsyncARMPipelineClient
from azure.mgmt.core.exceptions import ARMErrorFormat
from azure.mgmt.core.policies import ARMHttpLoggingPolicy, AsyncARMAutoResourceProviderRegistrationPolicy, AsyncARMChallengeAuthenticationPolicy
from azure.mgmt.core.polling.async_arm_polling import AsyncARMPolling
from azure.mgmt.core.tools import get_arm_endpoints
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from provisioner import bootconfig
from provisioner.azure_config import AzureConfig
from provisioner.base import CleanupIncomplete, LeftAloneReport, ManagedResource, ProgressFn, ProvisionError, ServerInfo, ServerSpec, Traffic
from provisioner.wireguard import ServerConfig, ServerPeer, generate_keypair

log = logging.getLogger(__name__)

TAG_MANAGED_BY = "managed-by"
TAG_DEPLOYMENT = "vpn-deployment"
TAG_SESSION = "vpn-session"
TAG_OWNER = "vpn-owner"
TAG_EXPIRES = "expires-at"
TAG_STORE = "vpn-store"  # the store's own id: tells a lost store's (or a look-alike deployment's) resources from ours
ADMIN_USER = "vpnadmin"

IMAGES = {  # AZURE_IMAGE -> the VM's imageReference
    "ubuntu": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "minimal", "version": "latest"},
    # The corevm offer needs no marketplace plan or terms (the -free offer does).
    "flatcar": {"publisher": "kinvolk", "offer": "flatcar-container-linux-corevm-amd64", "sku": "stable-gen2", "version": "latest"},
}
# A session's way to "server up" (the shared network, public IP, NIC, VM, its instance view and boot
# diagnostics) speaks ARM's REST API through azure-core's ARM pipeline (`_arm_client`): the bodies
# are ARM's JSON, at the api-versions the management SDKs use (a test holds them equal). The SDK
# clients serve reconcile and deletion, off that path.
NETWORK_API_VERSION = "2026-03-01"
COMPUTE_API_VERSION = "2026-04-01"
_sdk_loaded = False


def _load_sdk() -> None:
    """Import the management SDKs (about half a second of CPU; a second or more on a busy machine)
    when reconcile or a deletion first needs them, never on a session's way to its config and its
    server: a replica woken by a message answers it without them. Binds the names used below."""
    global _sdk_loaded, ComputeManagementClient, NetworkManagementClient
    if _sdk_loaded:
        return
    from azure.mgmt.compute.aio import ComputeManagementClient
    from azure.mgmt.network.aio import NetworkManagementClient

    platform.platform()  # cached for the SDK clients' user agent: its `uname -p` subprocess runs here, not on the event loop
    _sdk_loaded = True


# East US, Linux, pay-as-you-go, USD/hour (Azure retail price catalog). Unknown sizes fall back to
# AZURE_HOURLY_COST. Public IP $0.005/h and an S4 HDD OS disk ≈ $0.0021/h are added to every VM.
VM_PRICES = {
    "Standard_B1ls": 0.0052,
    "Standard_B1s": 0.0104,
    "Standard_B2ats_v2": 0.0094,
    "Standard_B2pts_v2": 0.0084,
    "Standard_B2ts_v2": 0.0104,
}
EXTRAS_PER_HOUR = 0.005 + 0.0021
CONSOLE_BACKOFF_MAX = 30.0  # seconds between serial-console reads while boot diagnostics keep failing
SERIAL_LOG_SAS_MINUTES = 5  # how long a serial log SAS URL is asked to last (reused for 80 % of that)
BOOT_DIAGNOSTICS_ACTION = "Microsoft.Compute/virtualMachines/retrieveBootDiagnosticsData/action"


# When each step could first be done, in seconds after ARM accepted it (public reports: a Standard
# public IP or a NIC in 1-3 s, a small Linux VM in 27-48 s; the boot script a few seconds after the
# VM's Succeeded). Until then ARM's Retry-After is honoured (never past this point) and the serial
# console is not read; from then on the step is polled every AZURE_POLL_SECONDS. Scaled by
# AzureConfig.watch_scale (0: every step polled at our interval from its start).
WATCH_AFTER = {"publicIPAddresses": 1.0, "networkInterfaces": 1.0, "virtualMachines": 25.0, "boot": 3.0}


def poll_delay(elapsed: float, offered: float, interval: float, watch_after: float = 0.0) -> float:
    """Seconds until the next poll of an operation ARM accepted `elapsed` seconds ago, which it asks
    us to poll again in `offered` (Retry-After, else our interval). Before `watch_after`: ARM's pace,
    but not past `watch_after`. From then on: the next point of a grid `interval` apart counted from
    `watch_after`, so polls do not drift later by their round trips; ARM's pace when it is faster."""
    if interval <= 0:
        return 0.0
    if elapsed < watch_after:
        return max(0.0, min(offered, watch_after - elapsed))
    ahead = interval - (elapsed - watch_after) % interval
    return min(offered, ahead if ahead > interval * 0.05 else ahead + interval)


class Pace:
    """At most `rate` polls a second from this process, in bursts of up to `burst` (the generic cell
    rate algorithm): `slot(at)` says when a poll wanted at `at` (time.monotonic()) may go. ARM allows
    a subscription's principal 25 reads a second (a bucket of 250) across every replica and reconcile;
    the default 8 a second per process leaves room for three. 0: unpaced."""

    def __init__(self, rate: float, burst: int = 8) -> None:
        self._step = 1.0 / rate if rate > 0 else 0.0
        self._tolerance = self._step * max(0, burst - 1)
        self._tat = -math.inf  # the theoretical arrival time of the next poll

    def slot(self, at: float) -> float:
        if not self._step:
            return at
        go = max(at, self._tat - self._tolerance)
        self._tat = max(self._tat, go) + self._step
        return go


class CappedPolling(AsyncARMPolling):
    """ARM's long-running-operation polling on our schedule (`poll_delay`): ARM's `Retry-After`
    (commonly 10 s) is honoured only while the operation cannot be done yet, the grid counts from
    ARM's answer to the request, and each poll takes a slot of the process's `Pace`."""

    def __init__(self, interval: float, *, watch_after: float = 0.0, pace: Pace | None = None, **kwargs: Any) -> None:
        super().__init__(interval, **kwargs)
        self._watch_after = watch_after
        self._pace = pace
        self._accepted = time.monotonic()

    def initialize(self, client: Any, initial_response: Any, deserialization_callback: Any) -> None:
        self._accepted = time.monotonic()  # ARM has answered the request: the operation runs from here
        super().initialize(client, initial_response, deserialization_callback)

    def _extract_delay(self) -> float:
        now = time.monotonic()
        delay = poll_delay(now - self._accepted, super()._extract_delay(), self._timeout, self._watch_after)
        return self._pace.slot(now + delay) - now if self._pace is not None else delay


class JitteredRetryPolicy(AsyncRetryPolicy):
    """azure-core's retry (429, 5xx, honouring Retry-After) with full jitter, so many sessions
    throttled at once do not retry in lockstep."""

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        return random.uniform(0, super().get_backoff_time(settings))


class _AllowLoopbackHttp(SansIOHTTPPolicy):
    """Only for an ARM endpoint on 127.0.0.1 (tests, local emulators): lets the bearer policy use http."""

    def on_request(self, request):  # noqa: D401
        request.context["enforce_https"] = False


_DISK_NAME = re.compile(r"^vpn-(?P<session>[0-9a-f]{1,32})-osdisk-(?P<deployment>[0-9a-f]{8})$")


def credential_scopes(arm_endpoint: str) -> list[str]:
    """The token scope for an ARM endpoint, from the SDK's own cloud table where it knows the cloud:
    US Government's ARM is management.usgovcloudapi.net but its token audience is
    management.core.usgovcloudapi.net. Other endpoints (tests, emulators): the endpoint itself."""
    wanted = arm_endpoint.rstrip("/").lower()
    for cloud in AzureClouds:
        known = get_arm_endpoints(cloud)
        if known["resource_manager"].rstrip("/").lower() == wanted:
            return list(known["credential_scopes"])
    return [f"{arm_endpoint.rstrip('/')}/.default"]


def deployment_mark(deployment_id: str) -> str:
    """8 hex characters naming a deployment where a tag cannot: in OS disk names (disks get no tags)."""
    return hashlib.sha256(deployment_id.encode()).hexdigest()[:8]


def default_deployment_id(subscription_id: str, resource_group: str, instance_name: str) -> str:
    """`<instance>-<13 hex>`: the same for every replica and restart of a deployment configured this
    way, with or without its store (ARM compares subscription and group names case-insensitively)."""
    key = f"{subscription_id.strip().lower()}/{resource_group.strip().lower()}/{instance_name}"
    return f"{instance_name}-{hashlib.sha256(key.encode()).hexdigest()[:13]}"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _names(session_id: str, deployment_id: str) -> dict[str, str]:
    base = f"vpn-{session_id}"
    return {"ip": f"{base}-ip", "nic": f"{base}-nic", "vm": f"{base}-vm", "disk": f"{base}-osdisk-{deployment_mark(deployment_id)}"}


def _throwaway_ssh_key() -> str:
    """Azure requires an SSH key for a Linux VM; one whose private half is discarded lets nobody in."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # Azure's minimum; nobody holds the private half
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def _code(exc: HttpResponseError) -> str:
    return getattr(getattr(exc, "error", None), "code", "") or ""


def _azure_code(exc: AzureError) -> str:
    """ARM's error code, else the HTTP status, else the kind of failure (a connection error has neither)."""
    if isinstance(exc, HttpResponseError):
        return _code(exc) or str(exc.status_code)
    return type(exc).__name__


def _has_callback(spec: ServerSpec) -> bool:
    return spec.callback_url is not None and spec.server_up is not None


def _friendly(exc: HttpResponseError, step: str) -> ProvisionError:
    """ARM errors a user can understand, with an actionable line for the admin's log."""
    code = _code(exc)
    status = exc.status_code
    text = f"{code} {exc.message or ''}".lower()
    if status in (401, 403) or code in ("AuthorizationFailed", "LinkedAuthorizationFailed", "InvalidAuthenticationToken"):
        return ProvisionError(
            "the bot is not allowed to create servers in Azure; an admin has been told",
            detail=f"{step}: {code or status}: assign the role in docs/azure-role.json on the resource group",
        )
    if code == "MissingSubscriptionRegistration":
        return ProvisionError(
            "the Azure subscription is not set up for this yet; an admin has been told",
            detail=f"{step}: {code}: register the resource providers (docs/azure.md, 'az provider register')",
        )
    if "quota" in text or code in ("QuotaExceeded", "OperationNotAllowed", "PublicIPCountLimitReached"):
        return ProvisionError(
            "the Azure subscription has reached its quota; an admin has been told",
            detail=f"{step}: {code}: raise the quota or lower VPN_MAX_SESSIONS ({exc.message})",
        )
    if code in ("SkuNotAvailable", "ZonalAllocationFailed", "AllocationFailed", "OverconstrainedAllocationRequest"):
        return ProvisionError(
            "that server size is not available in this region right now; try another region or later",
            detail=f"{step}: {code}: choose another AZURE_VM_SIZE or region ({exc.message})",
        )
    if code == "RequestDisallowedByPolicy":
        return ProvisionError(
            "an Azure policy does not allow this server; an admin has been told",
            detail=f"{step}: {code}: {exc.message}",
        )
    return ProvisionError("Azure refused to create the server; an admin has been told", detail=f"{step}: {status} {code}: {exc.message}")


class _ConsoleUnavailable(Exception):
    """The serial console (boot diagnostics) or the VM's instance view could not be read."""

    def __init__(self, step: str, code: str) -> None:
        super().__init__(f"{step}: {code}")
        self.step, self.code = step, code


@dataclass
class _Boot:
    """What one wait for "server up" saw of the serial console."""

    console_failures: int = 0
    console_error: str = ""
    agent_ready: bool = False  # the VM agent said Ready once: from then on only the serial log is read
    log_url: str = field(default="", repr=False)  # the serial log's SAS URL: a credential, never logged
    log_url_until: float = 0.0  # time.monotonic() after which a new one is asked for


@dataclass
class _Pending:
    """One provisioning attempt in this process, between `create` and `wait_ready`: the NIC-and-VM
    task (started the moment the address exists) and whether its VM PUT was accepted."""

    task: asyncio.Task
    vm_accepted: asyncio.Event = field(default_factory=asyncio.Event)

    def __repr__(self) -> str:
        return "_Pending(<secret>)"


class AzureProvider:
    name = "azure"
    polls_traffic = False  # the VM reports over its callback

    def __init__(self, config: AzureConfig, credential: Any) -> None:
        self.config = config
        self._credential = credential
        endpoint = urlsplit(config.arm_endpoint)
        self.credential_scopes = credential_scopes(config.arm_endpoint)
        kwargs: dict[str, Any] = {
            "base_url": config.arm_endpoint,
            "credential_scopes": self.credential_scopes,
            "polling_interval": config.polling_interval,
            "retry_policy": JitteredRetryPolicy(retry_total=config.retry_total, retry_backoff_factor=config.retry_backoff),
        }
        if endpoint.scheme == "http":
            host = endpoint.hostname or ""
            if not ipaddress.ip_address("127.0.0.1" if host == "localhost" else host).is_loopback:
                raise ValueError("AZURE_ARM_ENDPOINT may use http:// only on loopback (tests, emulators)")
            kwargs["per_call_policies"] = [_AllowLoopbackHttp()]
        self._client_kwargs = kwargs
        self._compute = self._network = None  # built on first use (see _load_sdk)
        self._sdk: asyncio.Future | None = None  # _load_sdk in a worker thread, shared by everyone waiting for it
        self._arm: AsyncARMPipelineClient | None = None  # the ARM pipeline of a session's way to "server up" (_arm_send)
        self._shared: dict[str, asyncio.Task] = {}  # region -> task making sure VNet and NSG exist
        self._pending: dict[str, _Pending] = {}
        self._ssh_key = config.ssh_public_key
        self._ssh_key_task: asyncio.Future | None = None
        self._deployment = config.deployment_id or self.default_deployment_id()
        self._store_id = ""  # the store's own id (bind_deployment): tagged on what we make
        self._left_alone = LeftAloneReport(log)  # what reconcile leaves alone, told once per change
        self.clock: Callable[[], datetime] = _utcnow  # when tagged resources of another store count as expired
        self._http: aiohttp.ClientSession | None = None  # boot diagnostics blobs
        self._pace = Pace(config.polls_per_second)  # every status poll and console read of this process

    def _load_sdk_soon(self) -> asyncio.Future:
        """Start importing the SDKs in a worker thread (once; again after a failure) without waiting for it."""
        if self._sdk is None or (self._sdk.done() and (self._sdk.cancelled() or self._sdk.exception() is not None)):
            self._sdk = asyncio.ensure_future(asyncio.to_thread(_load_sdk))
        return self._sdk

    async def _clients(self) -> None:
        """Build the SDK clients, importing the SDKs in a worker thread so the event loop keeps serving."""
        if self._compute is None:
            await asyncio.shield(self._load_sdk_soon())
            self._build_clients()

    def _build_clients(self) -> None:
        if self._compute is None:
            _load_sdk()
            self._compute = ComputeManagementClient(self._credential, self.config.subscription_id, **self._client_kwargs)
            self._network = NetworkManagementClient(self._credential, self.config.subscription_id, **self._client_kwargs)

    @property
    def compute(self):
        self._build_clients()
        return self._compute

    @property
    def network(self):
        self._build_clients()
        return self._network

    @property
    def regions(self) -> Sequence[str]:
        return self.config.regions

    @property
    def deployment_id(self) -> str:
        return self._deployment

    def default_deployment_id(self) -> str:
        return default_deployment_id(self.config.subscription_id, self.config.resource_group, self.config.instance_name)

    def bind_deployment(self, deployment_id: str, *, store_id: str = "") -> None:
        """Called once at start-up: the deployment id (`VPN_DEPLOYMENT_ID` or the default) and the
        store's own id. Resources tagged with the store's id as their deployment (made before the
        default was derived) stay this deployment's, so an upgrade orphans nothing."""
        if not self.config.deployment_id and deployment_id:
            self._deployment = deployment_id
        self._store_id = store_id

    def _own_ids(self) -> set[str]:
        return {self._deployment} | ({self._store_id} if self._store_id else set())

    def hourly_cost(self, region: str) -> float:
        if self.config.hourly_cost_override:
            return self.config.hourly_cost_override
        return round(VM_PRICES.get(self.config.vm_size, 0.0) + EXTRAS_PER_HOUR, 6)

    def _id(self, rtype: str, name: str) -> str:
        return f"/subscriptions/{self.config.subscription_id}/resourceGroups/{self.config.resource_group}/providers/{rtype}/{name}"

    def _watch(self, step: str) -> float:
        return WATCH_AFTER.get(step, 0.0) * self.config.watch_scale

    def _polling(self, step: str = "") -> CappedPolling:
        """A fresh polling method per operation (they keep state); `step`: a key of WATCH_AFTER."""
        return CappedPolling(self.config.polling_interval, watch_after=self._watch(step), pace=self._pace,
                             path_format_arguments={"endpoint": self.config.arm_endpoint})

    async def _lro(self, begin, *args, step: str = "", **kwargs):
        return await (await begin(self.config.resource_group, *args, polling=self._polling(step), **kwargs)).result()

    def _arm_client(self) -> AsyncARMPipelineClient:
        """azure-core's ARM pipeline with the policies the management clients build (retry with jitter,
        ARM's bearer challenge, provider registration, logging without secrets), for a session's way
        to "server up", which thus never waits for those clients' modules to load."""
        if self._arm is None:
            kw = self._client_kwargs
            self._arm = AsyncARMPipelineClient(
                base_url=self.config.arm_endpoint,
                per_call_policies=list(kw.get("per_call_policies", [])),
                policies=[
                    policies.RequestIdPolicy(),
                    policies.HeadersPolicy(),
                    # platform.platform() (the SDK's default) runs `uname -p` in a subprocess: not before the first PUT.
                    policies.UserAgentPolicy(base_user_agent=f"vpn-bot azsdk-python-core/{azure_core_version} Python/{platform.python_version()}"),
                    policies.ProxyPolicy(),
                    policies.ContentDecodePolicy(),
                    AsyncARMAutoResourceProviderRegistrationPolicy(),
                    policies.AsyncRedirectPolicy(),
                    kw["retry_policy"],
                    AsyncARMChallengeAuthenticationPolicy(self._credential, *self.credential_scopes),
                    policies.CustomHookPolicy(),
                    policies.NetworkTraceLoggingPolicy(),
                    policies.DistributedTracingPolicy(),
                    policies.SensitiveHeaderCleanupPolicy(),
                    ARMHttpLoggingPolicy(),
                ],
            )
        return self._arm

    async def _arm_send(self, method: str, path: str, api_version: str, body: Any = None, **params: str) -> Any:
        """One ARM request through `_arm_client`; HttpResponseError (ResourceNotFoundError for a 404)
        as the SDK's operations raise it. Returns azure-core's pipeline response."""
        client = self._arm_client()
        request = HttpRequest(method, client.format_url(path), params={**params, "api-version": api_version},
                              headers={"Accept": "application/json"}, json=body)
        response = await client._pipeline.run(request, stream=False)  # what the generated operations call
        status = response.http_response.status_code
        if status not in ((200, 201) if method == "PUT" else (200,)):
            map_error(status_code=status, response=response.http_response,
                      error_map={401: ClientAuthenticationError, 404: ResourceNotFoundError, 409: ResourceExistsError})
            raise HttpResponseError(response=response.http_response, error_format=ARMErrorFormat)
        return response

    async def _arm_get(self, rtype: str, name: str, api_version: str, **params: str) -> dict:
        response = await self._arm_send("GET", self._id(rtype, name), api_version, **params)
        return response.http_response.json()

    async def _arm_begin_put(self, rtype: str, name: str, body: dict, api_version: str, *, step: str = "") -> AsyncLROPoller:
        """PUT a resource; returns once ARM accepted it, with the poller (ARM's polling on our
        schedule) whose result is the resource's JSON once it succeeded."""
        initial = await self._arm_send("PUT", self._id(rtype, name), api_version, body)
        return AsyncLROPoller(self._arm_client(), initial, lambda final: final.http_response.json(), self._polling(step))

    async def _arm_put(self, rtype: str, name: str, body: dict, api_version: str, *, step: str = "") -> dict:
        return await (await self._arm_begin_put(rtype, name, body, api_version, step=step)).result()

    def _names(self, session_id: str) -> dict[str, str]:
        return _names(session_id, self._deployment)

    def _tags(self, spec: ServerSpec) -> dict[str, str]:
        return {
            TAG_MANAGED_BY: self.config.instance_name,
            TAG_DEPLOYMENT: self._deployment,
            TAG_SESSION: spec.session_id,
            TAG_OWNER: spec.owner,
            TAG_EXPIRES: spec.expires_at.astimezone(timezone.utc).isoformat(timespec="seconds"),
            **({TAG_STORE: self._store_id} if self._store_id else {}),
        }

    @property
    def tunnel_dns(self) -> bool:
        """A resolver on the VM's tunnel address: for full tunnels when WG_DNS names none."""
        return self.config.full_tunnel and not self.config.dns

    # ----- create ---------------------------------------------------------------------------------

    async def create(self, spec: ServerSpec, progress: ProgressFn) -> ServerInfo:
        """Reserve the public IP and return once its address is known (the client config is then
        complete). The NIC and VM start at once in the background; `wait_ready` waits for them."""
        names, region = self._names(spec.session_id), spec.region
        await progress("reserving address")
        self._ssh_public_key_task()  # CPU work in a thread, done long before the VM PUT needs it
        shared = self._shared_network(region)  # never on the config's path; the NIC waits for it
        body = {
            "location": region,
            "tags": self._tags(spec),
            "sku": {"name": "Standard", "tier": "Regional"},
            "properties": {"publicIPAllocationMethod": "Static", "publicIPAddressVersion": "IPv4"},
        }
        try:
            ip = await self._arm_put("Microsoft.Network/publicIPAddresses", names["ip"], body, NETWORK_API_VERSION, step="publicIPAddresses")
        except HttpResponseError as exc:
            raise _friendly(exc, "public IP") from exc
        ip_id, address = ip.get("id") or self._id("Microsoft.Network/publicIPAddresses", names["ip"]), (ip.get("properties") or {}).get("ipAddress")
        if not address:
            raise ProvisionError("Azure did not assign an address", detail=f"public IP {names['ip']} has no ip_address")
        net = ipaddress.ip_network(self.config.tunnel_network)
        hosts = iter(net.hosts())
        server_ip, client_ip = next(hosts), next(hosts)
        keys = await asyncio.to_thread(generate_keypair)
        server = ServerConfig(
            private_key=keys.private,
            address=f"{server_ip}/{net.prefixlen}",
            listen_port=self.config.listen_port,
            peers=(ServerPeer(spec.client_public_key, spec.preshared_key, (f"{client_ip}/32",)),),
        )
        server_public = keys.public
        del keys
        await self._forget(spec.session_id)
        accepted = asyncio.Event()
        task = asyncio.get_running_loop().create_task(
            self._nic_and_vm(spec, server, ip_id, shared, accepted), name=f"azure-vm:{spec.session_id}"
        )
        del server  # the private key now lives only in that task, until the VM PUT has sent it
        self._pending[spec.session_id] = _Pending(task, accepted)
        if self.config.config_after_vm_accepted:
            waiter = asyncio.ensure_future(accepted.wait())
            await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if not accepted.is_set():
                self._pending.pop(spec.session_id, None)
                await task  # raises what refused the NIC or the VM: no config was delivered
        dns = tuple(self.config.dns) or ((str(server_ip),) if self.tunnel_dns else ())
        return ServerInfo(
            resource_id=names["vm"],
            endpoint=f"{address}:{self.config.listen_port}",
            server_public_key=server_public,
            client_address=f"{client_ip}/32",
            region=region,
            hourly_cost=self.hourly_cost(region),
            size=self.config.vm_size,
            dns=dns,
            ready=False,
        )

    async def _nic_and_vm(self, spec: ServerSpec, server: ServerConfig, ip_id: str, shared: asyncio.Task, accepted: asyncio.Event) -> None:
        """NIC (as soon as the IP exists and the shared network is there), then the VM until Succeeded."""
        names = self._names(spec.session_id)
        subnet_id, nsg_id = await asyncio.shield(shared)
        nic_body = {
            "location": spec.region,
            "tags": self._tags(spec),
            "properties": {
                "networkSecurityGroup": {"id": nsg_id},
                "ipConfigurations": [{
                    "name": "ipconfig1",
                    "properties": {
                        "subnet": {"id": subnet_id},
                        "privateIPAllocationMethod": "Dynamic",
                        "publicIPAddress": {"id": ip_id, "properties": {"deleteOption": "Delete"}},
                    },
                }],
            },
        }
        try:
            nic = await self._arm_put("Microsoft.Network/networkInterfaces", names["nic"], nic_body, NETWORK_API_VERSION, step="networkInterfaces")
        except HttpResponseError as exc:
            if _code(exc) in ("InvalidResourceReference", "ReferencedResourceNotProvisioned"):
                self._shared.pop(spec.region, None)  # the shared network went away: look again next time
            raise _friendly(exc, "network interface") from exc
        render = bootconfig.ignition if self.config.image == "flatcar" else bootconfig.cloud_config
        boot = render(server, callback_url=spec.callback_url, tunnel_dns=self.tunnel_dns)
        vm = {
            "location": spec.region,
            "tags": self._tags(spec),
            "properties": {
                "hardwareProfile": {"vmSize": self.config.vm_size},
                "storageProfile": {
                    "imageReference": IMAGES[self.config.image],
                    "osDisk": {"name": names["disk"], "createOption": "FromImage", "deleteOption": "Delete",
                               "managedDisk": {"storageAccountType": "Standard_LRS"}},
                },
                "osProfile": {
                    "computerName": names["vm"],
                    "adminUsername": ADMIN_USER,
                    "customData": bootconfig.custom_data(boot),
                    "linuxConfiguration": {
                        "disablePasswordAuthentication": True,
                        "ssh": {"publicKeys": [{"path": f"/home/{ADMIN_USER}/.ssh/authorized_keys", "keyData": await self._ssh_public_key()}]},
                    },
                },
                "networkProfile": {"networkInterfaces": [{"id": nic["id"], "properties": {"primary": True, "deleteOption": "Delete"}}]},
                # Managed boot diagnostics: the serial log is the fallback proof that the tunnel is up.
                "diagnosticsProfile": {"bootDiagnostics": {"enabled": True}},
            },
        }
        del boot, server
        try:
            poller = await self._arm_begin_put("Microsoft.Compute/virtualMachines", names["vm"], vm, COMPUTE_API_VERSION, step="virtualMachines")
            del vm
            accepted.set()
            await poller.result()
        except HttpResponseError as exc:
            raise _friendly(exc, "virtual machine") from exc

    async def wait_ready(self, spec: ServerSpec, progress: ProgressFn) -> None:
        """NIC and VM created, then a positive "tunnel up" signal, or ProvisionError."""
        pending = self._pending.get(spec.session_id)
        if pending is None:
            raise ProvisionError("the server's set-up was lost; please start again", detail="wait_ready without create")
        name = self._names(spec.session_id)["vm"]
        try:
            await progress("creating server")
            await pending.task
            await progress("server booting")
            boot = _Boot()
            try:
                async with asyncio.timeout(self.config.boot_timeout):
                    how = await self._booted(spec, name, progress, boot)
            except TimeoutError:
                if boot.console_failures and not _has_callback(spec):
                    raise ProvisionError(
                        f"the server's own proof that its tunnel is up (its boot log) could not be read within {int(self.config.boot_timeout)} seconds;"
                        " an admin has been told",
                        detail=f"{name}: no server-up callback (VPN_PUBLIC_URL is not set) and the serial console is unreadable ({boot.console_error})",
                    ) from None
                raise ProvisionError(
                    f"the server did not come up within {int(self.config.boot_timeout)} seconds",
                    detail=f"{name}: no server-up callback and no '{bootconfig.SERIAL_MARKER}' on the serial console; check boot diagnostics",
                ) from None
            log.info("%s: tunnel up (%s)", name, how)
        finally:
            await self._forget(spec.session_id)

    async def _booted(self, spec: ServerSpec, name: str, progress: ProgressFn, boot: _Boot) -> str:
        """Either signal the boot script gives once it has proven wg0 up: its callback, recorded in
        the store by whichever replica received it, or its line on the serial console (boot
        diagnostics) once the VM agent is Ready. The agent's Ready alone is not proof: cloud-init
        reports ready before the boot script runs. While the console cannot be read (a role without
        the boot diagnostics action, an ARM error) it is read less and less often, the admin gets
        one log line and the user one sentence, and the callback is the proof that remains."""
        loop = asyncio.get_running_loop()
        interval = max(self.config.polling_interval, 0.01)
        # With a callback coming, the console is only the fallback: look there less often.
        console_every = interval * (10 if _has_callback(spec) else 1)
        start = loop.time()
        watch = self._watch("boot")  # the boot script cannot be done the moment the VM is: no console reads before
        next_console = start + watch
        while True:
            if spec.server_up is not None:
                try:
                    if await spec.server_up():
                        return "callback"
                except Exception:  # the store hiccuped: look again next round (the console still counts)
                    log.warning("%s: could not read the server-up record; trying again", name, exc_info=True)
            if loop.time() >= next_console:
                await self._paced()
                try:
                    up = await self._console_says_up(name, boot)
                    now = loop.time()
                    next_console = now + poll_delay(now - start, console_every, console_every, watch)  # on its grid: no drift
                except _ConsoleUnavailable as exc:
                    boot.console_failures += 1
                    boot.console_error = str(exc)
                    wait = min(CONSOLE_BACKOFF_MAX, console_every * 2 ** boot.console_failures)
                    next_console = loop.time() + wait
                    if boot.console_failures == 1:
                        await self._console_unavailable(spec, name, exc, progress)
                    else:
                        log.debug("%s: serial console still unavailable (%s); next look in %.1f s", name, exc, wait)
                else:
                    if boot.console_failures:
                        log.info("%s: the serial console can be read again", name)
                        boot.console_failures = 0
                    if up:
                        return "serial console"
            now = loop.time()
            await asyncio.sleep(min(next_console, now + poll_delay(now - start, interval, interval)) - now)

    async def _console_unavailable(self, spec: ServerSpec, name: str, exc: _ConsoleUnavailable, progress: ProgressFn) -> None:
        """One line for the admin (no traceback: it is configuration or Azure, not a bug), one sentence for the user."""
        hint = ""
        if exc.code in ("AuthorizationFailed", "403", "LinkedAuthorizationFailed"):
            hint = f": the bot's role lacks {BOOT_DIAGNOSTICS_ACTION} (docs/azure-role.json)"
        fallback = "waiting for the server's own callback" if _has_callback(spec) else "no callback either (VPN_PUBLIC_URL is not set)"
        log.warning("%s: serial console unavailable (%s)%s; %s, reading it less often", name, exc, hint, fallback)
        if _has_callback(spec):
            await progress("server booting; its boot log cannot be read, so I am waiting for the server to report its tunnel up itself")
        else:
            await progress("server booting; its boot log, the server's own proof that the tunnel is up, cannot be read right now (an admin has been told)")

    async def _paced(self) -> None:
        """Wait for this process's next poll slot (Pace)."""
        now = time.monotonic()
        wait = self._pace.slot(now) - now
        if wait > 0:
            await asyncio.sleep(wait)

    async def _console_says_up(self, name: str, boot: _Boot) -> bool:
        """Whether the serial console shows the boot script's line; _ConsoleUnavailable when Azure will not say.

        The VM's instance view until its agent is Ready, then one boot diagnostics request for a SAS
        URL of the serial log (an ARM POST) that later reads reuse until it nears its expiry or stops
        answering: the close reads near the end of the boot go to storage, not to ARM."""
        rtype = "Microsoft.Compute/virtualMachines"
        if not boot.agent_ready:
            try:
                vm = await self._arm_get(rtype, name, COMPUTE_API_VERSION, **{"$expand": "instanceView"})
            except AzureError as exc:
                raise _ConsoleUnavailable("instance view", _azure_code(exc)) from None
            view = (vm.get("properties") or {}).get("instanceView") or {}
            codes = {s.get("code") for s in view.get("statuses") or []}
            agent = {s.get("displayStatus") for s in (view.get("vmAgent") or {}).get("statuses") or []}
            if "PowerState/running" not in codes or "Ready" not in agent:
                return False
            boot.agent_ready = True
        if not boot.log_url or time.monotonic() >= boot.log_url_until:
            try:
                blobs = (await self._arm_send("POST", f"{self._id(rtype, name)}/retrieveBootDiagnosticsData", COMPUTE_API_VERSION,
                                              sasUriExpirationTimeInMinutes=str(SERIAL_LOG_SAS_MINUTES))).http_response.json()
            except AzureError as exc:
                raise _ConsoleUnavailable("boot diagnostics", _azure_code(exc)) from None
            if not blobs.get("serialConsoleLogBlobUri"):
                return False
            boot.log_url, boot.log_url_until = blobs["serialConsoleLogBlobUri"], time.monotonic() + SERIAL_LOG_SAS_MINUTES * 60 * 0.8
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))
        try:  # the SAS URL is a credential: never logged
            async with self._http.get(boot.log_url) as resp:
                if resp.status != 200:
                    boot.log_url = ""  # expired or replaced: ask for a new one next time
                    return False
                text = await resp.text(errors="replace")
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False
        return f"{bootconfig.SERIAL_MARKER} {name}" in text.splitlines()

    def _ssh_public_key_task(self) -> asyncio.Future:
        if self._ssh_key_task is None or (self._ssh_key_task.done() and self._ssh_key_task.exception() is not None):
            if self._ssh_key:
                self._ssh_key_task = asyncio.get_running_loop().create_future()
                self._ssh_key_task.set_result(self._ssh_key)
            else:
                self._ssh_key_task = asyncio.ensure_future(asyncio.to_thread(_throwaway_ssh_key))
        return self._ssh_key_task

    async def _ssh_public_key(self) -> str:
        return await asyncio.shield(self._ssh_public_key_task())

    # ----- shared network -------------------------------------------------------------------------

    def _shared_ids(self, region: str) -> tuple[str, str, str, str]:
        inst = self.config.instance_name
        vnet, nsg = f"{inst}-vnet-{region}", f"{inst}-nsg-{region}"
        vnet_id = self._id("Microsoft.Network/virtualNetworks", vnet)
        return vnet, nsg, f"{vnet_id}/subnets/vpn", self._id("Microsoft.Network/networkSecurityGroups", nsg)

    def _shared_network(self, region: str) -> asyncio.Task:
        """A task (one per region, shared by every session, retried after a failure) that makes sure
        the VNet and NSG exist. Their ids follow from their names, so nothing waits for them but the NIC."""
        task = self._shared.get(region)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._shared[region] = asyncio.get_running_loop().create_task(self._ensure_shared(region), name=f"azure-shared:{region}")
        return task

    def _security_rules(self) -> list[dict]:
        def rule(name: str, protocol: str, priority: int, source: str, port: str) -> dict:
            return {"name": name, "properties": {
                "protocol": protocol, "direction": "Inbound", "access": "Allow", "priority": priority,
                "sourceAddressPrefix": source, "sourcePortRange": "*", "destinationAddressPrefix": "*", "destinationPortRange": port,
            }}

        rules = [rule("allow-wireguard", "Udp", 100, "*", str(self.config.listen_port))]
        if self.config.ssh_public_key and self.config.ssh_source:
            rules.append(rule("allow-ssh-admin", "Tcp", 110, self.config.ssh_source, "22"))
        return rules

    async def _ensure_shared(self, region: str) -> tuple[str, str]:
        """VNet, subnet and NSG for a region: free, created once, reused by every session and every
        restart (a GET finds them; a PUT only when missing or different)."""
        vnet_name, nsg_name, subnet_id, nsg_id = self._shared_ids(region)
        tags = {TAG_MANAGED_BY: self.config.instance_name, "role": "shared"}
        rules = self._security_rules()

        def rule_keys(found: list[dict]) -> set[tuple]:
            return {(r.get("name"), (r.get("properties") or {}).get("destinationPortRange"), (r.get("properties") or {}).get("sourceAddressPrefix"))
                    for r in found}

        wanted_rules = rule_keys(rules)

        async def ensure(rtype: str, name: str, body: dict, fits: Callable[[dict], bool]) -> None:
            for _ in range(60):
                try:
                    current: dict | None = await self._arm_get(rtype, name, NETWORK_API_VERSION)
                except ResourceNotFoundError:
                    current = None
                state = ((current or {}).get("properties") or {}).get("provisioningState")
                if current is not None and state in ("Creating", "Updating"):
                    await asyncio.sleep(self.config.polling_interval or 0.05)  # someone else is making it
                    continue
                if current is not None and state == "Succeeded" and fits(current.get("properties") or {}):
                    return
                try:
                    await self._arm_put(rtype, name, body, NETWORK_API_VERSION)
                    return
                except HttpResponseError as exc:
                    if exc.status_code != 409:  # 409: another replica's PUT is running; look again
                        raise
                    await asyncio.sleep(self.config.polling_interval or 0.05)
            raise ProvisionError("the shared network did not settle", detail=f"{name} stays busy")

        vnet_body = {"location": region, "tags": tags, "properties": {
            "addressSpace": {"addressPrefixes": [self.config.vnet_prefix]},
            "subnets": [{"name": "vpn", "properties": {"addressPrefix": self.config.vnet_prefix}}],
        }}
        nsg_body = {"location": region, "tags": tags, "properties": {"securityRules": rules}}
        try:
            await asyncio.gather(
                ensure("Microsoft.Network/virtualNetworks", vnet_name, vnet_body, lambda v: any(s.get("name") == "vpn" for s in v.get("subnets") or [])),
                ensure("Microsoft.Network/networkSecurityGroups", nsg_name, nsg_body, lambda n: rule_keys(n.get("securityRules") or []) == wanted_rules),
            )
        except HttpResponseError as exc:
            raise _friendly(exc, "shared network") from exc
        return subnet_id, nsg_id

    # ----- destroy and reconcile ----------------------------------------------------------------------

    async def _forget(self, session_id: str) -> None:
        """Stop this process's work on a session (if any) before deleting or starting over."""
        pending = self._pending.pop(session_id, None)
        if pending is not None and not pending.task.done():
            pending.task.cancel()
        if pending is not None:
            await asyncio.gather(pending.task, return_exceptions=True)

    async def destroy(self, session_id: str, *, resource_id: str | None = None, peer_public_key: str | None = None) -> None:
        """Delete the VM (its NIC, IP and disk go with it), then each of those by name in case a create
        stopped half-way. Tries every one even when another refuses; raises CleanupIncomplete if
        anything is left (Azure holds a failed VM's NIC for about three minutes)."""
        if not session_id:
            return
        await self._clients()
        names = self._names(session_id)
        await self._forget(session_id)
        refused: dict[str, str] = {}

        async def delete(begin, name: str, **extra) -> None:
            try:
                await self._lro(begin, name, **extra)
            except ResourceNotFoundError:
                pass
            except HttpResponseError as exc:
                refused[name] = _code(exc) or str(exc.status_code)

        await delete(self.compute.virtual_machines.begin_delete, names["vm"], force_deletion=True)
        # The disk's name carries the deployment's mark: a session made before an upgrade has the old one.
        disks = dict.fromkeys([names["disk"], *(_names(session_id, d)["disk"] for d in sorted(self._own_ids()))])
        await asyncio.gather(
            delete(self.network.network_interfaces.begin_delete, names["nic"]),
            *(delete(self.compute.disks.begin_delete, disk) for disk in disks),
        )
        await delete(self.network.public_ip_addresses.begin_delete, names["ip"])  # after its NIC
        if refused:
            detail = ", ".join(f"{n} ({c})" for n, c in refused.items())
            retry = self.config.cleanup_retry_seconds * (2 if "NicReservedForAnotherVm" in refused.values() else 1)
            raise CleanupIncomplete(sorted(refused), retry_after=retry, detail=f"session {session_id}: not deleted yet: {detail}")
        log.info("azure resources of session %s deleted", session_id)

    async def list_managed(self) -> list[ManagedResource]:
        """Every per-session resource this deployment owns, one entry per session: tagged VMs, NICs
        and public IPs, and OS disks by name (disks get no tags). Another deployment's resources in
        the same group are never listed, only reported; ours made with another store (its tag) are
        listed only once they have expired: a lost store's leftovers then go, while a deployment
        configured like this one (same subscription, group and instance name, no VPN_DEPLOYMENT_ID)
        keeps its live sessions."""
        await self._clients()
        rg = self.config.resource_group
        found: dict[str, ManagedResource] = {}
        own = self._own_ids()
        marks = {deployment_mark(d): d for d in own}
        now = self.clock()
        others: dict[str, list[str]] = {}  # another deployment -> names
        held: dict[str, datetime] = {}  # session made with another store, not expired yet -> its expiry

        def owner(res) -> tuple[str, str] | None:
            tags = res.tags or {}
            if TAG_SESSION in tags:
                if tags.get(TAG_MANAGED_BY) == self.config.instance_name and tags.get(TAG_DEPLOYMENT) in own:
                    return tags[TAG_SESSION], tags.get(TAG_EXPIRES, "")
                theirs = f"{tags.get(TAG_MANAGED_BY, '?')}/{tags.get(TAG_DEPLOYMENT, '(no deployment tag)')}"
                others.setdefault(theirs, []).append(res.name)
                return None
            m = _DISK_NAME.match(res.name or "") if res.type and res.type.lower().endswith("/disks") else None
            if m and m["deployment"] in marks:
                return m["session"], ""
            if m:
                others.setdefault(f"disks with deployment mark {m['deployment']}", []).append(res.name)
            return None

        listings = (
            self.compute.virtual_machines.list(rg),
            self.network.network_interfaces.list(rg),
            self.network.public_ip_addresses.list(rg),
            self.compute.disks.list_by_resource_group(rg),
        )
        for listing in listings:
            async for res in listing:
                owned = owner(res)
                if owned is None:
                    continue
                sid, expires_text = owned
                expires = None
                try:
                    expires = datetime.fromisoformat(expires_text)
                except ValueError:
                    pass
                store = (res.tags or {}).get(TAG_STORE)
                if store and self._store_id and store != self._store_id and expires is not None and expires > now:
                    held[sid] = max(held.get(sid, expires), expires)
                entry = found.setdefault(sid, ManagedResource(resource_id=self._names(sid)["vm"], session_id=sid, expires_at=expires, details={"names": []}))
                entry.details["names"].append(res.name)
        self._report(others, {sid: (held[sid], found.pop(sid).details["names"]) for sid in held})
        return list(found.values())

    def _report(self, others: dict[str, list[str]], held: dict[str, tuple[datetime, list[str]]]) -> None:
        lines = []
        for theirs, names in sorted(others.items()):
            lines.append(f"reconcile: leaving {len(names)} resource(s) of another deployment ({theirs}) in {self.config.resource_group} alone: {', '.join(sorted(names)[:10])}")
        self._left_alone.emit(lines, held, "another deployment with the same subscription, resource group and VPN_INSTANCE_NAME")

    async def traffic(self, peers: Mapping[str, str]) -> dict[str, Traffic]:
        return {}  # the VM reports its own figures every minute over its callback (provisioner/bootconfig.py)

    async def close(self) -> None:
        for sid in list(self._pending):
            await self._forget(sid)
        for task in self._shared.values():
            task.cancel()
        await asyncio.gather(*self._shared.values(), return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        if self._arm is not None:
            await self._arm.close()
        if self._compute is not None:
            await self._compute.close()
            await self._network.close()
        close = getattr(self._credential, "close", None)
        if close is not None:
            await close()


def default_credential() -> Any:
    """azure-identity's default chain: environment, workload or managed identity, `az login`…"""
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential()
