"""Which provider hands out servers, and what the dry-run and host providers need (WireGuard on this machine)."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from bot.settings.reader import IPNetwork, Reader, SettingsError, interface_name, name_list, pool

PROVIDERS = ("dryrun", "host", "azure", "aws")


@dataclass(frozen=True)
class WireGuardSettings:
    """The tunnel network every provider addresses peers from; the interface and endpoint of `host`."""
    interface: str = "wg0"
    endpoint: str = ""  # host: the address clients dial, e.g. vpn.example.org:51820
    pool: IPNetwork = field(default_factory=lambda: ipaddress.ip_network("10.77.0.0/24"))
    command: str = "wg"  # host: how to run wg (split like a shell would)


@dataclass(frozen=True)
class DryRunSettings:
    step_seconds: float = 0.3
    regions: tuple[str, ...] = ("local",)
    fail_step: str = ""  # a step name to fail at, for trying the failure path


@dataclass(frozen=True)
class ProviderSettings:
    kind: str = "dryrun"
    hourly_cost: float = 0.0  # dryrun and host (cloud providers price their own)
    wireguard: WireGuardSettings = field(default_factory=WireGuardSettings)
    dryrun: DryRunSettings = field(default_factory=DryRunSettings)


def read(r: Reader) -> ProviderSettings:
    provider = ProviderSettings(
        kind=r.choice("VPN_PROVIDER", "dryrun", PROVIDERS),
        hourly_cost=r.number("VPN_HOURLY_COST", 0.0, 0.0, 1000.0),
        wireguard=WireGuardSettings(
            interface=r.parse("WG_INTERFACE", "wg0", interface_name, "an interface name of 1-15 letters, digits, '_', '-' or '.'"),
            endpoint=r.text("WG_ENDPOINT", ""),
            pool=r.parse("WG_POOL", "10.77.0.0/24", pool, "a CIDR network with at least two host addresses, e.g. 10.77.0.0/24"),
            command=r.text("WG_COMMAND", "wg") or "wg",
        ),
        dryrun=DryRunSettings(
            step_seconds=r.number("VPN_DRYRUN_STEP_SECONDS", 0.3, 0.0, 600.0),
            regions=r.parse("VPN_DRYRUN_REGIONS", "local", name_list, "comma-separated region names"),
            fail_step=r.text("VPN_DRYRUN_FAIL_STEP", ""),
        ),
    )
    if provider.kind == "host" and not provider.wireguard.endpoint:
        raise SettingsError("WG_ENDPOINT is required with VPN_PROVIDER=host: the address clients dial, e.g. vpn.example.org:51820")
    return provider
