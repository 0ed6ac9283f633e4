"""The embedded default: simulates a server with no cloud, so the bot can be tried anywhere.

It walks through the same steps a cloud provider reports, returns an endpoint in the documentation
range (192.0.2.0/24, which routes nowhere), and keeps its "resources" in a small JSON file so that
restarts, `reap` and reconciliation behave as they would against a real back end.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import os
from concurrent.futures import ThreadPoolExecutor
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
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dryrun")

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
        server_key = (await asyncio.to_thread(generate_keypair)).public  # CPU work outside the file's turn
        entry = await self._in_turn(self._record_sync, spec, server_key)
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
        await self._in_turn(self._destroy_sync, session_id)

    async def _in_turn(self, fn, *args):
        """File work runs on the provider's own thread, one read-modify-write at a time: one hop per
        call, never queued behind other work (QR codes, keys) in the shared thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    def _record_sync(self, spec: ServerSpec, server_key: str) -> dict:
        state = self._load()
        entry = state.get(spec.session_id)
        if entry is None:
            taken = [ipaddress.ip_address(e["client_ip"]) for e in state.values()]
            taken.append(next(self._pool.hosts()))  # the simulated server's own address
            ip = free_address(self._pool, taken)
            if ip is None:
                raise ProvisionError("no tunnel address is free; try again later", detail=f"pool {self._pool} full")
            entry = {
                "session_id": spec.session_id,
                "owner": spec.owner,
                "region": spec.region,
                "client_ip": str(ip),
                "client_public_key": spec.client_public_key,
                "server_public_key": server_key,
                "endpoint": f"192.0.2.{10 + len(state) % 240}:{DEFAULT_PORT}",
                "expires_at": spec.expires_at.isoformat(),
            }
            state[spec.session_id] = entry
            self._save(state)
        return entry

    def _destroy_sync(self, session_id: str) -> None:
        state = self._load()
        if state.pop(session_id, None) is not None:
            self._save(state)

    async def list_managed(self) -> list[ManagedResource]:
        state = await self._in_turn(self._load)  # ordered after every create/destroy already asked for
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
        return None  # the file thread is idle between calls; a provider may outlive one runtime

    def _load(self) -> dict:
        try:
            return json.loads(self._state_file.read_text())
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError:
            return {}

    def _save(self, state: dict) -> None:
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, sort_keys=True))  # no indent: the C encoder, ~10x faster at 1,000 entries
        os.replace(tmp, self._state_file)
