"""The embedded default: simulates a server with no cloud, so the bot can be tried anywhere.

It walks through the same steps a cloud provider reports, returns an endpoint in the documentation
range (192.0.2.0/24, which routes nowhere), and keeps its "resources" in a small JSON file so that
restarts, `reap` and reconciliation behave as they would against a real back end.
"""
from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Sequence

from provisioner.base import ManagedResource, ProgressFn, ProvisionError, ServerInfo, ServerSpec
from provisioner.wireguard import DEFAULT_PORT, free_address, generate_keypair

STEPS = ("reserving address", "creating server", "starting WireGuard")


class DryRunProvider:
    name = "dryrun"

    def __init__(
        self,
        state_file: Path,
        *,
        pool: ipaddress.IPv4Network,
        regions: Sequence[str] = ("local",),
        step_seconds: float = 0.3,
        fail_step: str | None = None,
        hourly_cost: float = 0.0,
    ) -> None:
        self._state_file = state_file
        self._pool = pool
        self._regions = tuple(regions)
        self._step_seconds = step_seconds
        self._fail_step = fail_step
        self._cost = hourly_cost
        self._lock = asyncio.Lock()

    @property
    def regions(self) -> Sequence[str]:
        return self._regions

    def hourly_cost(self, region: str) -> float:
        return self._cost

    async def create(self, spec: ServerSpec, progress: ProgressFn) -> ServerInfo:
        for step in STEPS:
            await progress(step)
            if step == self._fail_step:
                raise ProvisionError(f"the simulated provider failed while {step}", detail=f"dryrun fail_step={step}")
            if step == "creating server":
                info = await self._record(spec)
            await asyncio.sleep(self._step_seconds)
        return info

    async def _record(self, spec: ServerSpec) -> ServerInfo:
        async with self._lock:
            state = await asyncio.to_thread(self._load)
            entry = state.get(spec.session_id)
            if entry is None:
                taken = [ipaddress.ip_address(e["client_ip"]) for e in state.values()]
                taken.append(next(self._pool.hosts()))  # the simulated server's own address
                while True:
                    ip = free_address(self._pool, taken)
                    if ip is None:
                        raise ProvisionError("no tunnel address is free; try again later", detail=f"pool {self._pool} full")
                    if spec.reserve_address is None or await spec.reserve_address(str(ip)):
                        break
                    taken.append(ip)  # another process holds it
                host_octet = 10 + len(state) % 240
                new = {
                    "session_id": spec.session_id,
                    "owner": spec.owner,
                    "region": spec.region,
                    "client_ip": str(ip),
                    "client_public_key": spec.client_public_key,
                    "server_public_key": (await asyncio.to_thread(generate_keypair)).public,
                    "endpoint": f"192.0.2.{host_octet}:{DEFAULT_PORT}",
                    "expires_at": spec.expires_at.isoformat(),
                }
                entry = await asyncio.to_thread(self._mutate, lambda st: st.setdefault(spec.session_id, new))
        return ServerInfo(
            resource_id=f"dryrun-{spec.session_id}",
            endpoint=entry["endpoint"],
            server_public_key=entry["server_public_key"],
            client_address=f"{entry['client_ip']}/{self._pool.max_prefixlen}",
            region=entry["region"],
            hourly_cost=self._cost,
        )

    async def wait_ready(self, spec: ServerSpec, progress: ProgressFn) -> None:
        return None  # create() returns a working server

    async def destroy(self, session_id: str, *, resource_id: str | None = None, peer_public_key: str | None = None) -> None:
        async with self._lock:
            await asyncio.to_thread(self._mutate, lambda st: st.pop(session_id, None))

    async def list_managed(self) -> list[ManagedResource]:
        state = await asyncio.to_thread(self._load)
        return [
            ManagedResource(
                resource_id=f"dryrun-{sid}",
                session_id=sid,
                peer_public_key=e.get("client_public_key"),
                expires_at=datetime.fromisoformat(e["expires_at"]) if e.get("expires_at") else None,
            )
            for sid, e in state.items()
        ]

    async def close(self) -> None:
        return None

    def _load(self) -> dict:
        try:
            return json.loads(self._state_file.read_text())
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError:
            return {}

    def _mutate(self, change):
        """Load, change, save under an exclusive file lock: several bot processes may share the file."""
        with open(self._state_file.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self._load()
                result = change(state)
                self._save(state)
                return result
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _save(self, state: dict) -> None:
        tmp = self._state_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, sort_keys=True))  # no indent: the C encoder, ~10x faster at 1,000 entries
        os.replace(tmp, self._state_file)
