"""The engine's limits and timings, and what every client config carries (WG_DNS, WG_ALLOWED_IPS, WG_KEEPALIVE)."""
from __future__ import annotations

from bot.engine.config import SessionPolicy
from bot.settings.reader import Reader, SettingsError, dns_list
from provisioner.wireguard import DEFAULT_ALLOWED_IPS, parse_allowed_ips


def read(r: Reader, *, public_url: str) -> SessionPolicy:
    policy = SessionPolicy(
        session_minutes=r.integer("VPN_SESSION_MINUTES", 30, 1, 24 * 60),
        max_session_minutes=r.integer("VPN_MAX_SESSION_MINUTES", 240, 1, 7 * 24 * 60),
        warn_minutes=r.integer("VPN_WARN_MINUTES", 5, 0, 24 * 60),
        max_sessions=r.integer("VPN_MAX_SESSIONS", 10, 1, 10_000),
        max_sessions_per_user=r.integer("VPN_MAX_SESSIONS_PER_USER", 1, 1, 100),
        provision_timeout=r.number("VPN_PROVISION_TIMEOUT_SECONDS", 600.0, 5.0, 86400.0),
        dns=r.parse("WG_DNS", "", dns_list, "comma-separated IP addresses, e.g. 1.1.1.1, 9.9.9.9"),
        allowed_ips=r.parse("WG_ALLOWED_IPS", ", ".join(DEFAULT_ALLOWED_IPS), parse_allowed_ips, "comma-separated CIDR networks"),
        keepalive=r.integer("WG_KEEPALIVE", 25, 0, 65535),
        sweep_seconds=r.number("VPN_SWEEP_SECONDS", 10.0, 0.2, 3600.0),
        reconcile_seconds=r.number("VPN_RECONCILE_SECONDS", 60.0, 1.0, 86400.0),
        lease_seconds=r.number("VPN_LEASE_SECONDS", 30.0, 3.0, 3600.0),
        public_url=public_url,
        audit_retention_days=r.integer("VPN_AUDIT_RETENTION_DAYS", 400, 1, 36500),
    )
    if policy.max_session_minutes < policy.session_minutes:
        raise SettingsError(
            f"VPN_MAX_SESSION_MINUTES ({policy.max_session_minutes}) must be at least VPN_SESSION_MINUTES ({policy.session_minutes})"
        )
    return policy
