"""Drives real `python app.py serve` replicas on one Azurite store, inside the lab's server namespace.

Run by tests/test_replicas_live.py as `ip netns exec <server ns> python -m tests.support.replica_driver SPEC`:
everything it starts (Azurite, the fake Bot Connector, the replicas) listens on that namespace's
127.0.0.1, and the `host` provider works on the lab's wireguard-go interface. Prints a JSON report.

Modes:
  kill  - two replicas, N users start (Teams dev mode) spread over both, one replica SIGKILLed
          mid-provisioning; wait until every session settles; /vpn stop for all; count everything.
  zero  - two replicas start N sessions (plus one caught mid-provisioning), every replica stops,
          expiry passes, `python app.py reap` alone must end everything.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bot.store.model import SessionState, utcnow  # noqa: E402
from bot.store.tables import TableStore  # noqa: E402
from tests.fakes.azurite import Azurite  # noqa: E402
from tests.fakes.connector import FakeConnector  # noqa: E402
from tests.support.apprun import APP, app_env  # noqa: E402

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
SLOW_WG = "sh -c 'sleep 0.3; exec wg \"$@\"' wg"  # every wg call takes a while: time to kill mid-way


def aad(i: int) -> str:
    return f"00000000-0000-0000-0000-{i:012d}"


def activity(connector: FakeConnector, i: int, text: str, n: int) -> dict:
    return {
        "type": "message", "id": f"msg-{i}-{n}", "timestamp": "2026-11-25T12:00:00.000Z", "serviceUrl": connector.base_url,
        "channelId": "msteams", "from": {"id": f"29:user-{i}", "name": f"User {i}", "aadObjectId": aad(i)},
        "conversation": {"conversationType": "personal", "tenantId": TENANT, "id": f"a:1personal-{i}"},
        "recipient": {"id": "28:vpn-bot-app-id", "name": "VPN Bot"}, "textFormat": "plain", "text": text,
        "channelData": {"tenant": {"id": TENANT}},
    }


class Replica:
    def __init__(self, name: str, env: dict[str, str], port: int, log_dir: Path) -> None:
        self.name, self.port = name, port
        self.log = open(log_dir / f"{name}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, APP, "serve"], env={**env, "PORT": str(port)}, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self, http: aiohttp.ClientSession, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}")
            try:
                async with http.get(self.url + "/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} not healthy in {timeout}s")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peers(spec: dict) -> dict[str, list[str]]:
    out = subprocess.run(["wg", "show", spec["interface"], "allowed-ips"], capture_output=True, text=True, check=True).stdout
    return {parts[0]: parts[1:] for parts in (line.split() for line in out.splitlines()) if parts}


async def wait_settled(store: TableStore, count: int, states: tuple[SessionState, ...], timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while True:
        every = await store.sessions(list(SessionState))
        if len(every) >= count and all(s.state in states for s in every):
            return every
        if time.monotonic() > deadline:
            return every
        await asyncio.sleep(0.5)


def conversation_texts(connector: FakeConnector) -> dict[str, list[str]]:
    """Each user's conversation: every activity posted or updated there, as text."""
    by_conv: dict[str, list[str]] = {}
    for call in connector.calls:
        if "/activities" not in call.path or call.method not in ("POST", "PUT"):
            continue
        conv = call.path.split("/conversations/", 1)[1].split("/", 1)[0]
        by_conv.setdefault(conv, []).append(FakeConnector.text_of(call))
    return by_conv


async def run(spec: dict) -> dict:
    work = Path(spec["work"])
    azurite = Azurite().start()
    connector = await FakeConnector(members={
        f"29:user-{i}": {"id": f"29:user-{i}", "name": f"User {i}", "aadObjectId": aad(i), "tenantId": TENANT} for i in range(spec["users"] + 1)
    }).start()
    n = spec["users"]
    env = app_env(
        work / "data",
        VPN_STORE="azure-tables", AZURE_STORAGE_CONNECTION_STRING=azurite.connection_string, VPN_TABLE_PREFIX="live",
        VPN_PROVIDER="host", WG_INTERFACE=spec["interface"], WG_ENDPOINT=spec["endpoint"], WG_POOL=spec["pool"],
        WG_COMMAND=SLOW_WG, VPN_DEV_MODE="1", VPN_USERS=",".join(f"teams:{aad(i)}" for i in range(n + 1)),
        VPN_MAX_SESSIONS="200", VPN_LEASE_SECONDS=str(spec["lease"]), VPN_SWEEP_SECONDS="1", VPN_LOG_LEVEL="INFO",
    )
    replicas = []
    report: dict = {"mode": spec["mode"], "users": n}
    store = TableStore.from_connection_string(azurite.connection_string, prefix="live")
    try:
        for name in ("a", "b"):
            (work / name).mkdir(exist_ok=True)
            replicas.append(Replica(name, {**env, "VPN_DATA_DIR": str(work / name)}, free_port(), work))
        a, b = replicas
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(a.ready(http), b.ready(http))
            await store.open()

            async def post(replica: Replica, i: int, text: str, k: int) -> int:
                """Like the Bot Connector: a delivery that fails (or times out) is retried, same activity id,
                and may land on the other replica; de-duplication keeps it to one answer."""
                status = 0
                for attempt in range(3):
                    target = replica if attempt % 2 == 0 else next(r for r in replicas if r is not replica)
                    try:
                        async with http.post(target.url + "/api/messages", json=activity(connector, i, text, k),
                                             timeout=aiohttp.ClientTimeout(total=15)) as r:
                            status = r.status
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        status = 0
                    if 200 <= status < 300:
                        break
                return status

            if spec["mode"] == "kill":
                statuses = await asyncio.gather(*(post(replicas[i % 2], i, "/vpn start", 1) for i in range(n)))
                report["start_http"] = dict(Counter(statuses))
                # Kill once every request is recorded in the store (the replicas answered), while
                # provisioning is under way.
                deadline = time.monotonic() + 60
                while len(await store.sessions(list(SessionState))) < n and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                await asyncio.sleep(spec["kill_after"])
                in_flight = [s for s in await store.sessions([SessionState.REQUESTED, SessionState.PROVISIONING])]
                report["in_flight_at_kill"] = len(in_flight)
                report["in_flight_of_killed"] = sum(1 for s in in_flight if s.lease_owner and s.lease_owner.split(":")[1] == str(a.proc.pid))
                a.kill()
                t_kill = time.monotonic()
                settled = await wait_settled(store, n, (SessionState.READY, SessionState.FAILED), 180)
                report["settle_seconds_after_kill"] = round(time.monotonic() - t_kill, 1)
                report["states"] = dict(Counter(s.state.value for s in settled))
                ready = [s for s in settled if s.state is SessionState.READY]
                on_wire = peers(spec)
                addresses = [s.client_address for s in ready]
                report["ready_distinct_addresses"] = len(set(addresses))
                report["ready_with_peer_at_its_address"] = sum(1 for s in ready if on_wire.get(s.client_public_key) == [s.client_address])
                report["peers_on_interface"] = len(on_wire)
                report["attempts"] = dict(Counter(s.attempts for s in settled))
                texts = conversation_texts(connector)
                acks = Counter()
                configs = Counter()
                for i in range(n):
                    conv = f"a:1personal-{i}"
                    for t in texts.get(conv, []):
                        acks[i] += "starting VPN session" in t
                        configs[i] += "data:image/png;base64" in t
                report["acks_per_user"] = dict(Counter(acks[i] for i in range(n)))
                report["configs_per_user"] = dict(Counter(configs[i] for i in range(n)))
                failed_told = 0
                for s in settled:
                    if s.state is SessionState.FAILED:
                        failed_told += any("could not set up your VPN" in t and s.id in t for ts in texts.values() for t in ts)
                report["failed_and_told"] = failed_told
                report["restart_notices"] = sum(t.count("restarted while setting up") for ts in texts.values() for t in ts)
                # Everyone stops, through the surviving replica.
                statuses = await asyncio.gather(*(post(b, i, "/vpn stop", 2) for i in range(n)))
                report["stop_http"] = dict(Counter(statuses))
                ended = await wait_settled(store, n, (SessionState.DELETED, SessionState.FAILED), 120)
                report["states_after_stop"] = dict(Counter(s.state.value for s in ended))
                report["peers_after_stop"] = len(peers(spec))

                def ended_notices() -> Counter:
                    texts = conversation_texts(connector)
                    return Counter(sum(t.count("has ended (stopped by you)") for t in texts.get(f"a:1personal-{i}", [])) for i in range(n))

                deadline = time.monotonic() + 15  # the notice follows the state change
                while ended_notices() != Counter({1: n}) and time.monotonic() < deadline:
                    await asyncio.sleep(0.3)
                report["ended_notices_per_user"] = dict(ended_notices())
                texts = conversation_texts(connector)
                for i in range(n):
                    got = texts.get(f"a:1personal-{i}", [])
                    if not any("has ended (stopped by you)" in t for t in got):
                        mine = [x for x in ended if x.owner == f"teams:{aad(i)}"]
                        report.setdefault("missing_notice", []).append(
                            {"user": i, "sessions": [(x.id, x.state.value, x.end_reason) for x in mine], "texts": [t[:300] for t in got[-4:]]})
            else:  # zero
                statuses = await asyncio.gather(*(post(replicas[i % 2], i, "/vpn start", 1) for i in range(n)))
                report["start_http"] = dict(Counter(statuses))
                settled = await wait_settled(store, n, (SessionState.READY,), 120)
                report["ready_before_stop"] = sum(1 for s in settled if s.state is SessionState.READY)
                await post(a, n, "/vpn start", 1)  # one more, caught mid-provisioning by the kill
                await asyncio.sleep(0.4)
                report["peers_before_stop"] = len(peers(spec))
                a.kill()
                b.stop()
                # Expiry passes while nothing runs (moved forward in the store rather than waited for).
                now = utcnow()
                for s in await store.sessions([SessionState.READY]):
                    await store.save(s.with_changes(now, expires_at=now - timedelta(seconds=1), due_at=now - timedelta(seconds=1)))
                await asyncio.sleep(spec["lease"] + 0.5)  # the killed replica's lease runs out
                reap_env = {**env, "VPN_DATA_DIR": str(work / "reaper")}
                # Not subprocess.run: the fake Bot Connector lives on this event loop and must answer reap's notices.
                proc = await asyncio.create_subprocess_exec(sys.executable, APP, "reap", env=reap_env,
                                                            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                out, err = await asyncio.wait_for(proc.communicate(), 180)
                reaped = subprocess.CompletedProcess(proc.args if hasattr(proc, "args") else "reap", proc.returncode, out.decode(), err.decode())
                report["reap_returncode"] = reaped.returncode
                report["reap_traceback"] = "Traceback" in reaped.stderr
                every = await store.sessions(list(SessionState))
                report["states_after_reap"] = dict(Counter(s.state.value for s in every))
                report["peers_after_reap"] = len(peers(spec))
                # With no replica running, reap itself tells each person (through the stored conversation).
                texts = conversation_texts(connector)
                report["reap_notices_per_user"] = dict(Counter(
                    sum(t.count("has ended (") + t.count("could not set up your VPN") for t in texts.get(f"a:1personal-{i}", []))
                    for i in range(n + 1)))
                if reaped.returncode != 0 or "Traceback" in reaped.stderr:
                    report["reap_stderr"] = reaped.stderr[:6000]
    finally:
        for r in replicas:
            r.stop()
        await store.close()
        await connector.stop()
        azurite.stop()
    report["replica_tracebacks"] = sum((work / f"{r.name}.log").read_text(errors="replace").count("Traceback") for r in replicas)
    return report


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(json.loads(sys.argv[1])))))
