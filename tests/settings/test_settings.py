"""Settings in sections (issue 17 item 4): each section's defaults, each one-line error, the cross-section
checks, the unknown-name warnings (issue 21 item 10), and that reading settings loads no SDK."""
from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from bot.channels.groupme.config import GroupMeConfig
from bot.channels.teams.config import TeamsConfig
from bot.channels.web.config import WebConfig
from bot.engine.config import SessionPolicy
from bot.messages import Identity, UserKey
from bot.settings import Settings, SettingsError
from bot.settings.ops import OpsSettings
from bot.settings.providers import DryRunSettings, ProviderSettings, WireGuardSettings
from bot.settings.reader import READ_ELSEWHERE, read_env_file
from bot.settings.store import StoreSettings
from provisioner.aws_config import AwsConfig
from provisioner.azure_config import AzureConfig

ROOT = Path(__file__).resolve().parents[2]
GUID = "11111111-2222-3333-4444-555555555555"
SECRET = "s" * 32
AZURE = {"VPN_PROVIDER": "azure", "AZURE_SUBSCRIPTION_ID": "sub", "AZURE_RESOURCE_GROUP": "rg"}
AWS = {"VPN_PROVIDER": "aws"}
GROUPME = {"GROUPME_BOT_ID": "bot-1", "GROUPME_GROUP_ID": "4242", "GROUPME_CALLBACK_SECRET": "c" * 20}


# ----- defaults: every section, off and on ------------------------------------------------------------

@pytest.mark.parametrize("env, section, expected", [
    ({}, "ops", OpsSettings()),
    ({}, "sessions", SessionPolicy()),
    ({}, "store", StoreSettings(path=Path("data/vpn-bot.sqlite3"))),
    ({}, "provider", ProviderSettings()),
    ({}, "azure", None),
    ({}, "aws", None),
    ({}, "teams", None),
    ({}, "groupme", None),
    ({}, "web", None),
    ({"VPN_DATA_DIR": "/srv/vpn"}, "store", StoreSettings(path=Path("/srv/vpn/vpn-bot.sqlite3"))),
    ({"VPN_PUBLIC_URL": "https://vpn.example.org/"}, "sessions", SessionPolicy(public_url="https://vpn.example.org")),
    ({"WG_DNS": "1.1.1.1", "WG_ALLOWED_IPS": "10.0.0.0/8", "VPN_LEASE_SECONDS": "9"}, "sessions",
     SessionPolicy(dns=("1.1.1.1",), allowed_ips=("10.0.0.0/8",), lease_seconds=9.0)),
    ({"VPN_STORE": "azure-tables", "AZURE_TABLES_ENDPOINT": "https://acct.table.core.windows.net"}, "store",
     StoreSettings(kind="azure-tables", path=Path("data/vpn-bot.sqlite3"), endpoint="https://acct.table.core.windows.net")),
    ({"VPN_PROVIDER": "host", "WG_ENDPOINT": "vpn.example.org:51820", "WG_POOL": "10.9.0.0/24", "VPN_HOURLY_COST": "0.5"}, "provider",
     ProviderSettings(kind="host", hourly_cost=0.5,
                      wireguard=WireGuardSettings(endpoint="vpn.example.org:51820", pool=ipaddress.ip_network("10.9.0.0/24")))),
    ({"VPN_DRYRUN_REGIONS": "Here, there", "VPN_DRYRUN_STEP_SECONDS": "0"}, "provider",
     ProviderSettings(dryrun=DryRunSettings(step_seconds=0.0, regions=("here", "there")))),
    ({"VPN_DEV_MODE": "1"}, "teams", TeamsConfig(dev_mode=True)),
    ({"MicrosoftAppId": "app", "MicrosoftAppPassword": "pw", "MicrosoftAppTenantId": GUID}, "teams",
     TeamsConfig(app_id="app", app_password="pw", tenant_id=GUID)),
    ({**AZURE, "VPN_INSTANCE_NAME": "vpn-x", "WG_DNS": "9.9.9.9"}, "azure",
     AzureConfig("sub", "rg", "eastus", instance_name="vpn-x", dns=("9.9.9.9",), full_tunnel=True)),
    ({**AZURE, "WG_ALLOWED_IPS": "10.0.0.0/8", "WG_POOL": "10.5.0.0/24"}, "azure",
     AzureConfig("sub", "rg", "eastus", tunnel_network="10.5.0.0/24", full_tunnel=False)),
    (AWS, "aws", AwsConfig()),
    ({**AWS, "AWS_REGION": "EU-West-1", "AWS_ALLOWED_REGIONS": "us-east-1, AP-Southeast-2", "AWS_INSTANCE_TYPE": "T3.nano", "AWS_SPOT": "1",
      "AWS_AMI_ID": "ami-0123456789abcdef0", "AWS_SUBNET_ID": "subnet-0123456789abcdef0", "AWS_SECURITY_GROUP_ID": "sg-0123abcd",
      "AWS_ENDPOINT_URL": "http://127.0.0.1:4566/", "AWS_BOOT_TIMEOUT_SECONDS": "60", "AWS_POLL_SECONDS": "0.1",
      "VPN_INSTANCE_NAME": "vpn-x", "VPN_DEPLOYMENT_ID": "d-x", "WG_POOL": "10.5.0.0/24", "WG_DNS": "9.9.9.9", "WG_ALLOWED_IPS": "10.0.0.0/8"}, "aws",
     AwsConfig(region="eu-west-1", allowed_regions=("us-east-1", "ap-southeast-2"), instance_type="t3.nano", spot=True, ami_id="ami-0123456789abcdef0",
               subnet_id="subnet-0123456789abcdef0", security_group_id="sg-0123abcd", endpoint_url="http://127.0.0.1:4566",
               boot_timeout=60.0, poll_interval=0.1, instance_name="vpn-x", deployment_id="d-x", tunnel_network="10.5.0.0/24",
               dns=("9.9.9.9",), full_tunnel=False)),
    (GROUPME, "groupme", GroupMeConfig(bot_id="bot-1", group_ids=("4242",), callback_secret="c" * 20)),
    ({"VPN_LOCAL_AUTH_SECRET": SECRET}, "web", WebConfig(local_secret=SECRET)),
])
def test_each_section_reads_its_defaults_and_values(env, section, expected):
    assert getattr(Settings.from_env(env), section) == expected


def test_the_allowlist_section_is_the_access_policy():
    access = Settings.from_env({"VPN_USERS": "teams:abc, email:kim@example.org", "VPN_ADMINS": "console:root"}).access
    assert access.role_of(Identity(UserKey.parse("teams:ABC"))) is not None
    assert access.role_of(Identity(UserKey.parse("console:root"))).value == "admin"
    assert access.role_of(Identity(UserKey.parse("groupme:1"))) is None
    assert Settings.from_env({}).access.role_of(Identity(UserKey.parse("console:root"))) is None


# ----- every error is one line that names the variable ----------------------------------------------------

@pytest.mark.parametrize("env, message", [
    # the reader
    ({"PORT": "abc"}, "PORT='abc' is not a whole number"),
    ({"PORT": "0"}, "PORT=0 is out of range: expected 1 to 65535"),
    ({"VPN_SWEEP_SECONDS": "soon"}, "VPN_SWEEP_SECONDS='soon' is not a number"),
    ({"VPN_PROVIDER": "gcp"}, "VPN_PROVIDER='gcp' is not one of: dryrun, host, azure, aws"),
    ({"VPN_LOG_LEVEL": "loud"}, "VPN_LOG_LEVEL='loud' is not one of: DEBUG, INFO, WARNING, ERROR"),
    ({"VPN_DEV_MODE": "yes"}, "VPN_DEV_MODE='yes' is not one of: 0, 1"),
    ({"WG_POOL": "10.0.0.0/31"}, "WG_POOL='10.0.0.0/31' is not valid: expected a CIDR network with at least two host addresses, e.g. 10.77.0.0/24"),
    ({"VPN_PUBLIC_URL": "http://vpn.example.org"}, "VPN_PUBLIC_URL='http://vpn.example.org' is not valid: expected an https:// URL (http:// only for localhost)"),
    # access
    ({"VPN_USERS": "bogus"}, "VPN_USERS: 'bogus' is not kind:value (teams:…, groupme:…, console:…, email:…, domain:…, group:…)"),
    ({"VPN_ADMINS": "email:nobody"}, "VPN_ADMINS: 'email:nobody' is not an email address"),
    # ops
    ({"PORT": "8080", "VPN_METRICS_PORT": "8080"}, "VPN_METRICS_PORT=8080 is the bot's PORT: metrics are never served on the public port (0 turns them off)"),
    # sessions
    ({"VPN_SESSION_MINUTES": "60", "VPN_MAX_SESSION_MINUTES": "30"}, "VPN_MAX_SESSION_MINUTES (30) must be at least VPN_SESSION_MINUTES (60)"),
    # store
    ({"VPN_STORE": "azure-tables"}, "VPN_STORE=azure-tables needs AZURE_STORAGE_CONNECTION_STRING (account keys or Azurite) or "
                                    "AZURE_TABLES_ENDPOINT (https://<account>.table.core.windows.net, with a managed identity)"),
    ({"VPN_TABLE_PREFIX": "1vpn"}, "VPN_TABLE_PREFIX='1vpn' is not valid: expected 1-30 letters or digits, starting with a letter"),
    # providers
    ({"VPN_PROVIDER": "host"}, "WG_ENDPOINT is required with VPN_PROVIDER=host: the address clients dial, e.g. vpn.example.org:51820"),
    # azure
    ({"VPN_PROVIDER": "azure"}, "AZURE_SUBSCRIPTION_ID is required with VPN_PROVIDER=azure"),
    ({"VPN_PROVIDER": "azure", "AZURE_SUBSCRIPTION_ID": "s"}, "AZURE_RESOURCE_GROUP is required with VPN_PROVIDER=azure"),
    ({**AZURE, "AZURE_SSH_PUBLIC_KEY": "k"}, "AZURE_SSH_PUBLIC_KEY and AZURE_SSH_SOURCE go together: SSH is opened only to that source"),
    ({"AZURE_ARM_ENDPOINT": "http://arm.example.org"}, "AZURE_ARM_ENDPOINT='http://arm.example.org' is not valid: expected an https:// URL"),
    # aws
    ({"AWS_REGION": "mars"}, "AWS_REGION='mars' is not valid: expected an AWS region name such as eu-west-1"),
    ({"AWS_ALLOWED_REGIONS": "eu-west-1,westeurope"},
     "AWS_ALLOWED_REGIONS='eu-west-1,westeurope' is not valid: expected comma-separated AWS region names such as eu-west-1, us-east-1"),
    ({"AWS_INSTANCE_TYPE": "tiny"}, "AWS_INSTANCE_TYPE='tiny' is not valid: expected an EC2 instance type such as t4g.nano or t3.nano"),
    ({"AWS_AMI_ID": "ubuntu"}, "AWS_AMI_ID='ubuntu' is not valid: expected an image id such as ami-0123456789abcdef0 (in AWS_REGION)"),
    ({"AWS_SUBNET_ID": "sg-0123abcd"}, "AWS_SUBNET_ID='sg-0123abcd' is not valid: expected a subnet id such as subnet-0123456789abcdef0 (in AWS_REGION)"),
    ({"AWS_SPOT": "yes"}, "AWS_SPOT='yes' is not one of: 0, 1"),
    ({"AWS_ENDPOINT_URL": "http://10.0.0.5:4566"}, "AWS_ENDPOINT_URL='http://10.0.0.5:4566' is not valid: expected an https:// URL (http:// only for localhost)"),
    ({"AWS_POLL_SECONDS": "61"}, "AWS_POLL_SECONDS=61.0 is out of range: expected 0.0 to 60.0"),
    ({**AWS, "AWS_SECURITY_GROUP_ID": "sg-0123456789abcdef0"},
     "AWS_SECURITY_GROUP_ID needs AWS_SUBNET_ID: a security group belongs to one VPC, so name a subnet in it too"),
    # teams
    ({"MicrosoftAppPassword": "pw"}, "MicrosoftAppId is missing while other MicrosoftApp* variables are set: refusing to start with "
                                     "Teams authentication off (for local tries without credentials set VPN_DEV_MODE=1)"),
    ({"MicrosoftAppId": "app", "MicrosoftAppPassword": "pw"}, "MicrosoftAppTenantId is required with MicrosoftAppType=SingleTenant"),
    ({"MicrosoftAppId": "app", "MicrosoftAppTenantId": GUID}, "MicrosoftAppPassword is required with MicrosoftAppType=SingleTenant"),
    ({"TEAMS_ALLOWED_TENANTS": "contoso"}, "TEAMS_ALLOWED_TENANTS='contoso' is not valid: expected comma-separated tenant ids (GUIDs)"),
    # groupme
    ({"GROUPME_BOT_ID": "a,b"}, "GROUPME_BOT_ID is not valid: expected a bot id, or comma-separated <group id>:<bot id> pairs "
                                "(at most one plain bot id among them, one bot per group)"),
    ({**GROUPME, "GROUPME_CALLBACK_SECRET": "short"}, "GROUPME_CALLBACK_SECRET must be at least 16 URL-safe characters (letters, digits, '-', '_'): "
                                                     "it is the only thing keeping forged callbacks out"),
    ({**GROUPME, "GROUPME_GROUP_ID": ""}, "GROUPME_GROUP_ID is required with GROUPME_BOT_ID: the group(s) the bot answers"),
    ({**GROUPME, "GROUPME_BOT_ID": "4242:abc", "GROUPME_GROUP_ID": "7"}, "GROUPME_GROUP_ID lists group 7 but GROUPME_BOT_ID names no bot for it: "
                                                                         "add a pair <group>:<bot> or one plain bot id"),
    # web
    ({"VPN_ENTRA_TENANT_ID": GUID}, "VPN_ENTRA_API_AUDIENCE is required with VPN_ENTRA_TENANT_ID: the API app registration's client id"),
    ({"VPN_ENTRA_API_AUDIENCE": "api"}, "VPN_ENTRA_TENANT_ID is required with VPN_ENTRA_API_AUDIENCE/VPN_ENTRA_SPA_CLIENT_ID"),
    ({"VPN_LOCAL_AUTH_SECRET": "short"}, "VPN_LOCAL_AUTH_SECRET must be at least 32 characters (e.g. `openssl rand -base64 32`)"),
    ({"VPN_ENTRA_TENANT_ID": GUID, "VPN_ENTRA_API_AUDIENCE": "api"},
     "VPN_LOCAL_AUTH_SECRET is required with VPN_ENTRA_TENANT_ID: besides signing local-account tokens it seals configs waiting for "
     "download, so every replica can open them (local accounts exist only after `vpn-bot users add`)"),
    ({"VPN_CORS_ORIGINS": "*"}, "VPN_CORS_ORIGINS='*' is not valid: expected comma-separated origins like https://vpn.example.org (no paths, no '*')"),
    # across sections (Settings.check)
    ({**AZURE, "WG_POOL": "fd00:77::/64"}, "WG_POOL=fd00:77::/64 is IPv6: Azure VMs forward and masquerade IPv4 only, so an IPv6 tunnel "
                                           "would carry nothing. Use an IPv4 pool such as 10.77.0.0/24 with VPN_PROVIDER=azure"),
    ({**AWS, "WG_POOL": "fd00:77::/64"}, "WG_POOL=fd00:77::/64 is IPv6: EC2 servers forward and masquerade IPv4 only, so an IPv6 tunnel "
                                         "would carry nothing. Use an IPv4 pool such as 10.77.0.0/24 with VPN_PROVIDER=aws"),
    ({**GROUPME, "GROUPME_ACCESS_TOKEN": "t"}, "VPN_PUBLIC_URL is required with GROUPME_ACCESS_TOKEN: claim links point there"),
])
def test_each_error_is_one_line_naming_the_variable(env, message):
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    assert str(err.value) == message and "\n" not in message


def test_a_section_that_is_off_still_checks_its_values():
    """A typo in an unused section is reported now, not the day it is switched on."""
    with pytest.raises(SettingsError, match="AZURE_LOCATION"):
        Settings.from_env({"AZURE_LOCATION": "west europe!"})
    with pytest.raises(SettingsError, match="TEAMS_UPLOAD_HOSTS"):
        Settings.from_env({"TEAMS_UPLOAD_HOSTS": "http://x"})
    with pytest.raises(SettingsError, match="AWS_INSTANCE_TYPE"):
        Settings.from_env({"AWS_INSTANCE_TYPE": "tiny"})


def test_env_file_errors_are_one_line(tmp_path):
    (tmp_path / ".env").write_text("VPN_USERS=console:kim\nnot a line\n")
    with pytest.raises(SettingsError, match=r"\.env line 2: expected NAME=value$"):
        read_env_file(tmp_path / ".env")


def test_no_secret_reaches_a_repr():
    env = {
        "MicrosoftAppId": "app", "MicrosoftAppPassword": "teams-password-value", "MicrosoftAppTenantId": GUID,
        **GROUPME, "GROUPME_CALLBACK_SECRET": "groupme-callback-secret", "GROUPME_ACCESS_TOKEN": "groupme-access-token",
        "VPN_PUBLIC_URL": "https://vpn.example.org", "VPN_LOCAL_AUTH_SECRET": "local-auth-secret-" + "x" * 20,
        "VPN_STORE": "azure-tables", "AZURE_STORAGE_CONNECTION_STRING": "AccountKey=storage-account-key",
    }
    text = repr(Settings.from_env(env))
    for secret in ("teams-password-value", "groupme-callback-secret", "groupme-access-token", "local-auth-secret", "storage-account-key"):
        assert secret not in text


# ----- unknown names (issue 21 item 10) -----------------------------------------------------------------------

@pytest.mark.parametrize("env, warnings", [
    ({"VPN_SESION_MINUTES": "7"}, ["VPN_SESION_MINUTES is not a setting this version reads (did you mean VPN_SESSION_MINUTES?); it is ignored"]),
    ({"GROUPME_BOTID": "x"}, ["GROUPME_BOTID is not a setting this version reads (did you mean GROUPME_BOT_ID?); it is ignored"]),
    ({"TEAMS_TENANTS": "x", "AZURE_VMSIZE": "B1s"}, [
        "AZURE_VMSIZE is not a setting this version reads (did you mean AZURE_VM_SIZE?); it is ignored",
        "TEAMS_TENANTS is not a setting this version reads; it is ignored",
    ]),
    # read by the Azure SDK itself, by the Azure CLI, or not in our prefixes: no warning
    ({"AZURE_CLIENT_ID": "x", "AZURE_TENANT_ID": "x", "AZURE_CLIENT_SECRET": "x", "AZURE_AUTHORITY_HOST": "x",
      "AZURE_FEDERATED_TOKEN_FILE": "x", "AZURE_CORE_OUTPUT": "json", "AZURE_DEFAULTS_GROUP": "g"}, []),
    ({"AWS_REGION": "eu-west-1", "AWS_PROFILE": "p", "WG_QUICK_USERSPACE_IMPLEMENTATION": "x", "HOME": "/root", "VPN_ENV_FILE": ".env"}, []),
    ({"VPN_SESSION_MINUTES": "7", "MicrosoftAppType": "SingleTenant"}, []),
])
def test_unknown_names_in_our_prefixes_are_one_line_warnings(env, warnings):
    assert list(Settings.from_env(env).unknown) == warnings


def test_every_name_the_azure_sdks_read_is_known():
    """AZURE_* names azure-identity and azure-core read themselves must not be reported as typos."""
    import re as regex

    import azure.core
    import azure.identity

    names = set()
    for package in (azure.identity, azure.core):
        for path in Path(package.__file__).parent.rglob("*.py"):
            names |= set(regex.findall(r'"(AZURE_[A-Z_]+)"', path.read_text(errors="replace")))
    clouds = {"AZURE_PUBLIC_CLOUD", "AZURE_CHINA_CLOUD", "AZURE_US_GOVERNMENT", "AZURE_GERMANY"}  # enum values, not variables
    assert names - clouds <= READ_ELSEWHERE, sorted(names - clouds - READ_ELSEWHERE)


# ----- no SDK behind the settings ---------------------------------------------------------------------------

@pytest.mark.parametrize("env", [
    "{'VPN_PROVIDER': 'azure', 'AZURE_SUBSCRIPTION_ID': 's', 'AZURE_RESOURCE_GROUP': 'g', 'VPN_DEV_MODE': '1', 'VPN_LOCAL_AUTH_SECRET': 'x' * 32}",
    "{'VPN_PROVIDER': 'aws', 'AWS_REGION': 'eu-west-1', 'AWS_ENDPOINT_URL': 'http://localhost:4566'}",
])
def test_reading_settings_loads_no_sdk(env):
    """Config modules import no SDK: Teams, Azure, AWS and the web server load only when chosen."""
    code = (
        f"import sys; from bot.settings import Settings; Settings.from_env({env}); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'azure', 'botbuilder', 'aiohttp', 'msal', 'jwt', 'boto3', 'botocore', 'aiobotocore'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
