"""Usage settings (issue 23): how long usage records are kept, and when an unused or heavy session ends.

VPN_USAGE_RETENTION_DAYS (400), VPN_IDLE_MINUTES (0 = off), VPN_MAX_MB (0 = off), VPN_TRAFFIC_SECONDS
(60: how often the sweeper reads the tunnels' traffic). docs/usage.md explains each.
"""
from __future__ import annotations

from bot.engine.usage import UsageConfig
from bot.settings.reader import Reader, SettingsError


def read(r: Reader, *, warn_minutes: int = 0) -> UsageConfig:
    config = UsageConfig(
        retention_days=r.integer("VPN_USAGE_RETENTION_DAYS", 400, 1, 36500),
        idle_minutes=r.integer("VPN_IDLE_MINUTES", 0, 0, 7 * 24 * 60),
        max_mb=r.integer("VPN_MAX_MB", 0, 0, 10**9),
        traffic_seconds=r.number("VPN_TRAFFIC_SECONDS", 60.0, 1.0, 3600.0),
    )
    if config.idle_minutes and warn_minutes and config.idle_minutes <= warn_minutes:
        raise SettingsError(
            f"VPN_IDLE_MINUTES ({config.idle_minutes}) must be longer than VPN_WARN_MINUTES ({warn_minutes}): "
            "the warning comes that long before an unused session ends"
        )
    return config
