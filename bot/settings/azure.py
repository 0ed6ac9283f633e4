"""The Azure provider's section: `AzureConfig` when VPN_PROVIDER=azure, else None (its values are still checked)."""
from __future__ import annotations

from bot.engine.config import SessionPolicy
from bot.settings.ops import OpsSettings
from bot.settings.providers import ProviderSettings
from bot.settings.reader import Reader, SettingsError, public_url, region, region_list
from provisioner.azure_config import AzureConfig


def read(r: Reader, *, provider: ProviderSettings, ops: OpsSettings, sessions: SessionPolicy) -> AzureConfig | None:
    subscription_id = r.text("AZURE_SUBSCRIPTION_ID", "")
    resource_group = r.text("AZURE_RESOURCE_GROUP", "")
    location = r.parse("AZURE_LOCATION", "eastus", region, "an Azure region name such as westeurope")
    allowed_locations = r.parse("AZURE_ALLOWED_LOCATIONS", "", region_list, "comma-separated Azure region names")
    vm_size = r.text("AZURE_VM_SIZE", "Standard_B1ls") or "Standard_B1ls"
    image = r.choice("AZURE_IMAGE", "ubuntu", ("ubuntu", "flatcar"))
    arm_endpoint = r.parse("AZURE_ARM_ENDPOINT", "https://management.azure.com", public_url, "an https:// URL")
    ssh_public_key = r.text("AZURE_SSH_PUBLIC_KEY", "")
    ssh_source = r.text("AZURE_SSH_SOURCE", "")
    boot_timeout = r.number("AZURE_BOOT_TIMEOUT_SECONDS", 300.0, 10.0, 3600.0)
    poll_seconds = r.number("AZURE_POLL_SECONDS", 0.25, 0.0, 60.0)
    hourly_cost = r.number("AZURE_HOURLY_COST", 0.0, 0.0, 1000.0)
    if provider.kind != "azure":
        return None
    for name, value in (("AZURE_SUBSCRIPTION_ID", subscription_id), ("AZURE_RESOURCE_GROUP", resource_group)):
        if not value:
            raise SettingsError(f"{name} is required with VPN_PROVIDER=azure")
    if bool(ssh_public_key) != bool(ssh_source):
        raise SettingsError("AZURE_SSH_PUBLIC_KEY and AZURE_SSH_SOURCE go together: SSH is opened only to that source")
    return AzureConfig(
        subscription_id=subscription_id,
        resource_group=resource_group,
        location=location,
        allowed_locations=allowed_locations,
        vm_size=vm_size,
        image=image,
        arm_endpoint=arm_endpoint,
        instance_name=ops.instance_name,
        deployment_id=ops.deployment_id,
        tunnel_network=str(provider.wireguard.pool),
        ssh_public_key=ssh_public_key,
        ssh_source=ssh_source,
        dns=tuple(sessions.dns),
        full_tunnel="0.0.0.0/0" in sessions.allowed_ips,
        boot_timeout=boot_timeout,
        polling_interval=poll_seconds,
        hourly_cost_override=hourly_cost,
    )
