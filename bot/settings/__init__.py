"""Typed settings from the environment (12-factor), validated once at start-up, in sections.

Each section is owned by the component that uses it and returns the config that component already
takes (`SessionPolicy`, `TeamsConfig`, `AzureConfig`, …), so nothing is copied field by field; a
channel or provider that is off is None. The checks that span two sections live here, in one place.
A bad value stops the process with one line that names the variable and says what it expects.
Every variable is listed in README.md and .env.example.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bot.access import AccessPolicy
from bot.channels.groupme.config import GroupMeConfig
from bot.channels.teams.config import TeamsConfig
from bot.channels.web.config import WebConfig
from bot.engine.config import SessionPolicy
from bot.engine.notify import NotifyConfig
from bot.engine.usage import UsageConfig
from bot.settings import access, aws, azure, governance, groupme, notify, ops, providers, sessions, store, teams, usage, web
from bot.settings.governance import GovernanceSettings
from bot.settings.ops import OpsSettings
from bot.settings.providers import ProviderSettings
from bot.settings.reader import Reader, SettingsError, environment, read_env_file
from bot.settings.store import StoreSettings
from provisioner.aws_config import AwsConfig
from provisioner.azure_config import AzureConfig

__all__ = ["Settings", "SettingsError", "environment", "read_env_file"]


@dataclass(frozen=True)
class Settings:
    ops: OpsSettings
    access: AccessPolicy
    sessions: SessionPolicy
    store: StoreSettings
    provider: ProviderSettings
    azure: AzureConfig | None  # VPN_PROVIDER=azure
    aws: AwsConfig | None  # VPN_PROVIDER=aws
    teams: TeamsConfig | None  # MicrosoftAppId, or VPN_DEV_MODE=1
    groupme: GroupMeConfig | None  # GROUPME_BOT_ID
    web: WebConfig | None  # VPN_LOCAL_AUTH_SECRET
    governance: GovernanceSettings = GovernanceSettings()  # approvals, Entra groups, the policy file
    usage: UsageConfig = UsageConfig()  # usage records, idle and traffic limits (issue 23)
    notify: NotifyConfig = NotifyConfig()  # VPN_NOTIFY targets and the webhook secret (issue 23)
    unknown: tuple[str, ...] = ()  # one warning line per VPN_/AZURE_/TEAMS_/GROUPME_ name nothing reads

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """`env`, or the process environment over the `.env` file (`VPN_ENV_FILE`): the real environment wins."""
        r = Reader(environment() if env is None else env)
        o = ops.read(r)
        policy = sessions.read(r, public_url=o.public_url)
        provider = providers.read(r)
        s = cls(
            ops=o,
            access=access.read(r),
            sessions=policy,
            store=store.read(r, data_dir=o.data_dir),
            provider=provider,
            azure=azure.read(r, provider=provider, ops=o, sessions=policy),
            aws=aws.read(r, provider=provider, ops=o, sessions=policy),
            teams=teams.read(r, dev_mode=o.dev_mode),
            groupme=groupme.read(r, public_url=o.public_url),
            web=web.read(r),
            governance=governance.read(r),
            usage=usage.read(r, warn_minutes=policy.warn_minutes),
            notify=notify.read(r),
            unknown=r.unread(),
        )
        s.check()
        return s

    def check(self) -> None:
        """What no single section can judge alone."""
        if self.azure is not None and self.provider.wireguard.pool.version != 4:
            raise SettingsError(
                f"WG_POOL={self.provider.wireguard.pool} is IPv6: Azure VMs forward and masquerade IPv4 only, so an IPv6 tunnel "
                "would carry nothing. Use an IPv4 pool such as 10.77.0.0/24 with VPN_PROVIDER=azure"
            )
        if self.aws is not None and self.provider.wireguard.pool.version != 4:
            raise SettingsError(
                f"WG_POOL={self.provider.wireguard.pool} is IPv6: EC2 servers forward and masquerade IPv4 only, so an IPv6 tunnel "
                "would carry nothing. Use an IPv4 pool such as 10.77.0.0/24 with VPN_PROVIDER=aws"
            )
        if self.groupme is not None and self.groupme.access_token and not self.ops.public_url:
            raise SettingsError("VPN_PUBLIC_URL is required with GROUPME_ACCESS_TOKEN: claim links point there")
        for target in self.notify.targets:  # a chat target goes through its channel: one that is off would never deliver
            channel, _, ident = target.partition(":")
            if channel == "teams" and self.teams is None:
                raise SettingsError(f"VPN_NOTIFY names {target} but Teams is off: set MicrosoftAppId (and add the bot to that conversation)")
            if channel == "groupme" and (self.groupme is None or ident not in self.groupme.group_ids):
                # A GroupMe bot posts only to its own group: any other group's notices would land in the wrong group.
                raise SettingsError(f"VPN_NOTIFY names {target} but GroupMe does not serve group {ident}: add it to GROUPME_GROUP_ID "
                                    "with its own bot in GROUPME_BOT_ID (<group id>:<bot id>)")
