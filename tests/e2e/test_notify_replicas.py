"""Notifications across replicas and a crash (issue 23): two real `app.py serve` processes on one store,
sessions started on one, that one SIGKILLed while the webhook receiver is down and deliveries are
pending, the other delivering everything once the receiver is back. The receiver verifies every
signature and counts exactly one accepted delivery per event."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import aiohttp

from bot.store.model import SessionState
from tests.fakes.webhook import WebhookReceiver
from tests.support.apprun import APP, app_env
from tests.support.loopback import free_port
from tests.support.webharness import PASSWORD, SECRET

NOTIFY_SECRET = "replica-notify-secret-" + "n" * 20
USERS = ("alice@example.org", "bob@example.org", "carol@example.org")


async def wait_until(check, timeout: float = 60, what: str = ""):
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def serve(env: dict[str, str], port: int, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, APP, "serve"], env={**env, "PORT": str(port)}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


async def login(http, base, email) -> str:
    async with http.post(f"{base}/api/login", json={"email": email, "password": PASSWORD}) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["token"]


async def test_every_event_is_delivered_once_across_two_replicas_and_a_sigkill(tmp_path):
    receiver = await WebhookReceiver(NOTIFY_SECRET, down=True).start()
    env = app_env(tmp_path / "data", VPN_LOCAL_AUTH_SECRET=SECRET, VPN_USERS=",".join(f"local:{u}" for u in USERS),
                  VPN_DRYRUN_STEP_SECONDS="0", VPN_SWEEP_SECONDS="0.3", VPN_LEASE_SECONDS="10", VPN_NOTIFY=receiver.url,  # a send is cut at 2/3 of the lease: room for a loaded machine
                  VPN_NOTIFY_SECRET=NOTIFY_SECRET)
    for user in USERS:
        added = subprocess.run([sys.executable, APP, "users", "add", user], input=PASSWORD + "\n", env=env, capture_output=True, text=True, timeout=60)
        assert added.returncode == 0, added.stderr
    ports = free_port(), free_port()
    logs = [open(tmp_path / f"replica-{n}.log", "wb") for n in "ab"]
    a, b = (serve(env, port, log) for port, log in zip(ports, logs, strict=True))
    base_a, base_b = (f"http://127.0.0.1:{p}" for p in ports)
    try:
        async with aiohttp.ClientSession() as http:
            async def up(base):
                try:
                    async with http.get(f"{base}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            for base in (base_a, base_b):
                await wait_until(lambda base=base: up(base), what=f"{base} to be ready")
            tokens = {u: await login(http, base_a, u) for u in USERS}
            ids = {}
            for user in USERS:  # every session starts on replica A
                async with http.post(f"{base_a}/api/sessions", json={"minutes": 30}, headers={"Authorization": f"Bearer {tokens[user]}"}) as resp:
                    assert resp.status == 202, await resp.text()
                    ids[user] = (await resp.json())["id"]

            async def tried():  # deliveries were attempted (and refused) before the crash
                return len(receiver.received) >= 3

            await wait_until(tried, what="delivery attempts")
            os.killpg(a.pid, signal.SIGKILL)  # replica A dies with pending (maybe leased) deliveries
            a.wait(10)
            receiver.down = False
            for user in USERS:  # the sessions end on replica B
                async with http.delete(f"{base_b}/api/sessions/{ids[user]}", headers={"Authorization": f"Bearer {tokens[user]}"}) as resp:
                    assert resp.status in (202, 409), await resp.text()

            expected = {f"{sid}.{kind}" for sid in ids.values() for kind in ("requested", "ready", "ended")}

            async def all_delivered():
                return set(receiver.accepted) >= expected

            await wait_until(all_delivered, timeout=90, what=f"every event; have {sorted(receiver.accepted)}")
            await asyncio.sleep(2)  # a late duplicate would show up now
        assert receiver.refused == []  # every request carried a valid signature and a fresh timestamp
        assert set(receiver.accepted) == expected and set(receiver.accepted.values()) == {1}, receiver.accepted
        refused_then_retried = [e["id"] for e in receiver.received if receiver.accepted[e["id"]]]
        assert len(refused_then_retried) > len(expected)  # some were refused while the receiver was down, then retried
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for log in logs:
            log.close()
        await receiver.stop()
    for name in ("replica-a.log", "replica-b.log"):
        text = (tmp_path / name).read_text(errors="replace")
        assert NOTIFY_SECRET not in text


async def test_reap_delivers_what_is_pending_with_no_replica_running(make_runtime, tmp_path):
    from tests.support.factories import incoming

    receiver = await WebhookReceiver(NOTIFY_SECRET).start()
    try:
        notify = {"VPN_NOTIFY": receiver.url, "VPN_NOTIFY_SECRET": NOTIFY_SECRET}
        async with make_runtime(VPN_DRYRUN_STEP_SECONDS=0, **notify) as rt:  # queues, never sweeps: then every process stops
            await rt.dispatcher.handle(incoming("/vpn start"))
            await rt.runner.wait_idle(10)
            (s,) = await rt.store.sessions(list(SessionState))
        assert receiver.received == []
        env = app_env(tmp_path / "data", VPN_USERS="test:alice", **notify)
        done = await asyncio.to_thread(subprocess.run, [sys.executable, APP, "reap"], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        # The test's clock started the session days ago: reap also ends it, and tells that in the same pass.
        assert set(receiver.accepted) == {f"{s.id}.requested", f"{s.id}.ready", f"{s.id}.ended"} and set(receiver.accepted.values()) == {1}
        assert receiver.types() == ["requested", "ready", "ended"]
    finally:
        await receiver.stop()
