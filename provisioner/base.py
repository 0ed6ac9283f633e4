"""The one small protocol every back end implements, and the values that cross it.

A provider creates a WireGuard server (or a peer on one) for a session, destroys it, and lists what
it manages so the reconcile pass can delete anything that outlived its session. Every call is
idempotent by session id: a retry or a resume after a crash never creates a second resource.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Awaitable, Callable, Mapping, Protocol, Sequence

from provisioner.wireguard import Secret

ProgressFn = Callable[[str], Awaitable[None]]
# Asks whoever keeps the sessions to reserve a tunnel address for this session; False when another
# live session holds it. Atomic across every process sharing the store, unlike anything a provider
# can see locally (two processes reading the same free address from `wg show` both take it).
ReserveAddressFn = Callable[[str], Awaitable[bool]]


@dataclass(frozen=True)
class ServerSpec:
    """What the service asks for. The preshared key is secret and lives only in memory."""

    session_id: str
    owner: str
    region: str
    expires_at: datetime
    client_public_key: str
    preshared_key: Secret | None
    # Providers that hand out addresses from a pool call this for each candidate before using it;
    # None (a single process, or a test) means the provider's own view is all there is.
    reserve_address: ReserveAddressFn | None = field(default=None, repr=False, compare=False)
    # Where the server POSTs "my tunnel is up" (the URL carries a one-time token: secret), and how
    # the waiting side learns that it did, from whichever replica received it (None: no callback).
    callback_url: Secret | None = None
    server_up: Callable[[], Awaitable[bool]] | None = None


@dataclass(frozen=True)
class ServerInfo:
    """What the client needs to reach the new server, plus what the store keeps to clean it up."""

    resource_id: str
    endpoint: str  # host:port
    server_public_key: str
    client_address: str  # e.g. "10.77.0.2/32"
    region: str
    hourly_cost: float = 0.0
    size: str = ""  # e.g. the VM size, for admins and cost estimates
    dns: Sequence[str] = ()
    # False when the config can be delivered before the server finished booting (cloud VMs).
    ready: bool = True


@dataclass(frozen=True)
class ManagedResource:
    """Something a provider created; `session_id` or `peer_public_key` ties it to a session."""

    resource_id: str
    session_id: str | None = None
    peer_public_key: str | None = None
    expires_at: datetime | None = None
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Traffic:
    """A tunnel's use as its server sees it (issue 23). From the user's side: `bytes_in` reached the
    user (↓, the server's transmit), `bytes_out` came from them (↑, the server's receive)."""

    handshake_at: datetime | None  # the latest handshake; None: never
    bytes_in: int
    bytes_out: int


class ProvisionError(Exception):
    """A failure the user should hear about in plain words (`user_message`); the log gets the rest."""

    def __init__(self, user_message: str, *, detail: str = "") -> None:
        super().__init__(detail or user_message)
        self.user_message = user_message


class CleanupIncomplete(Exception):
    """`destroy` tried everything, but some resources could not be deleted yet (Azure holds a NIC for
    minutes after a failed VM create, an operation is still running): call `destroy` again after
    `retry_after` seconds. `remaining` names what is left, for the log and an honest user message."""

    def __init__(self, remaining: Sequence[str], *, retry_after: float, detail: str = "") -> None:
        super().__init__(detail or f"not deleted yet: {', '.join(remaining)}")
        self.remaining = tuple(remaining)
        self.retry_after = retry_after


class Provider(Protocol):
    name: str
    # Whether `traffic` reads the tunnels from here (host, dryrun): the sweeper's traffic turn lists the
    # ready sessions only for such a provider; Azure's and AWS's servers report their own figures.
    polls_traffic: bool

    @property
    def regions(self) -> Sequence[str]:
        """Regions a user may ask for; the first is the default."""

    async def create(self, spec: ServerSpec, progress: ProgressFn) -> ServerInfo:
        """Create (or find, if it already exists) the server for `spec.session_id`."""

    async def wait_ready(self, spec: ServerSpec, progress: ProgressFn) -> None:
        """Finish what `create` left (a returned `ready=False`) until the server is up; a no-op otherwise."""

    async def destroy(self, session_id: str, *, resource_id: str | None, peer_public_key: str | None) -> None:
        """Remove everything of that session; a no-op when nothing is left. Either id may be unknown
        (a crash before `create` returned leaves only the session id and the client's public key).
        Tries every resource even when one refuses; raises `CleanupIncomplete` if some remain."""

    async def list_managed(self) -> list[ManagedResource]:
        """Everything this provider manages, for reconciliation against the store."""

    def hourly_cost(self, region: str) -> float:
        """Estimated cost of one session per hour, in US dollars."""

    def default_deployment_id(self) -> str:
        """The deployment id derived from what this provider is configured with (Azure: subscription,
        resource group and instance name), so that it survives losing the store; "" for providers
        that keep no cloud resources."""

    def bind_deployment(self, deployment_id: str, *, store_id: str = "") -> None:
        """Which deployment this process serves: cloud providers tag what they create with it and
        reconcile only their own; providers that keep no cloud resources ignore it. `store_id` is
        the store's own random id (the deployment id before issue 18): what carries it as its
        deployment id is still this deployment's, and resources made with another store are left
        alone until they expire (a lost store, or a deployment with the same configuration)."""

    async def traffic(self, peers: Mapping[str, str]) -> dict[str, Traffic]:
        """Each tunnel's latest handshake and bytes, read once for all: `peers` maps a session id to its
        client's public key; the answer is keyed by session id and leaves out what it cannot see. {} for
        a provider that cannot see its tunnels from here (an Azure VM reports its own figures over its
        authenticated callback instead: bot/http/ready_callback.py)."""
        return {}

    async def close(self) -> None:
        """Release clients and connections."""


class LeftAloneReport:
    """What reconcile leaves alone (another deployment's resources; ours made with another store, kept
    until they expire), logged as one warning per kind and repeated only when it changes: a cloud
    provider's reconcile runs every minute on every replica."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._last = ""

    def emit(self, others: list[str], held: dict[str, tuple[datetime, list[str]]], clash: str) -> None:
        """`others`: one line per other deployment; `held`: session -> (expiry, resource names);
        `clash`: what else shares this deployment id, in the provider's own terms."""
        lines = list(others)
        if held:
            names = sorted(n for _, ns in held.values() for n in ns)
            latest = max(e for e, _ in held.values())
            lines.append(
                f"reconcile: {len(names)} resource(s) of {len(held)} session(s) carry this deployment's id but were made with another store"
                f" (a lost store, or {clash}: give each its own VPN_DEPLOYMENT_ID); they are removed once they expire"
                f" (the last at {latest.isoformat(timespec='seconds')}): {', '.join(names[:10])}"
            )
        report = "\n".join(lines)
        if report != self._last:
            for line in lines:
                self._log.warning("%s", line)
            self._last = report

