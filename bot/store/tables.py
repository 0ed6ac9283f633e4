"""Azure Table Storage store: any number of replicas (or none, with `reap`) share one account.

The only module that imports the Table Storage SDK (`azure.data.tables.aio`). Every table name
starts with VPN_TABLE_PREFIX. What makes it safe to share (docs/decisions.md, "Table Storage"):

* sessions: one entity each (PartitionKey = session id); a save is an update conditioned on the
  ETag read (If-Match), so a stale write fails with 412 and becomes `Conflict`;
* caps: a session holds one numbered slot entity per cap, inserted with insert-if-absent
  (`user|<owner>` 0..per_user-1 and `global` 0..total-1). Two inserts of one slot cannot both
  succeed, so the caps hold across replicas; slots go when the session ends (a slot whose session
  ended or never got written is reclaimed when the cap looks full);
* message ids, address reservations: insert-if-absent; claims: consumed by an ETag-conditioned update;
* keys from outside (emails, identities, message ids, addresses) go through `store_key` (bot/store/codec.py):
  bounded and injective, so no input can make a key Table Storage refuses or collide with another;
* sign-in attempts: each counter is a partition of its own per window holding up to `limit` numbered
  slots taken by insert-if-absent (two rounds at most, then the window counts as used up), so a
  flood on one account neither loops on one entity nor touches another account's partition;
* audit: one partition per day, newest first; a refusal is counted on one sampled row per identity,
  reason and hour rather than written row by row; `purge_expired` keeps it to its retention;
* outbox: one partition, an item per (event, target) inserted if absent, claimed and marked delivered
  by ETag-conditioned updates; delivered items are forgotten after a week;
* usage: one partition per month (of the session's request), one row per session (an upsert: a
  record written twice is one row); a month's report reads one partition.

Fields serialise from the Session dataclass (bot/store/codec.py): a new field needs no change here.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import heapq
import logging
import random
import secrets
import time
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Sequence

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
SLOT_GRACE = timedelta(seconds=60)
SLOT_ROUNDS = 50
BLIND_TRIES = 3
TABLES = ("sessions", "slots", "seen", "audit", "claims", "workers", "addresses", "users", "attempts", "progress", "meta", "usage", "outbox", "due")
DUE_SHARDS = 16  # a minute's due entries spread over this many partitions
DUE_READ_CONCURRENCY = 16  # due entries whose session is read at once
_FORGET = "f"  # due-table partitions of ended sessions' forget times ("f<minute>|<shard>"; live ones start with a digit)
_NOTIFY_DUE = "n"  # due-table partitions of pending notifications ("n<minute>|<shard>")
_TURN = "turn"  # the meta table's partition of fleet-wide job turns (take_turn)
PROGRESS_TTL = timedelta(days=2)
PROGRESS_TEXT_LIMIT = 16_000  # a string property holds 32k characters
_SESSION_ROW = "s"
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


_key = store_key


def _entity(session: Session) -> dict[str, Any]:
    values = {k: v for k, v in encode(session).items() if v is not None}
    values.update(PartitionKey=_key(session.id), RowKey=_SESSION_ROW)
    return values


def _session(entity: Any) -> Session:
    return decode(entity, entity.metadata["etag"])


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

    @classmethod
    def from_connection_string(cls, conn_str: str, *, prefix: str = "vpn") -> "TableStore":
        return cls(TableServiceClient.from_connection_string(conn_str), prefix=prefix)

    @classmethod
    def from_endpoint(cls, endpoint: str, *, prefix: str = "vpn", credential: Any = None) -> "TableStore":
        """Production: the managed identity through azure-identity's default chain (built here, lazily)."""
        owned = None
        if credential is None:
            from azure.identity.aio import DefaultAzureCredential

            credential = owned = DefaultAzureCredential()
        return cls(TableServiceClient(endpoint=endpoint, credential=credential), prefix=prefix, credential=owned)

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
        user_slots = f"user|{_key(session.owner)}"
        mine = await self._take_slot(user_slots, per_user, session.id, now)
        if mine is None:
            return CreateOutcome.USER_LIMIT
        everyone = await self._take_slot("global", total, session.id, now)
        if everyone is None:
            await self._table("slots").delete_entity(user_slots, mine)
            return CreateOutcome.GLOBAL_LIMIT
        try:
            await self._schedule_due(session)  # before the session: a crash in between leaves a hint, never an unswept session
            await self._table("sessions").create_entity(_entity(session))
        except BaseException:
            await self._table("slots").delete_entity(user_slots, mine)
            await self._table("slots").delete_entity("global", everyone)
            raise
        return CreateOutcome.CREATED

    async def _take_slot(self, partition: str, limit: int, session_id: str, now: datetime) -> str | None:
        """Insert-if-absent one of `limit` numbered slots; None when all are held by live sessions."""
        slots = self._table("slots")

        async def insert(row: str) -> bool:
            try:
                await slots.create_entity({"PartitionKey": partition, "RowKey": row, "session_id": session_id, "at": now.isoformat()})
                return True
            except ResourceExistsError:
                return False

        # Usually a random slot is free: try a few blindly before listing the partition (which grows
        # with the number of live sessions).
        for n in random.sample(range(limit), min(BLIND_TRIES, limit)):
            if await insert(f"{n:05d}"):
                return f"{n:05d}"
        for _ in range(SLOT_ROUNDS):
            taken = {e["RowKey"]: e async for e in self._query("slots", "PartitionKey eq @p", {"p": partition})}
            if len(taken) >= limit:
                if not await self._reclaim_stale(taken.values(), now):
                    return None
                continue
            free = [f"{n:05d}" for n in range(limit) if f"{n:05d}" not in taken]
            row = random.choice(free)  # spread concurrent creators over the free slots
            if await insert(row):
                return row
            # another creator won this slot: look again
        log.warning("slots %s: gave up after %d contended rounds", partition, SLOT_ROUNDS)
        return None

    async def _reclaim_stale(self, slots: Any, now: datetime) -> bool:
        """Delete slots whose session ended (or was never written, after a grace); True if any went."""
        reclaimed = False
        for slot in slots:
            holder = await self.get(slot["session_id"])
            stale = holder.state in TERMINAL_STATES if holder else now - datetime.fromisoformat(slot["at"]) > SLOT_GRACE
            if stale:
                try:
                    await self._table("slots").delete_entity(
                        slot["PartitionKey"], slot["RowKey"], etag=slot.metadata["etag"], match_condition=MatchConditions.IfNotModified
                    )
                    reclaimed = True
                except ResourceModifiedError:
                    reclaimed = True  # someone else reclaimed (and maybe re-took) it: look again
        return reclaimed

    async def _release_slots(self, session: Session) -> None:
        for partition in (f"user|{_key(session.owner)}", "global"):
            async for slot in self._query("slots", "PartitionKey eq @p and session_id eq @s", {"p": partition, "s": session.id}):
                await self._table("slots").delete_entity(
                    slot["PartitionKey"], slot["RowKey"], etag=slot.metadata["etag"], match_condition=MatchConditions.IfNotModified
                )

    async def save(self, session: Session) -> Session:
        if not session.version:
            raise Conflict(f"session {session.id} was never read from this store")
        await self._schedule_due(session)  # before the write (see _schedule_due)
        try:
            meta = await self._table("sessions").update_entity(
                _entity(session), mode=UpdateMode.REPLACE, etag=session.version, match_condition=MatchConditions.IfNotModified
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
        return dataclasses.replace(session, version=meta["etag"], stored_due_at=session.due_at)

    async def get(self, session_id: str) -> Session | None:
        try:
            entity = await self._table("sessions").get_entity(_key(session_id), _SESSION_ROW)
        except ResourceNotFoundError:
            return None
        return _session(entity)

    async def sessions(self, states: Sequence[SessionState], owner: str | None = None) -> list[Session]:
        if not states:
            # Nothing to list; still one round trip, so a health check learns whether the store answers.
            async for _ in self._query("sessions", "PartitionKey eq @p", {"p": ""}, results_per_page=1):
                break
            return []
        params: dict[str, Any] = {f"s{i}": s.value for i, s in enumerate(states)}
        # The SDK substitutes @names split on spaces: keep parentheses apart from them.
        query = "( " + " or ".join(f"state eq @s{i}" for i in range(len(states))) + " )"
        if owner is not None:
            query += " and owner eq @owner"
            params["owner"] = owner
        found = [_session(e) async for e in self._query("sessions", query, params)]
        return sorted(found, key=lambda s: s.created_at)

    # ----- the due index: what a sweep reads ---------------------------------------------------------
    #
    # One entry per (minute, session) in the `due` table: PartitionKey "<YYYYmmddHHMM>|<shard>" (minutes
    # sort as text; a minute spread over DUE_SHARDS partitions), RowKey the session id, `at` its due time.
    # A write puts the entry of its new due time BEFORE the session itself, so every live session has an
    # entry at or before the time it is due; an entry it has moved away from is a stale hint, dropped
    # (by ETag: never one just rewritten) when a sweep reaches it. A sweep with nothing due is one query.

    async def _schedule_due(self, session: Session) -> None:
        if session.state in TERMINAL_STATES:  # when it is forgotten: ENDED_RETENTION after its end
            at = (session.ended_at or session.updated_at) + ENDED_RETENTION
            await self._table("due").upsert_entity(_due_entity(session.id, at, prefix=_FORGET), mode=UpdateMode.REPLACE)
        elif session.due_at is not None:
            await self._table("due").upsert_entity(_due_entity(session.id, session.due_at), mode=UpdateMode.REPLACE)

    async def _repair_due(self, session_id: str) -> None:
        """A lost compare-and-set may have rewritten the winner's entry with our time: write the winner's back."""
        try:
            stored = await self.get(session_id)
            if stored is not None:
                await self._schedule_due(stored)
        except Exception:
            log.exception("session %s: repairing its due entry failed; the index check finds it", session_id)

    async def live_counts(self) -> dict[tuple[str, str], int]:
        params: dict[str, Any] = {f"s{i}": s.value for i, s in enumerate(ACTIVE_STATES)}
        query = "( " + " or ".join(f"state eq @s{i}" for i in range(len(ACTIVE_STATES))) + " )"
        counts: dict[tuple[str, str], int] = {}
        async for e in self._query("sessions", query, params, select=["state", "provider"], results_per_page=1000):
            key = (e["state"], e["provider"])
            counts[key] = counts.get(key, 0) + 1
        return counts

    async def due_sessions(self, now: datetime, limit: int = 500) -> list[Session]:
        query = "PartitionKey lt @hi and at le @now"
        entries = []
        async for e in self._query("due", query, {"hi": f"{_minute(now)}|~", "now": _utc(now)}, results_per_page=min(limit, 1000)):
            entries.append(e)
            if len(entries) >= limit:
                break
        gate = asyncio.Semaphore(DUE_READ_CONCURRENCY)

        async def look(e: Any) -> Session | None:
            async with gate:
                s = await self.get(e["session_id"])
                if s is not None and s.state not in TERMINAL_STATES and (s.due_at is None or s.due_at <= now):
                    return s
                if s is not None and s.state not in TERMINAL_STATES and s.due_at is not None and _due_partition(s.id, s.due_at) == e["PartitionKey"]:
                    await self._retime_due(e, s.due_at)  # due later this minute: an earlier writer's time
                    return None
                await self._drop_due(e)  # ended, gone, or moved to another minute
                return None

        found = [s for s in await asyncio.gather(*(look(e) for e in entries)) if s is not None]
        unique = {s.id: s for s in found}
        return sorted(unique.values(), key=lambda s: (s.due_at or now, s.id))

    async def _forget_due(self, now: datetime) -> None:
        """Forget the sessions that ended ENDED_RETENTION ago: their entries (written with the ending) in one range query."""
        async for e in self._query("due", "PartitionKey ge @lo and PartitionKey lt @hi", {"lo": _FORGET, "hi": f"{_FORGET}{_minute(now)}|~"}):
            s = await self.get(e["session_id"])
            if s is not None and s.state in TERMINAL_STATES:
                try:
                    await self._table("sessions").delete_entity(_key(s.id), _SESSION_ROW, etag=s.version, match_condition=MatchConditions.IfNotModified)
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

    async def next_due(self, now: datetime) -> datetime | None:
        """The earliest entry after `now`: entries come in minute order, so reading the first minute that has
        any is enough (past a page of it, the minute's start: earlier than the truth, never later)."""
        first: str | None = None
        times: list[datetime] = []
        query = "PartitionKey ge @lo and PartitionKey lt @hi and at gt @now"
        params = {"lo": f"{_minute(now)}|", "hi": _FORGET, "now": _utc(now)}
        async for e in self._query("due", query, params, results_per_page=100, select=["PartitionKey", "at"]):
            bucket = e["PartitionKey"].split("|")[0]
            if first is None:
                first = bucket
            if bucket != first:
                break
            if len(times) >= 100:
                return max(now, _minute_start(first))
            times.append(datetime.fromisoformat(e["at"]))
        return min(times, default=None)

    async def live_ids(self) -> set[str]:
        """Every session with a due entry: each live one has one (written before the session), and an
        ended one's last entries linger until a sweep reaches them, so this is a superset."""
        query, params = "PartitionKey lt @hi", {"hi": _FORGET}
        return {e["session_id"] async for e in self._query("due", query, params, select=["session_id"], results_per_page=1000)}

    async def check_due_index(self, now: datetime) -> int:
        """Give every live session without an entry one (due now): sessions written before the index
        existed, or by a replica of an earlier version during a rolling deploy. Reads every live session
        and entry: for a fleet-wide turn now and then, not for every sweep."""
        await self._forget_ended(now)
        async for e in self._query("outbox", "PartitionKey eq @p and state eq @pending", {"p": _OUTBOX, "pending": "pending"}):
            await self._schedule_notification(_notification(e))  # pending items of an earlier version: found again
        indexed = {_key(sid) for sid in await self.live_ids()}
        missing = 0
        for s in await self.sessions(ACTIVE_STATES):
            if _key(s.id) not in indexed:
                await self._table("due").upsert_entity(_due_entity(s.id, s.due_at or now), mode=UpdateMode.REPLACE)
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
                "PartitionKey": _audit_day(entry.at),
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
        pk, rk = _audit_day(hour), f"{_countdown(hour + timedelta(hours=1))}-r-{digest}"
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
        """Newest first. Rows come in key order, whose time never precedes a row's own time (a refusal
        row is keyed at its hour's end): read until the next key is older than the limit-th newest row.
        A time range reads only its days' partitions; a user is filtered on the server."""
        if limit <= 0:
            return []
        rows: list[Any] = []
        newest: list[int] = []  # a min-heap of the `limit` newest times seen
        clauses: list[str] = []
        params: dict[str, Any] = {}
        if until is not None:  # days count down: the range's last day has the smallest partition key
            clauses.append("PartitionKey ge @plo and at lt @until")
            params.update(plo=_audit_day(until), until=until.isoformat())
        if since is not None:
            clauses.append("PartitionKey le @phi and at ge @since")
            params.update(phi=_audit_day(since), since=since.isoformat())
        if user is not None:
            clauses.append("( user eq @u or email eq @u )")
            params["u"] = user[:AUDIT_TEXT_LIMIT]
        if clauses:
            found = self._query("audit", " and ".join(clauses), params, results_per_page=min(limit, 1000))
        else:
            found = self._table("audit").list_entities(results_per_page=min(limit, 1000))
        async for e in found:
            key_time = 10**17 - int(e["RowKey"][:17])
            if len(newest) >= limit and key_time < newest[0]:
                break
            at = _micros(datetime.fromisoformat(e["at"]))
            rows.append(e)
            heapq.heappush(newest, at)
            if len(newest) > limit:
                heapq.heappop(newest)
        rows.sort(key=lambda e: (_micros(datetime.fromisoformat(e["at"])), _written(e)), reverse=True)
        return [
            AuditEntry(datetime.fromisoformat(e["at"]), e["user"], e["email"], e["channel"], e["command"], bool(e["allowed"]), e["reason"],
                       int(e.get("count", 1)))
            for e in rows[:limit]
        ]

    async def heartbeat(self, worker: Worker) -> None:
        await self._table("workers").upsert_entity(
            {"PartitionKey": "worker", "RowKey": _key(worker.id), "id": worker.id, "host": worker.host, "pid": worker.pid,
             "heartbeat_at": worker.heartbeat_at.isoformat()},
            mode=UpdateMode.REPLACE,
        )

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
        entity: dict[str, Any] = {
            "PartitionKey": claim.token_hash,
            "RowKey": "c",
            "session_id": claim.session_id,
            "user": claim.user,
            "tunnel_name": claim.tunnel_name,
            "created_at": claim.created_at.isoformat(),
            "expires_at": claim.expires_at.isoformat(),
            "sealed_present": claim.sealed is not None,
        }
        if claim.sealed is not None:
            entity["sealed"] = claim.sealed
        await self._table("claims").create_entity(entity)

    @staticmethod
    def _claim(e: Any) -> Claim:
        sealed = e.get("sealed")
        return Claim(
            token_hash=e["PartitionKey"],
            session_id=e["session_id"],
            user=e["user"],
            tunnel_name=e["tunnel_name"],
            created_at=datetime.fromisoformat(e["created_at"]),
            expires_at=datetime.fromisoformat(e["expires_at"]),
            used_at=_time(e.get("used_at")),
            sealed=bytes(sealed) if sealed is not None else None,
        )

    async def get_claim(self, token_hash: str) -> Claim | None:
        try:
            return self._claim(await self._table("claims").get_entity(token_hash, "c"))
        except ResourceNotFoundError:
            return None

    async def consume_claim(self, token_hash: str, now: datetime) -> Claim | None:
        try:
            e = await self._table("claims").get_entity(token_hash, "c")
        except ResourceNotFoundError:
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

    async def purge_claims(self, now: datetime, session_id: str | None = None) -> None:
        """Erase sealed configs past expiry (or of one ended session); forget day-old claims entirely."""
        if session_id is not None:
            async for e in self._query("claims", "session_id eq @s and sealed_present eq true", {"s": session_id}):
                await self._erase_sealed(e)
        else:
            await self._housekeeping(now)
        async for e in self._query("claims", "expires_at le @t and sealed_present eq true", {"t": now.isoformat()}):
            await self._erase_sealed(e)
        cutoff = (now - timedelta(days=1)).isoformat()
        async for e in self._query("claims", "expires_at lt @t", {"t": cutoff}, select=["PartitionKey", "RowKey"]):
            await self._table("claims").delete_entity(e["PartitionKey"], e["RowKey"])

    # ----- tunnel address reservations -------------------------------------------------------------

    async def reserve_address(self, scope: str, address: str, session_id: str, now: datetime) -> str:
        table = self._table("addresses")
        pk, rk = _key(scope), _key(address)
        try:
            await table.create_entity({"PartitionKey": pk, "RowKey": rk, "session_id": session_id, "reserved_at": now.isoformat()})
            return session_id
        except ResourceExistsError:
            pass
        try:
            return (await table.get_entity(pk, rk))["session_id"]
        except ResourceNotFoundError:
            return ""  # released meanwhile: the caller asks again

    async def release_address(self, scope: str, address: str, holder: str) -> None:
        table = self._table("addresses")
        try:
            e = await table.get_entity(_key(scope), _key(address))
        except ResourceNotFoundError:
            return
        if e["session_id"] == holder:
            try:
                await table.delete_entity(e["PartitionKey"], e["RowKey"], etag=e.metadata["etag"], match_condition=MatchConditions.IfNotModified)
            except ResourceModifiedError:
                pass

    async def release_addresses(self, session_id: str) -> None:
        async for e in self._query("addresses", "session_id eq @s", {"s": session_id}):
            try:
                await self._table("addresses").delete_entity(
                    e["PartitionKey"], e["RowKey"], etag=e.metadata["etag"], match_condition=MatchConditions.IfNotModified
                )
            except ResourceModifiedError:
                pass

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
        # Older days sort after newer ones; the row time decides within the cutoff's own day.
        await self._purge("audit", "PartitionKey ge @p and at lt @t", {"p": _audit_day(cutoff), "t": cutoff.isoformat()})
        cutoff = now - usage_retention  # whole months before the cutoff's, then its own month by time
        await self._purge("usage", "PartitionKey lt @p", {"p": month_of(cutoff)})
        await self._purge("usage", "PartitionKey eq @p and requested_at lt @t", {"p": month_of(cutoff), "t": cutoff.isoformat()})
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
        await self._table("progress").upsert_entity(
            {"PartitionKey": "progress", "RowKey": _key(key), "text": text[:PROGRESS_TEXT_LIMIT], "updated_at": now.isoformat()},
            mode=UpdateMode.REPLACE,
        )
        if self._progress_purged_at is None or now - self._progress_purged_at >= HOUSEKEEPING_EVERY:
            self._progress_purged_at = now
            cutoff = (now - PROGRESS_TTL).isoformat()
            async for e in self._query("progress", "updated_at lt @t", {"t": cutoff}, select=["PartitionKey", "RowKey"]):
                await self._table("progress").delete_entity(e["PartitionKey"], e["RowKey"])

    async def get_progress(self, key: str) -> str:
        try:
            return (await self._table("progress").get_entity("progress", _key(key)))["text"]
        except ResourceNotFoundError:
            return ""


    # ----- usage records (bot/engine/usage.py): a partition per month -------------------------------

    async def put_usage(self, record: UsageRecord) -> None:
        values = {k: v for k, v in encode_usage(record).items() if v is not None}
        await self._table("usage").upsert_entity(
            {"PartitionKey": month_of(record.requested_at), "RowKey": _key(record.session_id), **values}, mode=UpdateMode.REPLACE
        )

    async def usage(self, since: datetime, until: datetime, user: str | None = None) -> list[UsageRecord]:
        last = until - timedelta(microseconds=1)
        query = "PartitionKey ge @lo and PartitionKey le @hi and requested_at ge @since and requested_at lt @until"
        if month_of(since) == month_of(last):
            query = "PartitionKey eq @lo and requested_at ge @since and requested_at lt @until"  # one partition: a month's report
        params: dict[str, Any] = {"lo": month_of(since), "hi": month_of(last), "since": since.isoformat(), "until": until.isoformat()}
        if user is not None:
            query += " and ( owner eq @u or owner_label eq @u )"
            params["u"] = user
        found = [decode_usage(e) async for e in self._query("usage", query, params, results_per_page=1000)]
        return sorted(found, key=lambda r: (r.requested_at, r.session_id))


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
        first: str | None = None
        times: list[datetime] = []
        async for e in self._query("due", "PartitionKey ge @lo and PartitionKey lt @hi", {"lo": _NOTIFY_DUE, "hi": _NOTIFY_DUE + "~"},
                                   results_per_page=100, select=["PartitionKey", "at"]):
            bucket = e["PartitionKey"].split("|")[0]
            if first is None:
                first = bucket
            if bucket != first or len(times) >= 100:
                break
            times.append(datetime.fromisoformat(e["at"]))
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


def _minute(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y%m%d%H%M")


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
