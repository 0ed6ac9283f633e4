"""Issue 18 item 1: `serve` killed while a web session's cloud server still boots, on both stores.

The real app (tests/support/azure_app.py: `app.py serve` with a fake Azure credential) runs as
subprocesses against the fake ARM on 127.0.0.1, in this test's own process so the test can slow the
first VM's boot down and speed the next one up. A web owner starts a session over the API, waits for
`config_ready` (the VM still booting), takes the config, and the `serve` that provisions it is
SIGKILLed. On SQLite that one replica is started again; on Table Storage (Azurite) a second replica,
running from the start, takes the session over once the dead one's lease expires, and the killed one
is started again too. Before the fix the restarted attempt's delivery collided with the dead
attempt's held config (`UNIQUE constraint failed: claims.token_hash` / `EntityAlreadyExists`) and the
session went `failed`; the dead attempt's config (keys no server has) would still have been served.
Now: the session comes up, the owner downloads the FRESH config once (its keys are the new server's
peer, not the dead one's), the dead one never comes back, and the session's messages say why.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from provisioner import bootconfig
from provisioner.wireguard import Secret, public_key_of
from tests.fakes.arm import FakeArm
from tests.support.apprun import APP, app_env
from tests.support.loopback import free_port
from tests.support.webharness import PASSWORD, SECRET

pytestmark = pytest.mark.parametrize("store_backend", ["sqlite", "azure-tables"], indirect=True)

LAUNCHER = str(Path(__file__).resolve().parents[1] / "support" / "azure_app.py")
OWNER = "alice@example.org"
LEASE = 3  # seconds: the least VPN_LEASE_SECONDS allows; the dead replica's session is taken over after it
STUCK_BOOT = 120.0  # the first VM "boots" for this long: the kill always finds it booting
QUICK_BOOT = 0.5  # the restarted attempt's VM
COLLISIONS = ("UNIQUE constraint failed", "EntityAlreadyExists")


@pytest.fixture
async def arm():
    fake = await FakeArm(boot_seconds=STUCK_BOOT).start()
    yield fake
    await fake.stop()


class Serve:
    """One `serve` replica (its own process group, so SIGKILL takes it all, as a crashed container goes)."""

    def __init__(self, name: str, env: dict[str, str], logs: Path) -> None:
        self.name, self.port = name, free_port()
        self.env = {**env, "PORT": str(self.port)}
        self.base = f"http://127.0.0.1:{self.port}"
        self.logs, self.runs = logs, 0
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, http: aiohttp.ClientSession) -> "Serve":
        self.runs += 1
        log = open(self.logs / f"{self.name}-{self.runs}.log", "wb")  # noqa: SIM115 - the process writes it until it ends
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, LAUNCHER, "serve", env=self.env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.returncode is None, self.log()
            try:
                async with http.get(f"{self.base}/readyz") as r:
                    if r.status == 200:
                        return self
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, f"{self.name} did not come up:\n{self.log()}"
            await asyncio.sleep(0.1)

    async def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except asyncio.TimeoutError:
                os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.logs.glob(f"{self.name}-*.log")))


async def wait_log(replica: Serve, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while needle not in replica.log():
        assert time.monotonic() < deadline, f"{needle!r} not in {replica.name}'s log:\n{replica.log()[-3000:]}"
        await asyncio.sleep(0.1)


def vm_states(arm: FakeArm) -> list[str]:
    return [arm._state(vm) for vm in arm.of_type("virtualMachines")]


def peer_keys(arm: FakeArm) -> list[str]:
    """The client public key each VM was made for, in the order the VMs were PUT (one per attempt)."""
    keys = []
    for put in arm.puts("virtualMachines"):
        doc = yaml.safe_load(base64.b64decode(put.body["properties"]["osProfile"]["customData"]).decode())
        netdev = next(f["content"] for f in doc["write_files"] if f["path"] == bootconfig.NETDEV)
        keys.append(netdev.split("PublicKey=", 1)[1].split("\n", 1)[0].strip())
    return keys


def key_of(config: str) -> str:
    return public_key_of(Secret(config.split("PrivateKey = ", 1)[1].split("\n", 1)[0].strip()))


async def call(http: aiohttp.ClientSession, method: str, url: str, token: str, **kw) -> tuple[int, bytes]:
    async with http.request(method, url, headers={"Authorization": f"Bearer {token}"}, **kw) as r:
        return r.status, await r.read()


async def view(http: aiohttp.ClientSession, base: str, token: str, sid: str) -> dict:
    async with http.get(f"{base}/api/sessions/{sid}", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def wait_view(http, base, token, sid, predicate, what: str, timeout: float, *replicas: Serve) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        v = await view(http, base, token, sid)
        if predicate(v):
            return v
        assert v["state"] != "failed", (v, *(r.log()[-3000:] for r in replicas))
        assert time.monotonic() < deadline, (f"not {what} in {timeout} s", v, *(r.log()[-3000:] for r in replicas))
        await asyncio.sleep(0.1)


async def dead_attempts_claims(env: dict[str, str], sid: str) -> list:
    """What the store still holds of attempt 1's config and QR (their tokens derive from the server secret)."""
    from bot.channels.web.held_configs import CONF, PNG, HeldConfigs
    from bot.one_time_configs import token_hash
    from bot.settings import Settings
    from bot.wiring import make_store

    store = make_store(Settings.from_env(env).store)
    await store.open()
    try:
        held = HeldConfigs(SECRET)
        return [await store.get_claim(token_hash(held.token(purpose, sid, 1))) for purpose in (CONF, PNG)]
    finally:
        await store.close()


@pytest.mark.parametrize("taken_first", [True, False], ids=["dead-config-taken", "dead-config-left"])
async def test_a_kill_while_the_server_boots_hands_the_owner_the_fresh_config_once(arm, store_env, store_backend, taken_first, tmp_path):
    started = time.monotonic()
    (tmp_path / "logs").mkdir()
    env = app_env(
        tmp_path / "data",
        **store_env,
        VPN_PROVIDER="azure", AZURE_SUBSCRIPTION_ID="00000000-0000-0000-0000-000000000001", AZURE_RESOURCE_GROUP="vpn-rg",
        AZURE_ARM_ENDPOINT=arm.base_url, AZURE_POLL_SECONDS="0",
        VPN_LEASE_SECONDS=str(LEASE), VPN_SWEEP_SECONDS="0.5",
        VPN_LOCAL_AUTH_SECRET=SECRET, VPN_USERS=f"local:{OWNER}", VPN_CORS_ORIGINS="https://vpn.example.org",
    )
    added = await asyncio.create_subprocess_exec(sys.executable, APP, "users", "add", OWNER, env=env, stdin=asyncio.subprocess.PIPE,
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(added.communicate((PASSWORD + "\n").encode()), 60)
    assert added.returncode == 0, err.decode()

    one = Serve("one", env, tmp_path / "logs")
    two = Serve("two", env, tmp_path / "logs") if store_backend == "azure-tables" else None
    replicas = [r for r in (one, two) if r is not None]
    async with aiohttp.ClientSession() as http:
        try:
            await asyncio.gather(*(r.start(http) for r in replicas))
            async with http.post(f"{one.base}/api/login", json={"email": OWNER, "password": PASSWORD}) as r:
                assert r.status == 200, await r.text()
                token = (await r.json())["token"]
            status, body = await call(http, "POST", f"{one.base}/api/sessions", token, json={})
            assert status == 202, body
            sid = json.loads(body)["id"]

            # The config is held while the VM still boots; the owner takes it, or not yet.
            # (The config goes out once the address is known, before the VM is made: wait for both.)
            booting = await wait_view(http, one.base, token, sid, lambda v: v["config_ready"] and vm_states(arm) == ["Succeeded"],
                                      "config_ready with the VM made", 30, *replicas)
            assert booting["state"] == "provisioning", booting
            (dead_key,) = peer_keys(arm)
            dead = b""
            if taken_first:
                status, dead = await call(http, "GET", f"{one.base}/api/sessions/{sid}/config", token)
                assert status == 200, dead
                assert key_of(dead.decode()) == dead_key
            assert [c is not None and c.sealed is not None for c in await dead_attempts_claims(env, sid)] == [not taken_first] * 2  # taking the file erases the QR too

            await one.kill()  # mid-boot: the VM is still "booting" for minutes
            killed_at = time.monotonic()
            assert vm_states(arm) == ["Succeeded"] and not arm._booted(arm.of_type("virtualMachines")[0])  # made, still booting
            arm.boot_seconds = QUICK_BOOT  # the next attempt's server comes up quickly
            if two is None:
                await one.start(http)  # the same replica back (a restart, a rolling deploy)
                poll = fetch = one
            else:
                poll = two  # the surviving replica takes over once the dead one's lease expires...
                await wait_log(two, f"session {sid} was interrupted mid-provisioning", 30)
                await one.start(http)  # ...and the killed one comes back; the owner takes the config through it
                fetch = one

            ready = await wait_view(http, poll.base, token, sid, lambda v: v["state"] == "ready" and v["config_ready"], "ready", 60, *replicas)
            took_over = time.monotonic() - killed_at
            messages = "\n".join(ready["messages"])
            assert "restarted while setting up" in messages and "this is a new config" in messages, ready["messages"]
            assert "Something went wrong" not in messages and ready["error"] in (None, ""), ready
            # The dead attempt's sealed config and QR are erased, not merely out of reach (their keys are gone).
            assert [c is not None and c.sealed is None for c in await dead_attempts_claims(env, sid)] == [True, True]

            status, fresh = await call(http, "GET", f"{fetch.base}/api/sessions/{sid}/config", token)
            assert status == 200, fresh
            keys = peer_keys(arm)
            assert len(keys) == 2 and keys[0] == dead_key, keys
            assert fresh != dead and key_of(fresh.decode()) == keys[1] != dead_key  # the new server's peer, not the dead one's
            for r in replicas:  # once: neither replica hands out the fresh one again, nor the dead one
                status, again = await call(http, "GET", f"{r.base}/api/sessions/{sid}/config", token)
                assert status == 410 and b"PrivateKey" not in again, (status, again)
                status, qr = await call(http, "GET", f"{r.base}/api/sessions/{sid}/config.png", token)
                assert status == 410, (status, qr)  # taking the file erased the QR too
            assert not (await view(http, poll.base, token, sid))["config_ready"]

            status, _ = await call(http, "DELETE", f"{fetch.base}/api/sessions/{sid}", token)
            assert status == 202
            await wait_view(http, poll.base, token, sid, lambda v: v["state"] == "deleted", "deleted", 60, *replicas)
            assert arm.session_resources(sid) == [] and not [k for k in arm.resources if sid in k]
        finally:
            for r in replicas:
                await r.stop()
    logs = "\n".join(r.log() for r in replicas)
    for collision in COLLISIONS:
        assert collision not in logs, logs[-5000:]
    assert "Traceback" not in logs, logs[-5000:]
    print(f"\n{store_backend}, taken first: {taken_first}: taken over {took_over:.1f} s after the kill; whole test {time.monotonic() - started:.1f} s")
