"""The Azure provider's settings: plain data, no SDK import (bot/settings/ builds one cheaply).

`provisioner/azure.py` is the only module that imports the Azure SDKs; it reads an `AzureConfig`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from provisioner.wireguard import DEFAULT_PORT

PUBLIC_ARM = "https://management.azure.com"


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
    # Which deployment owns a resource; two deployments may share a resource group and an instance
    # name. Empty: bound at start-up from the store (`bind_deployment`), else the instance name.
    deployment_id: str = ""
    tunnel_network: str = "10.77.0.0/24"
    listen_port: int = DEFAULT_PORT
    vnet_prefix: str = "10.200.0.0/24"
    ssh_public_key: str = ""  # set (with ssh_source) to allow SSH; otherwise nobody can log in
    ssh_source: str = ""
    dns: Sequence[str] = ()  # WG_DNS; empty with a full tunnel: a resolver on the VM's tunnel address
    full_tunnel: bool = True
    boot_timeout: float = 300.0
    # Our own poll interval for every long-running operation once it could be done (before that,
    # ARM's Retry-After, commonly 10 s: provisioner/azure.py WATCH_AFTER), and for "server up".
    polling_interval: float = 0.25
    watch_scale: float = 1.0  # multiplies WATCH_AFTER; 0: poll every step at our interval from its start (tests)
    polls_per_second: float = 8.0  # this process's status polls and console reads, all sessions together; 0: unpaced
    # Deliver the config only once the VM PUT is accepted (refusals such as quota or SKU then never
    # leave a dead config), instead of as soon as the address is known. See docs/azure.md.
    config_after_vm_accepted: bool = False
    cleanup_retry_seconds: float = 15.0  # a resource Azure still holds: try again after this (twice it for a reserved NIC)
    retry_total: int = 6
    retry_backoff: float = 0.8
    hourly_cost_override: float = 0.0

    @property
    def regions(self) -> tuple[str, ...]:
        regions = [self.location.lower()] + [r.lower() for r in self.allowed_locations]
        return tuple(dict.fromkeys(regions))
