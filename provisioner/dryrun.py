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
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from provisioner.base import ManagedResource, ProgressFn, ProvisionError, ServerInfo, ServerSpec, Traffic
from provisioner.wireguard import DEFAULT_PORT, generate_keypair

STEPS = ("reserving address", "creating server", "starting WireGuard")
REKEY_SECONDS = 120  # WireGuard hands shake again every two minutes while a tunnel carries traffic
SIMULATED_RATE = (20_000, 5_000)  # bytes a second to and from a simulated client


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class DryRunProvider:
    name = "dryrun"
    polls_traffic = True

    def __init__(
        self,
        state_file: Path,
        *,
        pool: ipaddress.IPv4Network | ipaddress.IPv6Network,
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
        self._pending: list[tuple[Callable[[dict], Any], asyncio.Future]] = []
        self._writer: asyncio.Task | None = None
        self._taken: tuple[dict | None, set[int]] = (None, set())  # (state of the running batch, its addresses)
        # Traffic (issue 23): a simulated client connects at once and stays busy; tests turn it off
        # (an unused session) and hand in their clock.
        self.simulate_clients = True
        self.clock: Callable[[], datetime] = _utcnow

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
        # The address is picked under the file lock (unique among every process's entries); the
        # store's reservation, when there is one, is the last word (the file may have been edited).
        refused: set[str] = set()
        while True:
            entry, fresh = await self._apply(lambda state: self._claim(state, spec, refused))
            if not fresh or spec.reserve_address is None or await spec.reserve_address(entry["client_ip"]):
                break
            refused.add(entry["client_ip"])  # another process holds it: pick again
        return ServerInfo(
            resource_id=f"dryrun-{spec.session_id}",
            endpoint=entry["endpoint"],
            server_public_key=entry["server_public_key"],
            client_address=f"{entry['client_ip']}/{self._pool.max_prefixlen}",
            region=entry["region"],
            hourly_cost=self._cost,
        )

    def _claim(self, state: dict, spec: ServerSpec, refused: set[str]) -> tuple[dict, bool]:
        """In the locked read-modify-write: this session's entry, made (or re-addressed) if needed."""
        entry = state.get(spec.session_id)
        if entry is not None and entry["client_ip"] not in refused:
            return entry, False
        ip = self._free_ip(state, refused)
        self._taken[1].add(int(ip))
        if entry is not None:
            entry["client_ip"] = str(ip)
            return entry, True
        entry = state[spec.session_id] = {
            "session_id": spec.session_id,
            "owner": spec.owner,
            "region": spec.region,
            "client_ip": str(ip),
            "client_public_key": spec.client_public_key,
            "server_public_key": generate_keypair().public,
            "endpoint": f"192.0.2.{10 + len(state) % 240}:{DEFAULT_PORT}",
            "expires_at": spec.expires_at.isoformat(),
            "created_at": self.clock().isoformat(),
        }
        return entry, True

    def _free_ip(self, state: dict, refused: set[str]) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The lowest free address; the taken set is built once per locked batch (state object),
        not once per create (parsing every live session's address made each create O(sessions))."""
        if self._taken[0] is not state:
            self._taken = (state, {int(ipaddress.ip_address(e["client_ip"])) for e in state.values()})
        taken, refused_ints = self._taken[1], {int(ipaddress.ip_address(ip)) for ip in refused}
        net, size = int(self._pool.network_address), self._pool.num_addresses
        first, last = (net + 1, net + size - 2) if size > 2 else (net, net + size - 1)  # as pool.hosts()
        for host in range(first + 1, last + 1):  # `first` is the simulated server's own address
            if host not in taken and host not in refused_ints:
                return type(self._pool.network_address)(host)
        raise ProvisionError("no tunnel address is free; try again later", detail=f"pool {self._pool} full")

    async def wait_ready(self, spec: ServerSpec, progress: ProgressFn) -> None:
        return None  # create() returns a working server

    async def destroy(self, session_id: str, *, resource_id: str | None = None, peer_public_key: str | None = None) -> None:
        await self._apply(lambda state: state.pop(session_id, None))

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

    def default_deployment_id(self) -> str:
        return ""  # nothing in a cloud to tell apart

    def bind_deployment(self, deployment_id: str, *, store_id: str = "") -> None:
        return None  # nothing in a cloud to tag

    async def traffic(self, peers: Mapping[str, str]) -> dict[str, Traffic]:
        """Simulated: each session's client handshakes when its server is made, then every two minutes,
        and moves SIMULATED_RATE bytes a second; with `simulate_clients` off nobody ever connects."""
        if not self.simulate_clients or not peers:
            return {}
        state, now = await asyncio.to_thread(self._load), self.clock()
        found: dict[str, Traffic] = {}
        for sid in peers:
            made = state.get(sid, {}).get("created_at")
            if not made:
                continue
            elapsed = max(0, int((now - datetime.fromisoformat(made)).total_seconds()))
            handshake = datetime.fromisoformat(made) + timedelta(seconds=elapsed - elapsed % REKEY_SECONDS)
            found[sid] = Traffic(handshake, elapsed * SIMULATED_RATE[0], elapsed * SIMULATED_RATE[1])
        return found

    async def close(self) -> None:
        return None

    def _load(self) -> dict:
        try:
            return json.loads(self._state_file.read_text())
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError:
            return {}

    async def _apply(self, change: Callable[[dict], Any]) -> Any:
        """Run `change` on the state in the file's locked read-modify-write, batched with whatever
        else is waiting: under load one load and one save serve many creates (the file holds every
        live session, so each save is O(sessions); one per create made starts quadratic)."""
        done = asyncio.get_running_loop().create_future()
        self._pending.append((change, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_batches(), name="dryrun-state")
        return await done

    async def _write_batches(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                outcomes = await asyncio.to_thread(self._mutate, [change for change, _ in batch])
            except asyncio.CancelledError:
                for _, done in batch + self._pending:
                    done.cancel()
                raise
            except Exception as exc:  # the file could not be read or written: every change failed
                outcomes = [(False, exc)] * len(batch)
            for (_, done), (ok, value) in zip(batch, outcomes):
                if done.done():
                    continue
                if ok:
                    done.set_result(value)
                else:
                    done.set_exception(value)

    def _mutate(self, changes: list[Callable[[dict], Any]]) -> list[tuple[bool, Any]]:
        """Load, change, save under an exclusive file lock: several bot processes may share the file.
        A change that raises must leave the state as it found it; only its own caller sees the error."""
        with open(self._state_file.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self._load()
                outcomes: list[tuple[bool, Any]] = []
                for change in changes:
                    try:
                        outcomes.append((True, change(state)))
                    except Exception as exc:
                        outcomes.append((False, exc))
                self._save(state)
                return outcomes
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _save(self, state: dict) -> None:
        tmp = self._state_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, sort_keys=True))  # no indent: json's C encoder, several times faster
        os.replace(tmp, self._state_file)
