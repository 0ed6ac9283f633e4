"""The engine's limits and timings (read by bot/settings/): session lengths and caps, leases, sweeps."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bot.engine.policy_file import NEVER, Approval, PolicyEntry
from provisioner.wireguard import DEFAULT_ALLOWED_IPS


@dataclass(frozen=True)
class SessionPolicy:
    session_minutes: int = 30
    max_session_minutes: int = 240
    warn_minutes: int = 5
    max_sessions: int = 10
    max_sessions_per_user: int = 1
    provision_timeout: float = 600.0
    max_attempts: int = 2  # a crash mid-provisioning is retried once, then the session fails cleanly
    dns: Sequence[str] = ()
    allowed_ips: Sequence[str] = DEFAULT_ALLOWED_IPS
    keepalive: int = 25
    sweep_seconds: float = 10.0
    reconcile_seconds: float = 60.0
    # Whoever works on a session holds a lease this long and renews it every third of it; another
    # worker takes the work over only once the lease has expired (docs/decisions.md, "Leases").
    lease_seconds: float = 30.0
    public_url: str = ""  # where servers that boot by themselves call back "tunnel up"
    audit_retention_days: int = 400  # audit rows (and sign-in records) older than this are purged by the sweeper

    @property
    def renew_seconds(self) -> float:
        return self.lease_seconds / 3


@dataclass(frozen=True)
class GovernanceConfig:
    """Approvals and the per-group policy (read by bot/settings/governance.py; docs/governance.md)."""

    approvers: str = ""  # VPN_APPROVERS, VPN_USERS syntax
    approval: Approval = NEVER  # VPN_APPROVAL
    approval_timeout_minutes: int = 60
    policy_file: Path | None = None  # re-read when it changes (a bad edit keeps the policy in force)
    policy: tuple[PolicyEntry, ...] = ()
    policy_stamp: tuple[float, int] | None = None  # the file's mtime and size when `policy` was read
