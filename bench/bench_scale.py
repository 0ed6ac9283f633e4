"""10,000 live sessions on Table Storage (Azurite): what a sweep, an expiry, `reap` and three `serve`
replicas cost when an organisation grows (issue 25, goal 1).

The live sessions are written at the store level, through TableStore's own API (`create_session`, with
the due time bot/engine/schedule.py gives them, as every write through the engine gets), not through
`/vpn start`: a Teams-sized conversation reference (~1 KB) each and one claim each (Teams' record of
where the QR card went, kept 8 days; a one-time config link for the GroupMe ones). 10 % of them are
GroupMe sessions whose notices reach a fake GroupMe bot-post endpoint in this process, so every
"ends in" / "has ended" notice can be counted per session. Every Table request of the in-process parts
is counted at the SDK's transport (raw_response_hook), with its table, its kind and the entities it
returned; a *scan* is a query with no PartitionKey condition on the table it reads.

Parts (`--parts`, default all; each seeds what it needs, in this order when several run):
  a  a sweep pass with nothing due at each level of `--levels`: requests, entities read, wall time
  b  one expiry and one warning: requests per session, and which of them are scans
  c  `app.py reap` as a fresh process over N live: nothing due, then with 10 % due (expired)
  d  three `serve` replicas (dryrun, 0 s steps): RSS after start-up and idle; then 10 % fall due within
     a few seconds: when the last warning and expiry were done, and each notice counted per session
  e  the sweeper in-process at `--e-sessions` live, sweeping in the background for `--e-seconds`:
     CPU % of one core and event-loop lag (a 10 ms ticker's overshoot), nothing due and with due work

    python bench/bench_scale.py [--sessions 10000] [--levels 1000,5000,10000] [--parts abcde]
                                [--project DIR (another checkout's code, e.g. main's, for "before" figures)]

Prints numbers; asserts nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import resource
import statistics
import sys
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from azurite_server import AzuriteServer, connection_string  # bench/ is the script's folder
from common import app_env, free_port

ROOT = BENCH.parent  # the project whose code runs (--project changes it before anything is imported)
DOMAIN = "bench.example"
GROUP_ID = "31337"
CALLBACK_SECRET = "bench-callback-secret-0123456789"
SEED_CONCURRENCY = 32  # sessions written at once, over all seeding processes
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
ACTIVE = ("requested", "provisioning", "ready", "expiring", "awaiting_approval")
GROUPME_RANGE = 100_000
WAVE_TAGS = [f"g{c}" for c in "abcdefghijklmnopqrstuvwxyz"]  # GroupMe sets: part c ends one, part d the next
NOTICE = re.compile(r"VPN session (\w+) (ends in|has ended)")


def project(root: Path) -> None:
    global ROOT
    ROOT = root
    sys.path.insert(0, str(root))


# ----- what is written --------------------------------------------------------------------------------

def guid(n: int, salt: int = 0) -> str:
    h = f"{(n * 2654435761 + salt * 97) & 0xFFFFFFFFFFFF:012x}"
    return f"{salt:08x}-{n % 65536:04x}-4{h[:3]}-8{h[3:6]}-{h}"


def teams_reference(i: int) -> dict[str, Any]:
    """What bot/channels/teams/activities.py stores for a 1:1 chat: botbuilder's serialized conversation
    reference plus tenant and user ids, with ids as long as Teams makes them (~1 KB in all)."""
    user = f"29:1{guid(i, 1).replace('-', '')}{guid(i, 2).replace('-', '')}-{'x' * 40}"
    return {
        "reference": {
            "activityId": f"1:1{guid(i, 3).replace('-', '')}{guid(i, 4).replace('-', '')}",
            "user": {"id": user, "name": f"Bench User {i}", "aadObjectId": guid(i)},
            "bot": {"id": f"28:{guid(7, 7)}", "name": "VPN Bot"},
            "conversation": {"isGroup": False, "conversationType": "personal", "tenantId": TENANT,
                             "id": f"a:1{guid(i, 5).replace('-', '')}{guid(i, 6).replace('-', '')}{'Q' * 90}"},
            "channelId": "msteams", "locale": "en-US",
            "serviceUrl": f"https://smba.trafficmanager.net/amer/{TENANT}/",
        },
        "tenant_id": TENANT, "user_id": user, "conversation_type": "personal",
    }


def spread(i: int, lo: float, hi: float) -> float:
    """A deterministic, evenly spread value in [lo, hi) for index i."""
    return lo + (hi - lo) * ((i * 7919) % 1000) / 1000


@dataclasses.dataclass(frozen=True)
class Batch:
    """Sessions `tag`0..: ids f"{tag}{i:06d}"; `kind` teams or groupme; expiring `lo`..`hi` minutes after `base`."""
    tag: str
    lo: int
    hi: int
    kind: str
    base: str  # ISO time
    minutes_lo: float = 60.0
    minutes_hi: float = 600.0
    claims: bool = True


def owner_of(tag: str, i: int, kind: str) -> tuple[str, str]:
    if kind == "groupme":  # the ids VPN_USERS lists: wave sets take turns between two ranges (one may still be live)
        j = i + GROUPME_RANGE * (WAVE_TAGS.index(tag) % 2 if tag in WAVE_TAGS else 0)
        return f"groupme:{groupme_user(j)}", f"groupme:{groupme_user(j)}"
    return f"teams:{guid(i, zlib.crc32(tag.encode()) & 0xFFFF)}", f"{tag}{i}@{DOMAIN}"


def groupme_user(i: int) -> str:
    return f"{1_000_000 + i}"


def settings_env(conn: str, prefix: str, data_dir: str, users: str, **extra: str) -> dict[str, str]:
    """The app's settings for this bench (also what the seeding processes build their Schedule from)."""
    return {"VPN_STORE": "azure-tables", "AZURE_STORAGE_CONNECTION_STRING": conn, "VPN_TABLE_PREFIX": prefix,
            "VPN_DATA_DIR": data_dir, "VPN_USERS": users, "VPN_MAX_SESSIONS": "10000", "VPN_DRYRUN_STEP_SECONDS": "0", **extra}


def make_session(b: Batch, i: int, schedule: Any) -> Any:
    from bot.messages import ConversationRef
    from bot.store.model import Session, SessionState

    base = datetime.fromisoformat(b.base)
    expires = base + timedelta(minutes=spread(i, b.minutes_lo, b.minutes_hi))
    ready = base - timedelta(minutes=10)
    owner, label = owner_of(b.tag, i, b.kind)
    conv = ConversationRef("teams", teams_reference(i)) if b.kind == "teams" else ConversationRef("groupme", {"group_id": GROUP_ID})
    sid = f"{b.tag}{i:06d}"
    fields: dict[str, Any] = dict(
        id=sid, owner=owner, owner_label=label, conversation=conv, state=SessionState.READY, provider="dryrun", region="local",
        created_at=ready - timedelta(seconds=20), expires_at=expires, minutes=int((expires - ready).total_seconds() // 60) + 1,
        updated_at=ready, ready_at=ready, endpoint=f"198.51.100.{i % 250 + 1}:51820", resource_id=f"dryrun-{sid}",
        client_address=f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}/32", client_public_key=f"{guid(i, 9).replace('-', '')}{'A' * 11}=",
        hourly_cost=0.01, server_up_at=ready,
    )
    names = {f.name for f in dataclasses.fields(Session)}
    s = Session(**{k: v for k, v in fields.items() if k in names})  # an older checkout (--project) may lack a field
    return schedule(s) if schedule is not None else s


def schedule_for(env: dict[str, str]) -> Any:
    """This checkout's due-time rule (bot/engine/schedule.py) under the bench's settings; None before it existed."""
    from bot.settings import Settings

    try:
        from bot.engine.schedule import Schedule
    except ImportError:
        return None
    settings = Settings.from_env(env)
    return Schedule(settings.sessions, settings.usage).apply


async def seed_batch(store: Any, b: Batch, schedule: Any, concurrency: int) -> int:
    from bot import one_time_configs
    from bot.one_time_configs import Claim

    gate = asyncio.Semaphore(concurrency)
    made = 0

    async def one(i: int) -> None:
        nonlocal made
        s = make_session(b, i, schedule)
        async with gate:
            outcome = await store.create_session(s, per_user=1, total=1_000_000)
            if getattr(outcome, "name", str(outcome)) != "CREATED":
                raise SystemExit(f"seeding {s.id}: {outcome}")
            if b.claims and b.kind == "teams":  # as bot/channels/teams/delivery.py's _remember_sent
                record = json.dumps({"conversation": dict(s.conversation.data), "activities": [f"1:{guid(i, 11)}"]}).encode()
                await store.add_claim(Claim(f"teams-qr:{s.id}:0", s.id, s.owner, f"vpn-{s.id}"[:15], s.created_at, s.created_at + timedelta(days=8),
                                            sealed=record))
            elif b.claims:  # a one-time config link (GroupMe's private delivery), sealed for 10 minutes
                await one_time_configs.hold(store, session_id=s.id, user=s.owner, tunnel_name=f"vpn-{s.id}"[:15],
                                            config="[Interface]\nPrivateKey = " + "B" * 43 + "=\n", now=datetime.now(timezone.utc),
                                            lifetime=timedelta(minutes=10))
            made += 1

    await asyncio.gather(*(one(i) for i in range(b.lo, b.hi)))
    return made


async def seed_worker(spec: dict[str, Any]) -> None:
    """One seeding process (`--seed-worker`, the spec on stdin): its share of the batches."""
    from bot.store.tables import TableStore

    store = TableStore.from_connection_string(spec["conn"], prefix=spec["prefix"])
    await store.open()
    try:
        schedule = schedule_for(spec["env"])
        for raw in spec["batches"]:
            await seed_batch(store, Batch(**raw), schedule, spec["concurrency"])
    finally:
        await store.close()


def runs(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted indices as [lo, hi) runs."""
    out: list[tuple[int, int]] = []
    for i in indices:
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


class Seeder:
    """Writes the live sessions of one table prefix, in two processes (the SDK's own CPU is most of the cost)."""

    def __init__(self, conn: str, prefix: str, env: dict[str, str], base: datetime, procs: int) -> None:
        self.conn, self.prefix, self.env, self.base, self.procs = conn, prefix, env, base, procs
        self.count: Counter[str] = Counter()  # tag -> sessions written (0..count-1)
        self.gaps: dict[str, set[int]] = defaultdict(set)  # tag -> indices below count that are missing (an interrupted earlier run)
        self.ended: set[str] = set()  # tags with an ended session
        self.seconds = 0.0

    async def discover(self) -> None:
        """What an earlier run left on this prefix (--azurite-port): sessions f"{tag}{i:06d}", and which tags have ended ones."""
        from azure.core.exceptions import ResourceNotFoundError
        from azure.data.tables.aio import TableClient

        async with TableClient.from_connection_string(self.conn, f"{self.prefix}sessions") as table:
            try:
                have: dict[str, set[int]] = defaultdict(set)
                async for e in table.list_entities(select=["PartitionKey", "state"], results_per_page=1000):
                    sid = e["PartitionKey"]
                    tag, index = sid[:-6], sid[-6:]
                    if index.isdigit():
                        have[tag].add(int(index))
                        if e["state"] not in ACTIVE:
                            self.ended.add(tag)
            except ResourceNotFoundError:
                return
        for tag, indices in have.items():
            self.count[tag] = max(indices) + 1
            self.gaps[tag] = set(range(self.count[tag])) - indices

    def wave_tag(self) -> str:
        """The first set of GroupMe sessions none of which has ended (each part that ends a set moves to the next)."""
        return next(t for t in WAVE_TAGS if t not in self.ended)

    async def to(self, wanted: dict[str, tuple[int, str]], **batch: Any) -> float:
        """Write tag -> (count, kind) up to `count` each; returns the seconds it took."""
        todo = [Batch(tag, lo, hi, kind, self.base.isoformat(), **batch) for tag, (n, kind) in wanted.items()
                for lo, hi in runs(sorted(self.gaps[tag] | set(range(self.count[tag], n))))]
        if not todo:
            return 0.0
        shares: list[list[dict[str, Any]]] = [[] for _ in range(self.procs)]
        for b in todo:
            step = -(-(b.hi - b.lo) // self.procs)
            for k in range(self.procs):
                lo, hi = b.lo + k * step, min(b.hi, b.lo + (k + 1) * step)
                if lo < hi:
                    shares[k].append(dataclasses.asdict(dataclasses.replace(b, lo=lo, hi=hi)))
        t = time.perf_counter()
        procs = []
        for share in shares:
            if not share:
                continue
            spec = {"conn": self.conn, "prefix": self.prefix, "env": self.env, "batches": share, "concurrency": max(1, SEED_CONCURRENCY // self.procs)}
            proc = await asyncio.create_subprocess_exec(sys.executable, str(Path(__file__).resolve()), "--seed-worker", "--project", str(ROOT),
                                                        stdin=asyncio.subprocess.PIPE, cwd=ROOT)
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(spec).encode())
            await proc.stdin.drain()
            proc.stdin.close()
            procs.append(proc)
        codes = [await p.wait() for p in procs]
        if any(codes):
            raise SystemExit(f"seeding failed (exit codes {codes})")
        for b in todo:
            self.count[b.tag] = max(self.count[b.tag], b.hi)
            self.gaps[b.tag] -= set(range(b.lo, b.hi))
        took = time.perf_counter() - t
        self.seconds += took
        return took


# ----- counting Table requests -------------------------------------------------------------------------

@dataclasses.dataclass
class Request:
    method: str
    table: str
    kind: str  # read (one entity by key), partition / range query, SCAN, insert, upsert/replace, merge, delete, batch, tables
    filter: str
    entities: int  # returned (queries, reads)
    size: int  # response bytes
    seconds: float  # from the request leaving the SDK's pipeline to its response (Azurite's time, mostly)


class Meter:
    """raw_request_hook + raw_response_hook: every request a TableServiceClient sends, with its time; classified afterwards (cheap in the hooks)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.raw: list[tuple[str, str, bytes, float]] = []

    def sent(self, pipeline_request: Any) -> None:
        pipeline_request.context["bench_sent"] = time.perf_counter()

    def __call__(self, pipeline_response: Any) -> None:
        r = pipeline_response.http_request
        try:
            body = pipeline_response.http_response.body()
        except Exception:
            body = b""
        took = time.perf_counter() - pipeline_response.context.get("bench_sent", time.perf_counter())
        self.raw.append((r.method, r.url, body, took))

    def mark(self) -> int:
        return len(self.raw)

    def since(self, mark: int) -> list[Request]:
        return [self._classify(*x) for x in self.raw[mark:]]

    def _classify(self, method: str, url: str, body: bytes, seconds: float) -> Request:
        parts = urlsplit(url)
        last = unquote(parts.path.rsplit("/", 1)[-1])
        name, _, args = last.partition("(")
        table = name[len(self.prefix):] if name.startswith(self.prefix) else name
        filt = parse_qs(parts.query).get("$filter", [""])[0]
        entities = body.count(b'"odata.etag"') if method == "GET" else 0
        if name in ("Tables", "$batch"):
            kind = "tables" if name == "Tables" else "batch"
        elif method == "GET":
            if "PartitionKey=" in args:
                kind = "read"
            elif re.search(r"PartitionKey eq ", filt):
                kind = "partition query"
            elif re.search(r"PartitionKey (lt|le|gt|ge) ", filt):
                kind = "range query"
            else:
                kind = "SCAN"
        else:
            kind = {"POST": "insert", "PUT": "upsert/replace", "MERGE": "merge", "PATCH": "merge", "DELETE": "delete"}.get(method, method)
        return Request(method, table, kind, filt, entities, len(body), seconds)


def summary(reqs: list[Request], per: float = 1.0) -> str:
    """Requests by table and kind (per session when `per` > 1): how many, the entities they returned, their time."""
    by: Counter[tuple[str, str]] = Counter((r.table, r.kind) for r in reqs)
    ents: Counter[tuple[str, str]] = Counter()
    secs: dict[tuple[str, str], float] = defaultdict(float)
    for r in reqs:
        ents[(r.table, r.kind)] += r.entities
        secs[(r.table, r.kind)] += r.seconds
    parts = []
    for (table, kind), n in sorted(by.items(), key=lambda x: (-x[1], x[0])):
        read = f", {ents[(table, kind)] / per:.0f} entities" if ents[(table, kind)] else ""
        parts.append(f"{table} {kind} ×{n / per:g}{read} {1000 * secs[(table, kind)] / per:.0f} ms")
    return "; ".join(parts) or "none"


def shape(filt: str) -> str:
    """A filter with its values elided, but a short partition key kept ('global', 'o'): one line per kind of query."""
    def value(m: re.Match[str]) -> str:
        return m.group(0) if m.group(1) and len(m.group(2)) <= 8 else (m.group(1) or "") + "'…'"
    return re.sub(r"(PartitionKey eq )?'([^']*)'", value, filt)


def scans(reqs: list[Request]) -> list[str]:
    """Queries the server answers by reading more than the entities they name: scans of a table (no PartitionKey
    condition), and partition queries that filter on another property (the server reads the whole partition)."""
    found: Counter[str] = Counter()
    for r in reqs:
        if r.kind == "SCAN":
            found[f"SCAN {r.table}: {shape(r.filter) or '(everything)'}"] += 1
        elif r.kind == "partition query" and " and " in r.filter:
            found[f"partition filter {r.table}: {shape(r.filter)}"] += 1
    return [f"{n}× {what}" for what, n in found.most_common()]


class TurnMeter(Meter):
    """A Meter that also keeps which meta `turn` rows were written (the row key is in a write's URL or body)."""

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix)
        self.turns: list[str] = []

    def __call__(self, pipeline_response: Any) -> None:
        super().__call__(pipeline_response)
        r = pipeline_response.http_request
        if r.method in ("PUT", "POST") and f"{self.prefix}meta" in r.url:
            m = re.search(r"PartitionKey='turn',RowKey='([^']*)'", unquote(r.url))
            if m:
                self.turns.append(m.group(1))
            elif r.body:
                with contextlib.suppress(ValueError, AttributeError, TypeError):
                    e = json.loads(r.body)
                    if e.get("PartitionKey") == "turn":
                        self.turns.append(e.get("RowKey", ""))


# ----- an in-process runtime on a counted store -----------------------------------------------------------

class Recorder:
    """A channel of the in-process runtime (bot/replies.py's protocol): counts notices, sends nothing."""

    speaks_commands = True

    def __init__(self, name: str = "teams", notices: Counter[tuple[str, str]] | None = None) -> None:
        self.name = name
        self.notices: Counter[tuple[str, str]] = Counter() if notices is None else notices

    async def attach(self, deps): ...
    async def send_card(self, conv, card): ...
    async def send_progress(self, conv, text, handle):
        return handle or "p"

    async def send_text(self, conv, text):
        m = NOTICE.search(text)
        if m:
            self.notices[(m.group(1), m.group(2))] += 1

    def can_deliver_privately(self, conv):
        return True

    async def check_private_delivery(self, conv, recipient): ...
    async def deliver_config(self, conv, recipient, delivery):
        return "delivered"

    async def retract_config(self, conv, session_id, handle): ...
    def routes(self, app): ...


def counted_store(conn: str, prefix: str, meter: Meter) -> Any:
    from azure.data.tables.aio import TableServiceClient

    from bot.store import tables

    # The client as TableStore.from_connection_string makes it: environment settings (aiohttp's
    # trust_env: ~/.netrc and proxy variables looked up in a thread per request) only with a proxy set.
    env_settings = getattr(tables, "_proxy_in_env", lambda: True)()  # a --project checkout before it: the SDK's default
    service = TableServiceClient.from_connection_string(conn, raw_request_hook=meter.sent, raw_response_hook=meter, use_env_settings=env_settings)
    return tables.TableStore(service, prefix=prefix)


def runtime(env: dict[str, str], store: Any, *, background: bool, recorder: Recorder) -> Any:
    """The app's Runtime (bot/wiring.py) with `store` in place of the one it would build from the settings."""
    from bot import wiring
    from bot.settings import Settings

    settings = Settings.from_env(env)
    wiring.make_store = lambda *_a, **_k: store  # type: ignore[assignment]  # the counted store; the rest is the app's own
    channels = [recorder, Recorder("groupme", recorder.notices)]  # GroupMe sessions' notices are counted with the rest
    return wiring.Runtime(settings, wiring.make_provider(settings), channels, background=background)


async def drain(ctx: Ctx) -> None:
    """What an earlier run left due on a reused Azurite (a wave its replicas did not finish), swept now:
    "nothing due" must mean it. Reported, never hidden."""
    from bot.store.model import utcnow

    meter, rec = Meter(ctx.prefix), Recorder()
    async with runtime(ctx.env, counted_store(ctx.conn, ctx.prefix, meter), background=False, recorder=rec) as rt:
        if not hasattr(rt.store, "due_sessions"):
            return  # a checkout before the due index (--project): nothing to ask
        passes = 0
        t = time.perf_counter()
        while passes < 30 and await rt.store.due_sessions(utcnow(), 500):
            await rt.service.sweep()
            await rt.runner.wait_idle()
            passes += 1
        if passes:
            told = Counter(m for (_, m), c in rec.notices.items() for _ in range(c))
            print(f"  (swept what an earlier run left due: {passes} pass(es), {time.perf_counter() - t:.1f} s, "
                  f"{told['ends in']} warned, {told['has ended']} ended)")


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


# ----- a) sweep passes, b) expiries -------------------------------------------------------------------------

async def measured_pass(rt: Any, meter: Any) -> tuple[float, list[Any]]:
    """One sweep pass and the work it started: its wall time and the Table requests it made."""
    mark = meter.mark()
    t = time.perf_counter()
    await rt.service.sweep()
    await rt.runner.wait_idle()
    return time.perf_counter() - t, meter.since(mark)


async def part_a(ctx: Ctx, level: int) -> None:
    meter = TurnMeter(ctx.prefix)
    rec = Recorder()
    async with runtime(ctx.env, counted_store(ctx.conn, ctx.prefix, meter), background=False, recorder=rec) as rt:
        first, reqs = await measured_pass(rt, meter)
        taken = [x for x in meter.turns if x]
        print(f"  [{level:>6,} live] a fresh process's first pass: {fmt_ms(first)}, {len(reqs)} requests, "
              f"{sum(r.entities for r in reqs):,} entities, {sum(r.size for r in reqs) / 1e6:.1f} MB read; "
              f"turns taken: {', '.join(taken) or 'none'}")
        if ctx.verbose or taken:
            print(f"      {summary(reqs)}")
        times, counts, last = [], [], []
        for _ in range(ctx.passes):
            meter.turns.clear()
            mark = meter.mark()
            t = time.perf_counter()
            await rt.service.sweep()
            times.append(time.perf_counter() - t)
            last = meter.since(mark)
            counts.append(len(last))
        print(f"  [{level:>6,} live] pass, nothing due (x{ctx.passes}): median {fmt_ms(statistics.median(times))}, max {fmt_ms(max(times))}; "
              f"requests per pass {'/'.join(map(str, counts))}, entities read {sum(r.entities for r in last):,}, "
              f"{sum(r.size for r in last) / 1e3:.0f} kB; turns taken: {', '.join(x for x in meter.turns if x) or 'none'}")
        if len(last) <= 8:  # one line per request: which query the time goes to
            for r in last:
                print(f"      {r.table} {r.kind} [{shape(r.filter) or '-'}]: {1000 * r.seconds:.0f} ms, {r.entities} entities")
        else:
            print(f"      {summary(last)}")
        for line in scans(last):
            print(f"      ! {line}")
        ctx.results.setdefault("a", {})[level] = (statistics.median(times), statistics.median(counts))
        if "b" in ctx.parts:
            await part_b(ctx, rt, meter, rec, level)


async def part_b(ctx: Ctx, rt: Any, meter: Meter, rec: Recorder, level: int) -> None:
    """K sessions due for their warning; then the same K expired: the pass that handles them, less an idle pass, per session."""
    from bot.store.model import SessionState

    k = ctx.k
    store = rt.store
    schedule = schedule_for(ctx.env)
    batch = Batch(f"b{ctx.nonce}{level}", 0, k, "teams", datetime.now(timezone.utc).isoformat(), minutes_lo=4.8, minutes_hi=4.9)  # 5-min warning due
    ids = [f"{batch.tag}{i:06d}" for i in range(k)]
    for name, phrase in (("warning", "ends in"), ("expiry", "has ended")):
        mark = meter.mark()
        await rt.service.sweep()
        idle = meter.since(mark)  # what a pass costs besides the K sessions: subtracted below
        if name == "warning":
            await seed_batch(store, batch, schedule, 8)
        else:
            await rewrite(store, ids, lambda i, now: now - timedelta(seconds=1), schedule, warned=True)
        took, reqs = await measured_pass(rt, meter)
        told = sum(n for (sid, what), n in rec.notices.items() if sid.startswith(batch.tag) and what == phrase)
        after = [await store.get(sid) for sid in ids]
        done = sum(1 for s in after if s is not None and (s.warned if name == "warning" else s.state is SessionState.DELETED))
        extra = list(reqs)
        for r in idle:  # take the idle pass's requests out, by (table, kind, shape of the filter)
            for j, x in enumerate(extra):
                if (x.table, x.kind, shape(x.filter)) == (r.table, r.kind, shape(r.filter)):
                    del extra[j]
                    break
        per = len(extra) / k
        print(f"  [{level:>6,} live] {name}: {k} due; the pass that handled them {fmt_ms(took)}, {per:.1f} requests per session "
              f"(beyond an idle pass's {len(idle)}); {done} {'warned' if name == 'warning' else 'deleted'}, {told} told '{phrase}'")
        print(f"      per session: {summary(extra, per=k)}")
        found = scans(extra)
        print(f"      scans per {k} sessions: {'; '.join(found) if found else 'none'}")
        ctx.results.setdefault("b", {})[(level, name)] = (per, found)


# ----- c) reap as a fresh process ------------------------------------------------------------------------

async def turns_due(ctx: Ctx) -> str:
    from azure.data.tables.aio import TableClient

    now = datetime.now(timezone.utc)
    due, held = [], []
    async with TableClient.from_connection_string(ctx.conn, f"{ctx.prefix}meta") as meta:
        try:
            async for e in meta.query_entities("PartitionKey eq 'turn'"):
                (due if datetime.fromisoformat(e["next_at"]) <= now else held).append(e["RowKey"])
        except Exception:
            return "no turns recorded yet"
    return f"turns due: {', '.join(sorted(due)) or 'none'}; held: {', '.join(sorted(held)) or 'none'}"


async def reap(ctx: Ctx, label: str) -> tuple[float, str]:
    before = await turns_due(ctx)
    env = app_env(**ctx.app_settings(), VPN_METRICS_PORT="0")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    azurite0 = proc_status(ctx.azurite_pid)["cpu"] if ctx.azurite_pid else 0.0
    t = time.perf_counter()
    profile = ["-m", "cProfile", "-o", f"{ctx.profile_reap}.{len(ctx.reaps)}"] if ctx.profile_reap else []
    ctx.reaps.append(label)
    proc = await asyncio.create_subprocess_exec(sys.executable, *profile, "app.py", "reap", cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    took = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    line = next((x for x in out.decode().splitlines() if x.startswith("reap:")), f"(no report; exit {proc.returncode})")
    warnings = [x for x in err.decode().splitlines() if x.strip()]
    azurite = f", Azurite {proc_status(ctx.azurite_pid)['cpu'] - azurite0:.2f} s CPU" if ctx.azurite_pid else ""
    print(f"  {label}: {took:.2f} s wall, {cpu:.2f} s CPU{azurite}, exit {proc.returncode} — {line}")
    print(f"      {before}; {len(warnings)} line(s) on stderr{': ' + warnings[0][:160] if warnings else ''}")
    return took, line


async def part_c(ctx: Ctx) -> None:
    n = ctx.n
    wave = ctx.wave_tag
    first, _ = await reap(ctx, f"reap over {n:,} live, nothing due (run 1)")
    second, _ = await reap(ctx, f"reap over {n:,} live, nothing due (run 2, right after)")
    turned = 0.0
    if ctx.traffic_wait:  # with no replica running, a reap every minute meets the traffic turn (VPN_TRAFFIC_SECONDS, 60 s) each time
        waited = await until_turn_due(ctx, "traffic", ctx.traffic_wait)
        if waited is not None:
            turned, _ = await reap(ctx, f"reap over {n:,} live, nothing due but the traffic turn (waited {waited:.0f} s for it)")
    ids = [f"{wave}{i:06d}" for i in range(ctx.seeder.count[wave])]
    t = time.perf_counter()
    await ctx.rewrite(ids, lambda i, now: now - timedelta(seconds=1))
    print(f"  made {len(ids):,} (10 %) expired: {time.perf_counter() - t:.1f} s of rewrites through the store (get + save each)")
    mark = len(ctx.groupme.posts)
    runs: list[tuple[float, str]] = []
    left = len(ids)
    while left and len(runs) < 4:  # what is left is the next scheduled run's (a minute later); here at once
        runs.append(await reap(ctx, f"reap over {n:,} live, {left:,} of the {len(ids):,} expired still live (run {len(runs) + 1})"))
        left = await ctx.still_live(ids)
    told = Counter(m for _, _, _, m in ctx.groupme.posts[mark:])
    print(f"      GroupMe notices: {told['has ended']} 'has ended' for {len(ids)} sessions ({told['ends in']} 'ends in'); {left} still live after "
          f"{len(runs)} run(s) taking {sum(t for t, _ in runs):.1f} s in all")
    ctx.results["c"] = (first, second, turned, runs, left)
    ctx.seeder.ended.add(wave)  # the next part's 10 % are new sessions, written now: live is N again
    took = await ctx.seeder.to({ctx.wave_tag: (len(ids), "groupme")})
    print(f"  wrote {len(ids):,} new GroupMe sessions in {took:.1f} s: {n:,} live again")


async def until_turn_due(ctx: Ctx, job: str, limit: float) -> float | None:
    """Wait (at most `limit` s) until the fleet's `job` turn falls due; the seconds waited, None if it did not."""
    from azure.data.tables.aio import TableClient

    t = time.perf_counter()
    async with TableClient.from_connection_string(ctx.conn, f"{ctx.prefix}meta") as meta:
        try:
            e = await meta.get_entity("turn", job)
        except Exception:
            return 0.0
    wait = (datetime.fromisoformat(e["next_at"]) - datetime.now(timezone.utc)).total_seconds() + 0.5
    if wait > limit:
        print(f"  (the {job} turn is {wait:.0f} s away: not waited for)")
        return None
    await asyncio.sleep(max(0.0, wait))
    return time.perf_counter() - t


# ----- d) three serve replicas ---------------------------------------------------------------------------

def listener_pid(port: int) -> int:
    """The process listening on 127.0.0.1:port (Azurite), from `ss`; 0 if it cannot be told."""
    import subprocess

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, timeout=5).stdout
        m = re.search(r"pid=(\d+)", out)
        if m:
            return int(m.group(1))
    return 0


def proc_status(pid: int) -> dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    out["cpu"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


async def wait_ready(port: int, proc: Any, timeout: float = 120) -> float:
    import aiohttp

    t = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.perf_counter() - t < timeout:
            if proc.returncode is not None:
                raise SystemExit(f"serve on port {port} exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    if resp.status == 200:
                        return time.perf_counter() - t
            await asyncio.sleep(0.05)
    raise SystemExit(f"serve on port {port}: no /readyz 200 within {timeout:.0f} s")


async def part_d(ctx: Ctx) -> None:
    replicas = []
    logs = []
    for k in range(3):
        port = free_port()
        data = Path(ctx.tmp) / f"replica{k}"
        data.mkdir()
        env = app_env(**ctx.app_settings(data_dir=str(data), bot=f"benchbot{k}"), PORT=str(port), VPN_METRICS_PORT=str(free_port()),
                      VPN_LOG_LEVEL="WARNING", **ctx.replica_env)
        log = open(data / "serve.log", "wb")  # noqa: SIM115  (closed below)
        logs.append(log)
        proc = await asyncio.create_subprocess_exec(sys.executable, "app.py", "serve", cwd=ROOT, env=env, stdout=log, stderr=log)
        replicas.append((port, proc, data))
    try:
        ready = await asyncio.gather(*(wait_ready(port, proc) for port, proc, _ in replicas))
        print(f"  three replicas ready (/readyz 200) after {', '.join(f'{x:.1f}' for x in ready)} s (started together over {ctx.n:,} live)")
        await asyncio.sleep(ctx.settle)
        at_ready = [proc_status(proc.pid) for _, proc, _ in replicas]
        t_idle = time.perf_counter()
        await asyncio.sleep(ctx.idle)
        idle_s = time.perf_counter() - t_idle
        after_idle = [proc_status(proc.pid) for _, proc, _ in replicas]
        for k, (a, b) in enumerate(zip(at_ready, after_idle)):
            print(f"  replica {k}: RSS {a['VmRSS']:.0f} MB {ctx.settle:.0f} s after ready, {b['VmRSS']:.0f} MB after {idle_s:.0f} s idle "
                  f"(peak so far {b['VmHWM']:.0f} MB); CPU while idle {100 * (b['cpu'] - a['cpu']) / idle_s:.1f} % of a core")
        # The wave: 10 % fall due within a few seconds. Their warnings are due at once (under 5 minutes left),
        # their expiries `--wave-delay` .. +`--wave-spread` s later, each at its own time.
        ids = [f"{ctx.wave_tag}{i:06d}" for i in range(ctx.seeder.count[ctx.wave_tag])]
        mark = len(ctx.groupme.posts)
        cpu0 = [proc_status(proc.pid)["cpu"] for _, proc, _ in replicas]
        azurite0 = proc_status(ctx.azurite_pid)["cpu"] if ctx.azurite_pid else 0.0
        start = time.perf_counter()
        wall0 = datetime.now(timezone.utc)
        expiry = {sid: wall0 + timedelta(seconds=ctx.wave_delay + spread(i, 0, ctx.wave_spread)) for i, sid in enumerate(ids)}
        await ctx.rewrite(ids, lambda i, now: expiry[ids[i]])
        written = time.perf_counter() - start
        deadline = start + ctx.wave_delay + ctx.wave_spread + ctx.wave_wait
        while time.perf_counter() < deadline:
            done = Counter(m for _, _, _, m in ctx.groupme.posts[mark:])
            if done["ends in"] >= len(ids) and done["has ended"] >= len(ids):
                break
            await asyncio.sleep(0.2)
        span = time.perf_counter() - start
        cpu1 = [proc_status(proc.pid)["cpu"] for _, proc, _ in replicas]
        azurite1 = proc_status(ctx.azurite_pid)["cpu"] if ctx.azurite_pid else 0.0
        posts = ctx.groupme.posts[mark:]
        per: dict[tuple[str, str], int] = Counter((sid, m) for _, _, sid, m in posts)
        by_bot: dict[str, Counter[str]] = defaultdict(Counter)
        for _, bot, _, m in posts:
            by_bot[bot][m] += 1
        warned = [t for t, _, _, m in posts if m == "ends in"]
        ended = [(t, sid) for t, _, sid, m in posts if m == "has ended"]
        late = sorted(t - (start + (expiry[sid] - wall0).total_seconds()) for t, sid in ended if sid in expiry)
        dup_w = sum(1 for sid in ids if per[(sid, "ends in")] > 1)
        dup_e = sum(1 for sid in ids if per[(sid, "has ended")] > 1)
        miss_w = sum(1 for sid in ids if per[(sid, "ends in")] == 0)
        miss_e = sum(1 for sid in ids if per[(sid, "has ended")] == 0)
        last = max([t for t, *_ in posts], default=start) - start
        print(f"  wave: {len(ids):,} sessions (10 %) made due, rewritten through the store in {written:.1f} s; warnings due at once, "
              f"expiries {ctx.wave_delay:.0f}..{ctx.wave_delay + ctx.wave_spread:.0f} s later")
        print(f"      warnings: {len(warned)} sent, last {max(warned, default=start) - start:.1f} s after the wave began; "
              f"{dup_w} sessions warned twice or more, {miss_w} never")
        if late:
            print(f"      expiries: {len(ended)} told, each after its due time by p50 {statistics.median(late):.1f} s, max {late[-1]:.1f} s; "
                  f"{dup_e} told twice or more, {miss_e} never")
        print(f"      all done {last:.1f} s after the wave began (the last expiry was due at {ctx.wave_delay + ctx.wave_spread:.0f} s); "
              f"still live afterwards: {await ctx.still_live(ids)}")
        def done_by(second: int, what: str) -> int:
            return sum(1 for t, _, _, x in posts if t - start <= second and x == what)

        marks = range(10, int(max([t for t, *_ in posts], default=start) - start) + 11, 10)
        print("      done by (warned/ended): " + ", ".join(f"{m} s {done_by(m, 'ends in')}/{done_by(m, 'has ended')}" for m in marks))
        print(f"      CPU over those {span:.0f} s: replicas " + ", ".join(f"{100 * (b - a) / span:.0f} %" for a, b in zip(cpu0, cpu1))
              + (f", Azurite {100 * (azurite1 - azurite0) / span:.0f} % of a core" if ctx.azurite_pid else ""))
        print("      by replica: " + "; ".join(f"{bot}: {c['ends in']} warnings, {c['has ended']} expiries" for bot, c in sorted(by_bot.items())))
        after = [proc_status(proc.pid) for _, proc, _ in replicas]
        print("      RSS after the wave: " + ", ".join(f"{s['VmRSS']:.0f} MB (peak {s['VmHWM']:.0f})" for s in after))
        ctx.results["d"] = ([s["VmRSS"] for s in after_idle], last, dup_w + dup_e, miss_w + miss_e)
    finally:
        for _, proc, _ in replicas:
            if proc.returncode is None:
                proc.terminate()
        for _, proc, _data in replicas:
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        for log in logs:
            log.close()
        for k, (_, _, data) in enumerate(replicas):
            text = (data / "serve.log").read_text(errors="replace").splitlines()
            errors = [x for x in text if "Traceback" in x or " ERROR " in x or '"ERROR"' in x]
            if errors or ctx.verbose:
                print(f"      replica {k} log: {len(text)} lines, {len(errors)} errors{': ' + errors[0][:200] if errors else ''}")


# ----- e) the sweeper's own cost -------------------------------------------------------------------------

async def part_e(ctx: Ctx, conn: str) -> None:
    n, seconds = ctx.e_sessions, ctx.e_seconds
    prefix = f"e{ctx.prefix}"
    env = settings_env(conn, prefix, str(Path(ctx.tmp) / "e"), ctx.env["VPN_USERS"])
    seeder = Seeder(conn, prefix, env, datetime.now(timezone.utc), ctx.procs)
    await seeder.discover()
    took = await seeder.to({"t": (n, "teams")})
    print(f"  wrote {n:,} live sessions in {took:.1f} s" if took else f"  reusing the {seeder.count['t']:,} sessions an earlier run wrote")
    meter = TurnMeter(prefix)
    rec = Recorder()
    async with runtime(env, counted_store(conn, prefix, meter), background=True, recorder=rec) as rt:
        try:  # the collector as `serve` sets it once listening (a --project checkout may lack it)
            from app import settle_heap
        except ImportError as exc:
            print(f"  (the heap is not settled as serve settles it: {exc})")
        else:
            settle_heap()
        for label, busy in (("nothing due", False), ("with due work", True)):
            if busy:  # a steady state of 60-minute sessions at this many live: n/60 warnings and n/60 expiries a minute
                rate = n / 60 / 60  # per second
                count = max(1, int(rate * seconds))
                now = datetime.now(timezone.utc)
                fresh = await untouched(rt.store, seeder.count["t"], 2 * count, now)
                ids, ids2 = fresh[:count], fresh[count:]
                await rewrite(rt.store, ids, lambda i, _now, now=now: now + timedelta(seconds=5 + spread(i, 0, seconds - 5) + 300), schedule_for(env))
                await rewrite(rt.store, ids2, lambda i, _now, now=now: now + timedelta(seconds=5 + spread(i, 0, seconds - 5)), schedule_for(env), warned=True)
                what = f"{count} warnings and {count} expiries due over the window ({n:,} sessions of 60 min)"
            else:
                what = "nothing due"
            lag: list[float] = []
            stop = asyncio.Event()

            before = Counter(m for (_, m), c in rec.notices.items() for _ in range(c))
            meter.turns.clear()
            mark = meter.mark()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            task = asyncio.create_task(lag_probe(lag, stop))
            await asyncio.sleep(seconds)
            stop.set()
            await task
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            reqs = meter.since(mark)
            lag.sort()
            told = Counter(m for (_, m), c in rec.notices.items() for _ in range(c)) - before
            p99 = lag[int(0.99 * (len(lag) - 1))] * 1000
            passes = sum(1 for r in reqs if r.table == "due" and r.kind == "range query" and "at le" in r.filter and "PartitionKey ge" not in r.filter)
            print(f"  {n:,} live, {label} ({what}), {wall:.0f} s: CPU {100 * cpu / wall:.1f} % of a core; loop lag p50 "
                  f"{lag[len(lag) // 2] * 1000:.1f} ms, p99 {p99:.1f} ms, max {lag[-1] * 1000:.0f} ms; {passes} passes; {len(reqs)} Table requests "
                  f"({sum(r.entities for r in reqs):,} entities); told {told['ends in']} 'ends in', {told['has ended']} 'has ended'; "
                  f"turns taken: {', '.join(meter.turns) or 'none'}")
            print(f"      {summary(reqs)}")
            ctx.results.setdefault("e", {})[label] = (100 * cpu / wall, p99)
            if busy:  # the warned ones would end 5 min later, in another run on this Azurite: far off instead
                await rewrite(rt.store, ids, lambda i, now: now + timedelta(hours=5), schedule_for(env), warned=True)


async def untouched(store: Any, count: int, wanted: int, now: datetime) -> list[str]:
    """Sessions t0.. still ready, unwarned and ending later than an hour from now (earlier runs ended or warned some)."""
    from bot.store.model import SessionState

    found: list[str] = []
    for i in range(count):
        s = await store.get(f"t{i:06d}")
        if s is not None and s.state is SessionState.READY and not s.warned and s.expires_at > now + timedelta(hours=1):
            found.append(s.id)
            if len(found) == wanted:
                break
    return found


async def lag_probe(lag: list[float], stop: asyncio.Event, tick: float = 0.01) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t = loop.time()
        await asyncio.sleep(tick)
        lag.append(loop.time() - t - tick)


async def rewrite(store: Any, ids: list[str], expires: Any, schedule: Any, *, warned: bool = False) -> None:
    """Move sessions' end to `expires(i, now)` through the store (get + save: a compare-and-set), due time stamped."""
    gate = asyncio.Semaphore(SEED_CONCURRENCY)

    async def one(i: int, sid: str) -> None:
        async with gate:
            s = await store.get(sid)
            now = datetime.now(timezone.utc)
            s = dataclasses.replace(s, expires_at=expires(i, now), updated_at=now, warned=warned)
            await store.save(schedule(s) if schedule is not None else s)

    await asyncio.gather(*(one(i, sid) for i, sid in enumerate(ids)))


# ----- the fake GroupMe ------------------------------------------------------------------------------------

class FakeGroupMe:
    """POST /bots/post on 127.0.0.1: every notice the app posts, as (time, bot id, session id, 'ends in' | 'has ended')."""

    def __init__(self) -> None:
        self.posts: list[tuple[float, str, str, str]] = []
        self.other = 0

    async def __aenter__(self) -> FakeGroupMe:
        from aiohttp import web

        async def post(request: web.Request) -> web.Response:
            body = await request.json()
            m = NOTICE.search(str(body.get("text", "")))
            if m:
                self.posts.append((time.perf_counter(), str(body.get("bot_id")), m.group(1), m.group(2)))
            else:
                self.other += 1
            return web.Response(status=202)

        app = web.Application()
        app.router.add_post("/bots/post", post)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


# ----- the run ---------------------------------------------------------------------------------------------

class Ctx:
    def __init__(self, args: argparse.Namespace, conn: str, tmp: str, groupme: FakeGroupMe) -> None:
        self.parts = set(args.parts)
        self.profile_reap: str | None = args.profile_reap
        self.reaps: list[str] = []  # part c's runs, in order (the profiles are numbered so)
        self.n = args.sessions
        self.levels = sorted({x for x in args.levels if x < self.n} | {self.n}) if "a" in self.parts else [self.n]
        self.passes, self.k, self.verbose, self.procs = args.passes, args.k, args.verbose, args.seed_procs
        self.settle, self.idle = args.settle, args.idle
        self.wave_delay, self.wave_spread, self.wave_wait = args.wave_delay, args.wave_spread, args.wave_wait
        self.e_sessions, self.e_seconds = args.e_sessions, args.e_seconds
        self.traffic_wait = args.traffic_wait
        self.replica_env = {"VPN_SWEEP_SECONDS": str(args.sweep_seconds)} if args.sweep_seconds else {}
        self.conn, self.tmp, self.groupme = conn, tmp, groupme
        self.prefix = args.prefix
        self.nonce = os.urandom(2).hex()  # part b's sessions are new in every run
        self.results: dict[str, Any] = {}
        # Everyone is allowed (revocation checks every owner): Teams owners by their verified email's
        # domain, GroupMe owners by id (the ids the wave sets can have: two of them at most).
        self.users = f"domain:{DOMAIN}," + ",".join(f"groupme:{groupme_user(i + r)}" for r in (0, GROUPME_RANGE) for i in range(self.n // 10))
        self.env = settings_env(conn, self.prefix, str(Path(tmp) / "inproc"), self.users)
        self.seeder = Seeder(conn, self.prefix, self.env, datetime.now(timezone.utc), self.procs)
        self.store: Any = None
        self.azurite_pid = 0

    def app_settings(self, *, data_dir: str | None = None, bot: str = "benchreap") -> dict[str, str]:
        return {**settings_env(self.conn, self.prefix, data_dir or str(Path(self.tmp) / "reap"), self.users),
                "GROUPME_BOT_ID": bot, "GROUPME_GROUP_ID": GROUP_ID, "GROUPME_CALLBACK_SECRET": CALLBACK_SECRET,
                "GROUPME_API_URL": self.groupme.url, "GROUPME_ACCESS_TOKEN": "bench-token", "VPN_PUBLIC_URL": "http://127.0.0.1:9"}

    async def rewrite(self, ids: list[str], expires: Any) -> None:
        await rewrite(self.store, ids, expires, schedule_for(self.env))

    async def still_live(self, ids: list[str]) -> int:
        from bot.store.model import ACTIVE_STATES

        gate = asyncio.Semaphore(SEED_CONCURRENCY)

        async def live(sid: str) -> bool:
            async with gate:
                s = await self.store.get(sid)
                return s is not None and s.state in ACTIVE_STATES

        return sum(await asyncio.gather(*(live(sid) for sid in ids)))

    @property
    def wave_tag(self) -> str:
        return self.seeder.wave_tag()

    async def seed(self, live: int) -> None:
        groupme = live // 10
        if self.seeder.count["t"] > live - groupme:
            print(f"  ({self.seeder.count['t']:,} Teams sessions are here already from an earlier run: more than {live:,} live)")
        took = await self.seeder.to({"t": (live - groupme, "teams"), self.wave_tag: (groupme, "groupme")})
        if took:
            print(f"seeded to {live:,} live ({groupme:,} of them GroupMe) in {took:.1f} s "
                  f"({sum(self.seeder.count.values()) / max(self.seeder.seconds, 1e-9):.0f} sessions/s so far)")


async def run(args: argparse.Namespace) -> None:
    from bot.store.tables import TableStore

    ref = json.dumps({"channel": "teams", "data": teams_reference(12345)}, sort_keys=True)
    with contextlib.ExitStack() as stack:
        port = args.azurite_port or stack.enter_context(AzuriteServer())
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-scale-"))
        conn = connection_string(port)
        async with FakeGroupMe() as groupme:
            ctx = Ctx(args, conn, tmp, groupme)
            ctx.azurite_pid = listener_pid(port)
            await ctx.seeder.discover()
            if ctx.seeder.count:
                print(f"reusing what earlier runs wrote under the prefix {ctx.prefix!r} on 127.0.0.1:{port}: "
                      f"{sum(n for t, n in ctx.seeder.count.items() if t == 't' or t in WAVE_TAGS):,} sessions")
                ctx.levels = [x for x in ctx.levels if x >= ctx.seeder.count["t"] * 10 // 9]
                await drain(ctx)
            print(f"project: {ROOT} ({git_head(ROOT)}); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
                  "(wall times on a shared machine move with it: CPU seconds are printed where a process is timed)")
            print(f"Azurite ({'already running' if args.azurite_port else 'in memory'}) on 127.0.0.1:{port}; live sessions written at the store level through TableStore's own API "
                  f"(create_session with the Schedule's due time), {args.seed_procs} processes × {SEED_CONCURRENCY // args.seed_procs} at once; "
                  f"a Teams conversation reference of {len(ref)} bytes each, one claim each (Teams: the QR card record, 8 days; GroupMe: "
                  f"a one-time config link, 10 min); 10 % GroupMe sessions whose notices reach a fake GroupMe on 127.0.0.1; "
                  f"expiries spread 1 h .. 10 h ahead, warnings 5 min before")
            ctx.store = TableStore.from_connection_string(conn, prefix=ctx.prefix)
            await ctx.store.open()
            try:
                if "a" in ctx.parts or "b" in ctx.parts:
                    print("\na) a sweep pass with nothing due" + (" / b) one warning, one expiry" if "b" in ctx.parts else ""))
                    for level in ctx.levels:
                        await ctx.seed(level)
                        await part_a(ctx, level)
                if "c" in ctx.parts:
                    await ctx.seed(ctx.n)
                    print(f"\nc) `app.py reap` as a fresh process over {ctx.n:,} live")
                    await part_c(ctx)
                if "d" in ctx.parts:
                    await ctx.seed(ctx.n)
                    print(f"\nd) three `serve` replicas over {ctx.n:,} live (dryrun, 0 s steps, Table Storage, GroupMe to the fake)")
                    await part_d(ctx)
            finally:
                await ctx.store.close()
            if "e" in ctx.parts:
                print(f"\ne) the sweeper in-process at {args.e_sessions:,} live, background sweeping, {args.e_seconds:.0f} s per case")
                await part_e(ctx, conn)
            report(ctx)


def git_head(root: Path) -> str:
    import subprocess

    out = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    return out.stdout.strip()[:90] or "not a git checkout"


def report(ctx: Ctx) -> None:
    r = ctx.results
    print(f"\nsummary (goals of issue 25.1; load average now {os.getloadavg()[0]:.1f})")
    for level, (t, n) in sorted(r.get("a", {}).items()):
        print(f"  pass, nothing due, {level:,} live: {fmt_ms(t)}, {n:g} requests (goal: <= 50 ms, O(1) requests)")
    for (level, name), (per, found) in sorted(r.get("b", {}).items()):
        print(f"  {name}, {level:,} live: {per:.1f} requests per session, {len(found)} kind(s) of scan (goal: a handful of keyed requests, no scans)")
    if "c" in r:
        first, second, turned, runs, left = r["c"]
        print(f"  reap, {ctx.n:,} live: nothing due {first:.1f} s / {second:.1f} s" + (f", with the traffic turn {turned:.1f} s" if turned else "")
              + f" (goal <= 3 s); 10 % due: {' + '.join(f'{t:.1f} s' for t, _ in runs)} over {len(runs)} run(s), {left} left live (goal: one run, <= 20 s)")
        for _t, line in runs:
            print(f"      {line}")
    if "d" in r:
        rss, last, dups, missing = r["d"]
        print(f"  serve x3, {ctx.n:,} live: RSS idle {', '.join(f'{x:.0f}' for x in rss)} MB (goal <= 120 MB each); the 10 % wave done in "
              f"{last:.1f} s (goal <= 60 s), {dups} duplicated, {missing} missing (goal: 0 and 0)")
    for label, (cpu, p99) in r.get("e", {}).items():
        print(f"  sweeper, {ctx.e_sessions:,} live, {label}: {cpu:.1f} % CPU, lag p99 {p99:.1f} ms (goal <= 5 %, <= 20 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000, help="live sessions (N)")
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",") if x], default=[1000, 5000, 10_000],
                        help="live counts at which part a measures (those below N, and N)")
    parser.add_argument("--parts", default="abcde", help="which parts to run: letters of abcde")
    parser.add_argument("--passes", type=int, default=5, help="a: measured passes per level")
    parser.add_argument("--k", type=int, default=20, help="b: sessions due for a warning, and for an expiry")
    parser.add_argument("--settle", type=float, default=5.0, help="d: seconds after /readyz before the first RSS reading")
    parser.add_argument("--idle", type=float, default=30.0, help="d: idle seconds between the RSS readings")
    parser.add_argument("--wave-delay", type=float, default=20.0, help="d: the first expiry, seconds after the wave began")
    parser.add_argument("--wave-spread", type=float, default=10.0, help="d: expiries spread over this many seconds")
    parser.add_argument("--wave-wait", type=float, default=60.0, help="d: how long past the last expiry to wait for notices")
    parser.add_argument("--sweep-seconds", type=float, default=0, help="d: VPN_SWEEP_SECONDS of the replicas (0: the app's default)")
    parser.add_argument("--traffic-wait", type=float, default=70.0,
                        help="c: wait up to this long for the traffic turn to fall due, for a reap that takes it (0: skip)")
    parser.add_argument("--e-sessions", type=int, default=3000)
    parser.add_argument("--e-seconds", type=float, default=60.0)
    parser.add_argument("--seed-procs", type=int, default=2)
    parser.add_argument("--azurite-port", type=int, default=0,
                        help="use an Azurite already listening on 127.0.0.1 (what earlier runs wrote under --prefix is reused)")
    parser.add_argument("--prefix", default="scale", help="table prefix of the live sessions (part e: 'e' + this)")
    parser.add_argument("--profile-reap", metavar="FILE", help="c: run each reap under cProfile, writing FILE.0, FILE.1, ... (CPU hot spots of an expiry)")
    parser.add_argument("--project", type=Path, default=None, help="run another checkout's code (e.g. a worktree of main)")
    parser.add_argument("--seed-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    project((args.project or ROOT).resolve())
    if args.seed_worker:
        asyncio.run(seed_worker(json.loads(sys.stdin.read())))
        return
    import logging

    logging.basicConfig(level=logging.WARNING, format="  (log) %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
