"""SQLite backend (aiosqlite): the embedded default.

Two connections: one writer, used by one transaction at a time (an ``asyncio.Lock``),
and one reader, which in WAL mode never waits on the writer and sees only committed rows.
``synchronous=FULL`` makes a commit durable before it returns (a revoke survives kill -9
and power loss; SECURITY_CASES D36). Every statement is parameterised.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiosqlite

from sidecar.errors import StoreUnavailableError
from sidecar.events.models import (
    EVENT_COLUMNS,
    PREVIOUS_LOGINS,
    Delivery,
    Event,
    EventOptions,
    OutboxCounts,
    Place,
    created_event,
    event_of,
    outbox_rows,
    revoked_events,
    user_revoked_events,
)
from sidecar.events.types import SESSION_CREATED
from sidecar.sessions.models import (
    IDLE,
    LIFETIME,
    OTHERS,
    POLICY_ACTOR,
    USER,
    Admission,
    Changes,
    Cutoff,
    ListPosition,
    Session,
    SessionLimit,
    Touch,
)
from sidecar.sessions.sql import ALIASED, COLUMNS, migrate, plan_admission, session_of

log = logging.getLogger(__name__)

# Versioned migrations, applied in order inside one transaction each. Never edit a
# released step; append a new one.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            """
            CREATE TABLE sessions (
                id          TEXT PRIMARY KEY,
                session_key TEXT NOT NULL UNIQUE,
                user_id     TEXT NOT NULL,
                created_at  REAL NOT NULL,
                last_seen   REAL NOT NULL,
                expires_at  REAL NOT NULL,
                revoked_at  REAL,
                ip_address  TEXT,
                device      TEXT NOT NULL,
                location    TEXT NOT NULL
            )
            """,
            "CREATE INDEX sessions_by_user ON sessions (user_id, created_at)",
            "CREATE INDEX sessions_by_expiry ON sessions (expires_at)",
            """
            CREATE TABLE user_cutoffs (
                user_id            TEXT PRIMARY KEY,
                cutoff_at          REAL NOT NULL,
                exempt_session_key TEXT
            )
            """,
        ),
    ),
    (
        2,
        (
            # The revision feed: every revocation and cut-off takes the next revision from a
            # one-row counter inside its own transaction. Bumping that row serialises them,
            # so revisions become visible in commit order and a reader that remembers the
            # highest revision it applied never skips one (catch-up between processes).
            "CREATE TABLE revision_counter (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL)",
            "INSERT INTO revision_counter (id, value) VALUES (1, 0)",
            "ALTER TABLE sessions ADD COLUMN revision INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE user_cutoffs ADD COLUMN revision INTEGER NOT NULL DEFAULT 0",
            "CREATE INDEX sessions_by_revision ON sessions (revision) WHERE revision > 0",
            "CREATE INDEX cutoffs_by_revision ON user_cutoffs (revision)",
        ),
    ),
    (
        3,
        (
            # Keys of tokens learned as they were issued (capture routes): a refresh token, and
            # every access token a refresh minted, belong to the session of their login.
            """
            CREATE TABLE session_aliases (
                alias_key  TEXT PRIMARY KEY,
                session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE
            )
            """,
            "CREATE INDEX session_aliases_by_session ON session_aliases (session_id)",
        ),
    ),
    (
        4,
        (
            # Session policies: why and by whom a session was revoked, and what the idle and
            # lifetime sweeps look for among unrevoked sessions (partial: tombstones are left out).
            "ALTER TABLE sessions ADD COLUMN revoked_reason TEXT",
            "ALTER TABLE sessions ADD COLUMN revoked_by TEXT",
            "CREATE INDEX sessions_unrevoked_by_last_seen ON sessions (last_seen) WHERE revoked_at IS NULL",
            "CREATE INDEX sessions_unrevoked_by_created ON sessions (created_at) WHERE revoked_at IS NULL",
        ),
    ),
    (
        5,
        (
            # Security events, written in the transaction of the change they tell of (the
            # history users read), and the webhook outbox: one row per event and webhook,
            # claimed by the Celery worker in batches (claimed_until/claim), retried with
            # back-off (next_attempt_at), then delivered or dead.
            """
            CREATE TABLE events (
                id          TEXT PRIMARY KEY,
                type        TEXT NOT NULL,
                user_id     TEXT NOT NULL,
                session_id  TEXT,
                occurred_at REAL NOT NULL,
                data        TEXT NOT NULL
            )
            """,
            "CREATE INDEX events_by_user ON events (user_id, occurred_at)",
            "CREATE INDEX events_by_time ON events (occurred_at)",
            """
            CREATE TABLE webhook_outbox (
                id              INTEGER PRIMARY KEY AUTOINCREMENT,
                event_id        TEXT NOT NULL,
                url             TEXT NOT NULL,
                payload         TEXT NOT NULL,
                created_at      REAL NOT NULL,
                attempts        INTEGER NOT NULL DEFAULT 0,
                next_attempt_at REAL NOT NULL,
                claimed_until   REAL,
                claim           TEXT,
                delivered_at    REAL,
                dead_at         REAL,
                last_error      TEXT
            )
            """,
            "CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) "
            "WHERE delivered_at IS NULL AND dead_at IS NULL",
            "CREATE INDEX webhook_outbox_delivered ON webhook_outbox (delivered_at) WHERE delivered_at IS NOT NULL",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

# aiosqlite raises ValueError("Connection closed") for a call on a closed connection (a
# store closed while a read or write was on its way); for callers that is the store gone.
_DRIVER_ERRORS = (sqlite3.Error, ValueError)



def _create_private(path: Path) -> None:
    """Create the database file for its owner only (0600) unless it exists.

    SQLite would create it with the umask's mode (0644 under the usual 022: every local user
    could read who is logged in from where) and gives the -wal and -shm files the mode of
    the main file, so creating that one first makes all three private. An existing file is
    the operator's: it is left as it is, with a warning when others can read it.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode
        if mode & 0o077:
            log.warning("sqlite: %s is accessible to group or others (mode %o); chmod 600 it", path, mode & 0o777)
        return
    os.close(fd)



class SqliteStore:
    def __init__(self, path: Path, *, busy_timeout_ms: int = 5000, events: EventOptions | None = None) -> None:
        self.path = path
        self.events = events or EventOptions()
        self.busy_timeout_ms = busy_timeout_ms
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        # Whole-table scans (the sessions_active count: ~0.1 s at 1,000,000 rows) run on a
        # connection of their own, so that the checks' reads do not queue behind them.
        self._scanner: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        # The reader connection is shared; one multi-statement snapshot on it at a time.
        self._snapshot_lock = asyncio.Lock()

    # ------------------------------------------------------------------ lifecycle

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        await conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        await conn.execute("PRAGMA synchronous = FULL")
        await conn.execute("PRAGMA foreign_keys = ON")
        return conn

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _create_private(self.path)
            self._writer = await self._connect()
            row = await self._wal(self._writer)
            if row is None or str(row[0]).lower() != "wal":
                log.warning("sqlite: WAL mode unavailable for %s (got %s)", self.path, row)
            await self._migrate()
            self._reader = await self._connect()
            self._scanner = await self._connect()
        except (sqlite3.Error, OSError) as e:
            await self.close()
            raise StoreUnavailableError(f"cannot open SQLite database {self.path}: {e}") from e
        except BaseException:
            await self.close()
            raise

    async def _wal(self, conn: aiosqlite.Connection) -> Any:
        """``PRAGMA journal_mode = WAL``, again while another process holds the file's lock.

        Workers started together on a new file all switch it at once, and SQLite answers
        the switch "database is locked" at once, without its busy handler (waiting could
        deadlock): so this waits here, within the same busy timeout.
        """
        deadline = asyncio.get_running_loop().time() + self.busy_timeout_ms / 1000
        while True:
            try:
                async with conn.execute("PRAGMA journal_mode = WAL") as cur:
                    return await cur.fetchone()
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or asyncio.get_running_loop().time() >= deadline:
                    raise
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        for conn in (self._scanner, self._reader, self._writer):
            if conn is not None:
                try:
                    await conn.close()
                except sqlite3.Error as e:
                    log.warning("sqlite: error while closing: %s", e)
        self._scanner = self._reader = self._writer = None

    async def _migrate(self) -> None:
        async with self._transaction() as db:

            async def execute(sql: str, *args: Any) -> None:
                await db.execute(sql, args)

            async def current_version() -> int:
                async with db.execute("SELECT MAX(version) FROM schema_version") as cur:
                    row = await cur.fetchone()
                return int(row[0]) if row and row[0] is not None else 0

            await migrate(
                execute, current_version, MIGRATIONS,
                record_sql="INSERT INTO schema_version (version) VALUES (?)", where=f"sqlite {self.path}", log=log,
            )

    # ------------------------------------------------------------------ plumbing

    def _conn(self, conn: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if conn is None:
            raise StoreUnavailableError("SQLite store is not open")
        return conn

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction at a time; commit or roll back, errors -> StoreUnavailableError."""
        async with self._write_lock:
            db = self._conn(self._writer)
            try:
                # IMMEDIATE takes the write lock up front, so a busy database fails here,
                # after busy_timeout, rather than half-way through.
                await db.execute("BEGIN IMMEDIATE")
            except _DRIVER_ERRORS as e:
                raise StoreUnavailableError(f"SQLite busy or failing: {e}") from e
            try:
                yield db
                await db.execute("COMMIT")
            except BaseException as e:
                try:
                    await db.execute("ROLLBACK")
                except _DRIVER_ERRORS as rollback_error:
                    log.error("sqlite: rollback failed: %s", rollback_error)
                if isinstance(e, _DRIVER_ERRORS):
                    raise StoreUnavailableError(f"SQLite write failed: {e}") from e
                raise

    async def _fetch(self, sql: str, params: Sequence[Any], *, scan: bool = False) -> list[Any]:
        db = self._conn(self._scanner if scan else self._reader)
        try:
            async with db.execute(sql, params) as cur:
                return list(await cur.fetchall())
        except _DRIVER_ERRORS as e:
            raise StoreUnavailableError(f"SQLite read failed: {e}") from e

    # ------------------------------------------------------------------ protocol

    async def ping(self) -> None:
        await self._fetch("SELECT 1", ())

    async def get(self, session_id: str) -> Session | None:
        rows = await self._fetch(f"SELECT {COLUMNS} FROM sessions WHERE id = ?", (session_id,))  # noqa: S608 (constant column list)
        return session_of(rows[0]) if rows else None

    async def get_by_key(self, session_key: str) -> Session | None:
        rows = await self._fetch(
            f"SELECT {COLUMNS} FROM sessions WHERE session_key = ? "  # noqa: S608
            f"UNION ALL SELECT {ALIASED} FROM session_aliases a JOIN sessions s ON s.id = a.session_id "
            "WHERE a.alias_key = ? LIMIT 1",
            (session_key, session_key),
        )
        return session_of(rows[0]) if rows else None

    async def bind(self, session_id: str, keys: Sequence[str]) -> None:
        if not keys:
            return
        async with self._transaction() as db:
            # A key bound before stays with its first session; a key that is some session's
            # own key is not an alias of another.
            await db.executemany(
                "INSERT INTO session_aliases (alias_key, session_id) SELECT ?, ? "
                "WHERE EXISTS (SELECT 1 FROM sessions WHERE id = ?) "
                "AND NOT EXISTS (SELECT 1 FROM sessions WHERE session_key = ?) "
                "ON CONFLICT (alias_key) DO NOTHING",
                [(k, session_id, session_id, k) for k in keys],
            )

    @staticmethod
    async def _held(db: aiosqlite.Connection, key: str) -> Session | None:
        """The session that holds ``key``, as a bound key or as its own, in the transaction."""
        async with db.execute(
            f"SELECT {ALIASED} FROM session_aliases a JOIN sessions s ON s.id = a.session_id "  # noqa: S608
            "WHERE a.alias_key = ? "
            f"UNION ALL SELECT {COLUMNS} FROM sessions WHERE session_key = ? LIMIT 1",
            (key, key),
        ) as sel:
            row = await sel.fetchone()
        return session_of(row) if row is not None else None

    async def _insert_row(
        self, db: aiosqlite.Connection, session: Session, place: Place | None
    ) -> tuple[Session, bool]:
        cur = await db.execute(
            f"INSERT INTO sessions ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "  # noqa: S608
            "ON CONFLICT (session_key) DO NOTHING",
            (
                session.id, session.session_key, session.user_id, session.created_at,
                session.last_seen, session.expires_at, session.revoked_at,
                session.ip_address, session.device, session.location,
                session.revoked_reason, session.revoked_by,
            ),
        )
        created = cur.rowcount == 1
        async with db.execute(
            f"SELECT {COLUMNS} FROM sessions WHERE session_key = ?", (session.session_key,)  # noqa: S608
        ) as sel:
            row = await sel.fetchone()
        if row is None:  # pragma: no cover - the row was just written in this transaction
            raise StoreUnavailableError("inserted session vanished")
        stored = session_of(row)
        if created and self.events.enabled:
            logins = await self._logins(db, stored)
            await self._record(db, [created_event(stored, place or Place(), logins, self.events)])
        return stored, created

    # ------------------------------------------------------------------ events (same transaction)

    async def _logins(self, db: aiosqlite.Connection, s: Session) -> list[Event]:
        """The user's earlier session.created events within the history window, newest first."""
        async with db.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE user_id = ? AND occurred_at >= ? AND type = ? "  # noqa: S608
            "ORDER BY occurred_at DESC LIMIT ?",
            (s.user_id, s.created_at - self.events.history_seconds, SESSION_CREATED, PREVIOUS_LOGINS),
        ) as cur:
            return [event_of(r) for r in await cur.fetchall()]

    async def _record(self, db: aiosqlite.Connection, events: Sequence[Event]) -> None:
        """Write events, and their outbox rows for the webhooks that want them."""
        if not events or not self.events.enabled:
            return
        await db.executemany(
            f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",  # noqa: S608 (constant columns)
            [(e.id, e.type, e.user_id, e.session_id, e.occurred_at, e.json_data()) for e in events],
        )
        rows = outbox_rows(events, self.events.targets)
        if rows:
            await db.executemany(
                "INSERT INTO webhook_outbox (event_id, url, payload, created_at, next_attempt_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(event_id, url, body, created, created) for event_id, url, body, created in rows],
            )

    @staticmethod
    async def _session_in(db: aiosqlite.Connection, session_id: str | None) -> Session | None:
        if session_id is None:
            return None
        async with db.execute(f"SELECT {COLUMNS} FROM sessions WHERE id = ?", (session_id,)) as cur:  # noqa: S608
            row = await cur.fetchone()
        return session_of(row) if row is not None else None

    async def insert(self, session: Session, *, place: Place | None = None) -> tuple[Session, bool]:
        async with self._transaction() as db:
            # A key bound to a session (a token learned at issue) is that session's.
            held = await self._held(db, session.session_key)
            if held is not None:
                return held, False
            return await self._insert_row(db, session, place)

    async def admit(self, session: Session, limit: SessionLimit, *, place: Place | None = None) -> Admission:
        # BEGIN IMMEDIATE holds the database's write lock, for every process on the file,
        # until COMMIT: counting and inserting are one step, so racing registrations of one
        # user (in this process or another) never admit more than the limit.
        async with self._transaction() as db:
            held = await self._held(db, session.session_key)
            if held is not None:
                return Admission(held, False)
            async with db.execute(
                f"SELECT {COLUMNS} FROM sessions "  # noqa: S608
                "WHERE user_id = ? AND revoked_at IS NULL AND expires_at > ? ORDER BY created_at, id",
                (session.user_id, limit.now),
            ) as cur:
                rows = [session_of(r) for r in await cur.fetchall()]
            stale, evict, refused = plan_admission(rows, limit, session.id)
            revoked = stale if refused else stale + evict
            if revoked:
                revision = await self._next_revision(db)
                await db.executemany(
                    "UPDATE sessions SET revoked_at = ?, revoked_reason = ?, revoked_by = ?, revision = ? WHERE id = ?",
                    [(limit.now, s.revoked_reason, s.revoked_by, revision, s.id) for s in revoked],
                )
                await self._record(db, revoked_events(revoked))
            if refused:
                return Admission(None, False, tuple(revoked))
            row, created = await self._insert_row(db, session, place)
        return Admission(row, created, tuple(revoked))

    async def list_active(
        self,
        user_id: str,
        now: float,
        *,
        limit: int | None = None,
        before: ListPosition | None = None,
        include_revoked: bool = False,
    ) -> list[Session]:
        state = (
            "(revoked_at IS NOT NULL OR expires_at > ?)" if include_revoked else "revoked_at IS NULL AND expires_at > ?"
        )
        # Keyset page: after (created_at, id) in "created_at DESC, id" order. The plain
        # "created_at <= ?" bounds the range scan on sessions_by_user (user_id, created_at).
        after = "" if before is None else "AND created_at <= ? AND (created_at < ? OR id > ?) "
        position: tuple[Any, ...] = () if before is None else (before.created_at, before.created_at, before.id)
        rows = await self._fetch(
            f"SELECT {COLUMNS} FROM sessions "  # noqa: S608 (constant column list and clauses)
            f"WHERE user_id = ? AND {state} {after}"
            "ORDER BY created_at DESC, id LIMIT ?",
            (user_id, now, *position, -1 if limit is None else limit),
        )
        return [session_of(r) for r in rows]

    @staticmethod
    async def _next_revision(db: aiosqlite.Connection) -> int:
        async with db.execute("UPDATE revision_counter SET value = value + 1 WHERE id = 1 RETURNING value") as cur:
            row = await cur.fetchone()
        if row is None:  # pragma: no cover - migration 2 inserts the row
            raise StoreUnavailableError("revision counter missing")
        return int(row[0])

    async def count_active(self, now: float) -> int:
        rows = await self._fetch(
            "SELECT COUNT(*) FROM sessions WHERE revoked_at IS NULL AND expires_at > ?", (now,), scan=True
        )
        return int(rows[0][0])

    async def revoke(
        self,
        session_id: str,
        now: float,
        *,
        reason: str = USER,
        actor: str | None = None,
        seen_before: float | None = None,
        actor_session: str | None = None,
    ) -> Session | None:
        idle = "" if seen_before is None else " AND last_seen < ?"
        async with self._transaction() as db:
            async with db.execute(
                f"SELECT 1 FROM sessions WHERE id = ? AND revoked_at IS NULL{idle}",  # noqa: S608 (constant clause)
                (session_id,) if seen_before is None else (session_id, seen_before),
            ) as cur:
                unrevoked = await cur.fetchone() is not None
            if unrevoked:
                await db.execute(
                    "UPDATE sessions SET revoked_at = ?, revoked_reason = ?, revoked_by = ?, revision = ? WHERE id = ?",
                    (now, reason, actor, await self._next_revision(db), session_id),
                )
            row = await self._session_in(db, session_id)
            if unrevoked and row is not None:
                await self._record(db, revoked_events([row], await self._session_in(db, actor_session)))
        return row

    async def revoke_stale(
        self, now: float, *, seen_before: float | None, created_before: float | None, limit: int
    ) -> list[Session]:
        if seen_before is None and created_before is None:
            return []
        async with self._transaction() as db:
            found: dict[str, Session] = {}
            # Lifetime first: a session past both is revoked for its lifetime (the sharper rule).
            for reason, column, bound in ((LIFETIME, "created_at", created_before), (IDLE, "last_seen", seen_before)):
                if bound is None or len(found) >= limit:
                    continue
                async with db.execute(
                    f"SELECT {COLUMNS} FROM sessions WHERE revoked_at IS NULL AND {column} < ? "  # noqa: S608
                    "AND expires_at > ? LIMIT ?",
                    (bound, now, limit - len(found)),
                ) as cur:
                    for r in await cur.fetchall():
                        s = session_of(r)
                        revoked = replace(s, revoked_at=now, revoked_reason=reason, revoked_by=POLICY_ACTOR)
                        found.setdefault(s.id, revoked)
            if not found:
                return []
            revision = await self._next_revision(db)
            await db.executemany(
                "UPDATE sessions SET revoked_at = ?, revoked_reason = ?, revoked_by = ?, revision = ? WHERE id = ?",
                [(now, s.revoked_reason, s.revoked_by, revision, s.id) for s in found.values()],
            )
            await self._record(db, revoked_events(list(found.values())))
        return list(found.values())

    async def revoke_user(
        self,
        user_id: str,
        now: float,
        keep_session_key: str | None,
        *,
        reason: str = OTHERS,
        actor: str | None = None,
        actor_session: str | None = None,
    ) -> list[Session]:
        async with self._transaction() as db:
            async with db.execute(
                f"SELECT {COLUMNS} FROM sessions "  # noqa: S608
                "WHERE user_id = ? AND revoked_at IS NULL AND session_key IS NOT ?",
                (user_id, keep_session_key),
            ) as cur:
                rows = [session_of(r) for r in await cur.fetchall()]
            revision = await self._next_revision(db)
            await db.execute(
                "UPDATE sessions SET revoked_at = ?, revoked_reason = ?, revoked_by = ?, revision = ? "
                "WHERE user_id = ? AND revoked_at IS NULL AND session_key IS NOT ?",
                (now, reason, actor, revision, user_id, keep_session_key),
            )
            # A later cut-off always wins; an earlier one is never restored.
            await db.execute(
                "INSERT INTO user_cutoffs (user_id, cutoff_at, exempt_session_key, revision) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (user_id) DO UPDATE SET cutoff_at = excluded.cutoff_at, "
                "exempt_session_key = excluded.exempt_session_key, revision = excluded.revision "
                "WHERE excluded.cutoff_at >= user_cutoffs.cutoff_at",
                (user_id, now, keep_session_key, revision),
            )
            revoked = [replace(s, revoked_at=now, revoked_reason=reason, revoked_by=actor) for s in rows]
            acting = await self._session_in(db, actor_session)
            told = user_revoked_events(user_id, now, revoked, reason=reason, actor=actor, acting=acting)
            await self._record(db, told)
        return revoked

    async def current_revision(self) -> int:
        rows = await self._fetch("SELECT value FROM revision_counter WHERE id = 1", ())
        return int(rows[0][0]) if rows else 0

    async def changes_since(self, revision: int, limit: int) -> Changes:
        # Both reads in ONE snapshot: read apart, a revocation committed between them could
        # be skipped (its revision below the cut-offs' and above what the sessions read saw).
        # "revision > 0" lets SQLite use the partial index instead of scanning every session.
        db = self._conn(self._reader)
        async with self._snapshot_lock:
            try:
                await db.execute("BEGIN")
                try:
                    # Whole revisions only: "revoke all" stamps one revision on many rows,
                    # and a page ending inside it would skip the rest (see Changes.collect).
                    async with db.execute(
                        f"SELECT {COLUMNS}, revision FROM sessions "  # noqa: S608
                        "WHERE revision > ? AND revision > 0 AND revision <= ("
                        " SELECT COALESCE(MAX(revision), 0) FROM ("
                        "  SELECT revision FROM sessions WHERE revision > ? AND revision > 0"
                        "  ORDER BY revision LIMIT ?)) "
                        "ORDER BY revision",
                        (revision, revision, limit),
                    ) as cur:
                        sessions = list(await cur.fetchall())
                    async with db.execute(
                        "SELECT user_id, cutoff_at, exempt_session_key, revision FROM user_cutoffs "
                        "WHERE revision > ? ORDER BY revision LIMIT ?",
                        (revision, limit),
                    ) as cur:
                        cutoffs = list(await cur.fetchall())
                finally:
                    await db.execute("COMMIT")
            except _DRIVER_ERRORS as e:
                raise StoreUnavailableError(f"SQLite read failed: {e}") from e
        return Changes.collect(
            revision,
            limit,
            [(session_of(r[:-1]), int(r[-1])) for r in sessions],
            [(Cutoff(*r[:-1]), int(r[-1])) for r in cutoffs],
        )

    async def get_cutoff(self, user_id: str) -> Cutoff | None:
        rows = await self._fetch(
            "SELECT user_id, cutoff_at, exempt_session_key FROM user_cutoffs WHERE user_id = ?",
            (user_id,),
        )
        return Cutoff(*rows[0]) if rows else None

    async def touch(self, touches: Sequence[Touch]) -> None:
        if not touches:
            return
        async with self._transaction() as db:
            await db.executemany(
                "UPDATE sessions SET last_seen = MAX(last_seen, ?), expires_at = MAX(expires_at, ?) "
                "WHERE id = ?",
                [(t.last_seen, t.expires_at, t.session_id) for t in touches],
            )

    async def purge_sessions(self, expired_before: float, revoked_before: float, limit: int) -> int:
        async with self._transaction() as db:
            # sessions_by_expiry bounds the scan; the batch is one short write transaction.
            cur = await db.execute(
                "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions WHERE expires_at < ? "
                "AND (revoked_at IS NULL OR revoked_at < ?) LIMIT ?)",
                (expired_before, revoked_before, limit),
            )
            return int(cur.rowcount)

    async def purge_cutoffs(self, before: float, limit: int) -> int:
        # user_cutoffs has no index on cutoff_at: find candidates on the reader (WAL: never
        # blocks a writer), then delete them by key in a short write transaction. The
        # cutoff_at re-check keeps a cut-off that a revoke_user raised in between.
        rows = await self._fetch(
            "SELECT user_id FROM user_cutoffs WHERE cutoff_at < ? LIMIT ?", (before, limit)
        )
        if not rows:
            return 0
        async with self._transaction() as db:
            cur = await db.executemany(
                "DELETE FROM user_cutoffs WHERE user_id = ? AND cutoff_at < ?",
                [(r[0], before) for r in rows],
            )
            return int(cur.rowcount)

    # ------------------------------------------------------------------ events: history, outbox, retention

    async def list_events(
        self, user_id: str, *, limit: int, before: ListPosition | None = None
    ) -> list[Event]:
        after = "" if before is None else "AND occurred_at <= ? AND (occurred_at < ? OR id > ?) "
        position: tuple[Any, ...] = () if before is None else (before.created_at, before.created_at, before.id)
        rows = await self._fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE user_id = ? {after}"  # noqa: S608 (constant clauses)
            "ORDER BY occurred_at DESC, id LIMIT ?",
            (user_id, *position, limit),
        )
        return [event_of(r) for r in rows]

    async def claim_deliveries(self, now: float, *, limit: int, lease_seconds: float, claim: str) -> list[Delivery]:
        # BEGIN IMMEDIATE holds the write lock of the file for every process: a row is
        # claimed by one worker until its lease ends (a killed worker's rows come back then).
        async with self._transaction() as db:
            async with db.execute(
                "SELECT id FROM webhook_outbox WHERE delivered_at IS NULL AND dead_at IS NULL "
                "AND next_attempt_at <= ? AND (claimed_until IS NULL OR claimed_until <= ?) "
                "ORDER BY next_attempt_at, id LIMIT ?",
                (now, now, limit),
            ) as cur:
                ids = [int(r[0]) for r in await cur.fetchall()]
            if not ids:
                return []
            await db.executemany(
                "UPDATE webhook_outbox SET claimed_until = ?, claim = ?, attempts = attempts + 1 WHERE id = ?",
                [(now + lease_seconds, claim, i) for i in ids],
            )
            marks = ", ".join("?" * len(ids))
            async with db.execute(
                f"SELECT id, event_id, url, payload, attempts, claim FROM webhook_outbox WHERE id IN ({marks}) "  # noqa: S608
                "ORDER BY id",
                ids,
            ) as cur:
                return [Delivery(int(r[0]), r[1], r[2], r[3], int(r[4]), r[5]) for r in await cur.fetchall()]

    async def delivered(self, delivery_id: int, now: float) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE webhook_outbox SET delivered_at = COALESCE(delivered_at, ?), claimed_until = NULL, "
                "last_error = NULL WHERE id = ?",
                (now, delivery_id),
            )

    async def delivery_failed(
        self, delivery_id: int, claim: str, now: float, *, retry_at: float | None, error: str
    ) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE webhook_outbox SET claimed_until = NULL, last_error = ?, "
                "next_attempt_at = COALESCE(?, next_attempt_at), "
                "dead_at = CASE WHEN ? IS NULL THEN ? ELSE NULL END "
                "WHERE id = ? AND claim = ? AND delivered_at IS NULL",
                (error[:500], retry_at, retry_at, now, delivery_id, claim),
            )

    async def outbox_counts(self) -> OutboxCounts:
        rows = await self._fetch(
            "SELECT COUNT(*) FILTER (WHERE dead_at IS NULL), COUNT(*) FILTER (WHERE dead_at IS NOT NULL) "
            "FROM webhook_outbox WHERE delivered_at IS NULL",
            (),
            scan=True,
        )
        return OutboxCounts(int(rows[0][0] or 0), int(rows[0][1] or 0))

    async def purge_events(self, before: float, limit: int) -> int:
        async with self._transaction() as db:
            cur = await db.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE occurred_at < ? LIMIT ?)", (before, limit)
            )
            return int(cur.rowcount)

    async def purge_deliveries(self, delivered_before: float, dead_before: float, limit: int) -> int:
        async with self._transaction() as db:
            cur = await db.execute(
                "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox WHERE delivered_at < ? "
                "UNION ALL SELECT id FROM webhook_outbox WHERE dead_at < ? LIMIT ?)",
                (delivered_before, dead_before, limit),
            )
            return int(cur.rowcount)
