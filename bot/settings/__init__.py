"""Typed settings from the environment (12-factor), validated once at start-up.

A bad value stops the process with one line that names the variable and says what it expects.
Every variable is listed in README.md and .env.example.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, TypeVar
from urllib.parse import urlsplit

from provisioner.wireguard import DEFAULT_ALLOWED_IPS, parse_allowed_ips

if TYPE_CHECKING:
    from bot.settings.governance import GovernanceSettings

T = TypeVar("T")
PROVIDERS = ("dryrun", "host", "azure")
STORES = ("sqlite", "azure-tables")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class SettingsError(ValueError):
    """One bad variable, with a message fit to print to an operator."""


@dataclass(frozen=True)
class Settings:
    provider: str = "dryrun"
    users: str = ""
    admins: str = ""
    session_minutes: int = 30
    max_session_minutes: int = 240
    warn_minutes: int = 5
    max_sessions: int = 10
    max_sessions_per_user: int = 1
    data_dir: Path = Path("./data")
    host: str = "127.0.0.1"
    port: int = 3978
    wg_interface: str = "wg0"
    wg_endpoint: str = ""
    wg_pool: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.ip_network("10.77.0.0/24")
    wg_dns: tuple[str, ...] = ()
    wg_allowed_ips: tuple[str, ...] = DEFAULT_ALLOWED_IPS
    wg_keepalive: int = 25
    wg_command: str = "wg"
    dryrun_step_seconds: float = 0.3
    dryrun_regions: tuple[str, ...] = ("local",)
    dryrun_fail_step: str = ""
    hourly_cost: float = 0.0
    sweep_seconds: float = 10.0
    reconcile_seconds: float = 60.0
    provision_timeout_seconds: float = 600.0
    store: str = "sqlite"
    azure_storage_connection_string: str = field(default="", repr=False)  # a secret (account key): never logged
    azure_tables_endpoint: str = ""
    table_prefix: str = "vpn"
    lease_seconds: float = 30.0
    log_level: str = "INFO"
    log_format: str = "text"
    metrics_port: int = 9464
    instance_name: str = "vpn-bot"
    deployment_id: str = ""  # empty: a random id the store keeps (see Runtime)
    public_url: str = ""
    teams_app_id: str = ""
    teams_app_password: str = ""
    teams_app_type: str = "SingleTenant"
    teams_tenant_id: str = ""
    teams_allowed_tenants: tuple[str, ...] = ()
    teams_upload_hosts: tuple[str, ...] = ("*.sharepoint.com",)
    dev_mode: bool = False
    groupme_bot_id: str = ""  # the bot for groups without a `group:bot` pair of their own
    groupme_bots: tuple[tuple[str, str], ...] = ()  # (group id, bot id) pairs
    groupme_group_ids: tuple[str, ...] = ()
    groupme_callback_secret: str = ""
    groupme_access_token: str = ""
    groupme_oauth_client_id: str = ""
    groupme_api_url: str = "https://api.groupme.com/v3"
    groupme_oauth_url: str = "https://oauth.groupme.com/oauth/authorize"
    groupme_claim_minutes: int = 10
    groupme_user_per_minute: int = 6
    groupme_group_per_minute: int = 60
    azure_subscription_id: str = ""
    azure_resource_group: str = ""
    azure_location: str = "eastus"
    azure_allowed_locations: tuple[str, ...] = ()
    azure_vm_size: str = "Standard_B1ls"
    azure_image: str = "ubuntu"
    azure_arm_endpoint: str = "https://management.azure.com"
    azure_ssh_public_key: str = ""
    azure_ssh_source: str = ""
    azure_boot_timeout_seconds: float = 300.0
    azure_poll_seconds: float = 0.5
    azure_hourly_cost: float = 0.0
    entra_tenant_id: str = ""
    entra_api_audience: str = ""
    entra_spa_client_id: str = ""
    entra_authority: str = "https://login.microsoftonline.com"
    local_auth_secret: str = ""
    cors_origins: tuple[str, ...] = ()
    governance: GovernanceSettings | None = None  # approvals, groups, the policy file: bot/settings/governance.py (None: all off)

    @property
    def web_enabled(self) -> bool:
        """The web page and HTTP API run when some way to sign in is configured."""
        return bool(self.entra_tenant_id or self.local_auth_secret)

    @property
    def store_path(self) -> Path:
        return self.data_dir / "vpn-bot.sqlite3"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """`env`, or the process environment over the `.env` file (`VPN_ENV_FILE`): the real environment wins."""
        env = environment() if env is None else env
        r = _Reader(env)
        try:  # not r.parse: its message would repeat the value, and bot ids are credentials
            bots = _groupme_bots(r.text("GROUPME_BOT_ID", ""))
        except ValueError:
            raise SettingsError(
                "GROUPME_BOT_ID is not valid: expected a bot id, or comma-separated <group id>:<bot id> pairs "
                "(at most one plain bot id among them, one bot per group)"
            ) from None
        s = cls(
            provider=r.choice("VPN_PROVIDER", "dryrun", PROVIDERS),
            users=r.text("VPN_USERS", ""),
            admins=r.text("VPN_ADMINS", ""),
            session_minutes=r.integer("VPN_SESSION_MINUTES", 30, 1, 24 * 60),
            max_session_minutes=r.integer("VPN_MAX_SESSION_MINUTES", 240, 1, 7 * 24 * 60),
            warn_minutes=r.integer("VPN_WARN_MINUTES", 5, 0, 24 * 60),
            max_sessions=r.integer("VPN_MAX_SESSIONS", 10, 1, 10_000),
            max_sessions_per_user=r.integer("VPN_MAX_SESSIONS_PER_USER", 1, 1, 100),
            data_dir=Path(r.text("VPN_DATA_DIR", "./data") or "./data"),
            host=r.text("HOST", "127.0.0.1") or "127.0.0.1",
            port=r.integer("PORT", 3978, 1, 65535),
            wg_interface=r.parse("WG_INTERFACE", "wg0", _interface_name, "an interface name of 1-15 letters, digits, '_', '-' or '.'"),
            wg_endpoint=r.text("WG_ENDPOINT", ""),
            wg_pool=r.parse("WG_POOL", "10.77.0.0/24", _pool, "a CIDR network with at least two host addresses, e.g. 10.77.0.0/24"),
            wg_dns=r.parse("WG_DNS", "", _dns_list, "comma-separated IP addresses, e.g. 1.1.1.1, 9.9.9.9"),
            wg_allowed_ips=r.parse("WG_ALLOWED_IPS", ", ".join(DEFAULT_ALLOWED_IPS), parse_allowed_ips, "comma-separated CIDR networks"),
            wg_keepalive=r.integer("WG_KEEPALIVE", 25, 0, 65535),
            wg_command=r.text("WG_COMMAND", "wg") or "wg",
            dryrun_step_seconds=r.number("VPN_DRYRUN_STEP_SECONDS", 0.3, 0.0, 600.0),
            dryrun_regions=r.parse("VPN_DRYRUN_REGIONS", "local", _name_list, "comma-separated region names"),
            dryrun_fail_step=r.text("VPN_DRYRUN_FAIL_STEP", ""),
            hourly_cost=r.number("VPN_HOURLY_COST", 0.0, 0.0, 1000.0),
            sweep_seconds=r.number("VPN_SWEEP_SECONDS", 10.0, 0.2, 3600.0),
            reconcile_seconds=r.number("VPN_RECONCILE_SECONDS", 60.0, 1.0, 86400.0),
            provision_timeout_seconds=r.number("VPN_PROVISION_TIMEOUT_SECONDS", 600.0, 5.0, 86400.0),
            store=r.choice("VPN_STORE", "sqlite", STORES),
            azure_storage_connection_string=r.text("AZURE_STORAGE_CONNECTION_STRING", ""),
            azure_tables_endpoint=r.parse("AZURE_TABLES_ENDPOINT", "", _public_url, "an https:// URL such as https://<account>.table.core.windows.net"),
            table_prefix=r.parse("VPN_TABLE_PREFIX", "vpn", _table_prefix, "1-30 letters or digits, starting with a letter"),
            lease_seconds=r.number("VPN_LEASE_SECONDS", 30.0, 3.0, 3600.0),
            log_level=r.choice("VPN_LOG_LEVEL", "INFO", LOG_LEVELS, upper=True),
            log_format=r.choice("VPN_LOG_FORMAT", "text", ("text", "json")),
            metrics_port=r.integer("VPN_METRICS_PORT", 9464, 0, 65535),
            instance_name=r.parse("VPN_INSTANCE_NAME", "vpn-bot", _resource_name, "1-40 lowercase letters, digits or '-'"),
            deployment_id=r.parse("VPN_DEPLOYMENT_ID", "", _deployment_id, "1-64 lowercase letters, digits or '-'"),
            public_url=r.parse("VPN_PUBLIC_URL", "", _public_url, "an https:// URL (http:// only for localhost)"),
            teams_app_id=r.text("MicrosoftAppId", ""),
            teams_app_password=r.text("MicrosoftAppPassword", ""),
            teams_app_type=r.parse("MicrosoftAppType", "SingleTenant", _app_type, "SingleTenant, UserAssignedMSI or (existing registrations only) MultiTenant"),
            teams_tenant_id=r.text("MicrosoftAppTenantId", ""),
            teams_allowed_tenants=r.parse("TEAMS_ALLOWED_TENANTS", "", _guid_list, "comma-separated tenant ids (GUIDs)"),
            teams_upload_hosts=r.parse("TEAMS_UPLOAD_HOSTS", "*.sharepoint.com", _host_patterns, "comma-separated host names, '*.' for subdomains (e.g. *.sharepoint.com, *.sharepoint.us)"),
            dev_mode=r.choice("VPN_DEV_MODE", "0", ("0", "1")) == "1",
            groupme_bot_id=bots[0],
            groupme_bots=bots[1],
            groupme_group_ids=_union(r.parse("GROUPME_GROUP_ID", "", _digit_list, "comma-separated numeric GroupMe group ids"), bots[1]),
            groupme_callback_secret=r.text("GROUPME_CALLBACK_SECRET", ""),
            groupme_access_token=r.text("GROUPME_ACCESS_TOKEN", ""),
            groupme_oauth_client_id=r.text("GROUPME_OAUTH_CLIENT_ID", ""),
            groupme_api_url=r.parse("GROUPME_API_URL", "https://api.groupme.com/v3", _public_url, "an https:// URL"),
            groupme_oauth_url=r.parse("GROUPME_OAUTH_URL", "https://oauth.groupme.com/oauth/authorize", _public_url, "an https:// URL"),
            groupme_claim_minutes=r.integer("GROUPME_CLAIM_MINUTES", 10, 1, 60),
            groupme_user_per_minute=r.integer("GROUPME_USER_PER_MINUTE", 6, 1, 1000),
            groupme_group_per_minute=r.integer("GROUPME_GROUP_PER_MINUTE", 60, 1, 10_000),
            azure_subscription_id=r.text("AZURE_SUBSCRIPTION_ID", ""),
            azure_resource_group=r.text("AZURE_RESOURCE_GROUP", ""),
            azure_location=r.parse("AZURE_LOCATION", "eastus", _region, "an Azure region name such as westeurope"),
            azure_allowed_locations=r.parse("AZURE_ALLOWED_LOCATIONS", "", _region_list, "comma-separated Azure region names"),
            azure_vm_size=r.text("AZURE_VM_SIZE", "Standard_B1ls") or "Standard_B1ls",
            azure_image=r.choice("AZURE_IMAGE", "ubuntu", ("ubuntu", "flatcar")),
            azure_arm_endpoint=r.parse("AZURE_ARM_ENDPOINT", "https://management.azure.com", _public_url, "an https:// URL"),
            azure_ssh_public_key=r.text("AZURE_SSH_PUBLIC_KEY", ""),
            azure_ssh_source=r.text("AZURE_SSH_SOURCE", ""),
            azure_boot_timeout_seconds=r.number("AZURE_BOOT_TIMEOUT_SECONDS", 300.0, 10.0, 3600.0),
            azure_poll_seconds=r.number("AZURE_POLL_SECONDS", 0.5, 0.0, 60.0),
            azure_hourly_cost=r.number("AZURE_HOURLY_COST", 0.0, 0.0, 1000.0),
            entra_tenant_id=r.parse("VPN_ENTRA_TENANT_ID", "", _guid_or_empty, "a tenant id (GUID)"),
            entra_api_audience=r.text("VPN_ENTRA_API_AUDIENCE", ""),
            entra_spa_client_id=r.parse("VPN_ENTRA_SPA_CLIENT_ID", "", _guid_or_empty, "the SPA app registration's client id (GUID)"),
            entra_authority=r.parse("VPN_ENTRA_AUTHORITY", "https://login.microsoftonline.com", _public_url, "an https:// URL (http:// only for localhost)"),
            local_auth_secret=r.text("VPN_LOCAL_AUTH_SECRET", ""),
            cors_origins=r.parse("VPN_CORS_ORIGINS", "", _origin_list, "comma-separated origins like https://vpn.example.org (no paths, no '*')"),
            governance=_governance(env),
        )
        if s.max_session_minutes < s.session_minutes:
            raise SettingsError(
                f"VPN_MAX_SESSION_MINUTES ({s.max_session_minutes}) must be at least VPN_SESSION_MINUTES ({s.session_minutes})"
            )
        if s.store == "azure-tables" and not (s.azure_storage_connection_string or s.azure_tables_endpoint):
            raise SettingsError(
                "VPN_STORE=azure-tables needs AZURE_STORAGE_CONNECTION_STRING (account keys or Azurite) or "
                "AZURE_TABLES_ENDPOINT (https://<account>.table.core.windows.net, with a managed identity)"
            )
        if s.metrics_port and s.metrics_port == s.port:
            raise SettingsError(f"VPN_METRICS_PORT={s.metrics_port} is the bot's PORT: metrics are never served on the public port (0 turns them off)")
        if s.provider == "host" and not s.wg_endpoint:
            raise SettingsError("WG_ENDPOINT is required with VPN_PROVIDER=host: the address clients dial, e.g. vpn.example.org:51820")
        if not s.teams_app_id and (s.teams_app_password or s.teams_tenant_id):
            raise SettingsError(
                "MicrosoftAppId is missing while other MicrosoftApp* variables are set: refusing to start with "
                "Teams authentication off (for local tries without credentials set VPN_DEV_MODE=1)"
            )
        if s.teams_app_id:
            if not s.teams_tenant_id and s.teams_app_type != "MultiTenant":
                raise SettingsError(f"MicrosoftAppTenantId is required with MicrosoftAppType={s.teams_app_type}")
            if s.teams_app_type in ("SingleTenant", "MultiTenant") and not s.teams_app_password:
                raise SettingsError(f"MicrosoftAppPassword is required with MicrosoftAppType={s.teams_app_type}")
        if s.groupme_bot_id or s.groupme_bots:
            if len(s.groupme_callback_secret) < 16 or not re.fullmatch(r"[A-Za-z0-9_-]+", s.groupme_callback_secret):
                raise SettingsError(
                    "GROUPME_CALLBACK_SECRET must be at least 16 URL-safe characters (letters, digits, '-', '_'): "
                    "it is the only thing keeping forged callbacks out"
                )
            if not s.groupme_group_ids:
                raise SettingsError("GROUPME_GROUP_ID is required with GROUPME_BOT_ID: the group(s) the bot answers")
            paired = {g for g, _ in s.groupme_bots}
            orphans = [g for g in s.groupme_group_ids if g not in paired]
            if orphans and not s.groupme_bot_id:
                raise SettingsError(
                    f"GROUPME_GROUP_ID lists group {orphans[0]} but GROUPME_BOT_ID names no bot for it: "
                    "add a pair <group>:<bot> or one plain bot id"
                )
            if s.groupme_access_token and not s.public_url:
                raise SettingsError("VPN_PUBLIC_URL is required with GROUPME_ACCESS_TOKEN: claim links point there")
        if s.provider == "azure":
            for name, value in (("AZURE_SUBSCRIPTION_ID", s.azure_subscription_id), ("AZURE_RESOURCE_GROUP", s.azure_resource_group)):
                if not value:
                    raise SettingsError(f"{name} is required with VPN_PROVIDER=azure")
            if s.wg_pool.version != 4:
                raise SettingsError(
                    f"WG_POOL={s.wg_pool} is IPv6: Azure VMs forward and masquerade IPv4 only, so an IPv6 tunnel "
                    "would carry nothing. Use an IPv4 pool such as 10.77.0.0/24 with VPN_PROVIDER=azure"
                )
            if bool(s.azure_ssh_public_key) != bool(s.azure_ssh_source):
                raise SettingsError("AZURE_SSH_PUBLIC_KEY and AZURE_SSH_SOURCE go together: SSH is opened only to that source")
        if s.entra_tenant_id and not s.entra_api_audience:
            raise SettingsError("VPN_ENTRA_API_AUDIENCE is required with VPN_ENTRA_TENANT_ID: the API app registration's client id")
        if (s.entra_api_audience or s.entra_spa_client_id) and not s.entra_tenant_id:
            raise SettingsError("VPN_ENTRA_TENANT_ID is required with VPN_ENTRA_API_AUDIENCE/VPN_ENTRA_SPA_CLIENT_ID")
        if s.local_auth_secret and len(s.local_auth_secret) < 32:
            raise SettingsError("VPN_LOCAL_AUTH_SECRET must be at least 32 characters (e.g. `openssl rand -base64 32`)")
        if s.entra_tenant_id and not s.local_auth_secret:
            raise SettingsError(
                "VPN_LOCAL_AUTH_SECRET is required with VPN_ENTRA_TENANT_ID: besides signing local-account tokens it seals "
                "configs waiting for download, so every replica can open them (local accounts exist only after `app.py users add`)"
            )
        return s


def _governance(env: Mapping[str, str]) -> GovernanceSettings:
    from bot.settings import governance  # its own section (approvals, groups, the policy file)

    try:
        return governance.read(env)
    except governance.Invalid as exc:
        raise SettingsError(str(exc)) from None


def _table_prefix(text: str) -> str:
    # Table names are 3-63 letters or digits starting with a letter; the longest suffix is 10 characters.
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{0,29}", text):
        raise ValueError(text)
    return text
def environment() -> dict[str, str]:
    """The process environment over the `.env` file (`VPN_ENV_FILE`): the real environment wins."""
    return {**read_env_file(Path(os.environ.get("VPN_ENV_FILE", ".env"))), **os.environ}


def read_env_file(path: Path) -> dict[str, str]:
    """`NAME=value` lines as docker's --env-file reads them (plus `export ` and quotes); missing file: {}."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError):
        return {}
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror}") from None
    values = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise SettingsError(f"{path} line {number}: expected NAME=value")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    return values


def _guid_or_empty(text: str) -> str:
    return _guid_list(text)[0] if text else ""


def _origin_list(text: str) -> tuple[str, ...]:
    origins = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        parts = urlsplit(item)
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.path not in ("", "/") or parts.query or "*" in item:
            raise ValueError(text)
        origins.append(f"{parts.scheme}://{parts.netloc}".lower())
    return tuple(origins)


def _app_type(text: str) -> str:
    # MultiTenant: existing registrations still work (the channel warns); new ones cannot be made.
    for name in ("SingleTenant", "UserAssignedMSI", "MultiTenant"):
        if text.lower() == name.lower():
            return name
    raise ValueError(text)


def _host_patterns(text: str) -> tuple[str, ...]:
    hosts = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    if not hosts or not all(re.fullmatch(r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", h) for h in hosts):
        raise ValueError(text)
    return hosts


def _guid_list(text: str) -> tuple[str, ...]:
    ids = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    if not all(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", i) for i in ids):
        raise ValueError(text)
    return ids


def _groupme_bots(text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """`GROUPME_BOT_ID`: a plain bot id, and/or `group:bot` pairs so each group replies via its own bot."""
    plain: list[str] = []
    pairs: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        group, sep, bot = part.rpartition(":")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", bot) or (sep and not (group.isascii() and group.isdigit())):
            raise ValueError(text)
        if not sep:
            plain.append(bot)
        elif pairs.setdefault(group, bot) != bot:
            raise ValueError(text)
    if len(plain) > 1:
        raise ValueError(text)
    return (plain[0] if plain else ""), tuple(pairs.items())


def _union(ids: tuple[str, ...], pairs: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*ids, *(g for g, _ in pairs))))


def _digit_list(text: str) -> tuple[str, ...]:
    ids = tuple(p.strip() for p in text.split(",") if p.strip())
    if not all(i.isdigit() and i.isascii() for i in ids):
        raise ValueError(text)
    return ids


def _resource_name(text: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,39}", text):
        raise ValueError(text)
    return text


def _deployment_id(text: str) -> str:
    if text and not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,63}", text):
        raise ValueError(text)
    return text


def _region(text: str) -> str:
    if not re.fullmatch(r"[a-z0-9]{2,40}", text.lower()):
        raise ValueError(text)
    return text.lower()


def _region_list(text: str) -> tuple[str, ...]:
    return tuple(_region(p.strip()) for p in text.split(",") if p.strip())


def _public_url(text: str) -> str:
    if not text:
        return ""
    parts = urlsplit(text)
    local = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme not in ("https", "http") or not parts.hostname or (parts.scheme == "http" and not local):
        raise ValueError(text)
    return text.rstrip("/")


def _interface_name(text: str) -> str:
    from provisioner.wireguard import is_valid_tunnel_name

    if not is_valid_tunnel_name(text):
        raise ValueError(text)
    return text


def _pool(text: str):
    net = ipaddress.ip_network(text, strict=False)
    if net.num_addresses < 4:
        raise ValueError(text)
    return net


def _dns_list(text: str) -> tuple[str, ...]:
    return tuple(str(ipaddress.ip_address(p.strip())) for p in text.split(",") if p.strip())


def _name_list(text: str) -> tuple[str, ...]:
    names = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    if not names or not all(n.replace("-", "").isalnum() and n.isascii() for n in names):
        raise ValueError(text)
    return names


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str, default: str) -> str:
        return self.env.get(name, default).strip()

    def parse(self, name: str, default: str, fn: Callable[[str], T], expects: str) -> T:
        raw = self.text(name, default)
        try:
            return fn(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not valid: expected {expects}") from None

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        return self._bounded(name, default, lo, hi, int, "a whole number")

    def number(self, name: str, default: float, lo: float, hi: float) -> float:
        return self._bounded(name, default, lo, hi, float, "a number")

    def _bounded(self, name: str, default, lo, hi, cast, kind: str):
        raw = self.text(name, str(default)) or str(default)
        try:
            value = cast(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not {kind}") from None
        if not lo <= value <= hi:
            raise SettingsError(f"{name}={value} is out of range: expected {lo} to {hi}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...], upper: bool = False) -> str:
        raw = self.text(name, default) or default
        value = raw.upper() if upper else raw.lower()
        if value not in choices:
            raise SettingsError(f"{name}={raw!r} is not one of: {', '.join(choices)}")
        return value
