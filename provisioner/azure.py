"""Ephemeral WireGuard VMs on Azure: the only module that imports the Azure SDKs.

Per session, three dependent PUTs: a Standard static public IP (its address completes the client
config, which is delivered at once), a NIC, and a VM that boots straight into WireGuard from
customData. Delete options make deleting the VM remove its NIC, IP and disk. Names derive from the
session id and every resource is tagged, so creates and deletes are idempotent and reconciliation
finds whatever a crash or a lost store left behind. Shared per-region infrastructure (VNet, subnet,
NSG allowing only UDP to WireGuard) is free and created once.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence
from urllib.parse import urlsplit

from aiohttp import web
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.pipeline.policies import AsyncRetryPolicy, SansIOHTTPPolicy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from provisioner import bootconfig
from provisioner.base import ManagedResource, ProgressFn, ProvisionError, ServerInfo, ServerSpec
from provisioner.wireguard import DEFAULT_PORT, ServerConfig, ServerPeer, generate_keypair

log = logging.getLogger(__name__)

PUBLIC_ARM = "https://management.azure.com"
TAG_MANAGED_BY = "managed-by"
TAG_SESSION = "vpn-session"
TAG_OWNER = "vpn-owner"
TAG_EXPIRES = "expires-at"
ADMIN_USER = "vpnadmin"

IMAGES: dict = {}  # name -> ImageReference, filled by _load_sdk()
_sdk_loaded = False


def _load_sdk() -> None:
    """Import the management SDKs (about half a second of CPU) when the first client is built, not at
    start-up: a replica woken by a message answers it without them. Binds the names used below."""
    global _sdk_loaded, ComputeManagementClient, NetworkManagementClient
    global HardwareProfile, ImageReference, LinuxConfiguration, ManagedDiskParameters, NetworkInterfaceReference
    global NetworkProfile, OSDisk, OSProfile, SshConfiguration, SshPublicKey, StorageProfile, VirtualMachine
    global AddressSpace, NetworkInterface, NetworkInterfaceIPConfiguration, NetworkSecurityGroup, PublicIPAddress
    global PublicIPAddressSku, SecurityRule, Subnet, VirtualNetwork
    if _sdk_loaded:
        return
    from azure.mgmt.compute.aio import ComputeManagementClient
    from azure.mgmt.compute.models import (
        HardwareProfile,
        ImageReference,
        LinuxConfiguration,
        ManagedDiskParameters,
        NetworkInterfaceReference,
        NetworkProfile,
        OSDisk,
        OSProfile,
        SshConfiguration,
        SshPublicKey,
        StorageProfile,
        VirtualMachine,
    )
    from azure.mgmt.network.aio import NetworkManagementClient
    from azure.mgmt.network.models import (
        AddressSpace,
        NetworkInterface,
        NetworkInterfaceIPConfiguration,
        NetworkSecurityGroup,
        PublicIPAddress,
        PublicIPAddressSku,
        SecurityRule,
        Subnet,
        VirtualNetwork,
    )

    IMAGES.update(
        {
            "ubuntu": ImageReference(publisher="Canonical", offer="ubuntu-24_04-lts", sku="minimal", version="latest"),
            # The corevm offer needs no marketplace plan or terms (the -free offer does).
            "flatcar": ImageReference(publisher="kinvolk", offer="flatcar-container-linux-corevm-amd64", sku="stable-gen2", version="latest"),
        }
    )
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


@dataclass(frozen=True)
class AzureConfig:
    subscription_id: str
    resource_group: str
    location: str
    allowed_locations: Sequence[str] = ()
    vm_size: str = "Standard_B1ls"
    image: str = "ubuntu"
    arm_endpoint: str = PUBLIC_ARM
    instance_name: str = "vpn-bot"
    tunnel_network: str = "10.77.0.0/24"
    listen_port: int = DEFAULT_PORT
    vnet_prefix: str = "10.200.0.0/24"
    ssh_public_key: str = ""  # set (with ssh_source) to allow SSH; otherwise nobody can log in
    ssh_source: str = ""
    public_url: str = ""  # where the VM calls back "server up"; empty: watch the VM's boot status
    ready_secret: bytes = b""
    boot_timeout: float = 300.0
    polling_interval: float = 2.0
    retry_total: int = 6
    retry_backoff: float = 0.8
    hourly_cost_override: float = 0.0

    @property
    def regions(self) -> tuple[str, ...]:
        regions = [self.location.lower()] + [r.lower() for r in self.allowed_locations]
        return tuple(dict.fromkeys(regions))


class JitteredRetryPolicy(AsyncRetryPolicy):
    """azure-core's retry (429, 5xx, honouring Retry-After) with full jitter, so many sessions
    throttled at once do not retry in lockstep."""

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        return random.uniform(0, super().get_backoff_time(settings))


class _AllowLoopbackHttp(SansIOHTTPPolicy):
    """Only for an ARM endpoint on 127.0.0.1 (tests, local emulators): lets the bearer policy use http."""

    def on_request(self, request):  # noqa: D401
        request.context["enforce_https"] = False


def _names(session_id: str) -> dict[str, str]:
    base = f"vpn-{session_id}"
    return {"ip": f"{base}-ip", "nic": f"{base}-nic", "vm": f"{base}-vm", "disk": f"{base}-osdisk"}


def ready_signature(secret: bytes, session_id: str) -> str:
    return hmac.new(secret, f"vpn-ready:{session_id}".encode(), hashlib.sha256).hexdigest()


def _throwaway_ssh_key() -> str:
    """Azure requires an SSH key for a Linux VM; one whose private half is discarded lets nobody in."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def _friendly(exc: HttpResponseError, step: str) -> ProvisionError:
    """ARM errors a user can understand, with an actionable line for the admin's log."""
    code = getattr(getattr(exc, "error", None), "code", "") or ""
    status = exc.status_code
    text = f"{code} {exc.message or ''}".lower()
    if status in (401, 403) or code in ("AuthorizationFailed", "LinkedAuthorizationFailed", "InvalidAuthenticationToken"):
        return ProvisionError(
            "the bot is not allowed to create servers in Azure; an admin has been told",
            detail=f"{step}: {code or status}: assign the role in docs/azure-role.json on the resource group",
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
    return ProvisionError("Azure refused to create the server; an admin has been told", detail=f"{step}: {status} {code}: {exc.message}")


@dataclass
class _Pending:
    """What `create` made that `wait_ready` needs: the server's boot config (secret) and a ready flag."""

    server: ServerConfig
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def __repr__(self) -> str:
        return "_Pending(<secret>)"


class AzureProvider:
    name = "azure"

    def __init__(self, config: AzureConfig, credential: Any) -> None:
        self.config = config
        self._credential = credential
        endpoint = urlsplit(config.arm_endpoint)
        kwargs: dict[str, Any] = {
            "base_url": config.arm_endpoint,
            "credential_scopes": [f"{config.arm_endpoint.rstrip('/')}/.default"],
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
        self._shared: dict[str, tuple[str, str]] = {}  # region -> (subnet id, nsg id)
        self._shared_lock = asyncio.Lock()
        self._pending: dict[str, _Pending] = {}
        self._ssh_key = config.ssh_public_key

    async def _clients(self) -> None:
        """Build the SDK clients, importing the SDKs in a worker thread so the event loop keeps serving."""
        if self._compute is None:
            await asyncio.to_thread(_load_sdk)
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

    def hourly_cost(self, region: str) -> float:
        if self.config.hourly_cost_override:
            return self.config.hourly_cost_override
        return round(VM_PRICES.get(self.config.vm_size, 0.0) + EXTRAS_PER_HOUR, 6)

    def _id(self, rtype: str, name: str) -> str:
        return f"/subscriptions/{self.config.subscription_id}/resourceGroups/{self.config.resource_group}/providers/{rtype}/{name}"

    def _tags(self, spec: ServerSpec) -> dict[str, str]:
        return {
            TAG_MANAGED_BY: self.config.instance_name,
            TAG_SESSION: spec.session_id,
            TAG_OWNER: spec.owner,
            TAG_EXPIRES: spec.expires_at.astimezone(timezone.utc).isoformat(timespec="seconds"),
        }

    # ----- create ---------------------------------------------------------------------------------

    async def create(self, spec: ServerSpec, progress: ProgressFn) -> ServerInfo:
        """Reserve the public IP and return: with its address the client config is complete.
        `wait_ready` then creates the NIC and the VM and waits for the server to come up."""
        names, region = _names(spec.session_id), spec.region
        await self._clients()
        await progress("reserving address")

        async def reserve_ip() -> PublicIPAddress:
            try:
                poller = await self.network.public_ip_addresses.begin_create_or_update(
                    self.config.resource_group,
                    names["ip"],
                    PublicIPAddress(
                        location=region,
                        tags=self._tags(spec),
                        sku=PublicIPAddressSku(name="Standard", tier="Regional"),
                        public_ip_allocation_method="Static",
                        public_ip_address_version="IPv4",
                    ),
                )
                return await poller.result()
            except HttpResponseError as exc:
                raise _friendly(exc, "public IP") from exc

        # The address does not depend on the shared network: both proceed at once.
        ip, _ = await asyncio.gather(reserve_ip(), self._ensure_shared(region))
        if not ip.ip_address:
            raise ProvisionError("Azure did not assign an address", detail=f"public IP {names['ip']} has no ip_address")
        net = ipaddress.ip_network(self.config.tunnel_network)
        hosts = net.hosts()
        server_ip, client_ip = next(hosts), next(hosts)
        keys = await asyncio.to_thread(generate_keypair)
        server = ServerConfig(
            private_key=keys.private,
            address=f"{server_ip}/{net.prefixlen}",
            listen_port=self.config.listen_port,
            peers=(ServerPeer(spec.client_public_key, spec.preshared_key, (f"{client_ip}/32",)),),
        )
        self._pending[spec.session_id] = _Pending(server)
        return ServerInfo(
            resource_id=names["vm"],
            endpoint=f"{ip.ip_address}:{self.config.listen_port}",
            server_public_key=keys.public,
            client_address=f"{client_ip}/32",
            region=region,
            hourly_cost=self.hourly_cost(region),
            size=self.config.vm_size,
            ready=False,
        )

    async def wait_ready(self, spec: ServerSpec, progress: ProgressFn) -> None:
        """NIC, then VM (booting straight into WireGuard), then a positive "up" signal, or ProvisionError."""
        await self._clients()
        pending = self._pending.get(spec.session_id)
        if pending is None:
            raise ProvisionError("the server's set-up was lost; please start again", detail="wait_ready without create")
        try:
            await progress("creating server")
            subnet_id, nsg_id = await self._ensure_shared(spec.region)
            names, rg = _names(spec.session_id), self.config.resource_group
            ip_id = self._id("Microsoft.Network/publicIPAddresses", names["ip"])
            try:
                poller = await self.network.network_interfaces.begin_create_or_update(
                    rg,
                    names["nic"],
                    NetworkInterface(
                        location=spec.region,
                        tags=self._tags(spec),
                        network_security_group=NetworkSecurityGroup(id=nsg_id),
                        ip_configurations=[
                            NetworkInterfaceIPConfiguration(
                                name="ipconfig1",
                                subnet=Subnet(id=subnet_id),
                                private_ip_allocation_method="Dynamic",
                                public_ip_address=PublicIPAddress(id=ip_id, delete_option="Delete"),
                            )
                        ],
                    ),
                )
                nic = await poller.result()
            except HttpResponseError as exc:
                raise _friendly(exc, "network interface") from exc
            ready_url = self._ready_url(spec.session_id)
            boot = (bootconfig.ignition if self.config.image == "flatcar" else bootconfig.cloud_config)(pending.server, ready_url=ready_url)
            vm = VirtualMachine(
                location=spec.region,
                tags=self._tags(spec),
                hardware_profile=HardwareProfile(vm_size=self.config.vm_size),
                storage_profile=StorageProfile(
                    image_reference=IMAGES[self.config.image],
                    os_disk=OSDisk(
                        name=names["disk"],
                        create_option="FromImage",
                        delete_option="Delete",
                        managed_disk=ManagedDiskParameters(storage_account_type="Standard_LRS"),
                    ),
                ),
                os_profile=OSProfile(
                    computer_name=names["vm"],
                    admin_username=ADMIN_USER,
                    custom_data=bootconfig.custom_data(boot),
                    linux_configuration=LinuxConfiguration(
                        disable_password_authentication=True,
                        ssh=SshConfiguration(
                            public_keys=[SshPublicKey(path=f"/home/{ADMIN_USER}/.ssh/authorized_keys", key_data=await self._ssh_public_key())]
                        ),
                    ),
                ),
                network_profile=NetworkProfile(
                    network_interfaces=[NetworkInterfaceReference(id=nic.id, primary=True, delete_option="Delete")]
                ),
            )
            del boot
            try:
                poller = await self.compute.virtual_machines.begin_create_or_update(rg, names["vm"], vm)
                del vm
                await poller.result()
            except HttpResponseError as exc:
                raise _friendly(exc, "virtual machine") from exc
            await progress("server booting")
            try:
                await asyncio.wait_for(self._booted(spec.session_id, pending), self.config.boot_timeout)
            except asyncio.TimeoutError:
                raise ProvisionError(
                    f"the server did not come up within {int(self.config.boot_timeout)} seconds",
                    detail=f"{names['vm']}: no ready signal; check boot diagnostics",
                ) from None
        finally:
            self._pending.pop(spec.session_id, None)

    def _ready_url(self, session_id: str) -> str | None:
        if not (self.config.public_url and self.config.ready_secret):
            return None
        sig = ready_signature(self.config.ready_secret, session_id)
        return f"{self.config.public_url.rstrip('/')}/api/azure/ready/{session_id}/{sig}"

    async def _booted(self, session_id: str, pending: _Pending) -> None:
        """The VM's own callback when a public URL is set; otherwise its boot status (agent ready)."""
        if self._ready_url(session_id):
            await pending.ready.wait()
            return
        name = _names(session_id)["vm"]
        while True:
            vm = await self.compute.virtual_machines.get(self.config.resource_group, name, expand="instanceView")
            view = vm.instance_view
            codes = {s.code for s in (view.statuses or [])} if view else set()
            agent = {s.display_status for s in (view.vm_agent.statuses or [])} if view and view.vm_agent else set()
            if "PowerState/running" in codes and "Ready" in agent:
                return
            await asyncio.sleep(self.config.polling_interval)

    def signal_ready(self, session_id: str, signature: str) -> bool:
        """The VM's callback; True when the signature is right (constant-time) for a session we await."""
        if not self.config.ready_secret:
            return False
        expected = ready_signature(self.config.ready_secret, session_id)
        if not hmac.compare_digest(expected, signature):
            return False
        pending = self._pending.get(session_id)
        if pending is not None:
            pending.ready.set()
        return True

    async def _ssh_public_key(self) -> str:
        if not self._ssh_key:
            self._ssh_key = await asyncio.to_thread(_throwaway_ssh_key)
        return self._ssh_key

    async def _ensure_shared(self, region: str) -> tuple[str, str]:
        """VNet, subnet and NSG for a region: free, created once, reused by every session."""
        async with self._shared_lock:
            if region in self._shared:
                return self._shared[region]
            rg, inst = self.config.resource_group, self.config.instance_name
            tags = {TAG_MANAGED_BY: inst, "role": "shared"}
            rules = [
                SecurityRule(
                    name="allow-wireguard",
                    protocol="Udp",
                    direction="Inbound",
                    access="Allow",
                    priority=100,
                    source_address_prefix="*",
                    source_port_range="*",
                    destination_address_prefix="*",
                    destination_port_range=str(self.config.listen_port),
                )
            ]
            if self.config.ssh_public_key and self.config.ssh_source:
                rules.append(
                    SecurityRule(
                        name="allow-ssh-admin",
                        protocol="Tcp",
                        direction="Inbound",
                        access="Allow",
                        priority=110,
                        source_address_prefix=self.config.ssh_source,
                        source_port_range="*",
                        destination_address_prefix="*",
                        destination_port_range="22",
                    )
                )
            async def put(operations, name, body):
                return await (await operations.begin_create_or_update(rg, name, body)).result()

            vnet_body = VirtualNetwork(
                location=region,
                tags=tags,
                address_space=AddressSpace(address_prefixes=[self.config.vnet_prefix]),
                subnets=[Subnet(name="vpn", address_prefix=self.config.vnet_prefix)],
            )
            try:
                nsg, vnet = await asyncio.gather(
                    put(self.network.network_security_groups, f"{inst}-nsg-{region}", NetworkSecurityGroup(location=region, tags=tags, security_rules=rules)),
                    put(self.network.virtual_networks, f"{inst}-vnet-{region}", vnet_body),
                )
            except HttpResponseError as exc:
                raise _friendly(exc, "shared network") from exc
            subnet_id = next(sn.id for sn in vnet.subnets if sn.name == "vpn")
            self._shared[region] = (subnet_id, nsg.id)
            return self._shared[region]

    # ----- destroy and reconcile ----------------------------------------------------------------------

    async def destroy(self, session_id: str, *, resource_id: str | None = None, peer_public_key: str | None = None) -> None:
        """Delete the VM (its NIC, IP and disk go with it), then whatever a half-done create left."""
        if not session_id:
            return
        await self._clients()
        names, rg = _names(session_id), self.config.resource_group
        self._pending.pop(session_id, None)
        steps = (
            (self.compute.virtual_machines.begin_delete, names["vm"], {"force_deletion": True}),
            (self.network.network_interfaces.begin_delete, names["nic"], {}),
            (self.network.public_ip_addresses.begin_delete, names["ip"], {}),
            (self.compute.disks.begin_delete, names["disk"], {}),
        )
        for begin, name, extra in steps:
            try:
                await (await begin(rg, name, **extra)).result()
            except ResourceNotFoundError:
                pass
        log.info("azure resources of session %s deleted", session_id)

    async def list_managed(self) -> list[ManagedResource]:
        """Every per-session resource tagged as ours, one entry per session."""
        await self._clients()
        rg, found = self.config.resource_group, {}
        listings = (
            self.compute.virtual_machines.list(rg),
            self.network.network_interfaces.list(rg),
            self.network.public_ip_addresses.list(rg),
        )
        for listing in listings:
            async for res in listing:
                tags = res.tags or {}
                if tags.get(TAG_MANAGED_BY) != self.config.instance_name or TAG_SESSION not in tags:
                    continue
                sid = tags[TAG_SESSION]
                expires = None
                try:
                    expires = datetime.fromisoformat(tags.get(TAG_EXPIRES, ""))
                except ValueError:
                    pass
                entry = found.setdefault(sid, ManagedResource(resource_id=_names(sid)["vm"], session_id=sid, expires_at=expires, details={"names": []}))
                entry.details["names"].append(res.name)
        return list(found.values())

    def route_hook(self):
        """The HTTP route the VMs call back when they are up (added to `serve`)."""
        return ready_route(self)

    async def close(self) -> None:
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


def ready_route(provider: AzureProvider):
    """`POST /api/azure/ready/{session}/{signature}`: the VM says it is up. 404 for anything not right."""

    async def handler(request: web.Request) -> web.Response:
        ok = provider.signal_ready(request.match_info["session"], request.match_info["signature"])
        return web.Response(status=204 if ok else 404)

    def hook(app: web.Application) -> None:
        app.router.add_post("/api/azure/ready/{session:[0-9a-f]{1,32}}/{signature:[0-9a-f]{64}}", handler)

    return hook
