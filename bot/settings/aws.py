"""The AWS provider's section: `AwsConfig` when VPN_PROVIDER=aws, else None (its values are still checked).

Credentials are the AWS SDK's own (its default chain reads AWS_ACCESS_KEY_ID, AWS_PROFILE, roles, …);
this section reads only the bot's settings. AWS_ENDPOINT_URL is read by the SDK too: it is read here
as well, only to refuse http:// off loopback (the RunInstances body carries the server's private key).
"""
from __future__ import annotations

import re
from collections.abc import Callable

from bot.engine.config import SessionPolicy
from bot.settings.ops import OpsSettings
from bot.settings.providers import ProviderSettings
from bot.settings.reader import Reader, SettingsError, public_url
from provisioner.aws_config import DEFAULT_INSTANCE_TYPE, DEFAULT_REGION, AwsConfig, is_instance_type, is_region


def read(r: Reader, *, provider: ProviderSettings, ops: OpsSettings, sessions: SessionPolicy) -> AwsConfig | None:
    region = r.parse("AWS_REGION", DEFAULT_REGION, aws_region, "an AWS region name such as eu-west-1")
    allowed_regions = r.parse("AWS_ALLOWED_REGIONS", "", aws_region_list, "comma-separated AWS region names such as eu-west-1, us-east-1")
    instance_type = r.parse("AWS_INSTANCE_TYPE", DEFAULT_INSTANCE_TYPE, aws_instance_type, "an EC2 instance type such as t4g.nano or t3.nano")
    ami_id = r.parse("AWS_AMI_ID", "", aws_id("ami"), "an image id such as ami-0123456789abcdef0 (in AWS_REGION)")
    spot = r.flag("AWS_SPOT")
    subnet_id = r.parse("AWS_SUBNET_ID", "", aws_id("subnet"), "a subnet id such as subnet-0123456789abcdef0 (in AWS_REGION)")
    security_group_id = r.parse("AWS_SECURITY_GROUP_ID", "", aws_id("sg"), "a security group id such as sg-0123456789abcdef0")
    endpoint_url = r.parse("AWS_ENDPOINT_URL", "", public_url, "an https:// URL (http:// only for localhost)")
    boot_timeout = r.number("AWS_BOOT_TIMEOUT_SECONDS", 300.0, 10.0, 3600.0)
    poll_seconds = r.number("AWS_POLL_SECONDS", 0.5, 0.0, 60.0)
    if provider.kind != "aws":
        return None
    if security_group_id and not subnet_id:
        raise SettingsError("AWS_SECURITY_GROUP_ID needs AWS_SUBNET_ID: a security group belongs to one VPC, so name a subnet in it too")
    return AwsConfig(
        region=region,
        allowed_regions=allowed_regions,
        instance_type=instance_type,
        ami_id=ami_id,
        spot=spot,
        subnet_id=subnet_id,
        security_group_id=security_group_id,
        endpoint_url=endpoint_url or None,  # None: the SDK's own resolution (AWS_ENDPOINT_URL_EC2, the config file, AWS)
        instance_name=ops.instance_name,
        deployment_id=ops.deployment_id,
        tunnel_network=str(provider.wireguard.pool),
        dns=tuple(sessions.dns),
        full_tunnel="0.0.0.0/0" in sessions.allowed_ips,
        boot_timeout=boot_timeout,
        poll_interval=poll_seconds,
    )


# ----- parse helpers (the reader's contract: the value, or ValueError) ---------------------------------

def aws_region(text: str) -> str:
    if not is_region(text.lower()):
        raise ValueError(text)
    return text.lower()


def aws_region_list(text: str) -> tuple[str, ...]:
    return tuple(aws_region(p.strip()) for p in text.split(",") if p.strip())


def aws_instance_type(text: str) -> str:
    if not is_instance_type(text.lower()):
        raise ValueError(text)
    return text.lower()


def aws_id(prefix: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text and not re.fullmatch(rf"{prefix}-[0-9a-f]{{8,17}}", text):
            raise ValueError(text)
        return text

    return parse
