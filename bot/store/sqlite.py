"""SQLite store: one file, one connection on one dedicated thread, so the event loop never waits on disk.

Holds sessions, the audit log, seen message ids, claims, address reservations and worker records.
Never a private key: the schema has no column that could hold one.

Several processes may open one file (WAL): a session write is `UPDATE ... WHERE version=?` (a
compare-and-set), and the cap check runs with the insert in one `BEGIN IMMEDIATE` transaction, which
SQLite serialises across processes through its file lock. One host only: not on a network share.
"""
from __future__ import annotations

import dataclasses
import json
import os
import secrets
import sqlite3
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Mapping, Sequence, TypeVar

from bot.messages import ConversationRef
from bot.one_time_configs import Claim
from bot.store.codec import FIELDS, FieldSpec, decode, encode, encode_value, refusal_sample, store_key
from bot.store.model import ACTIVE_STATES, Conflict, Session, SessionState
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
from bot.store.thread import Outcome, StoreThread, run_alone
from bot.store.usage_codec import USAGE_FIELDS, decode_usage, encode_usage

T = TypeVar("T")
MESSAGE_ID_TTL = timedelta(days=2)
SEEN_PURGE_EVERY = timedelta(minutes=1)  # message ids past their TTL are deleted at most this often per process
WORKER_TTL = timedelta(days=1)  # long dead processes; their sessions were recovered long ago
AUDIT_TEXT_LIMIT = 200
PROGRESS_TTL = timedelta(days=2)
PROGRESS_TEXT_LIMIT = 16_000  # a Table Storage string holds 32k characters
ATTEMPT_KEEP = timedelta(days=1)  # counters of windows older than this are purged
EACH_PAGE = 500  # sessions read at once by each_session
PURGE_EVERY = timedelta(minutes=10)  # purge_expired runs at most this often per process (as on Table Storage)

SESSION_COLUMN_TYPES = {"str": "TEXT", "int": "INTEGER", "float": "REAL", "bool": "INTEGER", "time": "TEXT",
                        "enum": "TEXT", "conversation": "TEXT", "json": "TEXT"}


def _column_ddl(spec: FieldSpec, *, adding: bool) -> str:
    """A session field's column; an added column needs a default so older rows get one."""
    sql_type = SESSION_COLUMN_TYPES[spec.kind]
    if spec.optional:
        return sql_type
    if spec.required and not adding:
        return f"{sql_type} NOT NULL"
    value = encode_value(spec, spec.default)
    if value is None:
        value = "" if sql_type == "TEXT" else 0
    literal = "'" + value.replace("'", "''") + "'" if isinstance(value, str) else str(int(value) if isinstance(value, bool) else value)
    return f"{sql_type} NOT NULL DEFAULT {literal}"


# The sessions table follows the dataclass (bot/store/codec.py): a new Session field becomes a
# column, added in place to older databases on open. `version` is the compare-and-set counter.
SESSIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS sessions (\n    id TEXT PRIMARY KEY,\n    "
    + ",\n    ".join(f"{f.name} {_column_ddl(f, adding=False)}" for f in FIELDS if f.name != "id")
    + ",\n    version INTEGER NOT NULL DEFAULT 0\n);"
)

OPEN_TRIES = 100  # ~10 s of another process opening the same file at once
SCHEMA = SESSIONS_DDL + """
CREATE INDEX IF NOT EXISTS sessions_state ON sessions(state);
CREATE INDEX IF NOT EXISTS sessions_owner ON sessions(owner, state);
CREATE TABLE IF NOT EXISTS seen_messages (
    channel TEXT NOT NULL,
    message_id TEXT NOT NULL,
    seen_at TEXT NOT NULL,
    PRIMARY KEY (channel, message_id)
);
CREATE TABLE IF NOT EXISTS audit (
    at TEXT NOT NULL,
    user TEXT NOT NULL,
    email TEXT NOT NULL,
    channel TEXT NOT NULL,
    command TEXT NOT NULL,
    allowed INTEGER NOT NULL,
    reason TEXT NOT NULL,
    count INTEGER NOT NULL DEFAULT 1,
    sample TEXT,
    last_at TEXT
);
CREATE INDEX IF NOT EXISTS audit_at ON audit(at);
CREATE TABLE IF NOT EXISTS claims (
    token_hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    user TEXT NOT NULL,
    tunnel_name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at TEXT,
    sealed BLOB
);
CREATE INDEX IF NOT EXISTS claims_session ON claims(session_id);
CREATE TABLE IF NOT EXISTS users (
    email TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at TEXT NOT NULL
);
DROP TABLE IF EXISTS attempts;
CREATE TABLE IF NOT EXISTS attempt_counts (
    key TEXT NOT NULL,
    window_start TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (key, window_start)
);
CREATE INDEX IF NOT EXISTS attempt_counts_window ON attempt_counts(window_start);
CREATE TABLE IF NOT EXISTS sign_ins (
    account_key TEXT NOT NULL,
    address_key TEXT NOT NULL,
    address TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (account_key, address_key)
);
CREATE TABLE IF NOT EXISTS progress (
    key TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    heartbeat_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS addresses (
    scope TEXT NOT NULL,
    address TEXT NOT NULL,
    session_id TEXT NOT NULL,
    reserved_at TEXT NOT NULL,
    PRIMARY KEY (scope, address)
);
CREATE INDEX IF NOT EXISTS addresses_session ON addresses(session_id);
CREATE TABLE IF NOT EXISTS turns (
    job TEXT PRIMARY KEY,
    next_at TEXT NOT NULL,
    mark TEXT NOT NULL DEFAULT '',
    holder TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
    session_id TEXT PRIMARY KEY,
    requested_at TEXT NOT NULL,
    owner TEXT NOT NULL,
    owner_label TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_requested ON usage(requested_at);
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY,
    event_id TEXT NOT NULL,
    target TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL,
    due_at TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    state TEXT NOT NULL,
    lease_owner TEXT NOT NULL,
    lease_expires_at TEXT,
    delivered_at TEXT,
    last_error TEXT NOT NULL,
    version INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, due_at);
CREATE TABLE IF NOT EXISTS notify_targets (
    target TEXT PRIMARY KEY,
    conversation TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS contacts (
    user TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    conversation TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"""

_FIELDS = [f.name for f in FIELDS]


# Columns added after the first release to tables other than `sessions` (whose columns follow the
# dataclass): an older database gets them on open. New columns go here as well as in SCHEMA.
ADDED_COLUMNS: dict[str, dict[str, str]] = {
    "sessions": {"version": "INTEGER NOT NULL DEFAULT 0"},
    "audit": {"count": "INTEGER NOT NULL DEFAULT 1", "sample": "TEXT", "last_at": "TEXT"},
}
# Indexes on added columns: created once the columns exist.
ADDED_INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS audit_sample ON audit(sample)",
    "CREATE INDEX IF NOT EXISTS sessions_due ON sessions(due_at) WHERE due_at IS NOT NULL",  # a sweep reads what is due
    "CREATE INDEX IF NOT EXISTS seen_messages_at ON seen_messages(seen_at)",  # the purge of old message ids
)


def _schedule_unscheduled(conn: sqlite3.Connection) -> int:
    """Live sessions written before due times existed are due now: the sweeper looks and writes their time."""
    marks = ",".join("?" for _ in ACTIVE_STATES)
    return conn.execute(f"UPDATE sessions SET due_at=updated_at WHERE due_at IS NULL AND state IN ({marks})", [s.value for s in ACTIVE_STATES]).rowcount


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    wanted = {table: dict(columns) for table, columns in ADDED_COLUMNS.items()}
    for spec in FIELDS:
        wanted["sessions"].setdefault(spec.name, _column_ddl(spec, adding=True))
    for table, columns in wanted.items():
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for name, ddl in columns.items():
            if name not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}")
    for ddl in ADDED_INDEXES:
        conn.execute(ddl)


def _to_row(s: Session) -> tuple:
    values = encode(s)
    return tuple(int(v) if isinstance(v, bool) else v for v in (values[name] for name in _FIELDS))


def _from_row(row: sqlite3.Row) -> Session:
    keys = row.keys()
    return decode({name: row[name] for name in _FIELDS if name in keys}, str(row["version"]))


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = StoreThread("sqlite", self._group)  # one thread, calls in order, batched wake-ups (thread.py)
        self._conn: sqlite3.Connection | None = None
        self._purged_at: datetime | None = None
        self._seen_purged_at: datetime | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._executor.run(fn, *args)

    async def _run_grouped(self, fn: Callable[..., T], *args: Any) -> T:
        """For a call that never opens a transaction itself: it may share one with its neighbours (_group)."""
        return await self._executor.run_grouped(fn, *args)

    def _group(self, calls: list[Callable[[], Any]]) -> list[Outcome]:
        """Grouped calls handed over together (the de-duplication of every message that arrived in one
        turn of the event loop): one transaction, so one commit (a WAL append and its locks) instead
        of one per call. Each call runs in its own savepoint: one that fails undoes only its own
        writes and gets its error, the others commit. Their answers wait for the commit; a failed
        commit fails them all. BEGIN IMMEDIATE takes the write lock first (other processes wait
        for it as for any write), so no call in the group can meet "locked" halfway."""
        conn = self._conn
        if conn is None or conn.in_transaction:
            return run_alone(calls)
        conn.execute("BEGIN IMMEDIATE")
        outcomes: list[Outcome] = []
        try:
            for call in calls:
                conn.execute("SAVEPOINT one_call")
                try:
                    outcomes.append((True, call()))
                except Exception as exc:
                    conn.execute("ROLLBACK TO one_call")
                    outcomes.append((False, exc))
                if not conn.in_transaction:  # a grouped call must never end the group's transaction (none does): fail loudly
                    raise RuntimeError("a grouped store call committed or rolled back the group's transaction")
                conn.execute("RELEASE one_call")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # SQLite gives -wal/-shm the database file's mode: make that 0600 before they exist.
        os.close(os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600))
        for path in (self._path, *(self._path.with_name(self._path.name + s) for s in ("-wal", "-shm"))):
            if path.exists():
                os.chmod(path, 0o600)
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.row_factory = sqlite3.Row
        # Another process opening the same file at this moment can hold the lock through the journal
        # switch and the schema, where SQLite answers "locked" without waiting: try again briefly.
        for attempt in range(OPEN_TRIES):
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(SCHEMA)
                _add_missing_columns(conn)
                _schedule_unscheduled(conn)
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == OPEN_TRIES - 1:
                    conn.close()
                    raise
                time.sleep(0.05 * (1 + attempt % 4))  # in the store's own thread, never the event loop
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._executor.shutdown()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    async def create_session(self, session: Session, *, per_user: int, total: int) -> CreateOutcome:
        return await self._run(self._create, session, per_user, total)

    def _create(self, session: Session, per_user: int, total: int) -> CreateOutcome:
        marks = ",".join("?" for _ in ACTIVE_STATES)
        states = [s.value for s in ACTIVE_STATES]
        c = self.conn
        c.execute("BEGIN IMMEDIATE")  # the cap check and the insert are one step, across processes too
        try:
            mine = c.execute(f"SELECT COUNT(*) FROM sessions WHERE owner=? AND state IN ({marks})", [session.owner, *states]).fetchone()[0]
            if mine >= per_user:
                c.execute("ROLLBACK")
                return CreateOutcome.USER_LIMIT
            everyone = c.execute(f"SELECT COUNT(*) FROM sessions WHERE state IN ({marks})", states).fetchone()[0]
            if everyone >= total:
                c.execute("ROLLBACK")
                return CreateOutcome.GLOBAL_LIMIT
            c.execute(
                f"INSERT INTO sessions ({','.join(_FIELDS)}, version) VALUES ({','.join('?' for _ in _FIELDS)}, 1)", _to_row(session)
            )
            c.execute("COMMIT")
            return CreateOutcome.CREATED
        except BaseException:
            c.execute("ROLLBACK")
            raise

    async def save(self, session: Session) -> Session:
        sets = ",".join(f"{f}=?" for f in _FIELDS[1:])
        row = _to_row(session)
        try:
            version = int(session.version)
        except ValueError:
            raise Conflict(f"session {session.id} was never read from this store") from None
        cur = await self._run(
            lambda: self.conn.execute(f"UPDATE sessions SET {sets}, version=version+1 WHERE id=? AND version=?", (*row[1:], row[0], version))
        )
        if cur.rowcount != 1:
            raise Conflict(f"session {session.id} changed since version {version}")
        return dataclasses.replace(session, version=str(version + 1), stored_due_at=session.due_at)

    async def get(self, session_id: str) -> Session | None:
        row = await self._run(lambda: self.conn.execute("SELECT * FROM sessions WHERE id=?", (session_id,)).fetchone())
        return _from_row(row) if row else None

    async def sessions(self, states: Sequence[SessionState], owner: str | None = None) -> list[Session]:
        marks = ",".join("?" for _ in states)
        sql = f"SELECT * FROM sessions WHERE state IN ({marks})"
        args: list[Any] = [s.value for s in states]
        if owner is not None:
            sql += " AND owner=?"
            args.append(owner)
        sql += " ORDER BY created_at"
        rows = await self._run(lambda: self.conn.execute(sql, args).fetchall())
        return [_from_row(r) for r in rows]

    async def each_session(self, states: Sequence[SessionState]) -> AsyncIterator[Session]:
        marks, after = ",".join("?" for _ in states), ""
        while True:  # a page at a time, by id (the primary key): the thread is never held long, the rows never all in memory
            # `+state`: walk the primary key in order and filter, not the state index (which sorts every live session per page)
            sql = f"SELECT * FROM sessions WHERE +state IN ({marks}) AND id > ? ORDER BY id LIMIT {EACH_PAGE}"
            args = [*(s.value for s in states), after]
            rows = await self._run(lambda sql=sql, args=args: self.conn.execute(sql, args).fetchall())
            for row in rows:
                yield _from_row(row)
            if len(rows) < EACH_PAGE:
                return
            after = rows[-1]["id"]

    async def ready_keys(self, now: datetime) -> dict[str, str]:
        rows = await self._run(lambda: self.conn.execute(
            "SELECT id, client_public_key FROM sessions WHERE state=? AND expires_at > ?", (SessionState.READY.value, now.isoformat())).fetchall())
        return {r[0]: r[1] or "" for r in rows}

    async def live_counts(self) -> dict[tuple[str, str], int]:
        marks = ",".join("?" for _ in ACTIVE_STATES)
        rows = await self._run(lambda: self.conn.execute(
            f"SELECT state, provider, COUNT(*) FROM sessions WHERE state IN ({marks}) GROUP BY state, provider", [s.value for s in ACTIVE_STATES]).fetchall())
        return {(r[0], r[1]): r[2] for r in rows}

    async def due_sessions(self, now: datetime, limit: int = 500) -> list[Session]:
        marks = ",".join("?" for _ in ACTIVE_STATES)
        rows = await self._run(lambda: self.conn.execute(
            f"SELECT * FROM sessions WHERE due_at IS NOT NULL AND due_at <= ? AND state IN ({marks}) ORDER BY due_at LIMIT ?",
            (now.isoformat(), *[s.value for s in ACTIVE_STATES], limit)).fetchall())
        return [_from_row(r) for r in rows]

    async def next_due(self, now: datetime, within: timedelta | None = None) -> datetime | None:
        query, args = "SELECT MIN(due_at) FROM sessions WHERE due_at > ?", [now.isoformat()]
        if within is not None:
            query, args = query + " AND due_at <= ?", [*args, (now + within).isoformat()]
        row = await self._run(lambda: self.conn.execute(query, args).fetchone())
        return datetime.fromisoformat(row[0]) if row and row[0] else None

    async def live_ids(self) -> set[str]:
        marks = ",".join("?" for _ in ACTIVE_STATES)
        rows = await self._run(lambda: self.conn.execute(
            f"SELECT id FROM sessions WHERE due_at IS NOT NULL OR state IN ({marks})", [s.value for s in ACTIVE_STATES]).fetchall())
        return {r[0] for r in rows}

    async def check_due_index(self, now: datetime, live: Mapping[str, datetime | None]) -> int:
        """The due time is a column of the session's own row; only one written without it (an earlier version) is due now."""
        return await self._run(lambda: _schedule_unscheduled(self.conn))

    async def take_turn(self, job: str, holder: str, now: datetime, every: timedelta, mark: str = "") -> bool:
        def op() -> bool:
            c = self.conn
            c.execute("BEGIN IMMEDIATE")  # read and write as one step, across processes too
            try:
                row = c.execute("SELECT next_at, mark FROM turns WHERE job=?", (job,)).fetchone()
                if row is not None and now < datetime.fromisoformat(row["next_at"]) and mark == row["mark"]:
                    c.execute("ROLLBACK")
                    return False
                c.execute("INSERT INTO turns (job, next_at, mark, holder) VALUES (?,?,?,?) ON CONFLICT(job) DO UPDATE SET "
                          "next_at=excluded.next_at, mark=excluded.mark, holder=excluded.holder", (job, (now + every).isoformat(), mark, holder))
                c.execute("COMMIT")
                return True
            except BaseException:
                c.execute("ROLLBACK")
                raise

        return await self._run(op)

    async def first_seen(self, channel: str, message_id: str, now: datetime) -> bool:
        cutoff = (now - MESSAGE_ID_TTL).isoformat()
        purge = self._seen_purged_at is None or not timedelta(0) <= now - self._seen_purged_at < SEEN_PURGE_EVERY
        if purge:
            self._seen_purged_at = now

        def op() -> bool:
            c = self.conn
            if purge:  # not per message: the purge was most of a message's cost on a busy store
                c.execute("DELETE FROM seen_messages WHERE seen_at < ?", (cutoff,))
            # An id past its TTL counts as new (refreshed, as if it had been purged).
            cur = c.execute(
                "INSERT INTO seen_messages (channel, message_id, seen_at) VALUES (?,?,?) "
                "ON CONFLICT(channel, message_id) DO UPDATE SET seen_at=excluded.seen_at WHERE seen_messages.seen_at < ?",
                (store_key(channel), store_key(message_id), now.isoformat(), cutoff),  # the whole id, never a prefix
            )
            return cur.rowcount == 1

        return await self._run_grouped(op)

    async def audit(self, entry: AuditEntry) -> None:
        row = (
            entry.at.isoformat(),
            entry.user[:AUDIT_TEXT_LIMIT],
            entry.email[:AUDIT_TEXT_LIMIT],
            entry.channel[:AUDIT_TEXT_LIMIT],
            entry.command[:AUDIT_TEXT_LIMIT],
            int(entry.allowed),
            entry.reason[:AUDIT_TEXT_LIMIT],
        )
        sql = "INSERT INTO audit (at, user, email, channel, command, allowed, reason, sample, last_at) VALUES (?,?,?,?,?,?,?,?,?)"
        args: tuple[object, ...]
        if entry.allowed:
            args = (*row, None, None)
        else:  # one row per identity, reason and hour counts the refusals (the first one's details)
            hour, digest = refusal_sample(entry.user, entry.command, entry.reason, entry.at)
            args = (*row, f"{hour.isoformat()}|{digest}", row[0])
            sql += " ON CONFLICT(sample) DO UPDATE SET count = count + 1, last_at = max(last_at, excluded.last_at)"
        await self._run_grouped(lambda: self.conn.execute(sql, args))

    async def audit_log(
        self, limit: int = 100, *, since: datetime | None = None, until: datetime | None = None, user: str | None = None
    ) -> list[AuditEntry]:
        where, args = [], []
        if since is not None:
            where.append("at >= ?")
            args.append(since.isoformat())
        if until is not None:
            where.append("at < ?")
            args.append(until.isoformat())
        if user is not None:
            where.append("(user = ? OR email = ?)")
            args += [user[:AUDIT_TEXT_LIMIT]] * 2
        sql = "SELECT * FROM audit" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY rowid DESC LIMIT ?"
        rows = await self._run(lambda: self.conn.execute(sql, (*args, limit)).fetchall())
        return [
            AuditEntry(datetime.fromisoformat(r["at"]), r["user"], r["email"], r["channel"], r["command"], bool(r["allowed"]), r["reason"],
                       r["count"])
            for r in rows
        ]

    async def heartbeat(self, worker: Worker) -> None:
        def op() -> None:
            c = self.conn
            c.execute(
                "INSERT INTO workers (id, host, pid, heartbeat_at) VALUES (?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET heartbeat_at=excluded.heartbeat_at",
                (worker.id, worker.host, worker.pid, worker.heartbeat_at.isoformat()),
            )
            c.execute("DELETE FROM workers WHERE heartbeat_at < ?", ((worker.heartbeat_at - WORKER_TTL).isoformat(),))

        await self._run(op)

    async def deployment_id(self) -> str:
        """A random id made the first time and kept: it tells this deployment's cloud resources from
        another's in a shared resource group (every replica on this store gets the same one)."""

        def get_or_make() -> str:
            candidate = "d" + secrets.token_hex(8)
            self.conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('deployment_id', ?)", (candidate,))
            return self.conn.execute("SELECT value FROM meta WHERE key='deployment_id'").fetchone()[0]

        return await self._run(get_or_make)

    async def workers(self) -> list[Worker]:
        rows = await self._run(lambda: self.conn.execute("SELECT * FROM workers").fetchall())
        return [Worker(r["id"], r["host"], r["pid"], datetime.fromisoformat(r["heartbeat_at"])) for r in rows]

    # ----- tunnel address reservations (one holder per address, across processes) ----------------

    async def reserve_address(self, scope: str, address: str, session_id: str, now: datetime) -> str:
        def op() -> str:
            c = self.conn
            c.execute(
                "INSERT OR IGNORE INTO addresses (scope, address, session_id, reserved_at) VALUES (?,?,?,?)",
                (scope, address, session_id, now.isoformat()),
            )
            row = c.execute("SELECT session_id FROM addresses WHERE scope=? AND address=?", (scope, address)).fetchone()
            return row[0] if row else ""

        return await self._run(op)

    async def release_address(self, scope: str, address: str, holder: str) -> None:
        await self._run(
            lambda: self.conn.execute("DELETE FROM addresses WHERE scope=? AND address=? AND session_id=?", (scope, address, holder))
        )

    async def release_addresses(self, session_id: str) -> None:
        await self._run(lambda: self.conn.execute("DELETE FROM addresses WHERE session_id=?", (session_id,)))

    # ----- claim links (sealed configs; see bot/one_time_configs.py) -----------------------------------------

    async def add_claim(self, claim: Claim) -> None:
        row = (claim.token_hash, claim.session_id, claim.user, claim.tunnel_name, claim.created_at.isoformat(),
               claim.expires_at.isoformat(), None, claim.sealed)
        await self._run(lambda: self.conn.execute("INSERT INTO claims VALUES (?,?,?,?,?,?,?,?)", row))

    async def get_claim(self, token_hash: str) -> Claim | None:
        row = await self._run(lambda: self.conn.execute("SELECT * FROM claims WHERE token_hash=?", (token_hash,)).fetchone())
        return _claim(row) if row else None

    async def consume_claim(self, token_hash: str, now: datetime) -> Claim | None:
        """Atomically mark a ready claim used and erase its sealed config; returns it as it was, else None."""

        def op() -> Claim | None:
            c = self.conn
            c.execute("BEGIN IMMEDIATE")
            try:
                row = c.execute(
                    "SELECT * FROM claims WHERE token_hash=? AND used_at IS NULL AND sealed IS NOT NULL AND expires_at > ?",
                    (token_hash, now.isoformat()),
                ).fetchone()
                if row is not None:
                    c.execute("UPDATE claims SET used_at=?, sealed=NULL WHERE token_hash=?", (now.isoformat(), token_hash))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return _claim(row) if row else None

        return await self._run(op)

    async def purge_claims(self, now: datetime, session_id: str | None = None) -> None:
        """Erase sealed configs past expiry (or of one ended session); forget day-old claims entirely."""

        def op() -> None:
            c = self.conn
            if session_id is not None:
                c.execute("UPDATE claims SET sealed=NULL WHERE session_id=?", (session_id,))
            c.execute("UPDATE claims SET sealed=NULL WHERE expires_at <= ? AND sealed IS NOT NULL", (now.isoformat(),))
            c.execute("DELETE FROM claims WHERE expires_at < ?", ((now - timedelta(days=1)).isoformat(),))

        await self._run(op)

    # ----- web channel: local accounts, attempt counters, progress text ------------------------------

    async def put_user(self, user: LocalUser) -> None:
        row = (user.email, user.password_hash, user.created_at.isoformat())
        await self._run(lambda: self.conn.execute(
            "INSERT INTO users VALUES (?,?,?) ON CONFLICT(email) DO UPDATE SET password_hash=excluded.password_hash", row))

    async def get_user(self, email: str) -> LocalUser | None:
        row = await self._run(lambda: self.conn.execute("SELECT * FROM users WHERE email=?", (email,)).fetchone())
        return LocalUser(row["email"], row["password_hash"], datetime.fromisoformat(row["created_at"])) if row else None

    async def delete_user(self, email: str) -> bool:
        cur = await self._run(lambda: self.conn.execute("DELETE FROM users WHERE email=?", (email,)))
        return cur.rowcount == 1

    async def list_users(self) -> list[LocalUser]:
        rows = await self._run(lambda: self.conn.execute("SELECT * FROM users ORDER BY email").fetchall())
        return [LocalUser(r["email"], r["password_hash"], datetime.fromisoformat(r["created_at"])) for r in rows]

    async def take_attempt(self, key: str, now: datetime, window: timedelta, limit: int) -> bool:
        k, start = store_key(key), _window_start(now, window)

        def op() -> bool:
            c = self.conn
            c.execute("BEGIN IMMEDIATE")  # the check and the count are one step, across processes too
            try:
                c.execute("DELETE FROM attempt_counts WHERE window_start < ?", (_window_start(now - ATTEMPT_KEEP, window),))
                row = c.execute("SELECT count FROM attempt_counts WHERE key=? AND window_start=?", (k, start)).fetchone()
                taken = (row[0] if row else 0) < limit
                if taken:
                    c.execute(
                        "INSERT INTO attempt_counts (key, window_start, count) VALUES (?,?,1) "
                        "ON CONFLICT(key, window_start) DO UPDATE SET count = count + 1",
                        (k, start),
                    )
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return taken

        return await self._run(op)

    async def attempts(self, key: str, now: datetime, window: timedelta) -> int:
        args = (store_key(key), _window_start(now, window))
        row = await self._run(lambda: self.conn.execute("SELECT count FROM attempt_counts WHERE key=? AND window_start=?", args).fetchone())
        return row[0] if row else 0

    async def clear_attempts(self, key: str, now: datetime, window: timedelta) -> None:
        args = (store_key(key), _window_start(now, window))
        await self._run(lambda: self.conn.execute("DELETE FROM attempt_counts WHERE key=? AND window_start=?", args))

    async def remember_sign_in(self, account: str, address: str, now: datetime) -> None:
        args = (store_key(account), store_key(address), address, now.isoformat())
        await self._run(lambda: self.conn.execute(
            "INSERT INTO sign_ins (account_key, address_key, address, at) VALUES (?,?,?,?) "
            "ON CONFLICT(account_key, address_key) DO UPDATE SET at=excluded.at", args))

    async def sign_in_addresses(self, account: str, since: datetime) -> frozenset[str]:
        args = (store_key(account), since.isoformat())
        rows = await self._run(lambda: self.conn.execute("SELECT address FROM sign_ins WHERE account_key=? AND at>=?", args).fetchall())
        return frozenset(r[0] for r in rows)

    async def purge_expired(
        self, now: datetime, *, audit_retention: timedelta = AUDIT_RETENTION, usage_retention: timedelta = USAGE_RETENTION
    ) -> None:
        """Forget counters of past windows, remembered sign-ins past SIGN_IN_MEMORY, audit rows past
        `audit_retention`, usage records past `usage_retention`; at most every PURGE_EVERY per process (as on Table Storage)."""
        if self._purged_at is not None and timedelta(0) <= now - self._purged_at < PURGE_EVERY:
            return
        self._purged_at = now

        def op() -> None:
            c = self.conn
            c.execute("DELETE FROM attempt_counts WHERE window_start < ?", (f"{int((now - ATTEMPT_KEEP).timestamp()):010d}",))
            c.execute("DELETE FROM sign_ins WHERE at < ?", ((now - SIGN_IN_MEMORY).isoformat(),))
            c.execute("DELETE FROM audit WHERE at < ?", ((now - audit_retention).isoformat(),))
            c.execute("DELETE FROM usage WHERE requested_at < ?", ((now - usage_retention).isoformat(),))
            c.execute("DELETE FROM outbox WHERE state != 'pending' AND created_at < ?", ((now - NOTIFICATION_MEMORY).isoformat(),))

        await self._run(op)

    async def set_progress(self, key: str, text: str, now: datetime) -> None:
        def op() -> None:
            c = self.conn
            c.execute(
                "INSERT INTO progress VALUES (?,?,?) ON CONFLICT(key) DO UPDATE SET text=excluded.text, updated_at=excluded.updated_at",
                (key, text[:PROGRESS_TEXT_LIMIT], now.isoformat()),
            )
            c.execute("DELETE FROM progress WHERE updated_at < ?", ((now - PROGRESS_TTL).isoformat(),))

        await self._run(op)

    async def get_progress(self, key: str) -> str:
        row = await self._run(lambda: self.conn.execute("SELECT text FROM progress WHERE key=?", (key,)).fetchone())
        return row["text"] if row else ""

    # ----- approvers' private chats (bot/engine/approvals.py) -------------------------------------

    async def put_contact(self, contact: Contact) -> None:
        row = (contact.user, contact.label, contact.conversation.to_json(), contact.updated_at.isoformat())
        await self._run(lambda: self.conn.execute(
            "INSERT INTO contacts VALUES (?,?,?,?) ON CONFLICT(user) DO UPDATE SET label=excluded.label, "
            "conversation=excluded.conversation, updated_at=excluded.updated_at", row))

    async def contacts(self) -> list[Contact]:
        rows = await self._run(lambda: self.conn.execute("SELECT * FROM contacts ORDER BY user").fetchall())
        return [Contact(r["user"], r["label"], ConversationRef.from_json(r["conversation"]), datetime.fromisoformat(r["updated_at"])) for r in rows]


    # ----- usage records (bot/engine/usage.py) -----------------------------------------------------

    async def put_usage(self, record: UsageRecord) -> None:
        values = encode_usage(record)
        row = (record.session_id, values["requested_at"], values["owner"], values["owner_label"], json.dumps(values))
        await self._run(lambda: self.conn.execute(
            "INSERT INTO usage VALUES (?,?,?,?,?) ON CONFLICT(session_id) DO UPDATE SET requested_at=excluded.requested_at, "
            "owner=excluded.owner, owner_label=excluded.owner_label, record=excluded.record", row))

    async def usage(self, since: datetime, until: datetime, user: str | None = None) -> list[UsageRecord]:
        sql, args = "SELECT record FROM usage WHERE requested_at >= ? AND requested_at < ?", [since.isoformat(), until.isoformat()]
        if user is not None:
            sql += " AND (owner = ? OR owner_label = ?)"
            args += [user, user]
        rows = await self._run(lambda: self.conn.execute(sql + " ORDER BY requested_at, session_id", args).fetchall())
        return [decode_usage({k: v for k, v in json.loads(r[0]).items() if k in USAGE_FIELDS}) for r in rows]


    # ----- the notification outbox (bot/engine/notify.py) ------------------------------------------

    async def enqueue(self, items: Sequence[Notification]) -> int:
        rows = [(store_key(n.key), n.event_id, n.target, n.payload, n.created_at.isoformat(), n.due_at.isoformat(), n.attempts, n.state,
                 n.lease_owner, _iso(n.lease_expires_at), _iso(n.delivered_at), n.last_error) for n in items]

        def op() -> int:
            added = 0
            for row in rows:
                added += self.conn.execute("INSERT OR IGNORE INTO outbox VALUES (?,?,?,?,?,?,?,?,?,?,?,?,1)", row).rowcount
            return added

        return await self._run(op)

    async def due_notifications(self, now: datetime, limit: int = 100) -> list[Notification]:
        rows = await self._run(lambda: self.conn.execute(
            "SELECT * FROM outbox WHERE state='pending' AND due_at <= ? ORDER BY due_at, created_at LIMIT ?", (now.isoformat(), limit)).fetchall())
        return [_notification(r) for r in rows]

    async def next_notification_due(self) -> datetime | None:
        row = await self._run(lambda: self.conn.execute("SELECT MIN(due_at) FROM outbox WHERE state='pending'").fetchone())
        return datetime.fromisoformat(row[0]) if row and row[0] else None

    async def save_notification(self, item: Notification) -> Notification:
        try:
            version = int(item.version)
        except ValueError:
            raise Conflict(f"notification {item.key} was never read from this store") from None
        args = (item.due_at.isoformat(), item.attempts, item.state, item.lease_owner, _iso(item.lease_expires_at), _iso(item.delivered_at),
                item.last_error[:300], store_key(item.key), version)
        cur = await self._run(lambda: self.conn.execute(
            "UPDATE outbox SET due_at=?, attempts=?, state=?, lease_owner=?, lease_expires_at=?, delivered_at=?, last_error=?, "
            "version=version+1 WHERE key=? AND version=?", args))
        if cur.rowcount != 1:
            raise Conflict(f"notification {item.key} changed since version {version}")
        return dataclasses.replace(item, version=str(version + 1))

    async def notifications(self, event_id: str | None = None) -> list[Notification]:
        sql, args = "SELECT * FROM outbox", tuple[str, ...]()
        if event_id is not None:
            sql, args = sql + " WHERE event_id=?", (event_id,)
        rows = await self._run(lambda: self.conn.execute(sql + " ORDER BY created_at, key", args).fetchall())
        return [_notification(r) for r in rows]

    async def put_notify_target(self, target: str, conversation: ConversationRef) -> None:
        await self._run(lambda: self.conn.execute(
            "INSERT INTO notify_targets VALUES (?,?) ON CONFLICT(target) DO UPDATE SET conversation=excluded.conversation",
            (target, conversation.to_json())))

    async def delete_notify_target(self, target: str) -> bool:
        return (await self._run(lambda: self.conn.execute("DELETE FROM notify_targets WHERE target=?", (target,)))).rowcount == 1

    async def notify_targets(self) -> dict[str, ConversationRef]:
        rows = await self._run(lambda: self.conn.execute("SELECT * FROM notify_targets ORDER BY target").fetchall())
        return {r["target"]: ConversationRef.from_json(r["conversation"]) for r in rows}


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def _notification(r: sqlite3.Row) -> Notification:
    return Notification(
        event_id=r["event_id"], target=r["target"], payload=r["payload"], created_at=datetime.fromisoformat(r["created_at"]),
        due_at=datetime.fromisoformat(r["due_at"]), attempts=r["attempts"], state=r["state"], lease_owner=r["lease_owner"],
        lease_expires_at=datetime.fromisoformat(r["lease_expires_at"]) if r["lease_expires_at"] else None,
        delivered_at=datetime.fromisoformat(r["delivered_at"]) if r["delivered_at"] else None, last_error=r["last_error"],
        version=str(r["version"]),
    )


def _window_start(now: datetime, window: timedelta) -> str:
    """The start of the fixed window that holds `now` in epoch seconds (sortable), the same on every replica."""
    seconds = int(window.total_seconds())
    epoch = int(now.timestamp())
    return f"{epoch - epoch % seconds:010d}"


def _claim(row: sqlite3.Row) -> Claim:
    return Claim(
        token_hash=row["token_hash"],
        session_id=row["session_id"],
        user=row["user"],
        tunnel_name=row["tunnel_name"],
        created_at=datetime.fromisoformat(row["created_at"]),
        expires_at=datetime.fromisoformat(row["expires_at"]),
        used_at=datetime.fromisoformat(row["used_at"]) if row["used_at"] else None,
        sealed=row["sealed"],
    )
