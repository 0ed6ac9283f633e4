"""The web page and API's section: `WebConfig` when a way to sign in is configured (VPN_LOCAL_AUTH_SECRET), else None."""
from __future__ import annotations

from bot.channels.web.client_address import parse_trusted_proxies
from bot.channels.web.config import WebConfig
from bot.settings.reader import Reader, SettingsError, guid_or_empty, origin_list, public_url


def read(r: Reader) -> WebConfig | None:
    entra_tenant_id = r.parse("VPN_ENTRA_TENANT_ID", "", guid_or_empty, "a tenant id (GUID)")
    entra_audience = r.text("VPN_ENTRA_API_AUDIENCE", "")
    entra_spa_client_id = r.parse("VPN_ENTRA_SPA_CLIENT_ID", "", guid_or_empty, "the SPA app registration's client id (GUID)")
    entra_authority = r.parse("VPN_ENTRA_AUTHORITY", "https://login.microsoftonline.com", public_url, "an https:// URL (http:// only for localhost)")
    local_secret = r.text("VPN_LOCAL_AUTH_SECRET", "")
    cors_origins = r.parse("VPN_CORS_ORIGINS", "", origin_list, "comma-separated origins like https://vpn.example.org (no paths, no '*')")
    trusted_proxies = r.parse(
        "VPN_TRUSTED_PROXIES", "", parse_trusted_proxies, "a hop count 0-20 (e.g. 1) or comma-separated CIDRs (e.g. 10.0.0.0/8, 192.168.1.5/32)"
    )
    if entra_tenant_id and not entra_audience:
        raise SettingsError("VPN_ENTRA_API_AUDIENCE is required with VPN_ENTRA_TENANT_ID: the API app registration's client id")
    if (entra_audience or entra_spa_client_id) and not entra_tenant_id:
        raise SettingsError("VPN_ENTRA_TENANT_ID is required with VPN_ENTRA_API_AUDIENCE/VPN_ENTRA_SPA_CLIENT_ID")
    if local_secret and len(local_secret) < 32:
        raise SettingsError("VPN_LOCAL_AUTH_SECRET must be at least 32 characters (e.g. `openssl rand -base64 32`)")
    if entra_tenant_id and not local_secret:
        raise SettingsError(
            "VPN_LOCAL_AUTH_SECRET is required with VPN_ENTRA_TENANT_ID: besides signing local-account tokens it seals "
            "configs waiting for download, so every replica can open them (local accounts exist only after `vpn-bot users add`)"
        )
    if not local_secret:
        return None
    return WebConfig(
        local_secret=local_secret,
        entra_tenant_id=entra_tenant_id,
        entra_audience=entra_audience,
        entra_spa_client_id=entra_spa_client_id,
        entra_authority=entra_authority,
        cors_origins=cors_origins,
        trusted_proxies=trusted_proxies,
    )
