"""The web channel's settings (read by bot/settings/)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bot.channels.web.client_address import TrustedProxies

STATIC_DIR = Path(__file__).resolve().parents[3] / "web"


@dataclass(frozen=True)
class WebConfig:
    local_secret: str
    entra_tenant_id: str = ""
    entra_audience: str = ""
    entra_spa_client_id: str = ""
    entra_authority: str = "https://login.microsoftonline.com"
    cors_origins: tuple[str, ...] = ()
    trusted_proxies: TrustedProxies = TrustedProxies()  # whose X-Forwarded-For names the client (client_address.py)
    static_dir: Path = STATIC_DIR

    def __repr__(self) -> str:
        return f"WebConfig(entra={'on' if self.entra_tenant_id else 'off'}, cors={self.cors_origins})"

    @property
    def api_scope(self) -> str:
        """The delegated scope the page asks for: `<App ID URI>/access_as_user`."""
        aud = self.entra_audience
        base = aud if "://" in aud else f"api://{aud}"
        return f"{base.rstrip('/')}/access_as_user"
