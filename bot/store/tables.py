"""Azure Table Storage store: any number of replicas (or none, with `reap`) share one account.

The only module that imports the Table Storage SDK (`azure.data.tables.aio`). Every table name
starts with VPN_TABLE_PREFIX. What makes it safe to share (docs/decisions.md, "Table Storage"):

* sessions: one entity each (PartitionKey = session id); a save is an update conditioned on the
  ETag read (If-Match), so a stale write fails with 412 and becomes `Conflict`;
* caps: a session holds one numbered slot entity per cap, inserted with insert-if-absent
  (`user|<owner>` 0..per_user-1, and global slot n in `global|<n % 64>`). Two inserts of one slot cannot
  both succeed, so the caps hold across replicas; the user slot names the global one, so both go by key
  when the session ends (a slot whose session ended or never got written is reclaimed when the cap
  looks full). The owner's slot partition is also the owner index: `sessions(owner=)` reads it;
* message ids, address reservations (`~a|<scope>|<shard>`): insert-if-absent; claims (`~c|<token hash>`):
  consumed by an ETag-conditioned update; both indexed by session (`~s|<session id>`, in
  tables of their own, `claimindex` and `addressindex`), claims also by the minute they fall due (`~f|<minute>|<shard>`; `~e|` for the earlier layout), so
  ending a session or purging is keyed or ranged;
* a session's and a claim's RowKey is its own key again, never a constant (see `_session_row`);
* keys from outside (emails, identities, message ids, addresses) go through `store_key` (bot/store/codec.py):
  bounded and injective, so no input can make a key Table Storage refuses or collide with another;
* sign-in attempts: each counter is a partition of its own per window holding up to `limit` numbered
  slots taken by insert-if-absent (two rounds at most, then the window counts as used up), so a
  flood on one account neither loops on one entity nor touches another account's partition;
* audit: 32 shards of a partition per day (`~<shard>|<day>`), each newest first, read as one merged
  stream; a refusal is counted on one sampled row per identity, reason and hour rather than written
  row by row; `purge_expired` keeps it to its retention;
* outbox: one partition, an item per (event, target) inserted if absent, claimed and marked delivered
  by ETag-conditioned updates; delivered items are forgotten after a week;
* usage: 32 partitions per month (of the session's request), one row per session (an upsert: a
  record written twice is one row); a month's report reads one range of partitions;
* progress: 64 partitions by a hash of the key, indexed by the hour written for the purge.

No partition takes more than a few percent of the writes of a pass or of a flood of starts
(docs/decisions.md, "Issue 25: partitions"). Rows of the layout before that (`global` slots, claims and
reservations keyed below `~`, audit days, month partitions, `progress`) are still read, released and purged.

Fields serialise from the Session dataclass (bot/store/codec.py): a new field needs no change here.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import heapq
import json
import logging
import os
import random
import secrets
import time
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Mapping, Sequence

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient

from bot.messages import ConversationRef
from bot.one_time_configs import Claim
from bot.store.codec import decode, encode, refusal_sample, store_key
from bot.store.model import ACTIVE_STATES, TERMINAL_STATES, Conflict, Session, SessionState, utcnow
from bot.store.ports import (
    AUDIT_RETENTION,
    NOTIFICATION_MEMORY,
    SIGN_IN_MEMORY,
    USAGE_RETENTION,
    AuditEntry,
    Contact,
    CreateOutcome,
    LocalUser,
    Notification,
    UsageRecord,
    Worker,
)
from bot.store.usage_codec import decode_usage, encode_usage, month_of

log = logging.getLogger(__name__)

MESSAGE_ID_TTL = timedelta(days=2)
WORKER_TTL = timedelta(days=1)
AUDIT_TEXT_LIMIT = 200
HOUSEKEEPING_EVERY = timedelta(minutes=10)  # purge of old message ids and workers, per process
# Ended sessions are kept this long (the audit log keeps the history): every listing filters the
# whole sessions table on the server, so the table should hold what is live plus a little past.
ENDED_RETENTION = timedelta(days=7)
# A slot whose session is not in the store yet may belong to a create in progress (slots are taken
# before the session is written); only after this long is it taken for a crash's leftover.
SLOT_GRACE = timedelta(seconds=15)  # a create takes milliseconds; a start killed mid-way blocks its owner no longer than this
SLOT_ROUNDS = 50
BLIND_TRIES = 3
TABLES = ("sessions", "slots", "seen", "audit", "claims", "workers", "addresses", "users", "attempts", "progress", "meta", "usage", "outbox", "due",
          "claimindex", "addressindex")
DUE_SHARDS = 16  # a minute's due entries spread over this many partitions
DUE_READ_CONCURRENCY = 16  # due entries whose session is read at once
DUE_PAGE = 100  # due entries looked at together
IN_FLIGHT_GRACE = timedelta(minutes=5)  # a due entry written for a write that has not landed is left alone this long after it was written
_CREATING = "create"  # the `pending` mark of a due entry written before its session is created
_FORGET = "f"  # due-table partitions of ended sessions' forget times ("f<minute>|<shard>"; live ones start with a digit)
_NOTIFY_DUE = "n"  # due-table partitions of pending notifications ("n<minute>|<shard>")
_TURN = "turn"  # the meta table's partition of fleet-wide job turns (take_turn)
PROGRESS_TTL = timedelta(days=2)
PROGRESS_TEXT_LIMIT = 16_000  # a string property holds 32k characters
_OLD_SESSION_ROW = "s"  # a session's RowKey before it was its id (see _session_row); such rows are still read and written
_OLD_ROW_VERSION = "s|"  # the version of a session read from such a row starts with it (an ETag never does)
_READS_ID_ROWS = "reads_id_rows"  # a worker row's mark: its version finds sessions keyed by id twice (see _id_rows)
OLD_WORKER_WINDOW = timedelta(minutes=3)  # a worker heard from this recently may still run (heartbeats come once a minute)
OLD_WORKER_LOOK_EVERY = 60.0  # seconds: how often a process that creates sessions looks again
_OLD_CLAIM_ROW = "c"  # a claim's RowKey before it was its token hash
SEEN_SPREAD = 256  # message ids spread over this many partitions per channel
ATTEMPT_ROUNDS = 2  # list the counter's slots and insert a free one; a second round if another request won it
ATTEMPT_KEEP = timedelta(days=1)  # counters of windows older than this are purged
AUDIT_COUNT_TRIES = 3  # compare-and-set tries to count a repeated refusal; past them the count is a lower bound
PURGE_EVERY = timedelta(minutes=10)  # purge_expired runs at most this often per process
_KNOWN = "known|"  # attempts-table partitions of remembered sign-ins (window partitions start with a digit)
_LEGACY_ATTEMPTS = "attempt"  # the single counter partition of earlier versions: purged
_CONTACT = "contact"  # the meta table's partition of approvers' private chats
_NOTIFY = "notify"  # the meta table's partition of chats registered with /vpn notify here
_OUTBOX = "o"  # the outbox's one partition: pending items are found by a filter on it (delivered ones are purged after a week)
# Issue 25: no hot partition. New layouts key their partitions at or above "~" where the earlier layout
# did not (claims, addresses, audit): what lies below "~" is the earlier layout's, still read and purged
# until none is left (LEGACY_RECHECK).
SLOT_SHARDS = 64  # global cap slot n lives in partition global|{n % 64}
SPREAD = 64  # address reservations, the claims' due index and progress texts spread over this many partitions
AUDIT_SHARDS = 32  # audit rows of a day: every read merges this many streams, so fewer than SPREAD
USAGE_SHARDS = 32  # usage records of a month (one range query reads them all)
CLAIM_PURGE_EVERY = timedelta(seconds=30)  # the sweeper's purge of claims fallen due, at most this often per process
CLAIM_KEEP = timedelta(days=1)  # a claim is forgotten this long after it expired (its state reads "expired" until then)
LEGACY_RECHECK = 600.0  # seconds: while rows of the earlier layout remain, look again this often (once none remain, never)
_LEGACY_GLOBAL = "global"  # the global cap's one partition before issue 25
_LEGACY_PROGRESS = "progress"  # the progress texts' one partition before issue 25
_NEW = "~"  # claims, addresses, audit: partition keys of the issue-25 layout start with it
_CLAIM = "~c|"  # a claim: ~c|<token hash>, row <token hash> (earlier: row "c")
_BY_SESSION = "~s|"  # claimindex, addressindex: a row per claim / reservation of the session ~s|<session id> (earlier: in claims, addresses)
_CLAIM_DUE = "~f|"  # ~f|<minute>|<shard>: a row per claim and step (erase its sealed config; forget it)
_OLD_CLAIM_DUE = "~e|"  # the same for claims of row "c": a replica of that version reads these only, never a new claim's steps
_INDEX_OF = {"claims": "claimindex", "addresses": "addressindex"}  # the table of each one's by-session index (earlier: itself)
_RESERVED = "~a|"  # ~a|<scope>|<shard>: the reservation of an address
_PROGRESS_DUE = "~d|"  # ~d|<hour>|<shard>: progress keys written that hour (the purge reads past hours only)
PROGRESS_INDEX_MEMORY = 10_000  # keys whose index row this process wrote this hour (an upsert: forgetting costs a write)


_key = store_key


# Every key is unique in its RowKey too (a session's and a claim's RowKey is their PartitionKey's key, not a
# constant): Azurite finds an entity by RowKey first (a binary index) and then filters what shares it, so a
# constant RowKey made every keyed read and write of a session or claim a scan of the whole table there
# (6.7 ms against 1.6 ms at 10,000 sessions). Table Storage itself finds a row by both keys either way.

def _session_row(session: Session) -> tuple[str, str, str]:
    """(PartitionKey, RowKey, ETag) of the row the session was read from: a row of the earlier layout is
    written where it was (its version says so) until the session is forgotten; a new one is keyed by id twice."""
    key = _key(session.id)
    if session.version.startswith(_OLD_ROW_VERSION):
        return key, _OLD_SESSION_ROW, session.version[len(_OLD_ROW_VERSION):]
    return key, key, session.version


def _entity(session: Session) -> dict[str, Any]:
    values = {k: v for k, v in encode(session).items() if v is not None}
    pk, rk, _ = _session_row(session)
    values.update(PartitionKey=pk, RowKey=rk)
    return values


def _session(entity: Any) -> Session:
    etag = entity.metadata["etag"]
    return decode(entity, _OLD_ROW_VERSION + etag if entity["RowKey"] == _OLD_SESSION_ROW else etag)


def _held_slots(etags: dict[tuple[str, str], str], *keys: tuple[str, str]) -> str:
    """The note a session keeps of its slots: [[PartitionKey, RowKey, ETag], ...] as JSON; none ("": released
    through the owner's slot partition) unless every slot's ETag is known, so a release never misses one."""
    if any(key not in etags for key in keys):
        return ""
    return json.dumps([[pk, rk, etags[pk, rk]] for pk, rk in keys], separators=(",", ":"))


def _parse_held(note: str) -> list[tuple[str, str, str]] | None:
    """The slots a note names; None when there is no usable note (a session written before notes existed)."""
    try:
        rows = json.loads(note) if note else None
    except ValueError:
        return None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) and len(r) == 3 and all(isinstance(x, str) for x in r) for r in rows):
        return None
    return [(r[0], r[1], r[2]) for r in rows]


def _proxy_in_env() -> bool:
    """Whether the SDK's HTTP client should read proxy settings from the environment. When it does
    (aiohttp's trust_env), every request looks up ~/.netrc and the proxy variables in a worker thread:
    two thread hand-offs, about a third of a Table request's CPU. Without a proxy configured there is
    nothing to find, so the lookups are skipped; with one, they stay (a proxy needs them)."""
    return any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"))


def _in_states(states: Sequence[SessionState]) -> tuple[str, dict[str, Any]]:
    """A filter on the state column, and its parameters (the SDK substitutes @names split on spaces: the
    parentheses stand apart from them)."""
    return "( " + " or ".join(f"state eq @s{i}" for i in range(len(states))) + " )", {f"s{i}": s.value for i, s in enumerate(states)}


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


class TableStore:
    def __init__(self, service: TableServiceClient, *, prefix: str = "vpn", credential: Any = None) -> None:
        self._service = service
        self._credential = credential  # closed with the store when we built it
        self._prefix = prefix
        self._t: dict[str, TableClient] = {}
        self._housekept_at: datetime | None = None
        self._progress_purged_at: datetime | None = None
        self._purged_at: datetime | None = None
        self._turns: dict[str, tuple[datetime, str]] = {}  # job -> (next time, mark) as last read or written
        self._legacy_state: dict[str, tuple[bool, float]] = {}  # rows of the layout before issue 25: (present, checked at)
        self._legacy_looks: dict[str, asyncio.Lock] = {}
        self._throttled: dict[str, datetime] = {}
        self._progress_indexed: dict[str, str] = {}  # progress key -> the hour its index row was written by this process
        self._id_rows_seen: tuple[bool, float] | None = None  # (whether no earlier version runs, looked at)

    @classmethod
    def from_connection_string(cls, conn_str: str, *, prefix: str = "vpn") -> "TableStore":
        return cls(TableServiceClient.from_connection_string(conn_str, use_env_settings=_proxy_in_env()), prefix=prefix)

    @classmethod
    def from_endpoint(cls, endpoint: str, *, prefix: str = "vpn", credential: Any = None) -> "TableStore":
        """Production: the managed identity through azure-identity's default chain (built here, lazily)."""
        owned = None
        if credential is None:
            from azure.identity.aio import DefaultAzureCredential

            credential = owned = DefaultAzureCredential()
        return cls(TableServiceClient(endpoint=endpoint, credential=credential, use_env_settings=_proxy_in_env()), prefix=prefix, credential=owned)

    def _table(self, name: str) -> TableClient:
        return self._t[name]

    async def open(self) -> None:
        """One request when the tables exist (the deployment declares them): list ours, create only
        what is missing (concurrently: a fresh account's first start)."""
        wanted = {f"{self._prefix}{name}": name for name in TABLES}
        present = {t.name async for t in self._service.query_tables(
            "TableName ge @lo and TableName lt @hi", parameters={"lo": self._prefix, "hi": self._prefix + "{"})}

        async def create(full: str) -> None:
            try:
                await self._service.create_table(full)
            except ResourceExistsError:
                pass  # another replica made it meanwhile

        await asyncio.gather(*(create(full) for full in wanted if full not in present))
        for full, name in wanted.items():
            self._t[name] = self._service.get_table_client(full)

    async def close(self) -> None:
        for client in self._t.values():
            await client.close()
        self._t.clear()
        await self._service.close()
        if self._credential is not None:
            await self._credential.close()

    async def _query(self, table: str, query: str, parameters: dict[str, Any] | None = None, **kw: Any) -> AsyncIterator[Any]:
        async for entity in self._table(table).query_entities(query, parameters=parameters, **kw):
            yield entity

    # ----- sessions ------------------------------------------------------------------------------

    async def create_session(self, session: Session, *, per_user: int, total: int) -> CreateOutcome:
        now = utcnow()
        id_rows = await self._id_rows()  # before any slot is taken: a failure here leaves nothing behind
        user_slots = f"user|{_key(session.owner)}"
        pick = await self._pick_global(total)  # named by the user slot: the session's slots are released by key
        etags: dict[tuple[str, str], str] = {}
        mine = await self._take_slot(user_slots, per_user, session.id, now, {"global_pk": pick[0], "global_rk": pick[1]}, etags)
        if mine is None:
            return CreateOutcome.USER_LIMIT
        everyone = await self._take_global(total, session.id, now, pick, (user_slots, mine), etags)
        if everyone is None:
            await self._table("slots").delete_entity(user_slots, mine)
            return CreateOutcome.GLOBAL_LIMIT
        held = _held_slots(etags, everyone, (user_slots, mine))
        entity = _entity(dataclasses.replace(session, held_slots=held))
        if not id_rows:
            entity["RowKey"] = _OLD_SESSION_ROW
        try:
            await self._schedule_due(session, pending=_CREATING)  # before the session: a crash in between leaves a hint, never an unswept session
            await self._table("sessions").create_entity(entity)
        except BaseException:
            await self._table("slots").delete_entity(user_slots, mine)
            await self._table("slots").delete_entity(*everyone)
            raise
        return CreateOutcome.CREATED

    async def _take_slot(
        self, partition: str, limit: int, session_id: str, now: datetime, extra: dict[str, Any] | None = None, etags: dict[tuple[str, str], str] | None = None,
    ) -> str | None:
        """Insert-if-absent one of `limit` numbered slots of one partition (a user's); its row key, None when all are held by live sessions."""
        taken = await self._take_numbered(limit, lambda n: (partition, f"{n:05d}"), "PartitionKey eq @p", {"p": partition}, session_id, now, extra,
                                          etags=etags)
        return taken[1] if taken else None

    async def _pick_global(self, total: int) -> tuple[str, str]:
        """The global slot a create tries first, chosen before its user slot is taken so that the user slot names it."""
        return _global_slot(random.randrange(total) if total > 0 else 0)

    async def _take_global(
        self, total: int, session_id: str, now: datetime, pick: tuple[str, str], user_slot: tuple[str, str], etags: dict[tuple[str, str], str] | None = None,
    ) -> tuple[str, str] | None:
        """One of `total` global slots, `pick` first; if another one was taken, the user slot is told which.
        Listed only when the blind tries fail (the cap looks full): one range over every shard, and over the
        partition that held them all before issue 25 (`global`, which sorts just before `global|…`)."""
        legacy = await self._legacy_global()

        async def held_before(key: tuple[str, str]) -> bool:
            """While slots of the earlier layout remain, slot n is taken if that layout's slot n is."""
            if not legacy:
                return False
            try:
                await self._table("slots").get_entity(_LEGACY_GLOBAL, key[1])
                return True
            except ResourceNotFoundError:
                return False

        async def one_shard(insert: Any) -> tuple[str, str] | None:
            """Near a full cap the blind tries fail: a free slot of one random shard (1/64 of the slots) before listing them all."""
            shard = random.randrange(min(SLOT_SHARDS, total))
            numbers = {e["RowKey"] async for e in self._query("slots", "PartitionKey eq @p", {"p": _global_slot(shard)[0]}, select=["RowKey"])}
            free = [n for n in range(shard, total, SLOT_SHARDS) if f"{n:05d}" not in numbers]
            key = _global_slot(random.choice(free)) if free else None
            return key if key is not None and await insert(key) else None

        held = await self._take_numbered(total, _global_slot, "PartitionKey ge @lo and PartitionKey lt @hi", {"lo": _LEGACY_GLOBAL, "hi": "global}"},
                                         session_id, now, None, first=pick, held_before=held_before, narrow=one_shard, etags=etags)
        if held is not None and held != pick:
            try:
                meta = await self._table("slots").update_entity(
                    {"PartitionKey": user_slot[0], "RowKey": user_slot[1], "global_pk": held[0], "global_rk": held[1]}, mode=UpdateMode.MERGE)
                if etags is not None:
                    etags[user_slot] = meta["etag"]
            except ResourceNotFoundError:  # cannot happen within SLOT_GRACE; its global slot is then reclaimed when the cap looks full
                log.warning("session %s: its user slot went before it could name its global slot", session_id)
        return held

    async def _take_numbered(
        self, limit: int, where: Any, query: str, params: dict[str, Any], session_id: str, now: datetime, extra: dict[str, Any] | None,
        first: tuple[str, str] | None = None, held_before: Any = None, narrow: Any = None, etags: dict[tuple[str, str], str] | None = None,
    ) -> tuple[str, str] | None:
        """Insert-if-absent one of `limit` numbered slots (slot n at `where(n)`, its row key n, listed by
        `query`); its key, None when all are held by live sessions. `narrow(insert)`, if given, looks
        for a free slot more cheaply than the full listing, after the blind tries."""
        if limit <= 0:
            return None
        slots = self._table("slots")

        async def insert(key: tuple[str, str]) -> bool:
            try:
                meta = await slots.create_entity({"PartitionKey": key[0], "RowKey": key[1], "session_id": session_id, "at": now.isoformat(), **(extra or {})})
            except ResourceExistsError:
                return False
            if etags is not None:
                etags[key] = meta["etag"]
            if held_before is not None and await held_before(key):
                await slots.delete_entity(*key)  # ours, inserted just now: nobody else can hold it yet
                return False
            return True

        # Usually a random slot is free: try a few blindly before listing the slots (which grow
        # with the number of live sessions).
        tries = [first] if first is not None else []
        for n in random.sample(range(limit), min(BLIND_TRIES, limit)):
            if len(tries) < BLIND_TRIES and where(n) not in tries:
                tries.append(where(n))
        for key in tries:
            if await insert(key):
                return key
        if narrow is not None and (key := await narrow(insert)) is not None:
            return key
        for _ in range(SLOT_ROUNDS):
            taken = [e async for e in self._query("slots", query, params)]
            if len(taken) >= limit:
                if not await self._reclaim_stale(taken, now):
                    return None
                continue
            numbers = {e["RowKey"] for e in taken}
            free = [n for n in range(limit) if f"{n:05d}" not in numbers]
            key = where(random.choice(free))  # spread concurrent creators over the free slots
            if await insert(key):
                return key
            # another creator won this slot: look again
        log.warning("slots %s: gave up after %d contended rounds", query, SLOT_ROUNDS)
        return None

    async def _reclaim_stale(self, slots: Any, now: datetime) -> bool:
        """Delete slots whose session ended (or was never written, after a grace); True if any went."""

        async def reclaim(slot: Any) -> bool:
            holder = await self.get(slot["session_id"])
            stale = holder.state in TERMINAL_STATES if holder else now - datetime.fromisoformat(slot["at"]) > SLOT_GRACE
            if stale:
                await self._delete_unchanged("slots", slot)
            return stale  # deleted, or someone else reclaimed (and maybe re-took) it: look again

        return any(await _bounded(reclaim(slot) for slot in slots))

    async def _release_slots(self, session: Session) -> None:
        """Keyed (issue 25): two deletes conditioned on the ETags the create noted in the session, so a slot
        reclaimed and taken by another session meanwhile stays theirs. A session without that note (written
        before it existed) is found by its owner's slot partition, whose row names its global slot."""
        if (held := _parse_held(session.held_slots)) is not None:
            for pk, rk, etag in held:
                try:
                    await self._table("slots").delete_entity(pk, rk, etag=etag, match_condition=MatchConditions.IfNotModified)
                except (ResourceModifiedError, ResourceNotFoundError):
                    pass  # reclaimed (its session had ended), and maybe taken by another
            return
        query = "PartitionKey eq @p and session_id eq @s"
        for row in [e async for e in self._query("slots", query, {"p": f"user|{_key(session.owner)}", "s": session.id})]:
            await self._free_slots(row)

    async def _free_slots(self, row: Any) -> None:
        """The global slot a user slot names, then the user slot: conditional deletes, so a slot taken over
        meanwhile (reclaimed, then taken by another session) stays the other session's."""
        slots, session_id = self._table("slots"), row["session_id"]
        if row.get("global_pk"):
            try:
                held = await slots.get_entity(row["global_pk"], row["global_rk"])
                if held["session_id"] == session_id:
                    await self._delete_unchanged("slots", held)
            except ResourceNotFoundError:
                pass
        elif await self._legacy_global():  # a session created before issue 25: its global slot is found by a filter on that partition
            async for held in self._query("slots", "PartitionKey eq @p and session_id eq @s", {"p": _LEGACY_GLOBAL, "s": session_id}):
                await self._delete_unchanged("slots", held)
        await self._delete_unchanged("slots", row)

    async def _delete_unchanged(self, table: str, e: Any) -> bool:
        """Delete `e` if nobody changed it since it was read (gone already is fine); False if someone did."""
        try:
            await self._table(table).delete_entity(e["PartitionKey"], e["RowKey"], etag=e.metadata["etag"], match_condition=MatchConditions.IfNotModified)
            return True
        except ResourceModifiedError:
            return False

    async def _legacy(self, name: str, table: str, query: str, params: dict[str, Any]) -> bool:
        """Whether rows of the layout before issue 25 may remain where `query` looks: one small query at first
        need, again at most every LEGACY_RECHECK seconds while some remain; once none remain, never again
        in this process (nothing writes that layout any more)."""
        def known() -> bool | None:
            seen = self._legacy_state.get(name)
            return seen[0] if seen is not None and (not seen[0] or time.monotonic() - seen[1] < LEGACY_RECHECK) else None

        if (present := known()) is not None:
            return present
        async with self._legacy_looks.setdefault(name, asyncio.Lock()):  # concurrent first callers share one look
            if (present := known()) is not None:
                return present
            present = False
            async for _ in self._query(table, query, params, results_per_page=1, select=["PartitionKey"]):
                present = True
                break
            self._legacy_state[name] = (present, time.monotonic())
            return present

    async def _legacy_global(self) -> bool:
        return await self._legacy("slots", "slots", "PartitionKey eq @p", {"p": _LEGACY_GLOBAL})

    async def _by_owner(self, states: Sequence[SessionState], owner: str | None) -> list[Session] | None:
        """`sessions(states, owner=)` for live states, from the owner index: the owner's cap slots (one
        partition, written before the session) and a keyed read of each session, concurrently. A slot
        whose session ended (its release failed) or never got written (after SLOT_GRACE) is dropped here.
        None when this cannot answer (no owner, or ended states asked: those are filtered from the table)."""
        if owner is None or any(state in TERMINAL_STATES for state in states):
            return None
        rows = [e async for e in self._query("slots", "PartitionKey eq @p", {"p": f"user|{_key(owner)}"})]
        found = await asyncio.gather(*(self.get(row["session_id"]) for row in rows))
        now = utcnow()
        mine: dict[str, Session] = {}
        for row, s in zip(rows, found):
            if s is None and now - datetime.fromisoformat(row["at"]) <= SLOT_GRACE:
                continue  # a create in progress
            if s is None or s.state in TERMINAL_STATES:
                await self._free_slots(row)
            elif s.owner == owner and s.state in states:
                mine[s.id] = s
        return sorted(mine.values(), key=lambda s: (s.created_at, _key(s.id)))  # ties in the order the table would list them

    async def save(self, session: Session) -> Session:
        if not session.version:
            raise Conflict(f"session {session.id} was never read from this store")
        pk, rk, etag = _session_row(session)
        await self._schedule_due(session, pending=etag)  # before the write (see _schedule_due); the bare ETag, as every version writes it
        try:
            meta = await self._table("sessions").update_entity(
                _entity(session), mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            await self._repair_due(session.id)
            raise Conflict(f"session {session.id} changed since it was read") from None
        if session.state in TERMINAL_STATES and session.stored_due_at is not None:
            await self._drop_live_entry(session.id, session.stored_due_at)
        if session.state in TERMINAL_STATES:
            try:
                await self._release_slots(session)
            except Exception:
                log.exception("session %s: releasing its cap slots failed; they are reclaimed when the cap is reached", session.id)
        version = meta["etag"] if rk == pk else _OLD_ROW_VERSION + meta["etag"]
        return dataclasses.replace(session, version=version, stored_due_at=session.due_at)

    async def get(self, session_id: str) -> Session | None:
        """A miss looks again at the earlier layout's row: a second keyed read, not a look for such rows (which,
        with no PartitionKey to bound it, would scan the whole table on Table Storage in every fresh process)."""
        key, sessions = _key(session_id), self._table("sessions")
        for row in (key, _OLD_SESSION_ROW):
            try:
                return _session(await sessions.get_entity(key, row))
            except ResourceNotFoundError:
                pass
        return None

    async def sessions(self, states: Sequence[SessionState], owner: str | None = None) -> list[Session]:
        if not states:
            # Nothing to list; still one round trip, so a health check learns whether the store answers.
            async for _ in self._query("sessions", "PartitionKey eq @p", {"p": ""}, results_per_page=1):
                break
            return []
        if (by_owner := await self._by_owner(states, owner)) is not None:
            return by_owner
        query, params = _in_states(states)
        if owner is not None:
            query += " and owner eq @owner"
            params["owner"] = owner
        found = [_session(e) async for e in self._query("sessions", query, params)]
        return sorted(found, key=lambda s: s.created_at)

    async def each_session(self, states: Sequence[SessionState]) -> AsyncIterator[Session]:
        if states:
            async for e in self._query("sessions", *_in_states(states)):
                yield _session(e)

    # ----- the due index: what a sweep reads ---------------------------------------------------------
    #
    # One entry per (minute, session) in the `due` table: PartitionKey "<YYYYmmddHHMM>|<shard>" (minutes
    # sort as text; a minute spread over DUE_SHARDS partitions), RowKey the session id, `at` its due time.
    # A write puts the entry of its new due time BEFORE the session itself, so every live session has an
    # entry at or before the time it is due; an entry it has moved away from is a stale hint, dropped
    # (by ETag: never one just rewritten) when a sweep reaches it. A sweep with nothing due is one query.

    async def _schedule_due(self, session: Session, pending: str = "") -> None:
        """`pending`: the version the save about to follow is conditioned on. Until that save lands, a sweep
        reads the session at exactly that version and must not take the new entry for a stale one."""
        if session.state in TERMINAL_STATES:  # when it is forgotten: ENDED_RETENTION after its end
            at = (session.ended_at or session.updated_at) + ENDED_RETENTION
            await self._table("due").upsert_entity(_due_entity(session.id, at, prefix=_FORGET), mode=UpdateMode.REPLACE)
        elif session.due_at is not None:
            await self._table("due").upsert_entity({**_due_entity(session.id, session.due_at), "pending": pending}, mode=UpdateMode.REPLACE)

    async def _repair_due(self, session_id: str) -> None:
        """A lost compare-and-set may have rewritten the winner's entry with our time: write the winner's back."""
        try:
            stored = await self.get(session_id)
            if stored is not None:
                await self._schedule_due(stored)
        except Exception:
            log.exception("session %s: repairing its due entry failed; the index check finds it", session_id)

    async def ready_keys(self, now: datetime) -> dict[str, str]:
        query, params = "state eq @s and expires_at gt @t", {"s": SessionState.READY.value, "t": now.isoformat()}
        return {e["id"]: e.get("client_public_key") or "" async for e in self._query(
            "sessions", query, params, select=["id", "client_public_key"], results_per_page=1000)}

    async def live_counts(self) -> dict[tuple[str, str], int]:
        query, params = _in_states(ACTIVE_STATES)
        counts: dict[tuple[str, str], int] = {}
        async for e in self._query("sessions", query, params, select=["state", "provider"], results_per_page=1000):
            key = (e["state"], e["provider"])
            counts[key] = counts.get(key, 0) + 1
        return counts

    async def due_sessions(self, now: datetime, limit: int = 500) -> list[Session]:
        """Reads entries a page at a time until `limit` sessions are due: stale entries (dropped as they are
        met) do not count against it, so a pass never stops at a page of leftovers."""
        query = "PartitionKey lt @hi and at le @now"
        found: dict[str, Session] = {}
        page: list[Any] = []
        async for e in self._query("due", query, {"hi": f"{_minute(now)}|~", "now": _utc(now)}, results_per_page=min(limit, 1000)):
            page.append(e)
            if len(page) >= DUE_PAGE:
                found.update({s.id: s for s in await self._look_due(page, now)})
                page = []
                if len(found) >= limit:
                    break
        if page:
            found.update({s.id: s for s in await self._look_due(page, now)})
        return sorted(found.values(), key=lambda s: (s.due_at or now, s.id))[:limit]

    async def _look_due(self, entries: list[Any], now: datetime) -> list[Session]:
        """The due sessions among `entries`, each read once however many entries it has: a due session keeps
        only the entry of its current due time (the others are stale hints, dropped), an early entry is moved
        to its session's time, and an ended or moved session's entries go."""
        gate = asyncio.Semaphore(DUE_READ_CONCURRENCY)
        by_session: dict[str, list[Any]] = {}
        for e in entries:
            by_session.setdefault(e["session_id"], []).append(e)

        def in_flight(e: Any, s: Session | None) -> bool:
            """Written for a write that has not landed yet (the create, or a save of the version read): its
            session's next hint, not a stale one. A writer that died in between leaves it for IN_FLIGHT_GRACE
            after it was written (the server's timestamp; not its due time, which a save may set long past)."""
            waits_for = _session_row(s)[2] if s is not None else _CREATING
            return bool(e.get("pending")) and e["pending"] == waits_for and utcnow() - e.metadata["timestamp"] < IN_FLIGHT_GRACE

        async def look(session_id: str, mine: list[Any]) -> Session | None:
            async with gate:
                s = await self.get(session_id)
                if s is None or s.state in TERMINAL_STATES:
                    await asyncio.gather(*(self._drop_due(e) for e in mine if not in_flight(e, s)))  # ended or gone
                    return None
                if s.due_at is None:
                    return s  # written without a due time (an earlier version): due now; its entries are its only hints
                current, due = _due_partition(s.id, s.due_at), s.due_at <= now
                for e in mine:
                    if in_flight(e, s):
                        continue
                    if e["PartitionKey"] != current:
                        await self._drop_due(e)  # moved to another minute, or an older entry of a due session
                    elif not due:
                        await self._retime_due(e, s.due_at)  # due later this minute: an earlier writer's time
                return s if due else None

        return [s for s in await asyncio.gather(*(look(sid, mine) for sid, mine in by_session.items())) if s is not None]

    async def _forget_due(self, now: datetime) -> None:
        """Forget the sessions that ended ENDED_RETENTION ago: their entries (written with the ending) in one range query."""
        async for e in self._query("due", "PartitionKey ge @lo and PartitionKey lt @hi", {"lo": _FORGET, "hi": f"{_FORGET}{_minute(now)}|~"}):
            s = await self.get(e["session_id"])
            if s is not None and s.state in TERMINAL_STATES:
                pk, rk, etag = _session_row(s)
                try:
                    await self._table("sessions").delete_entity(pk, rk, etag=etag, match_condition=MatchConditions.IfNotModified)
                except (ResourceModifiedError, ResourceNotFoundError):
                    continue
            await self._drop_due(e)

    async def _drop_live_entry(self, session_id: str, due_at: datetime) -> None:
        """The entry of an ended session's last due time, at once: reconcile reads the index's ids as who may
        be live. Unconditional, which is safe only here: nobody writes a live entry for an ended session
        (a writer that lost the race to end it may have; that one lingers until a sweep reaches it)."""
        try:
            await self._table("due").delete_entity(_due_partition(session_id, due_at), _key(session_id))
        except ResourceNotFoundError:
            pass
        except Exception:
            log.exception("session %s: dropping its due entry failed; a sweep drops it when reached", session_id)

    async def _drop_due(self, e: Any) -> None:
        try:
            await self._table("due").delete_entity(e["PartitionKey"], e["RowKey"], etag=e.metadata["etag"], match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            pass  # rewritten meanwhile (it is current again) or dropped by another sweeper

    async def _retime_due(self, e: Any, at: datetime) -> None:
        try:
            await self._table("due").update_entity({"PartitionKey": e["PartitionKey"], "RowKey": e["RowKey"], "at": _utc(at)},
                                                   mode=UpdateMode.MERGE, etag=e.metadata["etag"], match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            pass

    async def next_due(self, now: datetime, within: timedelta | None = None) -> datetime | None:
        """The earliest entry after `now` (up to `now + within`): entries come in minute order, so reading the
        first minute that has any is enough (past a page of it: at most a second ahead, never later than the
        truth by more). The range ends at the horizon's minute: the store reads what it returns, and a query
        over every future minute made Azurite filter and sort the whole index (31-58 ms at 10,000 live)."""
        query = "PartitionKey ge @lo and PartitionKey lt @hi and at gt @now"
        hi = f"{_minute(now + within)}|~" if within is not None else _FORGET
        times, more = await self._first_minute(query, {"lo": f"{_minute(now)}|", "hi": hi, "now": _utc(now)})
        if more:  # a busy minute: an unread entry may be earlier; look again within a second, not at once
            return min(*times, now + timedelta(seconds=1))
        return min(times, default=None)

    async def _first_minute(self, query: str, params: dict[str, Any]) -> tuple[list[datetime], bool]:
        """The due times of the first minute that has entries (they come in minute order), up to a page of
        them, and whether that minute holds more."""
        first: str | None = None
        times: list[datetime] = []
        async for e in self._query("due", query, params, results_per_page=DUE_PAGE, select=["PartitionKey", "at"]):
            bucket = e["PartitionKey"].split("|")[0]
            if first is None:
                first = bucket
            if bucket != first:
                break
            if len(times) >= DUE_PAGE:
                return times, True
            times.append(datetime.fromisoformat(e["at"]))
        return times, False

    async def live_ids(self) -> set[str]:
        """Every session with a due entry: each live one has one (written before the session), and an
        ended one's last entries linger until a sweep reaches them, so this is a superset."""
        query, params = "PartitionKey lt @hi", {"hi": _FORGET}
        return {e["session_id"] async for e in self._query("due", query, params, select=["session_id"], results_per_page=1000)}

    async def check_due_index(self, now: datetime, live: Mapping[str, datetime | None]) -> int:
        """Give every live session without an entry one (due now): sessions written before the index
        existed, or by a replica of an earlier version during a rolling deploy. Reads every live session
        and entry: for a fleet-wide turn now and then, not for every sweep."""
        await self._forget_ended(now)
        async for e in self._query("outbox", "PartitionKey eq @p and state eq @pending", {"p": _OUTBOX, "pending": "pending"}):
            await self._schedule_notification(_notification(e))  # pending items of an earlier version: found again
        indexed = {_key(sid) for sid in await self.live_ids()}
        missing = 0
        for session_id, due_at in live.items():
            if _key(session_id) not in indexed:
                await self._table("due").upsert_entity(_due_entity(session_id, due_at or now), mode=UpdateMode.REPLACE)
                missing += 1
        return missing

    async def take_turn(self, job: str, holder: str, now: datetime, every: timedelta, mark: str = "") -> bool:
        """A compare-and-set on the job's row in the meta table. The next time last seen is remembered, so a
        pass before it asks nothing (a turn only ever moves later, but for this process's own give-back)."""
        known = self._turns.get(job)
        if known is not None and now < known[0] and mark == known[1]:
            return False
        meta = self._table("meta")
        values = {"PartitionKey": _TURN, "RowKey": _key(job), "next_at": (now + every).isoformat(), "mark": mark, "holder": holder[:200]}
        taken = False
        try:
            e = await meta.get_entity(_TURN, _key(job))
        except ResourceNotFoundError:
            try:
                await meta.create_entity(values)
                taken = True
            except ResourceExistsError:
                self._turns.pop(job, None)  # another process took the first turn: read it next time
                return False
        else:
            if now < datetime.fromisoformat(e["next_at"]) and mark == e.get("mark", ""):
                self._turns[job] = (datetime.fromisoformat(e["next_at"]), e.get("mark", ""))
                return False
            try:
                await meta.update_entity(values, mode=UpdateMode.REPLACE, etag=e.metadata["etag"], match_condition=MatchConditions.IfNotModified)
                taken = True
            except (ResourceModifiedError, ResourceNotFoundError):
                self._turns.pop(job, None)
                return False
        self._turns[job] = (now + every, mark)
        return taken

    # ----- message ids, audit, workers -------------------------------------------------------------

    async def first_seen(self, channel: str, message_id: str, now: datetime) -> bool:
        seen = self._table("seen")
        rk = _key(message_id)  # the whole id: two long ids sharing a prefix are two ids
        pk = f"{_key(channel)}|{_spread(rk, SEEN_SPREAD)}"
        try:
            await seen.create_entity({"PartitionKey": pk, "RowKey": rk, "seen_at": now.isoformat()})
            return True
        except ResourceExistsError:
            pass
        try:
            old = await seen.get_entity(pk, rk)
        except ResourceNotFoundError:
            return await self.first_seen(channel, message_id, now)  # purged just now
        if now - datetime.fromisoformat(old["seen_at"]) <= MESSAGE_ID_TTL:
            return False
        try:  # an id so old it counts as new; only one replica wins the refresh
            await seen.update_entity(
                {"PartitionKey": pk, "RowKey": rk, "seen_at": now.isoformat()},
                mode=UpdateMode.REPLACE, etag=old.metadata["etag"], match_condition=MatchConditions.IfNotModified,
            )
            return True
        except (ResourceModifiedError, ResourceNotFoundError):
            return False

    async def audit(self, entry: AuditEntry) -> None:
        if not entry.allowed:
            await self._count_refusal(entry)
            return
        # Newest first in key order: a partition per day counting down, then a row key counting down
        # with the entry's time, then with the moment of writing (entries of one instant keep their
        # order), then a random tie-breaker.
        written = time.time_ns()
        await self._table("audit").create_entity(
            {
                "PartitionKey": _audit_partition(secrets.randbelow(AUDIT_SHARDS), entry.at),
                "RowKey": f"{_countdown(entry.at)}-{10**20 - written:020d}-{secrets.token_hex(4)}",
                **_audit_values(entry),
                "written": f"{written:020d}",
            }
        )

    async def _count_refusal(self, entry: AuditEntry) -> None:
        """One row per identity, reason and hour, holding the first refusal and a count: a stranger with
        a valid token cannot fill the table row by row. The count is a compare-and-set, a few tries at
        most: under a concurrent flood it is a lower bound, never a retry storm."""
        hour, digest = refusal_sample(entry.user, entry.command, entry.reason, entry.at)
        # Keyed at the hour's end (never earlier than any refusal it counts); audit_log orders by time.
        pk, rk = _audit_partition(int(digest[:8], 16) % AUDIT_SHARDS, hour), f"{_countdown(hour + timedelta(hours=1))}-r-{digest}"
        table = self._table("audit")
        for _ in range(AUDIT_COUNT_TRIES):
            try:
                e = await table.get_entity(pk, rk)
            except ResourceNotFoundError:
                try:
                    await table.create_entity({"PartitionKey": pk, "RowKey": rk, **_audit_values(entry), "count": 1,
                                               "last_at": entry.at.isoformat(), "written": f"{time.time_ns():020d}"})
                    return
                except ResourceExistsError:
                    continue
            last = max(e.get("last_at") or e["at"], entry.at.isoformat())
            try:
                await table.update_entity({"PartitionKey": pk, "RowKey": rk, "count": int(e.get("count", 1)) + 1, "last_at": last},
                                          mode=UpdateMode.MERGE, etag=e.metadata["etag"], match_condition=MatchConditions.IfNotModified)
                return
            except (ResourceModifiedError, ResourceNotFoundError):
                continue
        log.debug("audit: a refusal of %s went uncounted (concurrent refusals)", entry.user[:80])

    async def audit_log(
        self, limit: int = 100, *, since: datetime | None = None, until: datetime | None = None, user: str | None = None
    ) -> list[AuditEntry]:
        """Newest first. Each shard's rows come in key order, whose time never precedes a row's own time (a
        refusal row is keyed at its hour's end): the shards' streams (and the earlier layout's, while it
        holds rows) are merged by key, read until the next key is older than the limit-th newest row.
        A time range reads only its days' partitions; a user is filtered on the server."""
        if limit <= 0:
            return []
        rows: list[Any] = []
        newest: list[int] = []  # a min-heap of the `limit` newest times seen
        streams = [aiter(stream) for stream in await self._audit_streams(limit, since, until, user)]
        heads: list[tuple[int, int, Any]] = []  # (-key time, stream, row): the newest head first
        for i, e in enumerate(await asyncio.gather(*(anext(stream, None) for stream in streams))):
            if e is not None:
                heapq.heappush(heads, (-_key_time(e), i, e))
        while heads:
            key_time, i, e = heapq.heappop(heads)
            if len(newest) >= limit and -key_time < newest[0]:
                break
            at = _micros(datetime.fromisoformat(e["at"]))
            rows.append(e)
            heapq.heappush(newest, at)
            if len(newest) > limit:
                heapq.heappop(newest)
            following = await anext(streams[i], None)
            if following is not None:
                heapq.heappush(heads, (-_key_time(following), i, following))
        rows.sort(key=lambda e: (_micros(datetime.fromisoformat(e["at"])), _written(e)), reverse=True)
        return [
            AuditEntry(datetime.fromisoformat(e["at"]), e["user"], e["email"], e["channel"], e["command"], bool(e["allowed"]), e["reason"],
                       int(e.get("count", 1)))
            for e in rows[:limit]
        ]

    async def _audit_streams(self, limit: int, since: datetime | None, until: datetime | None, user: str | None) -> list[AsyncIterator[Any]]:
        """A query per shard over its days in the range (newest first), and one over the earlier layout's days if any remain."""
        clauses: list[str] = []
        params: dict[str, Any] = {}
        if until is not None:
            clauses.append("at lt @until")
            params["until"] = until.isoformat()
        if since is not None:
            clauses.append("at ge @since")
            params["since"] = since.isoformat()
        if user is not None:
            clauses.append("( user eq @u or email eq @u )")
            params["u"] = user[:AUDIT_TEXT_LIMIT]
        rest = "".join(f" and {c}" for c in clauses)
        # Days count down: the range's last day (until) has the smallest partition key, its first (since) the largest.
        lo, hi = (_audit_day(until) if until else ""), (_audit_day(since) if since else None)
        # A shard holds about 1/AUDIT_SHARDS of the newest rows: small pages (the next comes when one runs out).
        page = min(limit, 1000) if user is not None else min(1000, max(10, 2 * limit // AUDIT_SHARDS + 4))
        streams = []
        for shard in range(AUDIT_SHARDS):
            prefix = f"{_NEW}{shard:02d}|"
            upper = f"PartitionKey le @hi{rest}" if hi is not None else f"PartitionKey lt @hi{rest}"
            bounds = {"lo": prefix + lo, "hi": prefix + hi if hi is not None else prefix[:-1] + "}"}
            streams.append(self._query("audit", "PartitionKey ge @lo and " + upper, {**params, **bounds}, results_per_page=page))
        if await self._legacy("audit", "audit", "PartitionKey lt @p", {"p": _NEW}):
            query = "PartitionKey ge @lo and " + ("PartitionKey le @hi" if hi is not None else "PartitionKey lt @hi") + rest
            streams.append(self._query("audit", query, {**params, "lo": lo, "hi": hi if hi is not None else _NEW}, results_per_page=min(limit, 1000)))
        return streams

    async def heartbeat(self, worker: Worker) -> None:
        await self._table("workers").upsert_entity(
            {"PartitionKey": "worker", "RowKey": _key(worker.id), "id": worker.id, "host": worker.host, "pid": worker.pid,
             "heartbeat_at": worker.heartbeat_at.isoformat(), _READS_ID_ROWS: True},
            mode=UpdateMode.REPLACE,
        )

    async def _id_rows(self) -> bool:
        """Whether a new session may be keyed by its id twice: not while a worker of an earlier version (its
        heartbeat row lacks the mark) was heard from within OLD_WORKER_WINDOW (by the server's timestamp).
        That version finds a session by row "s" only: it would take a session it cannot find for one that is
        gone, drop its due entries, and its reconcile would delete the session's server (a rolling deploy's
        overlap; the reap job of the previous image). One small query a minute per process, at most."""
        seen = self._id_rows_seen
        if seen is not None and time.monotonic() - seen[1] < OLD_WORKER_LOOK_EVERY:
            return seen[0]
        ok = True  # rows written lately only (a per-minute reap adds one a run, kept a day)
        async for e in self._query("workers", "PartitionKey eq @p and Timestamp ge @t", {"p": "worker", "t": utcnow() - OLD_WORKER_WINDOW}):
            if not e.get(_READS_ID_ROWS):
                ok = False
                break
        self._id_rows_seen = (ok, time.monotonic())
        return ok

    async def workers(self) -> list[Worker]:
        return [
            Worker(e["id"], e["host"], int(e["pid"]), datetime.fromisoformat(e["heartbeat_at"]))
            async for e in self._query("workers", "PartitionKey eq @p", {"p": "worker"})
        ]

    async def _housekeeping(self, now: datetime) -> None:
        """Forget message ids past their TTL and long-gone workers; at most every few minutes per process."""
        if self._housekept_at is not None and now - self._housekept_at < HOUSEKEEPING_EVERY:
            return
        self._housekept_at = now
        cutoff = (now - MESSAGE_ID_TTL).isoformat()
        async for e in self._query("seen", "seen_at lt @t", {"t": cutoff}, select=["PartitionKey", "RowKey"]):
            await self._table("seen").delete_entity(e["PartitionKey"], e["RowKey"])
        cutoff = (now - WORKER_TTL).isoformat()
        async for e in self._query("workers", "heartbeat_at lt @t", {"t": cutoff}, select=["PartitionKey", "RowKey"]):
            await self._table("workers").delete_entity(e["PartitionKey"], e["RowKey"])
        await self._forget_due(now)

    async def _forget_ended(self, now: datetime) -> None:
        """Sessions that ended before due entries existed (later ones are forgotten by their own entry: `_forget_due`)."""
        query = "( state eq @deleted or state eq @failed or state eq @denied ) and ended_at lt @t"
        ended = {"deleted": "deleted", "failed": "failed", "denied": "denied", "t": (now - ENDED_RETENTION).isoformat()}
        async for e in self._query("sessions", query, ended, select=["PartitionKey", "RowKey"]):
            await self._table("sessions").delete_entity(e["PartitionKey"], e["RowKey"])

    # ----- claim links (sealed configs; see bot/one_time_configs.py) -----------------------------------------

    async def add_claim(self, claim: Claim) -> None:
        """The claim in a partition of its own, after its index rows (by session, in `claimindex`; by the
        minutes it is erased and forgotten): a crash leaves at most an index row, which the purge drops.
        The by-session index has a table of its own so that reading it, once per ended session, is not a
        filter over every claim's rows on Azurite (which filters a whole table for any query). Written as the
        earlier version wrote it while one of its workers may run (see `_id_rows`): it finds no other."""
        claims, token = self._table("claims"), _key(claim.token_hash)
        index = await self._index_to_write("claims")
        old = index == "claims"
        steps = (("erase", claim.expires_at), ("forget", claim.expires_at + CLAIM_KEEP))
        await asyncio.gather(
            self._table(index).upsert_entity({"PartitionKey": _BY_SESSION + _key(claim.session_id), "RowKey": token}),
            *(claims.upsert_entity({"PartitionKey": _claim_due(at, token, old), "RowKey": token, "step": step, "at": at.isoformat(),
                                    "session_id": claim.session_id}) for step, at in steps),
        )
        entity: dict[str, Any] = {
            "PartitionKey": _CLAIM + token,
            "RowKey": _OLD_CLAIM_ROW if old else token,
            "token_hash": claim.token_hash,
            "session_id": claim.session_id,
            "user": claim.user,
            "tunnel_name": claim.tunnel_name,
            "created_at": claim.created_at.isoformat(),
            "expires_at": claim.expires_at.isoformat(),
            "sealed_present": claim.sealed is not None,
        }
        if claim.sealed is not None:
            entity["sealed"] = claim.sealed
        await claims.create_entity(entity)

    @staticmethod
    def _claim(e: Any) -> Claim:
        sealed = e.get("sealed")
        return Claim(
            token_hash=e.get("token_hash") or e["PartitionKey"],  # a claim of the earlier layout is keyed by its hash alone
            session_id=e["session_id"],
            user=e["user"],
            tunnel_name=e["tunnel_name"],
            created_at=datetime.fromisoformat(e["created_at"]),
            expires_at=datetime.fromisoformat(e["expires_at"]),
            used_at=_time(e.get("used_at")),
            sealed=bytes(sealed) if sealed else None,  # erased by key: written empty (see _erase_claim)
        )

    async def _claim_entity(self, token_hash: str) -> Any:
        claims, token = self._table("claims"), _key(token_hash)
        places = [(_CLAIM + token, token)]
        if await self._old_index("claims"):  # (claims of that layout: row "c", index in the claims table, steps in ~e|)
            places.append((_CLAIM + token, _OLD_CLAIM_ROW))
        if token_hash == token and not token_hash.startswith(_NEW) and await self._legacy_claims():
            places.append((token_hash, _OLD_CLAIM_ROW))
        for pk, rk in places:
            try:
                return await claims.get_entity(pk, rk)
            except ResourceNotFoundError:
                pass
        return None

    async def _index_to_write(self, table: str) -> str:
        """Where a new by-session index row of `table` (claims, addresses) goes: its index table; the table
        itself, where the earlier version looks, while one of its workers may run (see _id_rows)."""
        return _INDEX_OF[table] if await self._id_rows() else table

    async def _index_tables(self, table: str) -> tuple[str, ...]:
        """Where a session's by-session index rows of `table` may be: its index table, and `table` itself while
        rows of the earlier layout may remain there."""
        return (_INDEX_OF[table], table) if await self._old_index(table) else (_INDEX_OF[table],)

    async def _old_index(self, table: str) -> bool:
        """Whether by-session index rows of the earlier layout may be in `table` itself (they drain within days
        of the upgrade: a claim lives 10 minutes to 8 days, a reservation as long as its session). While a
        worker of that version may run, it (and we, for it) writes them: then always yes, never a "none"
        remembered for good."""
        if not await self._id_rows():
            return True
        return await self._legacy(f"{table} index", table, "PartitionKey ge @lo and PartitionKey lt @hi", {"lo": _BY_SESSION, "hi": "~s}"})

    async def _legacy_claims(self) -> bool:
        return await self._legacy("claims", "claims", "PartitionKey lt @p", {"p": _NEW})

    async def get_claim(self, token_hash: str) -> Claim | None:
        e = await self._claim_entity(token_hash)
        return self._claim(e) if e is not None else None

    async def consume_claim(self, token_hash: str, now: datetime) -> Claim | None:
        e = await self._claim_entity(token_hash)
        if e is None:
            return None
        claim = self._claim(e)
        if claim.used_at is not None or claim.sealed is None or claim.expires_at <= now:
            return None
        if not await self._erase_sealed(e, used_at=now):
            return None  # another replica consumed it first
        return claim

    async def _erase_sealed(self, e: Any, *, used_at: datetime | None = None) -> bool:
        """Replace the claim without its sealed config, only if nobody changed it since it was read."""
        kept = {k: v for k, v in e.items() if k != "sealed"}
        kept["sealed_present"] = False
        if used_at is not None:
            kept["used_at"] = used_at.isoformat()
        try:
            await self._table("claims").update_entity(
                kept, mode=UpdateMode.REPLACE, etag=e.metadata["etag"], match_condition=MatchConditions.IfNotModified
            )
            return True
        except (ResourceModifiedError, ResourceNotFoundError):
            return False

    async def _erase_claim(self, partition: str, row: str, expired_at: datetime | None = None) -> None:
        """Overwrite the sealed config with nothing, by key, without reading the claim first (one request,
        not two, per ended session): a merge keeps every other field, and a consume racing it loses its
        ETag-conditioned write, so an erased config is never handed out. `expired_at` (a session's end)
        also marks the claim expired: a replica of an earlier version, which takes an empty `sealed` for a
        config, refuses an expired claim instead of failing on it during a rolling deploy."""
        erased: dict[str, Any] = {"PartitionKey": partition, "RowKey": row, "sealed": b"", "sealed_present": False}
        if expired_at is not None:
            erased["expires_at"] = expired_at.isoformat()
        try:
            await self._table("claims").update_entity(erased, mode=UpdateMode.MERGE)
        except ResourceNotFoundError:
            pass  # never written (a crash after its index rows), or forgotten

    async def purge_claims(self, now: datetime, session_id: str | None = None) -> None:
        """Erase the sealed configs of one ended session; or (the sweeper's call) those past expiry, and
        forget claims a day past it. Keyed and ranged (issue 25): a session's claims are one partition of
        the index, what has fallen due a range of minute partitions (nothing due: one request)."""
        claims = self._table("claims")
        if session_id is not None:
            for index in await self._index_tables("claims"):
                tokens = [e["RowKey"] async for e in self._query(index, "PartitionKey eq @p", {"p": _BY_SESSION + _key(session_id)}, select=["RowKey"])]
                old = index == "claims"  # a claim indexed there has row "c"
                await _bounded(self._erase_claim(_CLAIM + token, _OLD_CLAIM_ROW if old else token, expired_at=now) for token in tokens)
            if await self._legacy_claims():  # claims written before issue 25 are found by a filter on that layout's rows
                query = "PartitionKey lt @new and session_id eq @s and sealed_present eq true"
                async for e in self._query("claims", query, {"new": _NEW, "s": session_id}):
                    await self._erase_sealed(e)
            return
        await self._housekeeping(now)
        if not self._due("claims", now, CLAIM_PURGE_EVERY):
            return  # a range read per sweep cost a pass 25 ms at 10,000 live on Azurite; a link checks its own expiry
        query = "PartitionKey ge @lo and PartitionKey lt @hi and at le @now"
        due: list[Any] = []
        for prefix in (_OLD_CLAIM_DUE, _CLAIM_DUE) if await self._old_index("claims") else (_CLAIM_DUE,):
            # The minutes up to now's of one layout (one range over both would walk every future minute of the earlier one).
            due += [e async for e in self._query("claims", query, {"lo": prefix, "hi": f"{prefix}{_minute(now)}}}", "now": now.isoformat()})]

        async def step(e: Any) -> None:
            token = e["RowKey"]
            old = e["PartitionKey"].startswith(_OLD_CLAIM_DUE)
            row = _OLD_CLAIM_ROW if old else token
            if e.get("step") == "forget":
                await claims.delete_entity(_CLAIM + token, row)
                await self._table("claims" if old else _INDEX_OF["claims"]).delete_entity(_BY_SESSION + _key(e.get("session_id") or ""), token)
            else:
                await self._erase_claim(_CLAIM + token, row)

        await _bounded(step(e) for e in due)
        await self._delete_all("claims", due)
        if await self._legacy_claims() and self._due("legacy claims", now, PURGE_EVERY):
            async for e in self._query("claims", "PartitionKey lt @new and expires_at le @t and sealed_present eq true", {"new": _NEW, "t": now.isoformat()}):
                await self._erase_sealed(e)
            await self._purge("claims", "PartitionKey lt @new and expires_at lt @t", {"new": _NEW, "t": (now - CLAIM_KEEP).isoformat()})

    def _due(self, what: str, now: datetime, every: timedelta) -> bool:
        """True at most every `every` per process (by the caller's clock)."""
        last = self._throttled.get(what)
        if last is not None and timedelta(0) <= now - last < every:
            return False
        self._throttled[what] = now
        return True

    # ----- tunnel address reservations: ~a|<scope>|<shard>, indexed by session ---------------------

    async def reserve_address(self, scope: str, address: str, session_id: str, now: datetime) -> str:
        table = self._table("addresses")
        pk, rk = _reservation(scope, address)
        # The session's index row first: a crash leaves at most an index row, never a reservation
        # release_addresses cannot find by key. In a table of its own, as the claims' (see add_claim);
        # where the earlier version looks for it while one of its workers may run (see _id_rows).
        index = self._table(await self._index_to_write("addresses"))
        await index.upsert_entity({"PartitionKey": _BY_SESSION + _key(session_id), "RowKey": _held_row(scope, address), "scope": scope, "address": address})
        if await self._legacy_addresses():
            try:  # held in the layout before issue 25 (ours on a retry; else the caller checks whether its holder still lives)
                return (await table.get_entity(_key(scope), rk))["session_id"]
            except ResourceNotFoundError:
                pass
        try:
            await table.create_entity({"PartitionKey": pk, "RowKey": rk, "session_id": session_id, "reserved_at": now.isoformat()})
            return session_id
        except ResourceExistsError:
            pass
        try:
            return (await table.get_entity(pk, rk))["session_id"]
        except ResourceNotFoundError:
            return ""  # released meanwhile: the caller asks again

    async def _legacy_addresses(self) -> bool:
        return await self._legacy("addresses", "addresses", "PartitionKey lt @p", {"p": _NEW})

    async def _release_reservation(self, scope: str, address: str, holder: str) -> None:
        table = self._table("addresses")
        places = [_reservation(scope, address)]
        if await self._legacy_addresses():
            places.append((_key(scope), _key(address)))
        for pk, rk in places:
            try:
                e = await table.get_entity(pk, rk)
            except ResourceNotFoundError:
                continue
            if e["session_id"] == holder:
                await self._delete_unchanged("addresses", e)

    async def release_address(self, scope: str, address: str, holder: str) -> None:
        await self._release_reservation(scope, address, holder)
        for index in await self._index_tables("addresses"):
            await self._table(index).delete_entity(_BY_SESSION + _key(holder), _held_row(scope, address))  # the holder's index row

    async def release_addresses(self, session_id: str) -> None:
        """Keyed (issue 25): the session's index partition names its reservations."""
        for index in await self._index_tables("addresses"):
            rows = [e async for e in self._query(index, "PartitionKey eq @p", {"p": _BY_SESSION + _key(session_id)})]
            for row in rows:
                await self._release_reservation(row["scope"], row["address"], session_id)
            await self._delete_all(index, rows)
        if await self._legacy_addresses():  # reservations written before issue 25 are found by a filter on that layout's rows
            async for e in self._query("addresses", "PartitionKey lt @new and session_id eq @s", {"new": _NEW, "s": session_id}):
                await self._delete_unchanged("addresses", e)

    async def deployment_id(self) -> str:
        """A random id made once per store (insert-if-absent): every replica on this store reads the same."""
        meta = self._table("meta")
        try:
            return (await meta.get_entity("meta", "deployment_id"))["value"]  # every start but the first: one read
        except ResourceNotFoundError:
            pass
        try:
            await meta.create_entity({"PartitionKey": "meta", "RowKey": "deployment_id", "value": "d" + secrets.token_hex(8)})
        except ResourceExistsError:
            pass
        return (await meta.get_entity("meta", "deployment_id"))["value"]

    # ----- approvers' private chats: a partition of the meta table (no table of their own to declare) -

    async def put_contact(self, contact: Contact) -> None:
        await self._table("meta").upsert_entity(
            {"PartitionKey": _CONTACT, "RowKey": _key(contact.user), "user": contact.user, "label": contact.label,
             "conversation": contact.conversation.to_json(), "updated_at": contact.updated_at.isoformat()},
            mode=UpdateMode.REPLACE,
        )

    async def contacts(self) -> list[Contact]:
        found = [
            Contact(e["user"], e["label"], ConversationRef.from_json(e["conversation"]), datetime.fromisoformat(e["updated_at"]))
            async for e in self._query("meta", "PartitionKey eq @p", {"p": _CONTACT})
        ]
        return sorted(found, key=lambda c: c.user)

    # ----- web channel: local accounts, attempt counters, progress text ------------------------------

    async def put_user(self, user: LocalUser) -> None:
        users = self._table("users")
        entity = {"PartitionKey": "user", "RowKey": _key(user.email), "email": user.email, "password_hash": user.password_hash,
                  "created_at": user.created_at.isoformat()}
        try:
            await users.create_entity(entity)
        except ResourceExistsError:  # a new password keeps the account (and its creation time)
            await users.update_entity({"PartitionKey": "user", "RowKey": _key(user.email), "password_hash": user.password_hash}, mode=UpdateMode.MERGE)

    @staticmethod
    def _user(e: Any) -> LocalUser:
        return LocalUser(e["email"], e["password_hash"], datetime.fromisoformat(e["created_at"]))

    async def get_user(self, email: str) -> LocalUser | None:
        try:
            return self._user(await self._table("users").get_entity("user", _key(email)))
        except ResourceNotFoundError:
            return None

    async def delete_user(self, email: str) -> bool:
        users = self._table("users")
        try:
            e = await users.get_entity("user", _key(email))
            await users.delete_entity("user", _key(email), etag=e.metadata["etag"], match_condition=MatchConditions.IfNotModified)
            return True
        except ResourceNotFoundError:
            return False
        except ResourceModifiedError:  # changed meanwhile (a new password): delete it as it is now
            await users.delete_entity("user", _key(email))
            return True

    async def list_users(self) -> list[LocalUser]:
        found = [self._user(e) async for e in self._query("users", "PartitionKey eq @p", {"p": "user"})]
        return sorted(found, key=lambda u: u.email)

    async def take_attempt(self, key: str, now: datetime, window: timedelta, limit: int) -> bool:
        """Insert-if-absent one of `limit` numbered slots in the key's partition for this window."""
        pk, table = _attempt_partition(key, now, window), self._table("attempts")
        for _ in range(ATTEMPT_ROUNDS):
            taken = {e["RowKey"] async for e in self._query("attempts", "PartitionKey eq @p", {"p": pk}, select=["RowKey"])}
            free = [f"{n:04d}" for n in range(limit) if f"{n:04d}" not in taken]
            if not free:
                return False
            try:
                await table.create_entity({"PartitionKey": pk, "RowKey": random.choice(free), "at": now.isoformat()})
                return True
            except ResourceExistsError:
                continue  # another attempt took that slot: look again, once
        return False

    async def attempts(self, key: str, now: datetime, window: timedelta) -> int:
        pk = _attempt_partition(key, now, window)
        return len([e async for e in self._query("attempts", "PartitionKey eq @p", {"p": pk}, select=["RowKey"])])

    async def clear_attempts(self, key: str, now: datetime, window: timedelta) -> None:
        pk = _attempt_partition(key, now, window)
        await self._delete_all("attempts", [e async for e in self._query("attempts", "PartitionKey eq @p", {"p": pk}, select=["PartitionKey", "RowKey"])])

    async def remember_sign_in(self, account: str, address: str, now: datetime) -> None:
        await self._table("attempts").upsert_entity(
            {"PartitionKey": _KNOWN + _key(account), "RowKey": _key(address), "address": address, "at": now.isoformat()},
            mode=UpdateMode.REPLACE,
        )

    async def sign_in_addresses(self, account: str, since: datetime) -> frozenset[str]:
        query = "PartitionKey eq @p and at ge @t"
        return frozenset([e["address"] async for e in self._query("attempts", query, {"p": _KNOWN + _key(account), "t": since.isoformat()},
                                                                  select=["address"])])

    # ----- retention -------------------------------------------------------------------------------

    async def purge_expired(
        self, now: datetime, *, audit_retention: timedelta = AUDIT_RETENTION, usage_retention: timedelta = USAGE_RETENTION
    ) -> None:
        """Forget sign-in counters of past windows, remembered sign-ins past SIGN_IN_MEMORY, audit rows past
        `audit_retention` and usage records past `usage_retention`; at most every PURGE_EVERY per process
        (range queries, batched deletes)."""
        if self._purged_at is not None and timedelta(0) <= now - self._purged_at < PURGE_EVERY:
            return
        self._purged_at = now
        old_windows = f"{int((now - ATTEMPT_KEEP).timestamp()):010d}"
        await self._purge("attempts", "PartitionKey lt @p", {"p": old_windows})
        await self._purge("attempts", "PartitionKey eq @p", {"p": _LEGACY_ATTEMPTS})
        await self._purge("attempts", "PartitionKey ge @lo and PartitionKey lt @hi and at lt @t",
                          {"lo": _KNOWN, "hi": _KNOWN[:-1] + chr(ord(_KNOWN[-1]) + 1), "t": (now - SIGN_IN_MEMORY).isoformat()})
        cutoff = now - audit_retention
        # Older days sort after newer ones (in each shard); the row time decides within the cutoff's own day.
        day, t = _audit_day(cutoff), cutoff.isoformat()
        await _bounded(self._purge("audit", "PartitionKey ge @p and PartitionKey lt @hi and at lt @t",
                                   {"p": f"{_NEW}{shard:02d}|{day}", "hi": f"{_NEW}{shard:02d}}}", "t": t}) for shard in range(AUDIT_SHARDS))
        if await self._legacy("audit", "audit", "PartitionKey lt @p", {"p": _NEW}):
            await self._purge("audit", "PartitionKey ge @p and PartitionKey lt @hi and at lt @t", {"p": day, "hi": _NEW, "t": t})
        cutoff = now - usage_retention  # whole months before the cutoff's (both layouts sort before it), then its own month by time
        await self._purge("usage", "PartitionKey lt @p", {"p": month_of(cutoff)})
        await self._purge("usage", "PartitionKey ge @p and PartitionKey lt @hi and requested_at lt @t",
                          {"p": month_of(cutoff), "hi": month_of(cutoff) + "}", "t": cutoff.isoformat()})
        await self._purge("outbox", "PartitionKey eq @p and state ne @pending and created_at lt @t",
                          {"p": _OUTBOX, "pending": "pending", "t": (now - NOTIFICATION_MEMORY).isoformat()})

    async def _purge(self, table: str, query: str, parameters: dict[str, Any]) -> None:
        await self._delete_all(table, [e async for e in self._query(table, query, parameters, select=["PartitionKey", "RowKey"])])

    async def _delete_all(self, table: str, entities: list[Any]) -> None:
        """Delete in batches of up to 100 per partition (one request each); gone already is fine."""
        by_partition: dict[str, list[Any]] = {}
        for e in entities:
            by_partition.setdefault(e["PartitionKey"], []).append(e)
        client = self._table(table)
        for rows in by_partition.values():
            for i in range(0, len(rows), 100):
                chunk = rows[i:i + 100]
                try:
                    await client.submit_transaction([("delete", {"PartitionKey": e["PartitionKey"], "RowKey": e["RowKey"]}) for e in chunk])
                except TableTransactionError:  # one row gone meanwhile fails the batch: delete one by one
                    for e in chunk:
                        try:
                            await client.delete_entity(e["PartitionKey"], e["RowKey"])
                        except ResourceNotFoundError:
                            pass

    async def set_progress(self, key: str, text: str, now: datetime) -> None:
        """A partition by a hash of the key; an index row per key and hour written (once per process) lets the purge read past hours only."""
        await self._index_progress(key, now)
        await self._table("progress").upsert_entity(
            {"PartitionKey": _progress_partition(key), "RowKey": _key(key), "text": text[:PROGRESS_TEXT_LIMIT], "updated_at": now.isoformat()},
            mode=UpdateMode.REPLACE,
        )
        if self._progress_purged_at is None or now - self._progress_purged_at >= HOUSEKEEPING_EVERY:
            self._progress_purged_at = now
            await self._purge_progress(now)

    async def _index_progress(self, key: str, now: datetime, *, again: bool = False) -> None:
        hour = _hour(now)
        if not again and self._progress_indexed.get(key) == hour:
            return
        if len(self._progress_indexed) >= PROGRESS_INDEX_MEMORY:
            self._progress_indexed.clear()
        await self._table("progress").upsert_entity(
            {"PartitionKey": _progress_due(key, now), "RowKey": _key(key), "key": key, "at": now.isoformat()}, mode=UpdateMode.REPLACE)
        self._progress_indexed[key] = hour

    async def _purge_progress(self, now: datetime) -> None:
        """Texts older than PROGRESS_TTL go: the index rows of hours up to the cutoff's (a range), each a keyed
        look at its text (one written since is indexed again at its own hour)."""
        progress, cutoff = self._table("progress"), now - PROGRESS_TTL
        query = "PartitionKey ge @lo and PartitionKey lt @hi and at lt @t"
        due = [e async for e in self._query("progress", query, {"lo": _PROGRESS_DUE, "hi": f"{_PROGRESS_DUE}{_hour(cutoff)}}}", "t": cutoff.isoformat()})]

        async def look(e: Any) -> bool:
            """Whether the index row `e` has done its work (False: it was just rewritten for a later look)."""
            try:
                text = await progress.get_entity(_progress_partition(e["key"]), e["RowKey"])
            except ResourceNotFoundError:
                return True
            updated = datetime.fromisoformat(text["updated_at"])
            if updated < cutoff:
                await self._delete_unchanged("progress", text)
                return True
            await self._index_progress(e["key"], updated, again=True)
            return _progress_due(e["key"], updated) != e["PartitionKey"]

        done = await _bounded(look(e) for e in due)
        await self._delete_all("progress", [e for e, gone in zip(due, done) if gone])
        if await self._legacy("progress", "progress", "PartitionKey eq @p", {"p": _LEGACY_PROGRESS}):
            await self._purge("progress", "PartitionKey eq @p and updated_at lt @t", {"p": _LEGACY_PROGRESS, "t": cutoff.isoformat()})

    async def get_progress(self, key: str) -> str:
        progress = self._table("progress")
        try:
            return (await progress.get_entity(_progress_partition(key), _key(key)))["text"]
        except ResourceNotFoundError:
            pass
        if await self._legacy("progress", "progress", "PartitionKey eq @p", {"p": _LEGACY_PROGRESS}):
            try:
                return (await progress.get_entity(_LEGACY_PROGRESS, _key(key)))["text"]
            except ResourceNotFoundError:
                pass
        return ""

    # ----- usage records (bot/engine/usage.py): a partition per month -------------------------------

    async def put_usage(self, record: UsageRecord) -> None:
        values = {k: v for k, v in encode_usage(record).items() if v is not None}
        await self._table("usage").upsert_entity(
            {"PartitionKey": _usage_partition(record), "RowKey": _key(record.session_id), **values}, mode=UpdateMode.REPLACE
        )

    async def usage(self, since: datetime, until: datetime, user: str | None = None) -> list[UsageRecord]:
        """One range of partitions: the months' shards, and the months' single partitions of the earlier layout (`<month>` sorts
        just before `<month>|<shard>`); a record in both (rewritten after the change) counts once."""
        last = until - timedelta(microseconds=1)
        query = "PartitionKey ge @lo and PartitionKey lt @hi and requested_at ge @since and requested_at lt @until"
        params: dict[str, Any] = {"lo": month_of(since), "hi": month_of(last) + "}", "since": since.isoformat(), "until": until.isoformat()}
        if user is not None:
            query += " and ( owner eq @u or owner_label eq @u )"
            params["u"] = user
        found: dict[str, tuple[bool, UsageRecord]] = {}
        async for e in self._query("usage", query, params, results_per_page=1000):
            r, sharded = decode_usage(e), "|" in e["PartitionKey"]
            if r.session_id not in found or sharded:
                found[r.session_id] = (sharded, r)
        return sorted((r for _, r in found.values()), key=lambda r: (r.requested_at, r.session_id))


    # ----- the notification outbox (bot/engine/notify.py) ------------------------------------------

    async def enqueue(self, items: Sequence[Notification]) -> int:
        added = 0
        for n in items:
            await self._schedule_notification(n)  # before the item, as for sessions: never a pending item nobody finds
            try:
                await self._table("outbox").create_entity({"PartitionKey": _OUTBOX, "RowKey": _key(n.key), **_outbox_values(n)})
                added += 1
            except ResourceExistsError:
                pass  # another worker emitted this event already
        return added

    # Pending items are found through the due table too ("n<minute>|<shard>" partitions, RowKey the item's
    # key): a pass reads what is due, not the outbox, which keeps delivered items for a week.

    async def _schedule_notification(self, n: Notification) -> None:
        if n.state == "pending":
            await self._table("due").upsert_entity(
                {**_due_entity(n.key, n.due_at, prefix=_NOTIFY_DUE), "session_id": "", "key": n.key}, mode=UpdateMode.REPLACE)

    async def due_notifications(self, now: datetime, limit: int = 100) -> list[Notification]:
        query = "PartitionKey ge @lo and PartitionKey lt @hi and at le @now"
        params = {"lo": _NOTIFY_DUE, "hi": f"{_NOTIFY_DUE}{_minute(now)}|~", "now": _utc(now)}
        found: dict[str, Notification] = {}
        async for e in self._query("due", query, params, results_per_page=min(limit, 1000)):
            try:
                n = _notification(await self._table("outbox").get_entity(_OUTBOX, _key(e["key"])))
            except ResourceNotFoundError:
                n = None
            if n is not None and n.state == "pending" and n.due_at <= now:
                found[n.key] = n
                if len(found) >= limit:
                    break
            elif n is not None and n.state == "pending" and _NOTIFY_DUE + _due_partition(n.key, n.due_at) == e["PartitionKey"]:
                await self._retime_due(e, n.due_at)
            else:
                await self._drop_due(e)  # delivered, given up, gone, or due in another minute
        return sorted(found.values(), key=lambda n: (n.due_at, n.created_at))[:limit]

    async def next_notification_due(self) -> datetime | None:
        """The earliest pending item's due time, or earlier (a stale entry): entries come in minute order."""
        times, _ = await self._first_minute("PartitionKey ge @lo and PartitionKey lt @hi", {"lo": _NOTIFY_DUE, "hi": _NOTIFY_DUE + "~"})
        return min(times, default=None)

    async def save_notification(self, item: Notification) -> Notification:
        if not item.version:
            raise Conflict(f"notification {item.key} was never read from this store")
        await self._schedule_notification(item)
        try:
            meta = await self._table("outbox").update_entity(
                {"PartitionKey": _OUTBOX, "RowKey": _key(item.key), **_outbox_values(item)}, mode=UpdateMode.REPLACE,
                etag=item.version, match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            raise Conflict(f"notification {item.key} changed since it was read") from None
        return dataclasses.replace(item, version=meta["etag"])

    async def notifications(self, event_id: str | None = None) -> list[Notification]:
        query, params = "PartitionKey eq @p", {"p": _OUTBOX}
        if event_id is not None:
            query, params = query + " and event_id eq @e", {**params, "e": event_id}
        found = [_notification(e) async for e in self._query("outbox", query, params)]
        return sorted(found, key=lambda n: (n.created_at, n.key))

    async def put_notify_target(self, target: str, conversation: ConversationRef) -> None:
        await self._table("meta").upsert_entity(
            {"PartitionKey": _NOTIFY, "RowKey": _key(target), "target": target, "conversation": conversation.to_json()}, mode=UpdateMode.REPLACE)

    async def delete_notify_target(self, target: str) -> bool:
        try:
            await self._table("meta").get_entity(_NOTIFY, _key(target))
        except ResourceNotFoundError:
            return False
        await self._table("meta").delete_entity(_NOTIFY, _key(target))
        return True

    async def notify_targets(self) -> dict[str, ConversationRef]:
        return {e["target"]: ConversationRef.from_json(e["conversation"]) async for e in self._query("meta", "PartitionKey eq @p", {"p": _NOTIFY})}


def _minute_start(minute: str) -> datetime:
    return datetime.strptime(minute, "%Y%m%d%H%M").replace(tzinfo=timezone.utc)


def _due_partition(session_id: str, at: datetime) -> str:
    return f"{_minute(at)}|{_spread(session_id, DUE_SHARDS)[-2:]}"


def _due_entity(session_id: str, at: datetime, prefix: str = "") -> dict[str, Any]:
    return {"PartitionKey": prefix + _due_partition(session_id, at), "RowKey": _key(session_id), "session_id": session_id, "at": _utc(at)}


def _utc(at: datetime) -> str:
    """Due times compare as text on the server: one zone, one format."""
    return at.astimezone(timezone.utc).isoformat()


def _outbox_values(n: Notification) -> dict[str, Any]:
    values = {"event_id": n.event_id, "target": n.target, "payload": n.payload, "created_at": n.created_at.isoformat(),
              "due_at": n.due_at.isoformat(), "attempts": n.attempts, "state": n.state, "lease_owner": n.lease_owner,
              "lease_expires_at": n.lease_expires_at.isoformat() if n.lease_expires_at else None,
              "delivered_at": n.delivered_at.isoformat() if n.delivered_at else None, "last_error": n.last_error[:300]}
    return {k: v for k, v in values.items() if v is not None}


def _notification(e: Any) -> Notification:
    return Notification(
        event_id=e["event_id"], target=e["target"], payload=e["payload"], created_at=datetime.fromisoformat(e["created_at"]),
        due_at=datetime.fromisoformat(e["due_at"]), attempts=int(e["attempts"]), state=e["state"], lease_owner=e.get("lease_owner", ""),
        lease_expires_at=_time(e.get("lease_expires_at")), delivered_at=_time(e.get("delivered_at")), last_error=e.get("last_error", ""),
        version=e.metadata["etag"],
    )


def _attempt_partition(key: str, now: datetime, window: timedelta) -> str:
    """A partition per counter and fixed window (the same on every replica): its start in epoch seconds, then the key."""
    seconds = int(window.total_seconds())
    epoch = int(now.timestamp())
    return f"{epoch - epoch % seconds:010d}|{_key(key)}"


def _spread(key: str, buckets: int) -> str:
    return f"{int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % buckets:03d}"


def _micros(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000)


def _countdown(at: datetime) -> str:
    return f"{10**17 - _micros(at):017d}"


def _audit_day(at: datetime) -> str:
    """The audit partition of a day: counts down, so a scan meets the newest day first."""
    return f"{10**6 - int(at.timestamp() // 86400):06d}"


def _written(e: Any) -> str:
    if "written" in e:
        return e["written"]
    parts = e["RowKey"].split("-")  # rows of earlier versions: <countdown>-<10**20 - ns>-<random>
    return f"{10**20 - int(parts[1]):020d}" if len(parts) == 3 and parts[1].isdigit() else ""


def _audit_values(entry: AuditEntry) -> dict[str, Any]:
    return {
        "at": entry.at.isoformat(),
        "user": entry.user[:AUDIT_TEXT_LIMIT],
        "email": entry.email[:AUDIT_TEXT_LIMIT],
        "channel": entry.channel[:AUDIT_TEXT_LIMIT],
        "command": entry.command[:AUDIT_TEXT_LIMIT],
        "allowed": bool(entry.allowed),
        "reason": entry.reason[:AUDIT_TEXT_LIMIT],
    }


def _global_slot(n: int) -> tuple[str, str]:
    """Global cap slot n: one of SLOT_SHARDS partitions, so no partition takes every create and end."""
    return f"global|{n % SLOT_SHARDS:02d}", f"{n:05d}"


def _minute(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y%m%d%H%M")


def _hour(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y%m%d%H")


def _claim_due(at: datetime, token: str, old: bool = False) -> str:
    """The index partition of a claim's step due at `at`: its minute, then a shard of the token (the
    purge reads every minute up to now's in one range query)."""
    return f"{_OLD_CLAIM_DUE if old else _CLAIM_DUE}{_minute(at)}|{_spread(token, SPREAD)}"


def _reservation(scope: str, address: str) -> tuple[str, str]:
    return f"{_RESERVED}{_key(scope)}|{_spread(_key(address), SPREAD)}", _key(address)


def _held_row(scope: str, address: str) -> str:
    """A reservation's row in its session's index partition."""
    return _key(f"{scope}\x00{address}")


def _progress_partition(key: str) -> str:
    return f"{_NEW}{_spread(_key(key), SPREAD)}"


def _progress_due(key: str, at: datetime) -> str:
    """The purge index's partition of a progress key written at `at`: its hour, then a shard of the key."""
    return f"{_PROGRESS_DUE}{_hour(at)}|{_spread(_key(key), SPREAD)}"


def _audit_partition(shard: int, at: datetime) -> str:
    """A shard's partition of a day: the shard first, so each shard's days are one range, newest first."""
    return f"{_NEW}{shard:02d}|{_audit_day(at)}"


def _key_time(e: Any) -> int:
    """The time an audit row's key sorts by (a refusal row: its hour's end), in microseconds."""
    return 10**17 - int(e["RowKey"][:17])


def _usage_partition(record: UsageRecord) -> str:
    """The month of the session's request, then a shard of its id (a record written twice lands on the same row)."""
    return f"{month_of(record.requested_at)}|{_spread(_key(record.session_id), USAGE_SHARDS)}"


async def _bounded(jobs: Any, limit: int = 16) -> list[Any]:
    """Run the awaitables `jobs`, at most `limit` at once; their results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Any) -> Any:
        async with gate:
            return await job

    return await asyncio.gather(*(one(job) for job in jobs))
