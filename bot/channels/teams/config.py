"""The Teams channel's settings (read by bot/settings/): no SDK import, so choosing Teams off costs nothing."""
from __future__ import annotations

from dataclasses import dataclass

DEFAULT_UPLOAD_HOSTS = ("*.sharepoint.com",)
# botbuilder's AuthenticationConstants.TO_CHANNEL_FROM_BOT_LOGIN_URL_PREFIX (the public cloud), + tenant = the MSAL authority.
PUBLIC_CLOUD_LOGIN = "https://login.microsoftonline.com/"


@dataclass(frozen=True)
class TeamsConfig:
    app_id: str = ""
    app_password: str = ""
    app_type: str = "SingleTenant"
    tenant_id: str = ""
    dev_mode: bool = False
    allowed_tenants: tuple[str, ...] = ()
    upload_hosts: tuple[str, ...] = DEFAULT_UPLOAD_HOSTS
    member_cache_seconds: float = 600.0
    send_attempts: int = 5
    backoff: float = 0.5
    call_timeout: float = 20.0
    max_concurrent_calls: int = 64
    consent_minutes: int = 60
    max_retry_wait: float = 30.0  # a Retry-After longer than this fails the call (the user is told) instead of waiting
    remembered: int = 10_000  # conversations and people each per-process cache keeps (least recently used go first)
    # Where the Bot Framework's signing keys and the bot's own token come from. The defaults are
    # the public cloud's; tests point them at fakes on 127.0.0.1 ("" = the SDK's own URL).
    channel_keys_url: str = ""  # OpenID metadata for tokens the channel sends (login.botframework.com)
    emulator_keys_url: str = ""  # ... for tokens with Entra issuers (the SDK's emulator/skill path)
    login_url: str = PUBLIC_CLOUD_LOGIN  # + tenant = the MSAL authority
    validate_authority: bool = True  # MSAL authority validation and instance discovery (off only for a fake)
    auth_timeout: float = 10.0  # the whole key download (metadata + JWKS); each token HTTP call

    @property
    def tenants(self) -> tuple[str, ...]:
        """The tenants served: TEAMS_ALLOWED_TENANTS, else the bot's own tenant for a SingleTenant or
        UserAssignedMSI registration; () = any (a MultiTenant registration, or dev mode without a tenant)."""
        if self.allowed_tenants:
            return self.allowed_tenants
        if self.tenant_id and self.app_type.lower() in ("singletenant", "userassignedmsi"):
            return (self.tenant_id,)
        return ()

    def __repr__(self) -> str:
        return f"TeamsConfig(app_id={self.app_id!r}, type={self.app_type}, dev_mode={self.dev_mode})"
