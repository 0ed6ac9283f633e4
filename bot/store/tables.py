"""Azure Table Storage store: any number of replicas (or none, with `reap`) share one account.

The only module that imports the Table Storage SDK (`azure.data.tables.aio`). Every table name
starts with VPN_TABLE_PREFIX. What makes it safe to share (docs/decisions.md, "Table Storage"):

* sessions: one entity each (PartitionKey = session id); a save is an update conditioned on the
  ETag read (If-Match), so a stale write fails with 412 and becomes `Conflict`;
* caps: a session holds one numbered slot entity per cap, inserted with insert-if-absent
  (`user|<owner>` 0..per_user-1 and `global` 0..total-1). Two inserts of one slot cannot both
  succeed, so the caps hold across replicas; slots go when the session ends (a slot whose session
  ended or never got written is reclaimed when the cap looks full);
* message ids, address reservations: insert-if-absent; claims: consumed by an ETag-conditioned update.

Fields serialise from the Session dataclass (bot/store/codec.py): a new field needs no change here.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import secrets
import time
from datetime import datetime, timedelta
from typing import Any, AsyncIterator, Sequence

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient

from bot.messages import ConversationRef
from bot.one_time_configs import Claim
from bot.store.codec import decode, encode
from bot.store.model import TERMINAL_STATES, Conflict, Session, SessionState, utcnow
from bot.store.ports import AuditEntry, Contact, CreateOutcome, LocalUser, Worker

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
TABLES = ("sessions", "slots", "seen", "audit", "claims", "workers", "addresses", "users", "attempts", "progress", "meta")
PROGRESS_TTL = timedelta(days=2)
PROGRESS_TEXT_LIMIT = 16_000  # a string property holds 32k characters
_SESSION_ROW = "s"
_CONTACT = "contact"  # the meta table's partition of approvers' private chats


def _key(text: str) -> str:
    """A PartitionKey/RowKey may not hold / \\ # ? or control characters: percent-escape them."""
    out = []
    for ch in text:
        if ch in "/\\#?%" or ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F:
            out.append("".join(f"%{b:02X}" for b in ch.encode()))
        else:
            out.append(ch)
    return "".join(out)


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
        for name in TABLES:
            full = f"{self._prefix}{name}"
            try:
                await self._service.create_table(full)
            except ResourceExistsError:
                pass
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
        try:
            meta = await self._table("sessions").update_entity(
                _entity(session), mode=UpdateMode.REPLACE, etag=session.version, match_condition=MatchConditions.IfNotModified
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            raise Conflict(f"session {session.id} changed since it was read") from None
        if session.state in TERMINAL_STATES:
            try:
                await self._release_slots(session)
            except Exception:
                log.exception("session %s: releasing its cap slots failed; they are reclaimed when the cap is reached", session.id)
        return dataclasses.replace(session, version=meta["etag"])

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

    # ----- message ids, audit, workers -------------------------------------------------------------

    async def first_seen(self, channel: str, message_id: str, now: datetime) -> bool:
        seen = self._table("seen")
        pk, rk = _key(channel), _key(message_id[:256])
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
        # Newest first in key order: the row key counts down with the entry's time, then with the
        # moment of writing (entries of one instant keep their order), then a random tie-breaker.
        micros = int(entry.at.timestamp() * 1_000_000)
        written = 10**20 - time.time_ns()
        await self._table("audit").create_entity(
            {
                "PartitionKey": "audit",
                "RowKey": f"{10**17 - micros:017d}-{written:020d}-{secrets.token_hex(4)}",
                "at": entry.at.isoformat(),
                "user": entry.user[:AUDIT_TEXT_LIMIT],
                "email": entry.email[:AUDIT_TEXT_LIMIT],
                "channel": entry.channel[:AUDIT_TEXT_LIMIT],
                "command": entry.command[:AUDIT_TEXT_LIMIT],
                "allowed": bool(entry.allowed),
                "reason": entry.reason[:AUDIT_TEXT_LIMIT],
            }
        )

    async def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        out: list[AuditEntry] = []
        async for e in self._query("audit", "PartitionKey eq @p", {"p": "audit"}, results_per_page=min(limit, 1000)):
            out.append(AuditEntry(datetime.fromisoformat(e["at"]), e["user"], e["email"], e["channel"], e["command"], bool(e["allowed"]), e["reason"]))
            if len(out) >= limit:
                break
        return out

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
        cutoff = (now - ENDED_RETENTION).isoformat()
        query = "( state eq @deleted or state eq @failed or state eq @denied ) and ended_at lt @t"
        ended = {"deleted": "deleted", "failed": "failed", "denied": "denied", "t": cutoff}
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

    async def count_attempt(self, key: str, now: datetime, window: timedelta) -> int:
        """Add one to the key's counter for the window holding `now`: insert-if-absent, else an ETag update."""
        table, rk, start = self._table("attempts"), _key(key), _window_start(now, window)
        for _ in range(200):
            try:
                e = await table.get_entity("attempt", rk)
            except ResourceNotFoundError:
                try:
                    await table.create_entity({"PartitionKey": "attempt", "RowKey": rk, "window_start": start, "count": 1})
                    return 1
                except ResourceExistsError:
                    continue
            count = int(e["count"]) + 1 if e["window_start"] == start else 1
            try:
                await table.update_entity(
                    {"PartitionKey": "attempt", "RowKey": rk, "window_start": start, "count": count},
                    mode=UpdateMode.REPLACE, etag=e.metadata["etag"], match_condition=MatchConditions.IfNotModified,
                )
                return count
            except (ResourceModifiedError, ResourceNotFoundError):
                continue
        raise Conflict(f"attempt counter {key}: too many concurrent updates")

    async def attempts(self, key: str, now: datetime, window: timedelta) -> int:
        try:
            e = await self._table("attempts").get_entity("attempt", _key(key))
        except ResourceNotFoundError:
            return 0
        return int(e["count"]) if e["window_start"] == _window_start(now, window) else 0

    async def clear_attempts(self, key: str) -> None:
        await self._table("attempts").delete_entity("attempt", _key(key))

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


def _window_start(now: datetime, window: timedelta) -> str:
    """The start of the fixed window that holds `now`, the same on every replica."""
    seconds = int(window.total_seconds())
    epoch = int(now.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=now.tzinfo).isoformat()
