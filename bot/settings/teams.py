"""The Teams channel's section: `TeamsConfig` when MicrosoftAppId is set (or in dev mode), else None."""
from __future__ import annotations

from bot.channels.teams.config import DEFAULT_UPLOAD_HOSTS, TeamsConfig
from bot.settings.reader import Reader, SettingsError, app_type, guid_list, host_patterns


def read(r: Reader, *, dev_mode: bool) -> TeamsConfig | None:
    app_id = r.text("MicrosoftAppId", "")
    password = r.text("MicrosoftAppPassword", "")
    kind = r.parse("MicrosoftAppType", "SingleTenant", app_type, "SingleTenant, UserAssignedMSI or (existing registrations only) MultiTenant")
    tenant_id = r.text("MicrosoftAppTenantId", "")
    allowed_tenants = r.parse("TEAMS_ALLOWED_TENANTS", "", guid_list, "comma-separated tenant ids (GUIDs)")
    upload_hosts = r.parse(
        "TEAMS_UPLOAD_HOSTS", ", ".join(DEFAULT_UPLOAD_HOSTS), host_patterns,
        "comma-separated host names, '*.' for subdomains (e.g. *.sharepoint.com, *.sharepoint.us)",
    )
    if not app_id and (password or tenant_id):
        raise SettingsError(
            "MicrosoftAppId is missing while other MicrosoftApp* variables are set: refusing to start with "
            "Teams authentication off (for local tries without credentials set VPN_DEV_MODE=1)"
        )
    if app_id:
        if not tenant_id and kind != "MultiTenant":
            raise SettingsError(f"MicrosoftAppTenantId is required with MicrosoftAppType={kind}")
        if kind in ("SingleTenant", "MultiTenant") and not password:
            raise SettingsError(f"MicrosoftAppPassword is required with MicrosoftAppType={kind}")
    if not (app_id or dev_mode):
        return None
    return TeamsConfig(
        app_id=app_id,
        app_password=password,
        app_type=kind,
        tenant_id=tenant_id,
        dev_mode=dev_mode,
        allowed_tenants=allowed_tenants,
        upload_hosts=upload_hosts,
    )
