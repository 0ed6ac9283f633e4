"""Failover soak (issue 25 goal 6): three `serve` replicas on one Table Storage store, a steady rate of
web starts with stops and extends mixed in, one replica SIGKILLed and restarted on a schedule.

Everything real: Azurite (bench/azurite_server.py) holds the store; three `python app.py serve`
processes share it and one VPN_DATA_DIR, so their dryrun provider (0 s steps) keeps its "servers" in
one locked state file, as three replicas would share one cloud; a load balancer here sends each
request round-robin to a replica that is up (a request in flight when its replica dies is lost, as
behind a real one). Each session is one person's journey through the web API
(bot/channels/web/api.py): start, poll until the config is ready, download it (once), then stop it,
extend it, or let it expire, reading what the session's messages tell them. Every `--kill-every`
seconds one replica (in turn) is SIGKILLed with its process group, aimed right after it accepted a
start or a stop (so that there is work in flight to take over), and started again at once.

The people's accounts are written through the store's own API with a cheap hash and their bearer
tokens minted with the app's signing code (bot/channels/web/signin_local.py), because nobody logs in
here: a login costs a 600,000-round PBKDF2 and 30 of them per address and 15 minutes are allowed.

Checked (each a count that should be 0; `problems` lists each one found):
  duplicated  a second, different config for one session without the "new config" notice; one config
              handed out twice; a config whose key or address is not the session's server's
  lost        an accepted start that ends in neither a config nor a failure message; an accepted stop
              or an expiry that does not end the session; a session still active once everything
              settled, or one its owner never heard of; a live session without its server
  orphaned    a dryrun server left after its session ended, or at the end with no active session
  untruthful  a notice or answer that says something else than what happened: ended for another
              reason or twice, a ready notice with another end time, "something went wrong", expired
              before its time, a restart notice no replica made, a refusal or an error (5xx)
  untold      a notice (ready, ended, failed) that never came although the replica that made the
              write it tells of lived on (one that died with its replica is counted apart: the engine
              writes the state, then tells, so a kill in between loses the notice)
Also printed, not counted: one-time config downloads whose answer died with their replica, servers
that only reconcile removed, notices later than `--notice-wait`, and refusals "You already have a
VPN session running" with none running (a cap slot left by a start that died mid-way).

Prints the figures (sessions, kills, takeovers, time to config); `--json FILE` writes the whole report
(tests/e2e/test_failover_soak.py runs the short form and checks it).

    python bench/bench_soak.py [--seconds 300] [--rate 5] [--kill-every 30] [--json report.json]
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import random
import re
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from azurite_server import AzuriteServer, connection_string  # bench/ is the script's folder
from common import app_env, free_port

from bot.channels.web.signin_local import LocalAuth, hash_password
from bot.store.model import ACTIVE_STATES, SessionState, utcnow
from bot.store.ports import LocalUser
from bot.store.tables import TableStore
from provisioner.wireguard import Secret, public_key_of

APP = str(ROOT / "app.py")
DOMAIN = "soak.example.org"
PREFIX = "soak"
REPLICAS = ("a", "b", "c")
# What a person does after taking the config, and how often.
PLANS = (("stop", 0.40), ("extend-stop", 0.10), ("extend-expire", 0.15), ("expire", 0.35))
# An accepted start with neither a config nor a failure after this long is lost (the engine's own bounds:
# an interrupted 1-minute session is failed once its minute is over); a stop or an expiry that has not
# ended the session after END_DEADLINE is lost.
CONFIG_DEADLINE = 150.0
END_DEADLINE = 90.0
# The notices a person waits for, and the log line each one's writer makes between its state write and the notice.
READY_NOTICE, ENDED_NOTICE, FAILED_NOTICE = "ends at", "has ended", "could not set up your VPN"
WRITTEN_BY = {READY_NOTICE: r"session (\w+) ready at", ENDED_NOTICE: r"session (\w+) ended \(",
              FAILED_NOTICE: r"session (\w+) (?:failed|timed out|: delivery failed)"}


def iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def conf_field(config: str, name: str) -> str:
    m = re.search(rf"^{name}\s*=\s*(\S+)", config, re.M)
    return m.group(1) if m else ""


def die_with_parent() -> None:
    """In the child before exec: SIGKILL when the soak itself dies (Linux), so no replica outlives it."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def cpu_seconds(pid: int) -> float:
    """User and system CPU a live process has used so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ----- the replicas and the load balancer in front of them ------------------------------------------------

class Replica:
    """One `app.py serve` in its own process group (SIGKILL takes all of it, as a crashed container goes)."""

    def __init__(self, name: str, env: dict[str, str], logs: Path, cwd: Path) -> None:
        self.name, self.port = name, free_port()
        self.env = {**env, "PORT": str(self.port)}
        self.base = f"http://127.0.0.1:{self.port}"
        self.logs, self.cwd = logs, cwd
        self.runs = 0
        self.up = False
        self.proc: subprocess.Popen | None = None
        self.procs: list[subprocess.Popen] = []  # every run, so that none outlives the soak
        self.cpu = 0.0  # seconds, over the runs that ended

    def log_path(self, run: int) -> Path:
        return self.logs / f"{self.name}-{run}.log"

    async def start(self) -> float:
        """Start it and wait for /readyz; returns how long that took."""
        self.runs += 1
        t = time.monotonic()
        with open(self.log_path(self.runs), "wb") as log:
            self.proc = subprocess.Popen([sys.executable, APP, "serve"], env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=die_with_parent)
        self.procs.append(self.proc)
        # A client of its own: the people's pool (a few hundred journeys in flight) must not queue the probe.
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as probe:
            while True:
                if self.proc.poll() is not None:
                    raise SystemExit(f"replica {self.name} exited with {self.proc.returncode}:\n{self.log_path(self.runs).read_text()[-3000:]}")
                try:
                    async with probe.get(f"{self.base}/readyz") as r:
                        if r.status == 200:
                            self.up = True
                            return time.monotonic() - t
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                if time.monotonic() - t > 60:
                    raise SystemExit(f"replica {self.name} not ready in 60 s")
                await asyncio.sleep(0.05)

    async def kill(self) -> None:
        assert self.proc is not None
        self.cpu += cpu_seconds(self.proc.pid)
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.up = False  # the balancer's health probe notices; requests already in flight are lost
        await asyncio.to_thread(self.proc.wait)

    async def stop(self) -> None:
        self.up = False
        for proc in self.procs:
            if proc.poll() is None:
                self.cpu += cpu_seconds(proc.pid)
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(proc.wait, 30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    await asyncio.to_thread(proc.wait)

    def log(self) -> str:
        return "".join(self.log_path(run).read_text(errors="replace") for run in range(1, self.runs + 1))


class Lost(Exception):
    """The replica died with the request in flight: the person saw an error and does not know what happened."""


@dataclass
class Answer:
    status: int
    body: Any
    replica: str  # "a-2": which replica, which run of it


class Balancer:
    """Round-robin over the replicas that are up. A GET that loses its replica is sent again elsewhere
    (a reload); a POST or DELETE that does raises Lost, for the person to find out what happened."""

    def __init__(self, replicas: list[Replica], http: aiohttp.ClientSession) -> None:
        self.replicas, self.http = replicas, http
        self._next = 0
        self.lost = Counter[str]()
        self.statuses = Counter[str]()
        self.watch: tuple[str, str] | None = None  # (replica, method): the killer waits for such a request's 202
        self.seen = asyncio.Event()

    def pick(self) -> Replica | None:
        for _ in range(len(self.replicas)):
            r = self.replicas[self._next % len(self.replicas)]
            self._next += 1
            if r.up:
                return r
        return None

    async def call(self, method: str, path: str, token: str, body: Any = None, *, again: bool = True) -> Answer:
        """`again=False`: a GET with an effect (a one-time download) is not sent again either."""
        for _ in range(200):
            r = self.pick()
            if r is None:
                await asyncio.sleep(0.1)  # every replica down at once: the balancer answers 503 and the person waits
                continue
            run = f"{r.name}-{r.runs}"
            try:
                kw: dict[str, Any] = {"json": body} if body is not None else {}
                async with self.http.request(method, r.base + path, headers={"Authorization": f"Bearer {token}"}, **kw) as resp:
                    raw = await resp.read()
                    parsed = json.loads(raw) if resp.content_type == "application/json" and raw else raw.decode(errors="replace")
                    self.statuses[f"{method} {resp.status}"] += 1
                    if resp.status == 202 and self.watch == (r.name, method):
                        self.seen.set()
                    return Answer(resp.status, parsed, run)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                self.lost[method] += 1
                if method != "GET" or not again:
                    raise Lost(f"{method} {path} on {run}: {type(exc).__name__}") from None
                await asyncio.sleep(0.05)
        raise Lost(f"{method} {path}: no replica answered")


# ----- one person's session ----------------------------------------------------------------------------------

@dataclass
class Journey:
    user: str
    plan: str
    started: float  # monotonic, when the start was sent
    sid: str = ""
    # accepted | accepted-unanswered (the answer died with its replica; Start again said "you already have
    # session …") | accepted-on-retry (the first start died before it was stored; Start again made it) | refused:<status>
    start: str = ""
    start_replica: str = ""
    config_seconds: float | None = None  # start sent -> config downloaded
    configs: list[str] = field(default_factory=list)  # public keys of the configs downloaded, in order
    outcome: str = ""  # stopped | expired | failed | lost
    config_lost_in_flight: bool = False  # the one-time download's answer died with its replica
    phantom_refusals: int = 0  # "you already have a session running" when none was
    stop_replica: str = ""
    expires_at: str = ""  # as last promised (ready, then each extend)
    extended: int = 0
    messages: list[str] = field(default_factory=list)
    untold: list[str] = field(default_factory=list)  # notices that never came (judged against the logs at the end)
    problems: list[str] = field(default_factory=list)
    saw_kill: bool = False

    def problem(self, kind: str, text: str) -> None:
        self.problems.append(f"{kind}: session {self.sid or '?'} of {self.user}: {text}")


class Soak:
    def __init__(self, args: argparse.Namespace, balancer: Balancer, tokens: dict[str, str], state_file: Path) -> None:
        self.args, self.lb, self.tokens, self.state_file = args, balancer, tokens, state_file
        self.rng = random.Random(args.seed)
        self.free = list(tokens)
        self.rng.shuffle(self.free)
        self.journeys: list[Journey] = []
        self.tasks: set[asyncio.Task] = set()
        self.finale = asyncio.Event()  # load over: sessions waiting to expire much later are stopped instead
        self.kills: list[dict[str, Any]] = []
        self.killing = False
        self.stop_killing = False
        self.no_free_user = 0

    def servers(self) -> dict[str, dict]:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    # -- the schedule --

    async def load(self) -> None:
        """`--rate` starts a second for `--seconds`, each by a person with no session running."""
        t0, n = time.monotonic(), 0
        while (at := n / self.args.rate) < self.args.seconds:
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            n += 1
            if not self.free:
                self.no_free_user += 1
                continue
            user = self.free.pop()
            plan = self.rng.choices([p for p, _ in PLANS], [w for _, w in PLANS])[0]
            j = Journey(user, plan, time.monotonic(), saw_kill=self.killing)
            self.journeys.append(j)
            task = asyncio.create_task(self.journey(j))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def killer(self, replicas: list[Replica], http: aiohttp.ClientSession, t0: float) -> None:
        """One replica after another, SIGKILLed and started again, every `--kill-every` seconds (the first
        half a period in), through the load and the expiries that follow it (`--expire-grace`), until
        every journey has finished; the rest settles without kills."""
        k = 0
        last = t0 + self.args.seconds + self.args.expire_grace + 10
        while True:
            at = t0 + self.args.kill_every * (k + 0.5)
            while True:  # checked only between kills: a replica killed is always started again
                if self.stop_killing or at > last or (self.finale.is_set() and not self.tasks):
                    return
                if time.monotonic() >= at:
                    break
                await asyncio.sleep(0.1)
            r = replicas[k % len(replicas)]
            k += 1
            # Aimed: right after this replica accepted a start (its provisioning then runs) or, every other
            # time, a stop (its teardown then runs), so that the kill finds work in flight to take over.
            self.lb.watch, self.lb.seen = (r.name, "POST" if k % 2 else "DELETE"), asyncio.Event()
            aimed = "after a start" if k % 2 else "after a stop"
            try:
                await asyncio.wait_for(self.lb.seen.wait(), 5)
            except asyncio.TimeoutError:
                aimed = "unaimed"
            self.lb.watch = None
            self.killing = True
            for j in self.journeys:
                if j.config_seconds is None and not j.outcome:
                    j.saw_kill = True  # waiting for its config while a replica dies
            killed_at = time.monotonic()
            await r.kill()
            ready = await r.start()
            self.killing = False
            self.kills.append({"replica": r.name, "at": round(killed_at - t0, 1), "down_seconds": round(ready, 2), "t": killed_at, "aimed": aimed})

    # -- one journey --

    async def journey(self, j: Journey) -> None:
        try:
            await self._journey(j)
        except Exception as exc:  # a bug of this driver must not pass for a clean run
            j.problem("driver", f"{type(exc).__name__}: {exc}")
        finally:
            if j.outcome != "lost":  # a person whose session is stuck cannot start another
                self.free.insert(0, j.user)

    async def _journey(self, j: Journey) -> None:
        token = self.tokens[j.user]
        unanswered = False
        for _ in range(100):
            try:
                a = await self.lb.call("POST", "/api/sessions", token, {})
            except Lost:
                unanswered = True  # the person saw an error, and presses Start again a second later
                await asyncio.sleep(1)
                continue
            body = a.body if isinstance(a.body, dict) else {}
            if a.status == 409 and body.get("code") == "user_limit" and not body.get("session_id") and time.monotonic() - j.started < 90:
                # "You already have a VPN session running", and none is: a cap slot left by a start that died
                # with its replica between taking the slot and writing the session (the store frees it after
                # SLOT_GRACE). Known (reported to issue 25's store work); the person tries again in a while.
                j.phantom_refusals += 1
                await asyncio.sleep(5)
                continue
            break
        else:
            raise RuntimeError("a hundred starts lost")
        j.start_replica = a.replica
        if a.status == 202:
            j.sid, j.start = body["id"], "accepted-on-retry" if unanswered else "accepted"
        elif unanswered and a.status == 409 and body.get("code") == "user_limit" and body.get("session_id"):
            j.sid, j.start = body["session_id"], "accepted-unanswered"  # the first did: "you already have session …"
        else:
            j.start, j.outcome = f"refused:{a.status}", "refused"
            j.problem("untruthful", f"start refused with {a.status}: {a.body}")
            return
        if not await self.take_config(j, token):
            return
        if j.plan == "stop":
            await asyncio.sleep(self.rng.uniform(1, 10))
            await self.stop(j, token)
            return
        if j.plan.startswith("extend"):
            await asyncio.sleep(self.rng.uniform(1, 5))
            if not await self.extend(j, token):
                return
            if j.plan == "extend-stop":
                await asyncio.sleep(self.rng.uniform(2, 8))
                await self.stop(j, token)
                return
        await self.await_expiry(j, token)

    async def view(self, j: Journey, token: str) -> dict:
        a = await self.lb.call("GET", f"/api/sessions/{j.sid}", token)
        if a.status != 200:
            raise RuntimeError(f"GET session: {a.status} {a.body}")
        v = a.body
        j.messages = v["messages"]
        return v

    async def take_config(self, j: Journey, token: str) -> bool:
        """Poll until the config is ready and take it (again if a restarted attempt makes a new one),
        until the session is ready; False when it failed (or got lost)."""
        deadline = j.started + CONFIG_DEADLINE
        while True:
            v = await self.view(j, token)
            if v["state"] == "failed":
                j.outcome = "failed"
                v = await self.told(j, token, v, FAILED_NOTICE)
                if j.configs and not any("will not work" in m for m in v["messages"]):
                    j.problem("untruthful", "failed after its config was taken, and nobody said that config is dead")
                return False
            if v["state"] not in ("requested", "provisioning", "ready"):
                j.outcome = "lost"
                j.problem("lost", f"{v['state']} before the config ({v['end_reason'] or v['error']})")
                return False
            if v["config_ready"]:
                if await self.download(j, token) == "gone":
                    j.plan += "+stopped-config-gone"  # nothing to connect with: the person stops it
                    await self.stop(j, token)
                    return False
                continue
            if v["state"] == "ready" and j.configs:
                break
            if time.monotonic() > deadline:
                j.outcome = "lost"
                j.problem("lost", f"no config {CONFIG_DEADLINE:.0f} s after the start was accepted: {v['state']}, {v['messages']}")
                return False
            # As a script would at first, then as the page does (every second): a slow takeover is not hammered.
            await asyncio.sleep(self.args.poll if time.monotonic() - j.started < 5 else 1.0)
        # Ready: the person holds the config of the server that exists, was told it is ready, and cannot take it again.
        v = await self.told(j, token, v, READY_NOTICE)
        ready_notes = [m for m in v["messages"] if "ends at" in m]
        if ready_notes and f"ends at {iso(v['expires_at']):%H:%M} UTC" not in ready_notes[-1]:
            j.problem("untruthful", f"the ready notice's end time is not the session's ({v['expires_at']}): {ready_notes[-1]}")
        j.expires_at = v["expires_at"]
        if len(j.configs) > 1 and not any("this is a new config" in m for m in v["messages"]):
            j.problem("duplicated", f"{len(j.configs)} configs taken and no notice of a new config")
        if len(set(j.configs)) != len(j.configs):
            j.problem("duplicated", "the same config handed out twice")
        again = await self.lb.call("GET", f"/api/sessions/{j.sid}/config", token)
        if again.status != 410:
            j.problem("duplicated", f"a second download answered {again.status}")
        self.check_server(j, "when ready")
        return True

    async def download(self, j: Journey, token: str) -> str:
        """ok | later (a new attempt erased it between the poll and the download) | gone (the person never got it)."""
        for _ in range(3):
            try:
                a = await self.lb.call("GET", f"/api/sessions/{j.sid}/config", token, again=False)
                break
            except Lost:
                j.config_lost_in_flight = True  # the person presses Download again
        else:
            raise RuntimeError("three downloads lost")
        if a.status == 409:
            return "later"
        if a.status == 410:
            if not j.config_lost_in_flight:
                j.problem("lost", f"config_ready said yes, and the download answered 410: {a.body}")
            return "gone"
        if a.status != 200:
            raise RuntimeError(f"GET config: {a.status} {a.body}")
        config = a.body
        key = public_key_of(Secret(conf_field(config, "PrivateKey")))
        if not j.configs:
            j.config_seconds = time.monotonic() - j.started
        j.configs.append(key)
        server = self.servers().get(j.sid)
        address = conf_field(config, "Address").split("/")[0]
        if server is None or server["client_public_key"] != key or server["client_ip"] != address:
            j.problem("duplicated", f"the config taken is not the session's server's ({'no server' if server is None else 'another key or address'})")
        return "ok"

    async def told(self, j: Journey, token: str, v: dict, needle: str) -> dict:
        """A notice follows the write it tells of, so the person reads on a while. One that never comes is
        recorded, and judged at the end against the logs (the engine writes the state, logs it, then tells:
        a replica killed in between takes the notice with it)."""
        told_by = time.monotonic() + self.args.notice_wait
        while not any(needle in m for m in v["messages"]):
            if time.monotonic() > told_by:
                j.untold.append(needle)
                break
            await asyncio.sleep(0.5)
            v = await self.view(j, token)
        return v

    def check_server(self, j: Journey, when: str) -> None:
        server = self.servers().get(j.sid)
        if server is None:
            j.problem("lost", f"no server {when}, though the session is live")
        elif j.configs and server["client_public_key"] != j.configs[-1]:
            j.problem("duplicated", f"the server {when} is for another key than the config taken")

    async def extend(self, j: Journey, token: str) -> bool:
        before = iso(j.expires_at)
        assert before is not None
        try:
            a = await self.lb.call("POST", f"/api/sessions/{j.sid}/extend", token, {"minutes": 1})
        except Lost:
            v = await self.view(j, token)  # did it happen? the page shows the time
            after = iso(v["expires_at"])
            if after not in (before, before + timedelta(minutes=1)):
                j.problem("untruthful", f"an unanswered extend moved the end from {before} to {after}")
            j.expires_at, j.extended = v["expires_at"], j.extended + (after != before)
            return v["state"] == "ready"
        if a.status != 200:
            j.problem("untruthful", f"extend refused with {a.status}: {a.body}")
            return False
        after = iso(a.body["expires_at"])
        if after != before + timedelta(minutes=1):
            j.problem("untruthful", f"extended by a minute, and the end moved from {before} to {after}")
        j.expires_at, j.extended = a.body["expires_at"], j.extended + 1
        return True

    async def stop(self, j: Journey, token: str) -> None:
        self.check_server(j, "before the stop")
        pressed = time.monotonic()
        lost = False
        for _ in range(3):
            try:
                a = await self.lb.call("DELETE", f"/api/sessions/{j.sid}", token)
            except Lost:
                lost = True
                continue  # the person presses Stop again
            if a.status != 202 and not (lost and a.status == 409 and isinstance(a.body, dict) and a.body.get("code") == "already_ended"):
                j.problem("untruthful", f"stop answered {a.status}: {a.body}")
            j.stop_replica = a.replica
            break
        await self.await_end(j, token, "stopped by you", pressed + END_DEADLINE)

    async def await_expiry(self, j: Journey, token: str) -> None:
        while True:
            ends = iso(j.expires_at)
            assert ends is not None
            left = (ends - utcnow()).total_seconds()
            if left <= 0:
                break
            if self.finale.is_set() and left > self.args.expire_grace:
                j.plan += "+stopped-at-end"  # the soak is over; they stop rather than wait
                await self.stop(j, token)
                return
            await asyncio.sleep(min(left, 1.0))
        await self.await_end(j, token, "time is up", time.monotonic() + END_DEADLINE)

    async def await_end(self, j: Journey, token: str, reason: str, deadline: float) -> None:
        while True:
            v = await self.view(j, token)
            if v["state"] in ("deleted", "failed"):
                break
            if time.monotonic() > deadline:
                j.outcome = "lost"
                j.problem("lost", f"still {v['state']} {deadline - j.started:.0f} s into the journey; expected to end ({reason})")
                return
            await asyncio.sleep(0.5)
        j.outcome = "stopped" if reason == "stopped by you" else "expired"
        v = await self.told(j, token, v, ENDED_NOTICE)
        ended = [m for m in v["messages"] if "has ended" in m]
        if v["state"] != "deleted" or v["end_reason"] != reason:
            j.problem("untruthful", f"ended {v['state']} ({v['end_reason']}), expected deleted ({reason})")
        if len(ended) > 1 or (ended and f"({reason})" not in ended[0]):
            j.problem("untruthful", f"told {len(ended)} times that it ended, expected once ({reason}): {ended}")
        if j.sid in self.servers():
            j.problem("orphaned", "its server is still there after it ended")


# ----- the run -------------------------------------------------------------------------------------------------

async def seed_users(store: TableStore, n: int, secret: str) -> dict[str, str]:
    """n accounts through the store's own API, and a token for each from the app's own signing code."""
    auth = LocalAuth(secret, store, utcnow)
    now = utcnow()
    users = [LocalUser(f"user{i:04d}@{DOMAIN}", hash_password(secrets.token_hex(8), iterations=1), now) for i in range(n)]
    gate = asyncio.Semaphore(16)

    async def put(u: LocalUser) -> None:
        async with gate:
            await store.put_user(u)

    await asyncio.gather(*(put(u) for u in users))
    return {f"local:{u.email}": auth.issue(u, now) for u in users}


def log_facts(replicas: list[Replica]) -> dict[str, Any]:
    """What the replicas' logs say: takeovers, reconcile deletions, errors, per session which run did what."""
    takeovers: list[str] = []
    reconciled: list[str] = []
    errors: list[str] = []
    ended_by: dict[str, str] = {}
    written: dict[tuple[str, str], set[str]] = {}  # (notice, session) -> the runs that logged the write it tells of
    for r in replicas:
        for run in range(1, r.runs + 1):
            for line in r.log_path(run).read_text(errors="replace").splitlines():
                for notice, pattern in WRITTEN_BY.items():
                    if m := re.search(pattern, line):
                        written.setdefault((notice, m.group(1)), set()).add(f"{r.name}-{run}")
                if m := re.search(r"session (\w+) was interrupted mid-provisioning", line):
                    takeovers.append(m.group(1))
                if "reconcile: deleting" in line:
                    reconciled.append(line)
                if m := re.search(r"session (\w+) ended \(", line):
                    ended_by[m.group(1)] = f"{r.name}-{run}"
                if "Traceback" in line or " CRITICAL " in line or (" ERROR " in line and "failed: the VPN bot restarted" not in line):
                    errors.append(f"{r.name}-{run}: {line[:300]}")  # not a session failed, truthfully, after its second interruption
    return {"provisioning_takeovers": takeovers, "reconcile_deleted": reconciled, "errors": errors, "ended_by": ended_by,
            "written": written, "alive": {f"{r.name}-{r.runs}" for r in replicas}}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.logs)
    work.mkdir(parents=True, exist_ok=True)
    (work / "data").mkdir(exist_ok=True)
    secret = secrets.token_urlsafe(32)
    users = args.users or int(args.rate * 90) + 20
    # A SIGTERM (a test's time-out) ends the run through its `finally`s: no replica outlives it.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    azurite = AzuriteServer()
    with azurite as port:
        conn = connection_string(port)
        env = app_env(
            VPN_STORE="azure-tables", AZURE_STORAGE_CONNECTION_STRING=conn, VPN_TABLE_PREFIX=PREFIX,
            VPN_DATA_DIR=str(work / "data"),  # one dryrun state file for all three: one "cloud"
            VPN_PROVIDER="dryrun", VPN_DRYRUN_STEP_SECONDS="0", WG_POOL="10.77.0.0/20",
            VPN_LOCAL_AUTH_SECRET=secret, VPN_USERS=f"domain:{DOMAIN}",
            VPN_SESSION_MINUTES=str(args.session_minutes), VPN_MAX_SESSIONS=str(users + 10), VPN_MAX_SESSIONS_PER_USER="1",
            VPN_LEASE_SECONDS=str(args.lease), VPN_SWEEP_SECONDS=str(args.sweep), VPN_LOG_LEVEL="INFO",
            VPN_METRICS_PORT="0", VPN_ENV_FILE=os.devnull, PYTHONUNBUFFERED="1", APPLICATION_INSIGHTS_NO_STATSBEAT="1",
        )
        store = TableStore.from_connection_string(conn, prefix=PREFIX)
        await store.open()
        replicas = [Replica(name, env, work, work) for name in REPLICAS]
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=200)) as http:
            try:
                tokens = await seed_users(store, users, secret)
                await asyncio.gather(*(r.start() for r in replicas))
                soak = Soak(args, Balancer(replicas, http), tokens, work / "data" / "dryrun-servers.json")
                t0 = time.monotonic()
                killer = asyncio.create_task(soak.killer(replicas, http, t0))
                await soak.load()
                load_seconds = time.monotonic() - t0
                soak.finale.set()
                settle_t = time.monotonic()
                while soak.tasks and time.monotonic() - settle_t < args.settle:
                    await asyncio.sleep(0.2)
                unfinished = len(soak.tasks)
                for task in list(soak.tasks):
                    task.cancel()
                await asyncio.gather(*soak.tasks, return_exceptions=True)
                soak.stop_killing = True
                await killer
                report = await settle_and_check(args, soak, store, replicas, load_seconds, time.monotonic() - t0, unfinished, users)
            finally:
                azurite_cpu = cpu_seconds(azurite.pid)
                await asyncio.gather(*(r.stop() for r in replicas))
                await store.close()
        report["logs"] = str(work)
        own = resource.getrusage(resource.RUSAGE_SELF)
        report["cpu_seconds"] = {"replicas": round(sum(r.cpu for r in replicas), 1), "azurite": round(azurite_cpu, 1),
                                 "driver": round(own.ru_utime + own.ru_stime, 1)}
        report["facts"] = log_facts(replicas)
        finish(report)
    return report


async def settle_and_check(args, soak: Soak, store: TableStore, replicas: list[Replica], load_seconds: float, run_seconds: float,
                           unfinished: int, users: int) -> dict[str, Any]:
    """Wait until the store holds no active session (or `--settle` passes), then compare store, servers and journeys."""
    deadline = time.monotonic() + args.settle
    while True:
        every = await store.sessions(list(SessionState))
        active = [s for s in every if s.state in ACTIVE_STATES]
        if not active or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    facts = log_facts(replicas)
    servers = soak.servers()
    by_id = {s.id: s for s in every}
    known = {j.sid for j in soak.journeys if j.sid}
    problems = [x for j in soak.journeys for x in j.problems]
    if unfinished:
        problems.append(f"lost: {unfinished} journeys still unfinished {args.settle:.0f} s after the load ended")
    for s in active:
        problems.append(f"lost: session {s.id} of {s.owner} still {s.state.value} after everything settled")
    for sid in set(by_id) - known:
        s = by_id[sid]
        problems.append(f"lost: session {sid} of {s.owner} ({s.state.value}) was never told to its owner")
    for sid in servers:
        owner = by_id.get(sid)
        problems.append(f"orphaned: dryrun server of session {sid} ({owner.state.value if owner else 'no such session'}) left at the end")
    # A server that reconcile (every replica's, each minute) had to delete: a process died between a session's
    # last write and its destroy (a failure is written first, then cleaned up). Reported; not left behind.
    reconciled = [line.split("deleting ", 1)[1].split(",", 1)[0] for line in facts["reconcile_deleted"]]
    restarted = set(facts["provisioning_takeovers"])
    for j in soak.journeys:
        if any("Something went wrong" in m for m in j.messages):
            problems.append(f"untruthful: session {j.sid}: told something went wrong: {j.messages}")
        s = by_id.get(j.sid)
        if s is None:
            continue
        if any("restarted while setting up" in m for m in j.messages) and j.sid not in restarted:
            problems.append(f"untruthful: session {j.sid} told of a restart no replica made")
        if j.outcome == "expired" and s.ended_at is not None and s.ended_at < s.expires_at:
            problems.append(f"untruthful: session {j.sid} expired {(s.expires_at - s.ended_at).total_seconds():.1f} s before its time")
    # A notice that never came is explained by a kill when the run that made the write it tells of was
    # SIGKILLed later (every run but each replica's last), or when no run logged that write (its writer
    # died between the write and the log line); otherwise nothing excuses it.
    lost_with_replica = late = 0
    for j in soak.journeys:
        for notice in j.untold:
            writers = facts["written"].get((notice, j.sid), set())
            if not writers or writers - facts["alive"]:
                lost_with_replica += 1
            elif any(notice in m for m in (await soak.view(j, soak.tokens[j.user]))["messages"]):
                late += 1  # it came, later than the person waited
            else:
                problems.append(f"untold: session {j.sid}: no notice {notice!r} within {args.notice_wait:.0f} s, though {sorted(writers)} lived on")
    kinds = Counter(x.split(":", 1)[0] for x in problems)
    accepted = [j for j in soak.journeys if j.start.startswith("accepted")]
    config_times = [j.config_seconds for j in soak.journeys if j.config_seconds is not None]
    expired = [by_id[j.sid] for j in soak.journeys if j.outcome == "expired" and j.sid in by_id]
    lateness = [(s.ended_at - s.expires_at).total_seconds() for s in expired if s.ended_at]
    teardown_takeovers = [j.sid for j in soak.journeys
                          if j.stop_replica and j.sid in facts["ended_by"] and facts["ended_by"][j.sid] != j.stop_replica]
    return {
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "logs")},
        "users": users,
        "load_seconds": round(load_seconds, 1),
        "run_seconds": round(run_seconds, 1),
        "starts": len(soak.journeys),
        "no_free_user": soak.no_free_user,
        "sessions": len(accepted),
        "accepted_unanswered": sum(j.start == "accepted-unanswered" for j in soak.journeys),
        "accepted_on_retry": sum(j.start == "accepted-on-retry" for j in soak.journeys),
        "outcomes": dict(Counter(j.outcome for j in accepted)),
        "plans": dict(Counter(j.plan for j in accepted)),
        "extends": sum(j.extended for j in soak.journeys),
        "kills": soak.kills,
        "takeovers": {"provisioning": len(restarted), "teardown": len(teardown_takeovers),
                      "sessions_with_attempts_over_1": sum(s.attempts > 1 for s in every)},
        "requests_lost_to_kills": dict(soak.lb.lost),
        "configs_lost_in_flight": sum(j.config_lost_in_flight for j in soak.journeys),
        "phantom_refusals": sum(j.phantom_refusals for j in soak.journeys),
        "phantom_refused_people": sum(j.phantom_refusals > 0 for j in soak.journeys),
        "statuses": dict(soak.lb.statuses),
        "config_seconds": {"n": len(config_times), "p50": p(config_times, 0.5), "p99": p(config_times, 0.99),
                           "max": max(config_times, default=float("nan")),
                           "p99_started_during_a_kill": p([j.config_seconds for j in soak.journeys if j.saw_kill and j.config_seconds], 0.99)},
        "expiry_late_seconds": {"n": len(lateness), "p50": p(lateness, 0.5), "p99": p(lateness, 0.99), "max": max(lateness, default=float("nan"))},
        "counts": {k: kinds.get(k, 0) for k in ("duplicated", "lost", "orphaned", "untruthful", "untold", "driver")},
        "notices_lost_with_a_replica": lost_with_replica,
        "notices_late": late,
        "reconciled": reconciled,
        "problems": problems,
        "replica_errors": len(facts["errors"]),
        "journeys": [asdict(j) for j in soak.journeys] if args.json else [],
    }


def finish(report: dict[str, Any]) -> None:
    errors = report["facts"]["errors"]
    report["replica_error_lines"] = errors[:50]
    del report["facts"]


def show(r: dict[str, Any]) -> None:
    s = r["settings"]
    c, e, t = r["config_seconds"], r["expiry_late_seconds"], r["takeovers"]
    print(f"failover soak: 3 replicas on Azurite, dryrun at 0 s steps, {s['session_minutes']}-minute sessions, lease {s['lease']} s, "
          f"sweep {s['sweep']} s; {s['rate']} starts/s for {r['load_seconds']:.0f} s, a replica SIGKILLed every {s['kill_every']} s")
    print(f"sessions: {r['sessions']} accepted of {r['starts']} starts ({r['accepted_unanswered']} stored by a replica that died before it "
          f"answered, {r['accepted_on_retry']} died before they were stored: both found by pressing Start again); outcomes {r['outcomes']}; "
          f"{r['extends']} extends; {r['users']} people, {r['no_free_user']} starts skipped for want of a free person")
    print(f"kills: {len(r['kills'])} (" + ", ".join(f"{k['replica']}@{k['at']:.0f}s {k['aimed']}, back in {k['down_seconds']:.1f}s"
                                                   for k in r["kills"]) + ")")
    print(f"takeovers: {t['provisioning']} provisioning (sessions with more than one attempt: {t['sessions_with_attempts_over_1']}), "
          f"{t['teardown']} stops finished by another replica; requests lost with their replica: {r['requests_lost_to_kills']} "
          f"({r['configs_lost_in_flight']} one-time config downloads among them)")
    print(f"time to config (start sent -> config downloaded): p50 {c['p50']:.2f} s, p99 {c['p99']:.2f} s, max {c['max']:.2f} s over {c['n']}; "
          f"p99 of starts sent while a replica was down {c['p99_started_during_a_kill']:.2f} s")
    print(f"expiry after its time: p50 {e['p50']:.2f} s, p99 {e['p99']:.2f} s, max {e['max']:.2f} s over {e['n']}")
    counts = r["counts"]
    print(f"duplicated configs: {counts['duplicated']}; lost sessions: {counts['lost']}; orphaned servers: {counts['orphaned']}; "
          f"untruthful answers: {counts['untruthful']}; notices that never came: {counts['untold']} "
          f"(and {r['notices_lost_with_a_replica']} lost with a killed replica); driver errors: {counts['driver']}; replica log errors: {r['replica_errors']}")
    print(f"servers only reconcile removed (a replica died between a session's last write and its cleanup): {len(r['reconciled'])}; "
          f"notices later than {s['notice_wait']:.0f} s: {r['notices_late']}")
    print(f"known, not counted above: {r['phantom_refused_people']} people told \"You already have a VPN session running\" with none running "
          f"({r['phantom_refusals']} refusals: a cap slot left by a start that died with its replica, freed after SLOT_GRACE)")
    for line in r["problems"][:30]:
        print(f"  {line}")
    for line in r["replica_error_lines"][:10]:
        print(f"  log: {line}")
    cpu = r["cpu_seconds"]
    print(f"CPU: replicas {cpu['replicas']:.0f} s, Azurite {cpu['azurite']:.0f} s, this driver {cpu['driver']:.0f} s; "
          f"whole run {r['run_seconds']:.0f} s; replica logs: {r['logs']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300, help="how long starts keep coming (default 300: the long form)")
    parser.add_argument("--rate", type=float, default=5, help="starts a second")
    parser.add_argument("--kill-every", type=float, default=30, help="seconds between SIGKILLs (the first half a period in)")
    parser.add_argument("--users", type=int, default=0, help="people (default: enough for the rate)")
    parser.add_argument("--session-minutes", type=int, default=1)
    parser.add_argument("--lease", type=float, default=5, help="VPN_LEASE_SECONDS: a dead replica's work is taken over after this")
    parser.add_argument("--sweep", type=float, default=5, help="VPN_SWEEP_SECONDS")
    parser.add_argument("--expire-grace", type=float, default=20, help="once the load is over, sessions ending later than this are stopped")
    parser.add_argument("--settle", type=float, default=240, help="how long at most to wait for everything to end after the load")
    parser.add_argument("--notice-wait", type=float, default=15, help="how long a person reads on for the notice of what just happened")
    parser.add_argument("--poll", type=float, default=0.25, help="seconds between a person's looks at a session being set up (its first 5 s; then every second, as the page)")
    parser.add_argument("--seed", type=int, default=25)
    parser.add_argument("--json", help="write the whole report (every journey) here")
    parser.add_argument("--logs", help="keep the replicas' logs and the dryrun state here (default: a new temporary folder)")
    args = parser.parse_args()
    if args.logs:
        report = asyncio.run(run(args))
    else:
        with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
            args.logs = scratch
            report = asyncio.run(run(args))
            args.logs = None
            report["logs"] = "removed (--logs DIR keeps them)"
    show(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
