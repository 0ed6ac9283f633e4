"""Peers on a WireGuard interface that already runs on this machine: instant and free.

The bot owns the addresses of `WG_POOL` on `WG_INTERFACE`: a peer whose allowed IPs lie in the pool
is taken to be the bot's, so reconciliation can remove one that outlived its session even if the
store was lost. Keep static peers outside the pool. Everything goes through `wg` (wireguard-tools)
and `ip` (iproute2) as subprocesses, never blocking the event loop.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import shlex
from datetime import datetime, timezone
from typing import Mapping, Sequence

from provisioner.base import ManagedResource, ProgressFn, ProvisionError, ServerInfo, ServerSpec, Traffic
from provisioner.wireguard import free_address

log = logging.getLogger(__name__)


class HostProvider:
    name = "host"
    polls_traffic = True

    def __init__(
        self,
        interface: str,
        endpoint: str,
        pool: ipaddress.IPv4Network | ipaddress.IPv6Network,
        *,
        wg_command: Sequence[str] = ("wg",),
        ip_command: Sequence[str] = ("ip",),
        hourly_cost: float = 0.0,
    ) -> None:
        self._interface = interface
        self._endpoint = endpoint
        self._pool = pool
        self._wg = tuple(wg_command)
        self._ip = tuple(ip_command)
        self._cost = hourly_cost
        self._lock = asyncio.Lock()  # allocation + add must not interleave

    @property
    def regions(self) -> Sequence[str]:
        return ("host",)

    def hourly_cost(self, region: str) -> float:
        return self._cost

    async def create(self, spec: ServerSpec, progress: ProgressFn) -> ServerInfo:
        await progress("reading the WireGuard interface")
        server_key = (await self._run(*self._wg, "show", self._interface, "public-key")).strip()
        if spec.client_public_key == server_key:
            raise ProvisionError(
                "that public key is the VPN server's own, not your device's; use the public key your WireGuard app shows for your tunnel",
                detail=f"session {spec.session_id}: the client key is {self._interface}'s own public key",
            )
        port = (await self._run(*self._wg, "show", self._interface, "listen-port")).strip()
        endpoint = self._endpoint if ":" in self._endpoint.rsplit("]", 1)[-1] else f"{self._endpoint}:{port}"
        await progress("adding your peer")
        async with self._lock:
            peers = await self._peers()
            existing = peers.get(spec.client_public_key)
            if existing:  # a retry: the peer is already there, unless its address is another live session's
                ip = existing[0]
                if spec.reserve_address is not None and not await spec.reserve_address(str(ip)):
                    raise ProvisionError(
                        "that public key is already in use by another VPN session; create a new tunnel in your WireGuard app and use its public key",
                        detail=f"session {spec.session_id}: the peer with that key holds {ip} for another live session",
                    )
            else:
                taken = [a for addrs in peers.values() for a in addrs] + await self._interface_addresses()
                ip = await self._reserve_free(spec, taken)
                args = [*self._wg, "set", self._interface, "peer", spec.client_public_key]
                psk = None
                if spec.preshared_key is not None:
                    args += ["preshared-key", "/dev/stdin"]
                    psk = spec.preshared_key.reveal().encode() + b"\n"
                args += ["allowed-ips", f"{ip}/{ip.max_prefixlen}"]
                await self._run(*args, stdin=psk)
        log.info("host peer added for session %s at %s", spec.session_id, ip)
        return ServerInfo(
            resource_id=spec.client_public_key,
            endpoint=endpoint,
            server_public_key=server_key,
            client_address=f"{ip}/{ip.max_prefixlen}",
            region="host",
            hourly_cost=self._cost,
        )

    async def _reserve_free(self, spec: ServerSpec, taken: list):
        """The first free pool address that is also ours in the shared reservation (other bot
        processes on this interface race for the same free addresses; the store decides)."""
        while True:
            ip = free_address(self._pool, taken)
            if ip is None:
                raise ProvisionError(
                    "every tunnel address is in use right now; try again later",
                    detail=f"pool {self._pool} on {self._interface} is full",
                )
            if spec.reserve_address is None or await spec.reserve_address(str(ip)):
                return ip
            taken.append(ip)

    async def wait_ready(self, spec: ServerSpec, progress: ProgressFn) -> None:
        return None  # create() returns a working server

    async def destroy(self, session_id: str, *, resource_id: str | None = None, peer_public_key: str | None = None) -> None:
        key = resource_id or peer_public_key  # the resource id is the peer's public key
        if not key:
            return
        async with self._lock:
            peers = await self._peers()
            if key in peers:
                await self._run(*self._wg, "set", self._interface, "peer", key, "remove")
                log.info("host peer removed for session %s", session_id or "(unknown)")

    async def list_managed(self) -> list[ManagedResource]:
        peers = await self._peers()
        return [
            ManagedResource(resource_id=pub, peer_public_key=pub, details={"addresses": [str(a) for a in addrs]})
            for pub, addrs in peers.items()
            if addrs and all(a in self._pool for a in addrs)
        ]

    def default_deployment_id(self) -> str:
        return ""  # nothing in a cloud to tell apart

    def bind_deployment(self, deployment_id: str, *, store_id: str = "") -> None:
        return None  # nothing in a cloud to tag

    async def traffic(self, peers: Mapping[str, str]) -> dict[str, Traffic]:
        """One `wg show <if> dump` for every peer. Its first line (the interface's private key) and each
        peer's preshared key are dropped as the lines are split, never kept or logged."""
        wanted = {key: sid for sid, key in peers.items() if key}
        if not wanted:
            return {}
        out = await self._run(*self._wg, "show", self._interface, "dump")
        found: dict[str, Traffic] = {}
        for line in out.splitlines()[1:]:
            parts = line.split("\t")
            if len(parts) < 8 or parts[0] not in wanted:
                continue
            try:
                handshake, rx, tx = int(parts[4]), int(parts[5]), int(parts[6])
            except ValueError:
                continue
            at = datetime.fromtimestamp(handshake, timezone.utc) if handshake > 0 else None
            found[wanted[parts[0]]] = Traffic(at, bytes_in=tx, bytes_out=rx)  # the server's transmit reaches the user
        return found

    async def close(self) -> None:
        return None

    async def _peers(self) -> dict[str, list]:
        """Peer public key -> its host addresses, from `wg show <if> allowed-ips` (no secrets in it)."""
        out = await self._run(*self._wg, "show", self._interface, "allowed-ips")
        peers: dict[str, list] = {}
        for line in out.splitlines():
            parts = line.split()
            if not parts:
                continue
            addrs = []
            for cidr in parts[1:]:
                try:
                    net = ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    continue
                addrs.append(net.network_address)
            peers[parts[0]] = addrs
        return peers

    async def _interface_addresses(self) -> list:
        out = await self._run(*self._ip, "-o", "addr", "show", "dev", self._interface)
        found = []
        for line in out.splitlines():
            parts = line.split()
            for i, word in enumerate(parts):
                if word in ("inet", "inet6") and i + 1 < len(parts):
                    found.append(ipaddress.ip_interface(parts[i + 1]).ip)
        return found

    async def _run(self, *argv: str, stdin: bytes | None = None) -> str:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError:
            raise ProvisionError(
                "the VPN host is not set up correctly; an admin has been told",
                detail=f"{argv[0]} not found: install wireguard-tools and iproute2",
            ) from None
        out, err = await proc.communicate(stdin)
        if proc.returncode != 0:
            # argv never holds a secret (the preshared key goes through stdin), so it is safe to log.
            raise ProvisionError(
                "the VPN host refused the change; an admin has been told",
                detail=f"{shlex.join(argv)} exited {proc.returncode}: {err.decode(errors='replace').strip()[:300]}",
            )
        return out.decode()
