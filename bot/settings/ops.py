"""How the process runs: where it listens, where it keeps files, how it logs and exposes metrics, who it is."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bot.settings.reader import Reader, SettingsError, deployment_id, public_url, resource_name

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class OpsSettings:
    host: str = "127.0.0.1"
    port: int = 3978
    data_dir: Path = Path("./data")
    dev_mode: bool = False  # Teams unauthenticated, everything bound to 127.0.0.1
    public_url: str = ""  # where people and servers reach this service (claim links, VM callbacks)
    log_level: str = "INFO"
    log_format: str = "text"
    metrics_port: int = 9464  # 0: off
    metrics_host: str = "127.0.0.1"  # not HOST: /metrics is unauthenticated (Container Apps' internal port: 0.0.0.0)
    instance_name: str = "vpn-bot"
    deployment_id: str = ""  # empty: the provider's own default (derived from its configuration), else the store's

    @property
    def listen_host(self) -> str:
        """HOST, except in dev mode: unauthenticated Teams is never reachable from another machine."""
        return "127.0.0.1" if self.dev_mode else self.host

    @property
    def metrics_listen_host(self) -> str:
        return "127.0.0.1" if self.dev_mode else self.metrics_host


def read(r: Reader) -> OpsSettings:
    ops = OpsSettings(
        host=r.text("HOST", "127.0.0.1") or "127.0.0.1",
        port=r.integer("PORT", 3978, 1, 65535),
        data_dir=Path(r.text("VPN_DATA_DIR", "./data") or "./data"),
        dev_mode=r.flag("VPN_DEV_MODE"),
        public_url=r.parse("VPN_PUBLIC_URL", "", public_url, "an https:// URL (http:// only for localhost)"),
        log_level=r.choice("VPN_LOG_LEVEL", "INFO", LOG_LEVELS, upper=True),
        log_format=r.choice("VPN_LOG_FORMAT", "text", ("text", "json")),
        metrics_port=r.integer("VPN_METRICS_PORT", 9464, 0, 65535),
        metrics_host=r.text("VPN_METRICS_HOST", "127.0.0.1") or "127.0.0.1",
        instance_name=r.parse("VPN_INSTANCE_NAME", "vpn-bot", resource_name, "1-40 lowercase letters, digits or '-'"),
        deployment_id=r.parse("VPN_DEPLOYMENT_ID", "", deployment_id, "1-64 lowercase letters, digits or '-'"),
    )
    if ops.metrics_port and ops.metrics_port == ops.port:
        raise SettingsError(f"VPN_METRICS_PORT={ops.metrics_port} is the bot's PORT: metrics are never served on the public port (0 turns them off)")
    return ops
