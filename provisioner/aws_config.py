"""The AWS provider's settings and price table: plain data, no SDK import (settings import this cheaply).

`provisioner/aws.py` is the only module that imports the AWS SDK; it reads an `AwsConfig`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from provisioner.wireguard import DEFAULT_PORT

DEFAULT_REGION = "us-east-1"
# The cheapest instance type that runs the boot config: 2 vCPU (burstable), 0.5 GiB, arm64 (Graviton2).
# WireGuard is in the kernel; the box forwards packets and nothing else. See docs/aws.md.
DEFAULT_INSTANCE_TYPE = "t4g.nano"
# Canonical publishes the current Ubuntu 24.04 image of every region and architecture here (public
# SSM parameters; https://documentation.ubuntu.com/aws/ — "Find Ubuntu images on AWS").
UBUNTU_SSM_PARAMETER = "/aws/service/canonical/ubuntu/server/24.04/stable/current/{arch}/hvm/ebs-gp3/ami-id"

# US East (N. Virginia), Linux, On-Demand, USD per hour (aws.amazon.com/ec2/pricing/on-demand/; see
# docs/aws.md for the date). Other regions cost up to ~25 % more: an estimate, like Azure's.
INSTANCE_PRICES = {
    "t4g.nano": 0.0042,
    "t4g.micro": 0.0084,
    "t4g.small": 0.0168,
    "t3.nano": 0.0052,
    "t3.micro": 0.0104,
    "t3.small": 0.0208,
    "t3a.nano": 0.0047,
    "t3a.micro": 0.0094,
    "t3a.small": 0.0188,
    "t2.nano": 0.0058,
    "t2.micro": 0.0116,
}
PUBLIC_IPV4_PER_HOUR = 0.005  # every public IPv4 address, in use or not, since 2024-02-01
ROOT_VOLUME_PER_HOUR = round(8 * 0.08 / 730, 4)  # 8 GiB gp3 at $0.08 per GiB-month ≈ $0.0009/h

_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
_INSTANCE_TYPE = re.compile(r"[a-z][a-z0-9-]*\.[a-z0-9]+")
# Graviton families: a 'g' after the generation digit (t4g, m7gd, c6gn, im4gn, is4gen, x2gd, g5g), and a1.
_ARM_FAMILY = re.compile(r"a1|[a-z]+\d[a-z]*g[a-z]*")


def is_region(name: str) -> bool:
    """An AWS region name such as eu-west-1 or us-gov-west-1 (the shape, not whether it exists)."""
    return bool(_REGION.fullmatch(name))


def is_instance_type(name: str) -> bool:
    return bool(_INSTANCE_TYPE.fullmatch(name))


def architecture(instance_type: str) -> str:
    """The image architecture an instance type needs, as Canonical's parameters name it: arm64 or amd64."""
    family = instance_type.split(".", 1)[0]
    return "arm64" if _ARM_FAMILY.fullmatch(family) else "amd64"


@dataclass(frozen=True)
class AwsConfig:
    region: str = DEFAULT_REGION
    allowed_regions: Sequence[str] = ()
    instance_type: str = DEFAULT_INSTANCE_TYPE
    # AWS_AMI_ID, AWS_SUBNET_ID and AWS_SECURITY_GROUP_ID name things in `region` (ids are regional);
    # other allowed regions use Canonical's image and a network the provider makes.
    ami_id: str = ""
    spot: bool = False
    subnet_id: str = ""
    security_group_id: str = ""
    # None: the SDK's own resolution (AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_EC2, the config file, AWS).
    endpoint_url: str | None = None
    instance_name: str = "vpn-bot"
    # Which deployment owns a resource (the `vpn-deployment` tag). Empty: the default derived from the
    # instance name (`provisioner.aws.default_deployment_id`), or what start-up binds (`bind_deployment`).
    deployment_id: str = ""
    tunnel_network: str = "10.77.0.0/24"
    listen_port: int = DEFAULT_PORT
    vpc_cidr: str = "10.200.0.0/20"  # one /24 subnet per availability zone, made when first needed
    dns: Sequence[str] = ()  # WG_DNS; empty with a full tunnel: a resolver on the server's tunnel address
    full_tunnel: bool = True
    boot_timeout: float = 300.0
    # One DescribeInstances per region per interval covers every instance this process waits for.
    poll_interval: float = 0.5
    retry_total: int = 6  # throttled (RequestLimitExceeded) or unavailable: tried again this many times
    retry_backoff: float = 0.5  # first retry within this many seconds; doubling, full jitter, at most 20 s
    cleanup_retry_seconds: float = 10.0
    hourly_cost_override: float = 0.0
    image_cache_seconds: float = 6 * 3600.0  # Canonical's parameter is re-read after this long

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([self.region.lower(), *(r.lower() for r in self.allowed_regions)]))

    @property
    def architecture(self) -> str:
        return architecture(self.instance_type)

    def hourly_cost(self) -> float:
        if self.hourly_cost_override:
            return self.hourly_cost_override
        return round(INSTANCE_PRICES.get(self.instance_type, 0.0) + PUBLIC_IPV4_PER_HOUR + ROOT_VOLUME_PER_HOUR, 6)
