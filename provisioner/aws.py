"""Ephemeral WireGuard servers on AWS EC2: the only module that imports the AWS SDK (aiobotocore).

Per session one instance, launched by a single RunInstances: Ubuntu 24.04 (Canonical's public SSM
parameter for the region, or AWS_AMI_ID), the same cloud-init boot config as Azure as user-data,
IMDSv2 required with a hop limit of 1 (a tunnel client cannot fetch a token through the server's
NAT), no key pair, a network interface with an auto-assigned public IPv4 address that goes with
the instance (no Elastic IP quota of 5 per region, nothing to release). The instance, its volume
and its network interface carry the session's tags from the moment they exist, so `destroy` and
reconciliation find whatever a crash or a lost store left behind, and nothing of another
deployment's (which reconcile reports). The default deployment id derives from the instance name
(everything the bot can see is in its own account), so it survives losing the store; resources
made with another store are left until they expire (a lost store's, or those of a deployment
configured the same way in the same account). The client config is complete once the address shows in DescribeInstances; the
config goes out then and the server boots meanwhile; "server up" is the boot script's own signal
(its authenticated callback, or its line on the serial console through GetConsoleOutput).

Shared per-region infrastructure (a VPC with an internet gateway, a /24 subnet per availability zone
that offers the instance type, a security group letting in the WireGuard UDP port only) is free,
found by tag, made once, and never deleted. Every call goes through `_call`: throttling and
transient errors are retried with exponential back-off and full jitter; the rest become a plain
sentence for the user and an actionable line for the admin's log.
"""
from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import itertools
import logging
import random
import re
import secrets
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

from provisioner import bootconfig
from provisioner.aws_config import UBUNTU_SSM_PARAMETER, AwsConfig, is_region
from provisioner.base import CleanupIncomplete, LeftAloneReport, ManagedResource, ProgressFn, ProvisionError, ServerInfo, ServerSpec, Traffic
from provisioner.wireguard import ServerConfig, ServerPeer, generate_keypair

log = logging.getLogger(__name__)

TAG_MANAGED_BY = "managed-by"
TAG_DEPLOYMENT = "vpn-deployment"
TAG_SESSION = "vpn-session"
TAG_OWNER = "vpn-owner"
TAG_EXPIRES = "expires-at"
TAG_STORE = "vpn-store"  # the store's own id: tells a lost store's (or a look-alike deployment's) resources from ours
TAG_ROLE = "vpn-role"  # "shared" on the per-region network
USER_DATA_LIMIT = 16 * 1024  # EC2's limit, before base64
LIVE_STATES = ("pending", "running", "stopping", "stopped")  # billed, or about to be
ENDED_STATES = ("shutting-down", "terminated", "stopping", "stopped")
SESSION_RESOURCE_TYPES = ("instance", "volume", "network-interface")

# Worth another try after a pause: throttling, and AWS-side trouble that says so.
RETRYABLE = frozenset({
    "RequestLimitExceeded", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "EC2ThrottledException", "SlowDown",
    "InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable", "RequestTimeout",
    "RequestTimeoutException", "PriorRequestNotComplete",
})
AUTH_CODES = frozenset({
    "UnauthorizedOperation", "AuthFailure", "AccessDenied", "AccessDeniedException", "InvalidClientTokenId",
    "SignatureDoesNotMatch", "UnrecognizedClientException", "ExpiredToken", "ExpiredTokenException",
    "InvalidAccessKeyId", "MissingAuthenticationToken",
})
CAPACITY_CODES = frozenset({
    "InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity", "InsufficientAddressCapacity", "InsufficientFreeAddressesInSubnet",
    "SpotMaxPriceTooLow", "Server.InsufficientInstanceCapacity",
})
QUOTA_CODES = frozenset({
    "InstanceLimitExceeded", "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded", "VpcLimitExceeded",
    "SecurityGroupLimitExceeded", "RulesPerSecurityGroupLimitExceeded", "InternetGatewayLimitExceeded",
    "SubnetLimitExceeded", "AddressLimitExceeded", "RouteLimitExceeded", "ResourceLimitExceeded",
})
OPT_IN_CODES = frozenset({"OptInRequired", "PendingVerification", "Blocked"})

_sdk_loaded = False
# Bound by _load_sdk() in a worker thread at first use, so importing this module stays cheap.
get_session: Any = None
Config: Any = None
ClientError: Any = None
BotoCoreError: Any = None
CONNECTION_ERRORS: tuple = ()
CREDENTIAL_ERRORS: tuple = ()


def _load_sdk() -> None:
    """Import aiobotocore and read the EC2 and SSM service models (half a second of CPU) in a worker
    thread, so that neither the import nor building the first client blocks the event loop."""
    global _sdk_loaded, get_session, Config, ClientError, BotoCoreError, CONNECTION_ERRORS, CREDENTIAL_ERRORS
    if _sdk_loaded:
        return
    from aiobotocore.session import get_session
    from botocore.config import Config
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )

    CONNECTION_ERRORS = (BotoConnectionError, HTTPClientError)
    CREDENTIAL_ERRORS = (NoCredentialsError, PartialCredentialsError)
    # botocore's DEBUG records carry request bodies, and RunInstances' body carries the server's
    # private key (base64, so the log filter cannot see it): warnings only, whatever the root level.
    for name in ("botocore", "aiobotocore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _sdk_loaded = True


_loader: Any = None  # the SDK's model loader, its cache filled once per process (see _warm_loader)


def _new_session() -> Any:
    """A session of its own (credentials are resolved per session) sharing the process's warm loader."""
    global _loader
    session = get_session()
    if _loader is None:
        _warm_models(session)
        _loader = session.get_component("data_loader")
    else:
        session.register_component("data_loader", _loader)
    return session


def _warm_models(session: Any) -> None:
    """Fill the SDK's loader cache (JSON parsing, ~0.4 s of CPU) off the event loop; clients built
    later, by any session that shares the loader, reuse it."""
    loader = session.get_component("data_loader")
    for service in ("ec2", "ssm"):
        for kind in ("service-2", "endpoint-rule-set-1", "paginators-1"):
            loader.load_service_model(service, kind)
    for name in ("endpoints", "partitions", "sdk-default-configuration", "_retry"):
        try:
            loader.load_data(name)
        except Exception:  # a file this botocore does not ship: built on first use instead
            pass


def default_deployment_id(instance_name: str) -> str:
    """`<instance>-<13 hex>`: the same for every replica and restart of a deployment with this instance
    name, with or without its store. Only the instance name: the account is implicit (the bot sees only
    its own account's resources), and the regions are where it looks, not who it is (adding one to
    AWS_ALLOWED_REGIONS must not orphan what the others hold)."""
    return f"{instance_name}-{hashlib.sha256(f'aws/{instance_name}'.encode()).hexdigest()[:13]}"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    return (response or {}).get("Error", {}).get("Code", "") if isinstance(response, dict) else ""


def _message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    text = (response or {}).get("Error", {}).get("Message", "") if isinstance(response, dict) else ""
    return (text or str(exc))[:300]


def _is_aws_error(exc: BaseException) -> bool:
    return _sdk_loaded and isinstance(exc, (ClientError, BotoCoreError))


def _transient(exc: BaseException) -> bool:
    return _sdk_loaded and (_code(exc) in RETRYABLE or isinstance(exc, CONNECTION_ERRORS))


def _friendly(exc: BaseException, step: str, region: str, instance_type: str) -> ProvisionError:
    """AWS errors a user can understand, with an actionable line for the admin's log."""
    code, message = _code(exc), _message(exc)
    lowered = message.lower()
    if _sdk_loaded and isinstance(exc, CREDENTIAL_ERRORS):
        return ProvisionError(
            "the bot has no AWS credentials; an admin has been told",
            detail=f"{step}: {type(exc).__name__}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or give the bot an instance or task role",
        )
    if code in AUTH_CODES:
        return ProvisionError(
            "the bot is not allowed to create servers in AWS; an admin has been told",
            detail=f"{step}: {code}: attach the policy in docs/aws-iam.json to the bot's role ({message})",
        )
    if code in OPT_IN_CODES:
        return ProvisionError(
            f"this AWS account cannot create servers in {region} yet; an admin has been told",
            detail=f"{step}: {code}: enable the region for the account or finish its verification ({message})",
        )
    if code in CAPACITY_CODES:
        return ProvisionError(
            f"AWS has no spare capacity for this server in {region} right now; please try again in a few minutes or choose another region",
            detail=f"{step}: {code}: {message}",
        )
    if code in ("Unsupported", "InvalidInstanceType") or (code == "InvalidParameterValue" and "instance type" in lowered and "architecture" not in lowered):
        return ProvisionError(
            f"the server type {instance_type} is not available in {region}; an admin has been told",
            detail=f"{step}: {code}: set AWS_INSTANCE_TYPE to a type offered there (aws ec2 describe-instance-type-offerings) ({message})",
        )
    if code in QUOTA_CODES:
        return ProvisionError(
            "the AWS account has reached its quota; an admin has been told",
            detail=f"{step}: {code}: raise the quota in Service Quotas, or lower VPN_MAX_SESSIONS ({message})",
        )
    if code.startswith("InvalidAMIID") or (code == "InvalidParameterValue" and "architecture" in lowered):
        return ProvisionError(
            "the server image is not available; an admin has been told",
            detail=f"{step}: {code}: check AWS_AMI_ID exists in {region} and fits AWS_INSTANCE_TYPE's architecture ({message})",
        )
    if code in ("InvalidSubnetID.NotFound", "InvalidSubnet", "InvalidGroup.NotFound", "InvalidSecurityGroupID.NotFound"):
        return ProvisionError(
            "the network the bot was told to use does not exist; an admin has been told",
            detail=f"{step}: {code}: check AWS_SUBNET_ID / AWS_SECURITY_GROUP_ID (they name things in AWS_REGION) ({message})",
        )
    if code in RETRYABLE:
        return ProvisionError("AWS is too busy right now; please try again in a minute", detail=f"{step}: {code} after every retry: {message}")
    if _sdk_loaded and isinstance(exc, CONNECTION_ERRORS):
        return ProvisionError("the bot cannot reach AWS right now; please try again later", detail=f"{step}: {type(exc).__name__}: {exc}")
    return ProvisionError("AWS refused to create the server; an admin has been told", detail=f"{step}: {code or type(exc).__name__}: {message}")


def _ended_error(instance: dict, region: str, instance_type: str) -> ProvisionError:
    """An instance that stopped or terminated before its tunnel was up, told by AWS's state reason."""
    reason = instance.get("StateReason") or {}
    code, message = reason.get("Code", ""), reason.get("Message", "")
    detail = f"{instance.get('InstanceId')}: {instance['State']['Name']}: {code}: {message}"
    if "InsufficientInstanceCapacity" in code:
        return ProvisionError(
            f"AWS has no spare capacity for this server in {region} right now; please try again in a few minutes or choose another region",
            detail=detail,
        )
    if "Spot" in code:
        return ProvisionError("AWS took the Spot capacity back before the server came up; please try again", detail=detail)
    return ProvisionError("the server stopped before it came up; an admin has been told", detail=detail)


def _tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v[:256]} for k, v in tags.items()]


def _tags_of(resource: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or resource.get("TagSet") or []}  # ENIs call it TagSet


def _parse_resource_id(resource_id: str | None) -> tuple[str | None, str | None]:
    """`<region>/<instance id>` (the instance id may be missing): what `create` and `list_managed` return."""
    if not resource_id or "/" not in resource_id:
        return None, None
    region, _, instance_id = resource_id.partition("/")
    if not is_region(region):
        return None, None
    return region, instance_id if instance_id.startswith("i-") else None


@dataclass
class _Pending:
    """An instance this process launched and is waiting for (between `create` and `wait_ready`)."""

    region: str
    instance_id: str


class _Watcher:
    """One DescribeInstances per poll interval for every instance this process waits on in a region:
    a hundred sessions booting at once cost one call a round, not a hundred (EC2 throttles per account)."""

    def __init__(self, provider: "AwsProvider", region: str) -> None:
        self.provider, self.region = provider, region
        self.waiting: dict[str, list[asyncio.Future]] = {}
        self.task: asyncio.Task | None = None

    async def snapshot(self, instance_id: str) -> dict | None:
        """The instance as the next DescribeInstances shows it (None: not visible yet)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiting.setdefault(instance_id, []).append(future)
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._run(), name=f"aws-watch:{self.region}")
        return await future

    async def _run(self) -> None:
        while self.waiting:
            batch, self.waiting = self.waiting, {}
            futures = [f for fs in batch.values() for f in fs if not f.done()]
            if not futures:
                continue
            try:
                found = await self.provider._describe_instances(self.region, list(batch))
            except Exception as exc:  # each waiter decides what a failed look means
                for f in futures:
                    if not f.done():
                        f.set_exception(exc)
            else:
                for instance_id, fs in batch.items():
                    for f in fs:
                        if not f.done():
                            f.set_result(found.get(instance_id))
            await asyncio.sleep(max(self.provider.config.poll_interval, 0.01))

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        for fs in self.waiting.values():
            for f in fs:
                f.cancel()


class AwsProvider:
    name = "aws"
    polls_traffic = False  # the instance reports over its callback

    def __init__(self, config: AwsConfig, session: Any = None) -> None:
        """`session`: an aiobotocore session (tests may pass one); None builds the default one, whose
        credentials come from the SDK's chain (environment, profile, container or instance role)."""
        if config.endpoint_url:
            parts = urlsplit(config.endpoint_url)
            host = parts.hostname or ""
            loopback = host == "localhost" or _is_loopback(host)
            if parts.scheme not in ("https", "http") or (parts.scheme == "http" and not loopback):
                # The RunInstances body carries the server's private key: never over plain http on a network.
                raise ValueError("AWS_ENDPOINT_URL may use http:// only on loopback (tests, local emulators)")
        self.config = config
        self._session = session
        self._stack = AsyncExitStack()
        self._clients: dict[tuple[str, str], asyncio.Task] = {}
        self._shared: dict[str, asyncio.Task] = {}  # region -> (subnet id, security group id)
        self._images: dict[str, tuple[float, asyncio.Task]] = {}  # region -> (when looked up, AMI id task)
        self._zones: dict[str, asyncio.Task] = {}  # region -> availability zones offering the instance type
        self._watchers: dict[str, _Watcher] = {}
        self._pending: dict[str, _Pending] = {}
        self._background: set[asyncio.Task] = set()
        self._deployment = config.deployment_id or self.default_deployment_id()
        self._store_id = ""  # the store's own id (bind_deployment): tagged on what we make
        self._left_alone = LeftAloneReport(log)  # what reconcile leaves alone, told once per change
        self.clock: Callable[[], datetime] = _utcnow  # when tagged resources of another store count as expired
        self._latest_console = True  # GetConsoleOutput Latest=true (Nitro); off after UnsupportedOperation

    # ----- plumbing ---------------------------------------------------------------------------------

    @property
    def regions(self) -> Sequence[str]:
        return self.config.regions

    @property
    def deployment_id(self) -> str:
        return self._deployment

    def default_deployment_id(self) -> str:
        return default_deployment_id(self.config.instance_name)

    def bind_deployment(self, deployment_id: str, *, store_id: str = "") -> None:
        """Called once at start-up: the deployment id (`VPN_DEPLOYMENT_ID` or the default) and the
        store's own id. Resources tagged with the store's id as their deployment (made before the
        default was derived) stay this deployment's, so an upgrade orphans nothing."""
        if not self.config.deployment_id and deployment_id:
            self._deployment = deployment_id
        self._store_id = store_id

    def _own_ids(self) -> list[str]:
        return sorted({self._deployment} | ({self._store_id} if self._store_id else set()))

    def hourly_cost(self, region: str) -> float:
        return self.config.hourly_cost()

    @property
    def tunnel_dns(self) -> bool:
        """A resolver on the server's tunnel address: for full tunnels when WG_DNS names none."""
        return self.config.full_tunnel and not self.config.dns

    async def _sdk(self) -> None:
        if not _sdk_loaded:
            await asyncio.to_thread(_load_sdk)
        if self._session is None:
            session = await asyncio.to_thread(_new_session)
            if self._session is None:
                self._session = session

    async def _client(self, service: str, region: str):
        """One client per service and region, built once (a failed build is tried again next time)."""
        await self._sdk()
        key = (service, region)
        task = self._clients.get(key)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._clients[key] = asyncio.get_running_loop().create_task(self._make_client(service, region))
        return await asyncio.shield(task)

    async def _make_client(self, service: str, region: str):
        config = Config(
            retries={"total_max_attempts": 1},  # `_call` retries, with our back-off (tests shorten it)
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=50,
            user_agent_extra="vpn-bot",
        )
        context = self._session.create_client(service, region_name=region, endpoint_url=self.config.endpoint_url or None, config=config)
        return await self._stack.enter_async_context(context)

    async def _call(self, client, operation: str, **params) -> dict:
        """One API call; throttling and transient failures are retried with exponential back-off and full
        jitter (so many sessions throttled at once do not retry in lockstep). RunInstances carries a
        ClientToken, so a retry after a lost reply never launches a second instance."""
        method = getattr(client, operation)
        attempt = 0
        while True:
            try:
                return await method(**params)
            except Exception as exc:
                if not _transient(exc) or attempt >= self.config.retry_total:
                    raise
                delay = random.uniform(0, min(20.0, self.config.retry_backoff * 2**attempt))
                log.warning("aws %s: %s; retry %d of %d in %.2f s", operation, _code(exc) or type(exc).__name__, attempt + 1, self.config.retry_total, delay)
                attempt += 1
                await asyncio.sleep(delay)

    async def _all(self, client, operation: str, key: str, **params) -> list[dict]:
        """Every page of a Describe* call (each page retried on its own)."""
        items: list[dict] = []
        token = None
        while True:
            page = await self._call(client, operation, **params, **({"NextToken": token} if token else {}))
            if key == "Reservations":
                items += [i for r in page.get(key, []) for i in r.get("Instances", [])]
            else:
                items += page.get(key, [])
            token = page.get("NextToken")
            if not token:
                return items

    def _friendly(self, exc: BaseException, step: str, region: str) -> ProvisionError:
        return _friendly(exc, step, region, self.config.instance_type)

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _tags(self, spec: ServerSpec) -> dict[str, str]:
        return {
            "Name": f"vpn-{spec.session_id}",
            TAG_MANAGED_BY: self.config.instance_name,
            TAG_DEPLOYMENT: self._deployment,
            TAG_SESSION: spec.session_id,
            TAG_OWNER: spec.owner,
            TAG_EXPIRES: spec.expires_at.astimezone(timezone.utc).isoformat(timespec="seconds"),
            **({TAG_STORE: self._store_id} if self._store_id else {}),
        }

    def _ours(self, session_id: str | None = None) -> list[dict]:
        """Filters for this deployment's per-session resources (of one session, if given); without a
        session, every session's of this instance name, whose deployment `list_managed` then tells."""
        filters = [{"Name": f"tag:{TAG_MANAGED_BY}", "Values": [self.config.instance_name]}]
        if session_id:
            filters += [{"Name": f"tag:{TAG_DEPLOYMENT}", "Values": self._own_ids()}, {"Name": f"tag:{TAG_SESSION}", "Values": [session_id]}]
        else:
            filters.append({"Name": "tag-key", "Values": [TAG_SESSION]})
        return filters

    # ----- create -----------------------------------------------------------------------------------

    async def create(self, spec: ServerSpec, progress: ProgressFn) -> ServerInfo:
        """Launch the instance and return once its public address is known (the client config is then
        complete); `wait_ready` waits for the tunnel."""
        region = spec.region.lower()
        await progress("creating server")
        await self._sdk()
        shared = self._shared_network(region)
        image = self._image(region)
        net = ipaddress.ip_network(self.config.tunnel_network)
        server_ip, client_ip = itertools.islice(net.hosts(), 2)
        keys = await asyncio.to_thread(generate_keypair)
        server = ServerConfig(
            private_key=keys.private,
            address=f"{server_ip}/{net.prefixlen}",
            listen_port=self.config.listen_port,
            peers=(ServerPeer(spec.client_public_key, spec.preshared_key, (f"{client_ip}/32",)),),
        )
        server_public = keys.public
        del keys
        user_data = bootconfig.cloud_config(server, callback_url=spec.callback_url, tunnel_dns=self.tunnel_dns)
        del server
        if len(user_data.encode()) > USER_DATA_LIMIT:
            raise ProvisionError("the server's boot config is too large", detail=f"user-data is {len(user_data.encode())} bytes; EC2 allows {USER_DATA_LIMIT}")
        try:
            (subnet_id, group_id), ami = await asyncio.gather(asyncio.shield(shared), asyncio.shield(image))
            ec2 = await self._client("ec2", region)
        except ProvisionError:
            raise
        except Exception as exc:
            if _is_aws_error(exc):
                raise self._friendly(exc, "network or image", region) from exc
            raise
        await self._forget(spec.session_id)
        params = self._launch_params(spec, ami, subnet_id, group_id, user_data)
        del user_data
        try:
            reply = await self._call(ec2, "run_instances", **params)
        except Exception as exc:
            if _is_aws_error(exc):
                raise self._friendly(exc, "RunInstances", region) from exc
            raise
        finally:
            del params  # the private key leaves memory with the request
        instance = reply["Instances"][0]
        instance_id = instance["InstanceId"]
        self._pending[spec.session_id] = _Pending(region, instance_id)
        log.info("session %s: instance %s launched in %s", spec.session_id, instance_id, region)
        address = instance.get("PublicIpAddress") or await self._public_address(region, instance_id)
        dns = tuple(self.config.dns) or ((str(server_ip),) if self.tunnel_dns else ())
        return ServerInfo(
            resource_id=f"{region}/{instance_id}",
            endpoint=f"{address}:{self.config.listen_port}",
            server_public_key=server_public,
            client_address=f"{client_ip}/32",
            region=region,
            hourly_cost=self.hourly_cost(region),
            size=self.config.instance_type + (" spot" if self.config.spot else ""),
            dns=dns,
            ready=False,
        )

    def _launch_params(self, spec: ServerSpec, ami: str, subnet_id: str, group_id: str, user_data: str) -> dict:
        tags = _tag_list(self._tags(spec))
        kinds = SESSION_RESOURCE_TYPES + (("spot-instances-request",) if self.config.spot else ())
        params: dict[str, Any] = {
            "ImageId": ami,
            "InstanceType": self.config.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "UserData": user_data,  # the SDK base64-encodes it
            # Idempotency for the SDK-level retries of this one call; a new attempt gets a new token.
            "ClientToken": f"vpn-{spec.session_id}-{secrets.token_hex(8)}",
            "NetworkInterfaces": [{
                "DeviceIndex": 0,
                "SubnetId": subnet_id,
                "Groups": [group_id],
                "AssociatePublicIpAddress": True,
                "DeleteOnTermination": True,
            }],
            # IMDSv2 only, hop limit 1: a token reply cannot cross the server's NAT to a tunnel client.
            "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled", "InstanceMetadataTags": "disabled"},
            "InstanceInitiatedShutdownBehavior": "terminate",  # a server that powers off is gone, not a billed stopped volume
            "TagSpecifications": [{"ResourceType": kind, "Tags": tags} for kind in kinds],
        }
        if re.match(r"t\d", self.config.instance_type):  # burstable (t2, t3, t3a, t4g), not trn1
            params["CreditSpecification"] = {"CpuCredits": "standard"}  # no surprise charges for unlimited bursting
        if self.config.spot:
            params["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
            }
        return params

    async def _describe_instances(self, region: str, instance_ids: list[str]) -> dict[str, dict]:
        """The instances by id; a filter, not InstanceIds, so one not yet visible (EC2 is eventually
        consistent right after RunInstances) is simply absent instead of failing the whole call."""
        ec2 = await self._client("ec2", region)
        found: dict[str, dict] = {}
        for i in range(0, len(instance_ids), 200):
            chunk = instance_ids[i:i + 200]
            for instance in await self._all(ec2, "describe_instances", "Reservations", Filters=[{"Name": "instance-id", "Values": chunk}]):
                found[instance["InstanceId"]] = instance
        return found

    def _watcher(self, region: str) -> _Watcher:
        watcher = self._watchers.get(region)
        if watcher is None:
            watcher = self._watchers[region] = _Watcher(self, region)
        return watcher

    async def _look(self, region: str, instance_id: str) -> dict | None:
        """The instance's next snapshot; transient trouble reads as "not visible yet", the rest is told."""
        try:
            return await self._watcher(region).snapshot(instance_id)
        except ProvisionError:
            raise
        except Exception as exc:
            if _transient(exc):
                log.warning("%s: DescribeInstances failed (%s); looking again", instance_id, _code(exc) or type(exc).__name__)
                await asyncio.sleep(max(self.config.poll_interval, 0.01))
                return None
            if _is_aws_error(exc):
                raise self._friendly(exc, "DescribeInstances", region) from exc
            raise

    async def _public_address(self, region: str, instance_id: str) -> str:
        try:
            async with asyncio.timeout(self.config.boot_timeout):
                while True:
                    instance = await self._look(region, instance_id)
                    if instance is None:
                        continue
                    if instance["State"]["Name"] in ENDED_STATES:
                        raise _ended_error(instance, region, self.config.instance_type)
                    if instance.get("PublicIpAddress"):
                        return instance["PublicIpAddress"]
        except TimeoutError:
            raise ProvisionError(
                "AWS did not give the server an address in time",
                detail=f"{instance_id}: no public IPv4 address within {self.config.boot_timeout:.0f} s",
            ) from None

    # ----- wait for the tunnel ------------------------------------------------------------------------

    async def wait_ready(self, spec: ServerSpec, progress: ProgressFn) -> None:
        """A positive "tunnel up" signal from the instance, or ProvisionError."""
        pending = self._pending.get(spec.session_id)
        if pending is None:
            raise ProvisionError("the server's set-up was lost; please start again", detail="wait_ready without create")
        try:
            await progress("server booting")
            # A crash between RunInstances and its reply may have left an instance of this session.
            self._spawn(self._terminate_strays(pending.region, spec.session_id, pending.instance_id), f"aws-strays:{spec.session_id}")
            try:
                async with asyncio.timeout(self.config.boot_timeout):
                    how = await self._booted(spec, pending)
            except TimeoutError:
                raise ProvisionError(
                    f"the server did not come up within {int(self.config.boot_timeout)} seconds",
                    detail=f"{pending.instance_id}: no server-up callback and no '{bootconfig.SERIAL_MARKER}' in its console output",
                ) from None
            log.info("%s: tunnel up (%s)", pending.instance_id, how)
        finally:
            self._pending.pop(spec.session_id, None)

    async def _booted(self, spec: ServerSpec, pending: _Pending) -> str:
        """Either signal the boot script gives once it has proven wg0 up: its callback, recorded in the
        store by whichever replica received it, or its line in the console output once the instance
        runs. An instance that ends meanwhile fails the session with AWS's reason."""
        loop = asyncio.get_running_loop()
        interval = max(self.config.poll_interval, 0.01)
        # With a callback coming, the console is only the fallback: look there less often.
        console_every = interval * (10 if spec.callback_url is not None and spec.server_up is not None else 1)
        next_console = loop.time()
        while True:
            if spec.server_up is not None:
                try:
                    if await spec.server_up():
                        return "callback"
                except Exception:  # the store hiccuped: look again next round (the console still counts)
                    log.warning("%s: could not read the server-up record; trying again", pending.instance_id, exc_info=True)
            instance = await self._look(pending.region, pending.instance_id)  # paced by the watcher
            if instance is None:
                continue
            state = instance["State"]["Name"]
            if state in ENDED_STATES:
                raise _ended_error(instance, pending.region, self.config.instance_type)
            if state == "running" and loop.time() >= next_console:
                next_console = loop.time() + console_every
                if await self._console_says_up(pending.region, pending.instance_id):
                    return "console output"

    async def _console_says_up(self, region: str, instance_id: str) -> bool:
        ec2 = await self._client("ec2", region)
        params: dict[str, Any] = {"InstanceId": instance_id}
        if self._latest_console:
            params["Latest"] = True  # Nitro instances: the live buffer, not the snapshot taken at boot
        try:
            reply = await self._call(ec2, "get_console_output", **params)
        except Exception as exc:
            if _code(exc) == "UnsupportedOperation" and self._latest_console:
                self._latest_console = False  # a Xen instance type: the snapshot is all there is
                return False
            if not _is_aws_error(exc):
                raise
            log.warning("%s: console output unavailable (%s)", instance_id, _code(exc) or type(exc).__name__)
            return False
        text = reply.get("Output") or ""  # the SDK decodes the base64
        return re.search(rf"(^|[\r\n]){re.escape(bootconfig.SERIAL_MARKER)} \S", text) is not None

    async def _terminate_strays(self, region: str, session_id: str, keep: str) -> None:
        try:
            ec2 = await self._client("ec2", region)
            found = await self._all(ec2, "describe_instances", "Reservations",
                                    Filters=self._ours(session_id) + [{"Name": "instance-state-name", "Values": list(LIVE_STATES)}])
            strays = [i["InstanceId"] for i in found if i["InstanceId"] != keep]
            if strays:
                log.warning("session %s: terminating %s, left by an earlier attempt", session_id, ", ".join(strays))
                await self._call(ec2, "terminate_instances", InstanceIds=strays)
        except Exception:  # reconcile and the session's own teardown find them too
            log.warning("session %s: could not look for instances of earlier attempts", session_id, exc_info=True)

    # ----- shared network and image -------------------------------------------------------------------

    def _shared_network(self, region: str) -> asyncio.Task:
        """A task (one per region, shared by every session, retried after a failure) that finds or makes
        the subnet and security group."""
        task = self._shared.get(region)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._shared[region] = asyncio.get_running_loop().create_task(self._ensure_shared(region), name=f"aws-shared:{region}")
        return task

    def _shared_tags(self, name: str) -> list[dict[str, str]]:
        return _tag_list({"Name": name, TAG_MANAGED_BY: self.config.instance_name, TAG_ROLE: "shared"})

    def _shared_filters(self) -> list[dict]:
        return [{"Name": f"tag:{TAG_MANAGED_BY}", "Values": [self.config.instance_name]}, {"Name": f"tag:{TAG_ROLE}", "Values": ["shared"]}]

    async def _ensure_shared(self, region: str) -> tuple[str, str]:
        try:
            return await self._ensure_shared_unwrapped(region)
        except ProvisionError:
            raise
        except Exception as exc:
            if _is_aws_error(exc):
                raise self._friendly(exc, "shared network", region) from exc
            raise

    async def _ensure_shared_unwrapped(self, region: str) -> tuple[str, str]:
        ec2 = await self._client("ec2", region)
        if region == self.config.region.lower() and self.config.subnet_id:
            subnets = await self._all(ec2, "describe_subnets", "Subnets", SubnetIds=[self.config.subnet_id])
            vpc_id = subnets[0]["VpcId"]
            return self.config.subnet_id, self.config.security_group_id or await self._ensure_security_group(ec2, vpc_id)
        # The usual case after the first session in a region: one round trip finds everything.
        zones, subnets, groups = await asyncio.gather(
            self._offering_zones(region),
            self._all(ec2, "describe_subnets", "Subnets", Filters=self._shared_filters()),
            self._all(ec2, "describe_security_groups", "SecurityGroups",
                      Filters=self._shared_filters() + [{"Name": "group-name", "Values": [self._group_name]}]),
        )
        if not zones:
            raise ProvisionError(
                f"the server type {self.config.instance_type} is not available in {region}; an admin has been told",
                detail=f"no availability zone of {region} offers {self.config.instance_type}: set AWS_INSTANCE_TYPE",
            )
        usable = sorted((s for s in subnets if s["AvailabilityZone"] in zones), key=lambda s: (s["VpcId"], s["AvailabilityZone"]))
        if usable:
            subnet = usable[0]
            group = next((g for g in groups if g["VpcId"] == subnet["VpcId"] and self._rules_fit(g)), None)
            if group is not None:
                return subnet["SubnetId"], group["GroupId"]
            return subnet["SubnetId"], await self._ensure_security_group(ec2, subnet["VpcId"])
        vpc_id = subnets[0]["VpcId"] if subnets else await self._ensure_vpc(ec2, region)

        async def routed_subnet() -> str:
            # A tagged subnet exists only once the VPC routes to the internet: the one-round-trip look
            # above may trust it. (A crash between the two leaves no subnet: the next session finishes.)
            await self._ensure_internet_route(ec2, vpc_id)
            return await self._ensure_subnet(ec2, vpc_id, zones)

        return tuple(await asyncio.gather(routed_subnet(), self._ensure_security_group(ec2, vpc_id)))  # type: ignore[return-value]

    async def _offering_zones(self, region: str) -> list[str]:
        task = self._zones.get(region)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._zones[region] = asyncio.get_running_loop().create_task(self._lookup_zones(region))
        return await asyncio.shield(task)

    async def _lookup_zones(self, region: str) -> list[str]:
        ec2 = await self._client("ec2", region)
        offers = await self._all(ec2, "describe_instance_type_offerings", "InstanceTypeOfferings", LocationType="availability-zone",
                                 Filters=[{"Name": "instance-type", "Values": [self.config.instance_type]}])
        # Availability zones proper (us-east-1a), not Local or Wavelength Zones (us-east-1-bos-1a).
        return sorted({o["Location"] for o in offers if re.fullmatch(re.escape(region) + r"[a-z]", o["Location"])})

    async def _ensure_vpc(self, ec2, region: str) -> str:
        """The shared VPC, found by tag or made (its internet route: `_ensure_internet_route`). Two processes making the first one at once may both
        create one: everybody then uses the lowest id, and a loser deletes its own (still empty) VPC."""
        vpcs = await self._all(ec2, "describe_vpcs", "Vpcs", Filters=self._shared_filters())
        if not vpcs:
            made = (await self._call(
                ec2, "create_vpc", CidrBlock=self.config.vpc_cidr,
                TagSpecifications=[{"ResourceType": "vpc", "Tags": self._shared_tags(f"{self.config.instance_name}-{region}")}],
            ))["Vpc"]["VpcId"]
            vpcs = await self._all(ec2, "describe_vpcs", "Vpcs", Filters=self._shared_filters()) or [{"VpcId": made}]
            chosen = min(v["VpcId"] for v in vpcs)
            if made != chosen:
                log.info("shared VPC: another process made %s at the same time; deleting %s", chosen, made)
                try:
                    await self._call(ec2, "delete_vpc", VpcId=made)
                except Exception:
                    log.warning("could not delete the spare VPC %s (free; remove it by hand)", made, exc_info=True)
        return min(v["VpcId"] for v in vpcs)

    async def _ensure_internet_route(self, ec2, vpc_id: str) -> None:
        """An internet gateway attached to the VPC, and the main route table's default route to it."""
        attached = {"Name": "attachment.vpc-id", "Values": [vpc_id]}
        gateways = await self._all(ec2, "describe_internet_gateways", "InternetGateways", Filters=[attached])
        if gateways:
            gateway_id = gateways[0]["InternetGatewayId"]
        else:
            gateway_id = (await self._call(
                ec2, "create_internet_gateway",
                TagSpecifications=[{"ResourceType": "internet-gateway", "Tags": self._shared_tags(f"{self.config.instance_name}-igw")}],
            ))["InternetGateway"]["InternetGatewayId"]
            try:
                await self._call(ec2, "attach_internet_gateway", InternetGatewayId=gateway_id, VpcId=vpc_id)
            except Exception as exc:
                gateways = await self._all(ec2, "describe_internet_gateways", "InternetGateways", Filters=[attached]) if _is_aws_error(exc) else []
                if not gateways:
                    raise
                await self._call(ec2, "delete_internet_gateway", InternetGatewayId=gateway_id)  # another process attached theirs
                gateway_id = gateways[0]["InternetGatewayId"]
        tables = await self._all(ec2, "describe_route_tables", "RouteTables",
                                 Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "association.main", "Values": ["true"]}])
        table = tables[0]
        if any(r.get("DestinationCidrBlock") == "0.0.0.0/0" and r.get("GatewayId") == gateway_id for r in table.get("Routes", [])):
            return
        if TAG_MANAGED_BY not in _tags_of(table):  # the IAM policy lets the bot change only route tables it tagged
            await self._call(ec2, "create_tags", Resources=[table["RouteTableId"]], Tags=self._shared_tags(f"{self.config.instance_name}-routes"))
        try:
            await self._call(ec2, "create_route", RouteTableId=table["RouteTableId"], DestinationCidrBlock="0.0.0.0/0", GatewayId=gateway_id)
        except Exception as exc:
            if _code(exc) != "RouteAlreadyExists":
                raise
            await self._call(ec2, "replace_route", RouteTableId=table["RouteTableId"], DestinationCidrBlock="0.0.0.0/0", GatewayId=gateway_id)

    async def _ensure_subnet(self, ec2, vpc_id: str, zones: list[str]) -> str:
        """A /24 in the first zone that offers the instance type; its CIDR follows from the zone's
        letter, so a second process making the same subnet meets InvalidSubnet.Conflict, and uses it."""
        zone = zones[0]
        blocks = list(ipaddress.ip_network(self.config.vpc_cidr).subnets(new_prefix=24)) or [ipaddress.ip_network(self.config.vpc_cidr)]
        cidr = str(blocks[(ord(zone[-1]) - ord("a")) % len(blocks)])
        try:
            subnet = await self._call(
                ec2, "create_subnet", VpcId=vpc_id, CidrBlock=cidr, AvailabilityZone=zone,
                TagSpecifications=[{"ResourceType": "subnet", "Tags": self._shared_tags(f"{self.config.instance_name}-{zone}")}],
            )
            return subnet["Subnet"]["SubnetId"]
        except Exception as exc:
            if _code(exc) != "InvalidSubnet.Conflict":
                raise
        found = await self._all(ec2, "describe_subnets", "Subnets",
                                Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "cidr-block", "Values": [cidr]}])
        return found[0]["SubnetId"]

    @property
    def _group_name(self) -> str:
        return f"{self.config.instance_name}-wireguard"

    def _wanted_rule(self) -> tuple:
        return ("udp", self.config.listen_port, self.config.listen_port, "0.0.0.0/0")

    def _rules_fit(self, group: dict) -> bool:
        rules = []
        for p in group.get("IpPermissions", []):
            if p.get("Ipv6Ranges") or p.get("UserIdGroupPairs") or p.get("PrefixListIds"):
                return False
            rules += [(p.get("IpProtocol"), p.get("FromPort"), p.get("ToPort"), r.get("CidrIp")) for r in p.get("IpRanges", [])]
        return rules == [self._wanted_rule()]

    async def _ensure_security_group(self, ec2, vpc_id: str) -> str:
        """Our group in the VPC (its name is unique there: a concurrent create meets
        InvalidGroup.Duplicate), letting in the WireGuard UDP port and nothing else."""
        name_filters = [{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "group-name", "Values": [self._group_name]}]
        groups = await self._all(ec2, "describe_security_groups", "SecurityGroups", Filters=name_filters)
        if not groups:
            try:
                made = await self._call(
                    ec2, "create_security_group", GroupName=self._group_name, VpcId=vpc_id,
                    Description="vpn-bot: WireGuard (UDP) only",
                    TagSpecifications=[{"ResourceType": "security-group", "Tags": self._shared_tags(self._group_name)}],
                )
                groups = [{"GroupId": made["GroupId"], "IpPermissions": []}]
            except Exception as exc:
                if _code(exc) != "InvalidGroup.Duplicate":
                    raise
                groups = await self._all(ec2, "describe_security_groups", "SecurityGroups", Filters=name_filters)
        group = groups[0]
        if self._rules_fit(group):
            return group["GroupId"]
        wanted = self._wanted_rule()
        extra, present = [], False
        for p in group.get("IpPermissions", []):
            base = {k: p[k] for k in ("IpProtocol", "FromPort", "ToPort") if k in p}
            for r in p.get("IpRanges", []):
                if (p.get("IpProtocol"), p.get("FromPort"), p.get("ToPort"), r.get("CidrIp")) == wanted:
                    present = True
                else:
                    extra.append({**base, "IpRanges": [r]})
            for key in ("Ipv6Ranges", "UserIdGroupPairs", "PrefixListIds"):
                if p.get(key):
                    extra.append({**base, key: p[key]})
        if extra:
            log.warning("security group %s: removing %d rule(s) that are not WireGuard", group["GroupId"], len(extra))
            await self._call(ec2, "revoke_security_group_ingress", GroupId=group["GroupId"], IpPermissions=extra)
        if not present:
            try:
                await self._call(ec2, "authorize_security_group_ingress", GroupId=group["GroupId"], IpPermissions=[{
                    "IpProtocol": "udp", "FromPort": wanted[1], "ToPort": wanted[2],
                    "IpRanges": [{"CidrIp": wanted[3], "Description": "WireGuard"}],
                }])
            except Exception as exc:
                if _code(exc) != "InvalidPermission.Duplicate":
                    raise
        return group["GroupId"]

    def _image(self, region: str) -> asyncio.Task:
        """The AMI id: AWS_AMI_ID in AWS_REGION, else Canonical's current Ubuntu 24.04 for the
        architecture, looked up once per region (and again after `image_cache_seconds`)."""
        loop = asyncio.get_running_loop()
        cached = self._images.get(region)
        if cached is not None:
            when, task = cached
            stale = loop.time() - when > self.config.image_cache_seconds
            if not stale and not (task.done() and (task.cancelled() or task.exception() is not None)):
                return task
        task = loop.create_task(self._lookup_image(region), name=f"aws-image:{region}")
        self._images[region] = (loop.time(), task)
        return task

    async def _lookup_image(self, region: str) -> str:
        if region == self.config.region.lower() and self.config.ami_id:
            return self.config.ami_id
        name = UBUNTU_SSM_PARAMETER.format(arch=self.config.architecture)
        try:
            ssm = await self._client("ssm", region)
            reply = await self._call(ssm, "get_parameter", Name=name)
        except Exception as exc:
            if _code(exc) == "ParameterNotFound":
                raise ProvisionError(
                    f"there is no Ubuntu 24.04 image for this server type in {region}; an admin has been told",
                    detail=f"SSM parameter {name} not found in {region}: set AWS_AMI_ID or another AWS_INSTANCE_TYPE",
                ) from exc
            if _is_aws_error(exc):
                raise self._friendly(exc, f"SSM GetParameter {name}", region) from exc
            raise
        return reply["Parameter"]["Value"]

    # ----- destroy and reconcile ---------------------------------------------------------------------

    async def _forget(self, session_id: str) -> None:
        """Stop waiting for a session's instance in this process (before deleting or starting over)."""
        self._pending.pop(session_id, None)

    async def destroy(self, session_id: str, *, resource_id: str | None = None, peer_public_key: str | None = None) -> None:
        """Terminate the session's instances (found by tag, and by id when known), cancel its Spot
        request, delete a volume or network interface that outlived its instance. Tries every one even
        when another refuses; raises CleanupIncomplete if AWS still holds something."""
        if not session_id:
            return
        await self._forget(session_id)
        region, instance_id = _parse_resource_id(resource_id)
        regions = [region] if region else list(self.regions)
        refused: dict[str, str] = {}
        await asyncio.gather(*(self._destroy_in(r, session_id, instance_id if r == region else None, refused) for r in regions))
        if refused:
            detail = ", ".join(f"{n} ({c})" for n, c in sorted(refused.items()))
            raise CleanupIncomplete(sorted(refused), retry_after=self.config.cleanup_retry_seconds, detail=f"session {session_id}: not deleted yet: {detail}")
        log.info("aws resources of session %s deleted", session_id)

    async def _destroy_in(self, region: str, session_id: str, instance_id: str | None, refused: dict[str, str]) -> None:
        try:
            ec2 = await self._client("ec2", region)
        except Exception as exc:
            refused[f"{region}: everything"] = _code(exc) or type(exc).__name__
            return
        ours = self._ours(session_id)

        async def attempt(label: str, operation: str, **params) -> Any:
            try:
                return await self._call(ec2, operation, **params)
            except Exception as exc:
                if not _is_aws_error(exc):
                    raise
                if _code(exc).endswith("NotFound"):  # InvalidInstanceID.NotFound, InvalidVolume.NotFound…
                    return None
                refused[f"{region}: {label}"] = _code(exc) or type(exc).__name__
                return None

        listing = await attempt("instances", "describe_instances", Filters=ours + [{"Name": "instance-state-name", "Values": list(LIVE_STATES)}])
        instances = {i["InstanceId"] for r in (listing or {}).get("Reservations", []) for i in r.get("Instances", [])}
        if instance_id and instance_id not in instances:
            await attempt(instance_id, "terminate_instances", InstanceIds=[instance_id])  # its tags may not have landed
        if instances:
            await attempt(", ".join(sorted(instances)), "terminate_instances", InstanceIds=sorted(instances))
        if self.config.spot:
            requests = await attempt("spot requests", "describe_spot_instance_requests",
                                     Filters=ours + [{"Name": "state", "Values": ["open", "active"]}])
            ids = [r["SpotInstanceRequestId"] for r in (requests or {}).get("SpotInstanceRequests", [])]
            if ids:
                await attempt(", ".join(ids), "cancel_spot_instance_requests", SpotInstanceRequestIds=ids)
        volumes = await attempt("volumes", "describe_volumes", Filters=ours)
        for volume in (volumes or {}).get("Volumes", []):
            if volume["State"] == "available":
                await attempt(volume["VolumeId"], "delete_volume", VolumeId=volume["VolumeId"])
            elif volume["State"] != "deleting" and not all(a.get("DeleteOnTermination") for a in volume.get("Attachments", [])):
                refused[f"{region}: {volume['VolumeId']}"] = volume["State"]  # detaches once its instance is gone
        interfaces = await attempt("network interfaces", "describe_network_interfaces", Filters=ours)
        for eni in (interfaces or {}).get("NetworkInterfaces", []):
            if eni["Status"] == "available":
                await attempt(eni["NetworkInterfaceId"], "delete_network_interface", NetworkInterfaceId=eni["NetworkInterfaceId"])
            elif not (eni.get("Attachment") or {}).get("DeleteOnTermination"):
                refused[f"{region}: {eni['NetworkInterfaceId']}"] = eni["Status"]

    async def list_managed(self) -> list[ManagedResource]:
        """Every per-session resource this deployment owns in the allowed regions, one entry per
        session: live instances, volumes and network interfaces (and open Spot requests) by tag.
        Another deployment's resources (another `vpn-deployment` under this instance name) are never
        listed, only reported; ours made with another store (its `vpn-store` tag) are listed only once
        they have expired: a lost store's leftovers then go, while a deployment configured like this
        one (same instance name in the same account, no VPN_DEPLOYMENT_ID) keeps its live sessions."""
        await self._sdk()
        found: dict[str, ManagedResource] = {}
        own, now = set(self._own_ids()), self.clock()
        others: dict[str, list[str]] = {}  # another deployment -> names
        held: dict[str, datetime] = {}  # session made with another store, not expired yet -> its expiry

        def add(region: str, tags: dict[str, str], name: str, instance_id: str | None = None) -> None:
            sid = tags.get(TAG_SESSION)
            if not sid or tags.get(TAG_MANAGED_BY) != self.config.instance_name:
                return
            if tags.get(TAG_DEPLOYMENT) not in own:
                others.setdefault(f"{region}: {tags.get(TAG_DEPLOYMENT, '(no deployment tag)')}", []).append(name)
                return
            try:
                expires = datetime.fromisoformat(tags.get(TAG_EXPIRES, ""))
            except ValueError:
                expires = None
            store = tags.get(TAG_STORE)
            if store and self._store_id and store != self._store_id and expires is not None and expires > now:
                held[sid] = max(held.get(sid, expires), expires)
            entry = found.setdefault(sid, ManagedResource(resource_id=f"{region}/", session_id=sid, expires_at=expires, details={"names": []}))
            if instance_id and entry.resource_id == f"{region}/":
                found[sid] = entry = ManagedResource(f"{region}/{instance_id}", sid, expires_at=entry.expires_at, details=entry.details)
            entry.details["names"].append(name)

        async def region_listing(region: str) -> None:
            ec2 = await self._client("ec2", region)
            ours = self._ours()
            instances, volumes, interfaces = await asyncio.gather(
                self._all(ec2, "describe_instances", "Reservations", Filters=ours + [{"Name": "instance-state-name", "Values": list(LIVE_STATES)}]),
                self._all(ec2, "describe_volumes", "Volumes", Filters=ours),
                self._all(ec2, "describe_network_interfaces", "NetworkInterfaces", Filters=ours),
            )
            for i in instances:
                add(region, _tags_of(i), i["InstanceId"], i["InstanceId"])
            # A volume or interface that goes with its instance is that instance's business (listed above
            # while it lives); listing it would "delete" a terminating instance's disk on every pass.
            for v in volumes:
                if v["State"] != "deleting" and not (v.get("Attachments") and all(a.get("DeleteOnTermination") for a in v["Attachments"])):
                    add(region, _tags_of(v), v["VolumeId"])
            for n in interfaces:
                if not (n.get("Attachment") or {}).get("DeleteOnTermination"):
                    add(region, _tags_of(n), n["NetworkInterfaceId"])
            if self.config.spot:
                for r in await self._all(ec2, "describe_spot_instance_requests", "SpotInstanceRequests",
                                         Filters=ours + [{"Name": "state", "Values": ["open", "active"]}]):
                    add(region, _tags_of(r), r["SpotInstanceRequestId"])

        await asyncio.gather(*(region_listing(r) for r in self.regions))
        self._report(others, {sid: (held[sid], found.pop(sid).details["names"]) for sid in held})
        return list(found.values())

    def _report(self, others: dict[str, list[str]], held: dict[str, tuple[datetime, list[str]]]) -> None:
        lines = []
        for theirs, names in sorted(others.items()):
            region, _, deployment = theirs.partition(": ")
            lines.append(f"reconcile: leaving {len(names)} resource(s) of another deployment ({self.config.instance_name}/{deployment}) in {region} alone: {', '.join(sorted(names)[:10])}")
        self._left_alone.emit(lines, held, "another deployment with the same VPN_INSTANCE_NAME in this AWS account")

    async def traffic(self, peers: Mapping[str, str]) -> dict[str, Traffic]:
        return {}  # the instance reports its own figures every minute over its callback (provisioner/bootconfig.py), as Azure's VMs do

    async def close(self) -> None:
        self._pending.clear()
        for watcher in self._watchers.values():
            watcher.close()
        tasks = [*self._shared.values(), *(t for _, t in self._images.values()), *self._zones.values(), *self._background]
        tasks += [w.task for w in self._watchers.values() if w.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._clients.values(), return_exceptions=True)
        await self._stack.aclose()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def credentials_problem(region: str) -> str | None:
    """A sentence when the SDK's default chain finds no credentials (the first hour's usual mistake);
    None when it does. Blocking (it may ask the instance metadata service): call it from a thread."""
    import botocore.session

    try:
        session = botocore.session.get_session()
        credentials = session.get_credentials()
    except Exception as exc:  # a malformed profile, an unreadable config file
        return f"the AWS credentials could not be read ({type(exc).__name__}: {exc})"[:300]
    if credentials is None:
        return ("no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or AWS_PROFILE in the real "
                "environment (the AWS SDK does not read .env), or run the bot with an instance or task role (docs/aws.md)")
    return None
