"""PostgreSQL backend (asyncpg): the shared store for several processes and hosts.

The same semantics as ``sqlite.py``, statement for statement; where PostgreSQL needs more
care (row locks between processes, snapshots) the comment says why. Durability: a write
returns only after its COMMIT, and PostgreSQL's default ``synchronous_commit = on`` makes
a COMMIT return only once its WAL record is flushed to disk (on a synchronous standby too,
when one is configured), so a revoke that answered 204 survives a server crash.
``open()`` warns when the server runs with ``synchronous_commit = off``.

Every statement is parameterised ($1...). Driver, socket and timeout errors become
``StoreUnavailableError`` with a short message that never carries the URL's password. Every
command has a client-side timeout and a server-side ``statement_timeout``, so a hung or
unreachable server fails a request in bounded time instead of stalling it.

asyncpg ships no type information; the few calls used here are typed by the small
protocols below.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from typing import Any, Final, Protocol
from urllib.parse import unquote, urlsplit

# An optional dependency: ``store_from_settings`` turns its absence into one clear line
# (``pip install 'sidecar[postgres]'``). It ships no type information (typed as Any).
import asyncpg

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


class _Connection(Protocol):
    """The part of ``asyncpg.Connection`` (or a pool's proxy of one) this module uses."""

    async def execute(self, query: str, *args: Any) -> str: ...

    async def executemany(self, command: str, args: Iterable[Sequence[Any]]) -> None: ...

    async def fetch(self, query: str, *args: Any) -> list[Any]: ...

    async def fetchrow(self, query: str, *args: Any) -> Any: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...

    def transaction(
        self, *, isolation: str | None = None, readonly: bool = False
    ) -> AbstractAsyncContextManager[Any]: ...

    def terminate(self) -> None: ...


class _Pool(Protocol):
    """The part of ``asyncpg.Pool`` this module uses."""

    def acquire(self, *, timeout: float | None = None) -> AbstractAsyncContextManager[_Connection]: ...

    async def close(self) -> None: ...

    def terminate(self) -> None: ...


# What the driver raises when the server or the network fails us. Programming errors
# (a TypeError from a wrong argument) are deliberately not in this list.
_DRIVER_ERRORS: Final[tuple[type[BaseException], ...]] = (
    asyncpg.PostgresError,  # server-side errors, incl. statement_timeout and "too many connections"
    asyncpg.InterfaceError,  # closed connection or pool, bad DSN, unencodable argument
    asyncpg.InternalClientError,  # protocol errors
    OSError,  # refused, reset, unreachable, DNS
    TimeoutError,  # connect timeout, command_timeout, pool acquire timeout
)
# After these the connection is in an unknown state (a command may still be running on
# it): drop it rather than let the pool try to reset it over a dead or hung socket.
_BROKEN_CONNECTION: Final[tuple[type[BaseException], ...]] = (OSError, TimeoutError, asyncpg.InternalClientError)

# Opening also fails on a malformed DSN (ValueError) and on a schema it must not touch.
_OPEN_ERRORS: Final[tuple[type[BaseException], ...]] = (*_DRIVER_ERRORS, ValueError, StoreUnavailableError)

# Key of the advisory lock that serialises migrations between processes (any constant
# distinct from other applications' keys in the same database; "sidecar" in ASCII).
MIGRATION_LOCK_KEY: Final = 0x73_69_64_65_63_61_72
# First half of the two-key advisory lock that holds one user while a registration counts
# their sessions (``admit``); the second half is hashtext(user_id). Two-key locks never
# conflict with the one-key migration lock. "si" in ASCII.
USER_LOCK_CLASS: Final = 0x73_69

# Versioned migrations, applied in order inside one transaction each. Never edit a released
# step; append a new one. The version numbers match sqlite.py's: version N is the same
# logical schema on both backends.
#
# Timestamps are DOUBLE PRECISION epoch seconds, the same IEEE doubles SQLite's REAL
# stores, so every value round-trips exactly. Identifiers are TEXT COLLATE "C": byte-wise
# comparison like SQLite's BINARY, so ``ORDER BY ..., id`` breaks ties identically on both
# backends (and B-tree comparisons skip the locale).
MIGRATIONS: Final[tuple[tuple[int, tuple[str, ...]], ...]] = (
    (
        1,
        (
            """
            CREATE TABLE sessions (
                id          TEXT COLLATE "C" PRIMARY KEY,
                session_key TEXT COLLATE "C" NOT NULL UNIQUE,
                user_id     TEXT COLLATE "C" NOT NULL,
                created_at  DOUBLE PRECISION NOT NULL,
                last_seen   DOUBLE PRECISION NOT NULL,
                expires_at  DOUBLE PRECISION NOT NULL,
                revoked_at  DOUBLE PRECISION,
                ip_address  TEXT,
                device      TEXT NOT NULL,
                location    TEXT NOT NULL
            )
            """,
            "CREATE INDEX sessions_by_user ON sessions (user_id, created_at)",
            "CREATE INDEX sessions_by_expiry ON sessions (expires_at)",
            """
            CREATE TABLE user_cutoffs (
                user_id            TEXT COLLATE "C" PRIMARY KEY,
                cutoff_at          DOUBLE PRECISION NOT NULL,
                exempt_session_key TEXT COLLATE "C"
            )
            """,
        ),
    ),
    (
        2,
        (
            # The revision feed. Not a SEQUENCE: nextval() hands out numbers at call time
            # and they commit in any order, so a reader could see 8, remember it, and never
            # look back for a 7 that commits a moment later. See _next_revision.
            "CREATE TABLE revision_counter (id INTEGER PRIMARY KEY CHECK (id = 1), value BIGINT NOT NULL)",
            "INSERT INTO revision_counter (id, value) VALUES (1, 0)",
            "ALTER TABLE sessions ADD COLUMN revision BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE user_cutoffs ADD COLUMN revision BIGINT NOT NULL DEFAULT 0",
            "CREATE INDEX sessions_by_revision ON sessions (revision) WHERE revision > 0",
            "CREATE INDEX cutoffs_by_revision ON user_cutoffs (revision)",
        ),
    ),
    (
        3,
        (
            """
            CREATE TABLE session_aliases (
                alias_key  TEXT COLLATE "C" PRIMARY KEY,
                session_id TEXT COLLATE "C" NOT NULL REFERENCES sessions (id) ON DELETE CASCADE
            )
            """,
            "CREATE INDEX session_aliases_by_session ON session_aliases (session_id)",
        ),
    ),
    (
        4,
        (
            "ALTER TABLE sessions ADD COLUMN revoked_reason TEXT",
            "ALTER TABLE sessions ADD COLUMN revoked_by TEXT",
            "CREATE INDEX sessions_unrevoked_by_last_seen ON sessions (last_seen) WHERE revoked_at IS NULL",
            "CREATE INDEX sessions_unrevoked_by_created ON sessions (created_at) WHERE revoked_at IS NULL",
        ),
    ),
    (
        5,
        (
            # Security events and the webhook outbox (see sqlite.py's step 5).
            """
            CREATE TABLE events (
                id          TEXT COLLATE "C" PRIMARY KEY,
                type        TEXT NOT NULL,
                user_id     TEXT COLLATE "C" NOT NULL,
                session_id  TEXT COLLATE "C",
                occurred_at DOUBLE PRECISION NOT NULL,
                data        TEXT NOT NULL
            )
            """,
            "CREATE INDEX events_by_user ON events (user_id, occurred_at)",
            "CREATE INDEX events_by_time ON events (occurred_at)",
            """
            CREATE TABLE webhook_outbox (
                id              BIGSERIAL PRIMARY KEY,
                event_id        TEXT COLLATE "C" NOT NULL,
                url             TEXT NOT NULL,
                payload         TEXT NOT NULL,
                created_at      DOUBLE PRECISION NOT NULL,
                attempts        INTEGER NOT NULL DEFAULT 0,
                next_attempt_at DOUBLE PRECISION NOT NULL,
                claimed_until   DOUBLE PRECISION,
                claim           TEXT,
                delivered_at    DOUBLE PRECISION,
                dead_at         DOUBLE PRECISION,
                last_error      TEXT
            )
            """,
            "CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) "
            "WHERE delivered_at IS NULL AND dead_at IS NULL",
            "CREATE INDEX webhook_outbox_delivered ON webhook_outbox (delivered_at) WHERE delivered_at IS NOT NULL",
        ),
    ),
)
SCHEMA_VERSION: Final = MIGRATIONS[-1][0]

_INSERT_ATTEMPTS: Final = 3
# The session a bound key (a token learned at issue) belongs to.
_BOUND_SESSION: Final = (
    f"SELECT {ALIASED} FROM session_aliases a JOIN sessions s ON s.id = a.session_id "  # noqa: S608
    "WHERE a.alias_key = $1"
)
_INSERT: Final = (
    f"INSERT INTO sessions ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "  # noqa: S608
    f"ON CONFLICT (session_key) DO NOTHING RETURNING {COLUMNS}"
)


def _values(s: Session) -> tuple[Any, ...]:
    return (
        s.id, s.session_key, s.user_id, s.created_at, s.last_seen, s.expires_at, s.revoked_at,
        s.ip_address, s.device, s.location, s.revoked_reason, s.revoked_by,
    )


class _HeldByAnotherUserError(Exception):
    """Raised inside ``admit`` to roll back: another user's session took the key meanwhile."""



def describe_dsn(dsn: str) -> str:
    """``host:port/database`` of a PostgreSQL URL, without user or password (for messages)."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "PostgreSQL"
    hosts = parts.netloc.rpartition("@")[2] or "default host"
    return f"{hosts}{parts.path}" if parts.path not in ("", "/") else hosts


def _passwords(dsn: str) -> list[str]:
    """Every spelling of the DSN's password, to scrub from error messages."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return []
    found = [parts.password or "", *re.findall(r"(?:^|&)password=([^&]*)", parts.query)]
    return sorted({v for p in found for v in (p, unquote(p)) if v}, key=len, reverse=True)


class PostgresStore:
    def __init__(
        self,
        dsn: str,
        *,
        pool_min_size: int = 1,
        pool_max_size: int = 10,
        statement_timeout_ms: int = 5000,
        connect_timeout_seconds: float = 5.0,
        events: EventOptions | None = None,
    ) -> None:
        self._dsn = dsn
        self.events = events or EventOptions()
        self._secrets = _passwords(dsn)
        self.where = describe_dsn(dsn)
        self.pool_min_size = pool_min_size
        self.pool_max_size = pool_max_size
        self.statement_timeout_ms = statement_timeout_ms
        self.connect_timeout_seconds = connect_timeout_seconds
        # The server cancels a statement after statement_timeout, which keeps the connection
        # usable; the client-side timeout, a little longer, is for a server or network that
        # stopped answering altogether.
        self._command_timeout = statement_timeout_ms / 1000 + 0.5
        # Waiting for a pooled connection: a busy one frees up within a command timeout, a
        # new one connects within the connect timeout. Also bounds the reset on release.
        self._acquire_timeout = self._command_timeout + connect_timeout_seconds
        self._pool: _Pool | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({self.where!r})"  # never the DSN: it may carry a password

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self.pool_min_size,
                max_size=self.pool_max_size,
                timeout=self.connect_timeout_seconds,
                command_timeout=self._command_timeout,
                server_settings={
                    "statement_timeout": str(self.statement_timeout_ms),
                    # Our transactions never wait on anything but their own statements, so one
                    # idle for seconds belongs to a client that hung or vanished: the server
                    # ends it and frees its locks (the revision counter's above all) instead of
                    # stalling every other process's revocations. At least 1 s, so a busy event
                    # loop between two statements is not mistaken for that.
                    "idle_in_transaction_session_timeout": str(max(self.statement_timeout_ms, 1000)),
                    # The revision feed relies on READ COMMITTED writes (see _next_revision);
                    # a database-wide default of REPEATABLE READ would turn waits into errors.
                    "default_transaction_isolation": "read committed",
                },
            )
            await self._migrate()
            async with self._acquire("open") as conn:
                if await conn.fetchval("SELECT current_setting('synchronous_commit')") == "off":
                    log.warning(
                        "postgres: %s runs with synchronous_commit = off: a revocation that was "
                        "answered may be lost if the server crashes", self.where,
                    )
        except _OPEN_ERRORS as e:
            await self.close()
            detail = e if isinstance(e, StoreUnavailableError) else self._describe(e)
            raise StoreUnavailableError(f"cannot open PostgreSQL database {self.where}: {detail}") from e
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=self._acquire_timeout)
        except _DRIVER_ERRORS as e:
            log.warning("postgres: error while closing %s: %s", self.where, self._describe(e))
            pool.terminate()

    async def _migrate(self) -> None:
        async with self._transaction("migration") as db:
            # Two processes starting at once queue here; the second then finds the schema
            # current. The lock is released with the transaction.
            await db.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)

            async def current_version() -> int:
                return int(await db.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))

            await migrate(
                db.execute, current_version, MIGRATIONS,
                record_sql="INSERT INTO schema_version (version) VALUES ($1)", where=f"postgres {self.where}", log=log,
            )

    # ------------------------------------------------------------------ plumbing

    def _describe(self, e: BaseException) -> str:
        text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @asynccontextmanager
    async def _acquire(self, what: str) -> AsyncIterator[_Connection]:
        """A pooled connection; driver errors -> StoreUnavailableError naming ``what``."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailableError("PostgreSQL store is not open")
        try:
            async with pool.acquire(timeout=self._acquire_timeout) as conn:
                try:
                    yield conn
                except _BROKEN_CONNECTION:
                    conn.terminate()
                    raise
        except _DRIVER_ERRORS as e:
            raise StoreUnavailableError(f"PostgreSQL {what} failed: {self._describe(e)}") from e

    @asynccontextmanager
    async def _transaction(
        self, what: str, *, isolation: str | None = None, readonly: bool = False
    ) -> AsyncIterator[_Connection]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        async with self._acquire(what) as conn, conn.transaction(isolation=isolation, readonly=readonly):
            yield conn

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        async with self._acquire("read") as conn:
            return await conn.fetch(sql, *args)

    @staticmethod
    async def _next_revision(db: _Connection) -> int:
        """Take the next revision inside the caller's (READ COMMITTED) transaction.

        The UPDATE row-locks the one counter row until the transaction ends, so a second
        revocation transaction waits here until the first has committed, then increments
        the committed value. Revision r + 1 is therefore taken only after r is visible,
        and a reader that has seen r + 1 has seen everything up to it: revisions become
        visible in commit order, which a SEQUENCE does not guarantee. The cost is that
        revocations serialise on this row, but only for the short rest of each transaction:
        every caller takes it after its session-row locks, just before its last statements.
        """
        value = await db.fetchval("UPDATE revision_counter SET value = value + 1 WHERE id = 1 RETURNING value")
        if value is None:  # pragma: no cover - migration 2 inserts the row
            raise StoreUnavailableError("revision counter missing")
        return int(value)

    # ------------------------------------------------------------------ protocol

    async def ping(self) -> None:
        async with self._acquire("ping") as conn:
            await conn.fetchval("SELECT 1")

    async def get(self, session_id: str) -> Session | None:
        rows = await self._fetch(f"SELECT {COLUMNS} FROM sessions WHERE id = $1", session_id)  # noqa: S608 (constant column list)
        return session_of(rows[0]) if rows else None

    async def get_by_key(self, session_key: str) -> Session | None:
        rows = await self._fetch(
            f"(SELECT {COLUMNS} FROM sessions WHERE session_key = $1) "  # noqa: S608
            f"UNION ALL (SELECT {ALIASED} FROM session_aliases a JOIN sessions s ON s.id = a.session_id "
            "WHERE a.alias_key = $1) LIMIT 1",
            session_key,
        )
        return session_of(rows[0]) if rows else None

    async def bind(self, session_id: str, keys: Sequence[str]) -> None:
        if not keys:
            return
        async with self._transaction("bind") as db:
            await db.executemany(
                "INSERT INTO session_aliases (alias_key, session_id) SELECT $1::text, $2::text "
                "WHERE EXISTS (SELECT 1 FROM sessions WHERE id = $2::text) "
                "AND NOT EXISTS (SELECT 1 FROM sessions WHERE session_key = $1::text) "
                "ON CONFLICT (alias_key) DO NOTHING",
                [(k, session_id) for k in keys],
            )

    async def insert(self, session: Session, *, place: Place | None = None) -> tuple[Session, bool]:
        if self.events.enabled:
            return await self._insert_with_event(session, place)
        async with self._acquire("insert") as db:
            # A key bound to a session (a token learned at issue) is that session's.
            bound = await db.fetchrow(_BOUND_SESSION, session.session_key)
            if bound is not None:
                return session_of(bound), False
            for _ in range(_INSERT_ATTEMPTS):
                # One autocommitted statement: durable when it returns. A concurrent insert
                # of the same key waits on the unique index and then does nothing.
                row = await db.fetchrow(
                    _INSERT, *_values(session),
                )
                if row is not None:
                    return session_of(row), True
                # Not a transaction: this read sees the row the conflicting insert committed.
                row = await db.fetchrow(f"SELECT {COLUMNS} FROM sessions WHERE session_key = $1", session.session_key)  # noqa: S608
                if row is not None:
                    return session_of(row), False
                # The holder of the key was purged in between: try the insert again.
        raise StoreUnavailableError("session key kept changing during insert")

    async def _insert_with_event(self, session: Session, place: Place | None) -> tuple[Session, bool]:
        """``insert`` with its session.created event in one transaction: the insert and the
        event commit together or not at all."""
        for _ in range(_INSERT_ATTEMPTS):
            async with self._transaction("insert") as db:
                bound = await db.fetchrow(_BOUND_SESSION, session.session_key)
                if bound is not None:
                    return session_of(bound), False
                row = await db.fetchrow(_INSERT, *_values(session))
                if row is not None:
                    stored = session_of(row)
                    await self._created(db, stored, place)
                    return stored, True
            # The conflicting insert has committed (ON CONFLICT waited for it): read it.
            existing = await self._fetch(f"SELECT {COLUMNS} FROM sessions WHERE session_key = $1", session.session_key)  # noqa: S608
            if existing:
                return session_of(existing[0]), False
        raise StoreUnavailableError("session key kept changing during insert")

    # ------------------------------------------------------------------ events (same transaction)

    async def _created(self, db: _Connection, s: Session, place: Place | None) -> None:
        if not self.events.enabled:
            return
        rows = await db.fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE user_id = $1 AND occurred_at >= $2 AND type = $3 "  # noqa: S608
            "ORDER BY occurred_at DESC LIMIT $4",
            s.user_id, s.created_at - self.events.history_seconds, SESSION_CREATED, PREVIOUS_LOGINS,
        )
        await self._record(db, [created_event(s, place or Place(), [event_of(tuple(r)) for r in rows], self.events)])

    async def _record(self, db: _Connection, events: Sequence[Event]) -> None:
        """Write events, and their outbox rows for the webhooks that want them."""
        if not events or not self.events.enabled:
            return
        await db.executemany(
            f"INSERT INTO events ({EVENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)",  # noqa: S608 (constant columns)
            [(e.id, e.type, e.user_id, e.session_id, e.occurred_at, e.json_data()) for e in events],
        )
        rows = outbox_rows(events, self.events.targets)
        if rows:
            await db.executemany(
                "INSERT INTO webhook_outbox (event_id, url, payload, created_at, next_attempt_at) "
                "VALUES ($1, $2, $3, $4, $4)",
                rows,
            )

    @staticmethod
    async def _session_in(db: _Connection, session_id: str | None) -> Session | None:
        if session_id is None:
            return None
        row = await db.fetchrow(f"SELECT {COLUMNS} FROM sessions WHERE id = $1", session_id)  # noqa: S608
        return session_of(row) if row is not None else None

    async def admit(self, session: Session, limit: SessionLimit, *, place: Place | None = None) -> Admission:
        try:
            async with self._transaction("admit") as db:
                # Holds this user (every process on the database) until COMMIT, so counting
                # and inserting are one step: racing registrations never pass the limit. Lock
                # order: the user, then session rows, then the revision counter.
                await db.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", USER_LOCK_CLASS, session.user_id)
                held = await db.fetchrow(
                    f"(SELECT {ALIASED} FROM session_aliases a JOIN sessions s ON s.id = a.session_id "  # noqa: S608
                    f"WHERE a.alias_key = $1) UNION ALL (SELECT {COLUMNS} FROM sessions WHERE session_key = $1) "
                    "LIMIT 1",
                    session.session_key,
                )
                if held is not None:
                    return Admission(session_of(held), False)
                rows = [
                    session_of(r)
                    for r in await db.fetch(
                        f"SELECT {COLUMNS} FROM sessions "  # noqa: S608
                        "WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 ORDER BY id FOR UPDATE",
                        session.user_id, limit.now,
                    )
                ]
                stale, evict, refused = plan_admission(rows, limit, session.id)
                revoked = stale if refused else stale + evict
                if revoked:
                    revision = await self._next_revision(db)
                    await db.executemany(
                        "UPDATE sessions SET revoked_at = $1, revoked_reason = $2, revoked_by = $3, revision = $4 "
                        "WHERE id = $5",
                        [(limit.now, s.revoked_reason, s.revoked_by, revision, s.id) for s in revoked],
                    )
                    await self._record(db, revoked_events(revoked))
                if refused:
                    return Admission(None, False, tuple(revoked))
                row = await db.fetchrow(_INSERT, *_values(session))
                if row is None:
                    # Another user's token took this key since the read above (that user's lock,
                    # not ours): undo what this call revoked and answer with the holder.
                    raise _HeldByAnotherUserError
                stored = session_of(row)
                await self._created(db, stored, place)
                return Admission(stored, True, tuple(revoked))
        except _HeldByAnotherUserError:
            existing = await self.get_by_key(session.session_key)
            if existing is None:
                raise StoreUnavailableError("session key kept changing during admit") from None
            return Admission(existing, False)

    async def list_active(
        self,
        user_id: str,
        now: float,
        *,
        limit: int | None = None,
        before: ListPosition | None = None,
        include_revoked: bool = False,
    ) -> list[Session]:
        # With tombstones: every stored session of the user but the expired, unrevoked ones.
        state = "(revoked_at IS NOT NULL OR expires_at > $2)"
        if not include_revoked:
            state = "revoked_at IS NULL AND expires_at > $2"
        # Keyset page, as in sqlite.py; LIMIT NULL is no limit. Two statements rather than
        # "$3 IS NULL OR ...", so that a generic plan still bounds the range scan on
        # sessions_by_user (user_id, created_at) with "created_at <= $3".
        if before is None:
            rows = await self._fetch(
                f"SELECT {COLUMNS} FROM sessions "  # noqa: S608
                f"WHERE user_id = $1 AND {state} "
                "ORDER BY created_at DESC, id LIMIT $3",
                user_id, now, limit,
            )
        else:
            rows = await self._fetch(
                f"SELECT {COLUMNS} FROM sessions "  # noqa: S608
                f"WHERE user_id = $1 AND {state} "
                "AND created_at <= $3 AND (created_at < $3 OR id > $4) "
                "ORDER BY created_at DESC, id LIMIT $5",
                user_id, now, before.created_at, before.id, limit,
            )
        return [session_of(r) for r in rows]

    async def count_active(self, now: float) -> int:
        rows = await self._fetch("SELECT COUNT(*) FROM sessions WHERE revoked_at IS NULL AND expires_at > $1", now)
        return int(rows[0][0])

    # Lock order, the same in every writing transaction so none waits on another in a
    # cycle: session rows (ascending id), then the revision counter, then a cut-off row.

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
        async with self._transaction("revoke") as db:
            # FOR UPDATE: a concurrent revoke of this row waits here, then reads it revoked
            # and takes no revision (only a revoke that changed the row takes one). A flush
            # (touch) of the row waits too, so ``seen_before`` reads the last word on activity.
            row = await db.fetchrow(f"SELECT {COLUMNS} FROM sessions WHERE id = $1 FOR UPDATE", session_id)  # noqa: S608
            if row is None:
                return None
            current = session_of(row)
            if current.revoked_at is not None or (seen_before is not None and current.last_seen >= seen_before):
                return current
            await db.execute(
                "UPDATE sessions SET revoked_at = $2, revoked_reason = $3, revoked_by = $4, revision = $5 "
                "WHERE id = $1",
                session_id, now, reason, actor, await self._next_revision(db),
            )
            revoked = replace(current, revoked_at=now, revoked_reason=reason, revoked_by=actor)
            await self._record(db, revoked_events([revoked], await self._session_in(db, actor_session)))
        return revoked

    async def revoke_stale(
        self, now: float, *, seen_before: float | None, created_before: float | None, limit: int
    ) -> list[Session]:
        if seen_before is None and created_before is None:
            return []
        async with self._transaction("revoke_stale") as db:
            found: dict[str, Session] = {}
            # Lifetime first (the sharper rule). SKIP LOCKED: a row a revoke or flush holds
            # is left for the next sweep rather than waited for (and a flush may keep it alive).
            for reason, column, bound in ((LIFETIME, "created_at", created_before), (IDLE, "last_seen", seen_before)):
                if bound is None or len(found) >= limit:
                    continue
                for r in await db.fetch(
                    f"SELECT {COLUMNS} FROM sessions WHERE revoked_at IS NULL AND {column} < $1 "  # noqa: S608
                    "AND expires_at > $2 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED",
                    bound, now, limit - len(found),
                ):
                    s = session_of(r)
                    found.setdefault(s.id, replace(s, revoked_at=now, revoked_reason=reason, revoked_by=POLICY_ACTOR))
            if not found:
                return []
            revision = await self._next_revision(db)
            await db.executemany(
                "UPDATE sessions SET revoked_at = $1, revoked_reason = $2, revoked_by = $3, revision = $4 "
                "WHERE id = $5",
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
        async with self._transaction("revoke_user") as db:
            rows = [
                session_of(r)
                for r in await db.fetch(
                    f"SELECT {COLUMNS} FROM sessions "  # noqa: S608
                    "WHERE user_id = $1 AND revoked_at IS NULL AND session_key IS DISTINCT FROM $2 "
                    "ORDER BY id FOR UPDATE",
                    user_id, keep_session_key,
                )
            ]
            revision = await self._next_revision(db)
            # By id, not by the predicate again: a session registered since the SELECT is
            # not in ``rows`` (the cut-off covers its older tokens), and the return value
            # must list exactly the rows this call revoked.
            if rows:
                await db.execute(
                    "UPDATE sessions SET revoked_at = $1, revision = $2, revoked_reason = $4, revoked_by = $5 "
                    "WHERE id = ANY($3::text[])",
                    now, revision, [s.id for s in rows], reason, actor,
                )
            # A later cut-off always wins; an earlier one is never restored.
            await db.execute(
                "INSERT INTO user_cutoffs (user_id, cutoff_at, exempt_session_key, revision) "
                "VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (user_id) DO UPDATE SET cutoff_at = excluded.cutoff_at, "
                "exempt_session_key = excluded.exempt_session_key, revision = excluded.revision "
                "WHERE excluded.cutoff_at >= user_cutoffs.cutoff_at",
                user_id, now, keep_session_key, revision,
            )
            revoked = [replace(s, revoked_at=now, revoked_reason=reason, revoked_by=actor) for s in rows]
            acting = await self._session_in(db, actor_session)
            told = user_revoked_events(user_id, now, revoked, reason=reason, actor=actor, acting=acting)
            await self._record(db, told)
        return revoked

    async def current_revision(self) -> int:
        async with self._acquire("read") as conn:
            value = await conn.fetchval("SELECT value FROM revision_counter WHERE id = 1")
        return int(value) if value is not None else 0

    async def changes_since(self, revision: int, limit: int) -> Changes:
        # Both reads in one snapshot. In two, a session revoked at r and a cut-off set at
        # r + 1 could commit between them; the reader would see r + 1 and never r.
        async with self._transaction("read", isolation="repeatable_read", readonly=True) as db:
            # "revision > 0" lets the planner use the partial index sessions_by_revision
            # even with a generic plan, where $1 is unknown.
            # Whole revisions only: "revoke all" stamps one revision on many rows, and a
            # page ending inside it would skip the rest (see Changes.collect).
            sessions = await db.fetch(
                f"SELECT {COLUMNS}, revision FROM sessions "  # noqa: S608
                "WHERE revision > $1 AND revision > 0 AND revision <= ("
                " SELECT COALESCE(MAX(revision), 0) FROM ("
                "  SELECT revision FROM sessions WHERE revision > $1 AND revision > 0"
                "  ORDER BY revision LIMIT $2) AS page) "
                "ORDER BY revision",
                revision, limit,
            )
            cutoffs = await db.fetch(
                "SELECT user_id, cutoff_at, exempt_session_key, revision FROM user_cutoffs "
                "WHERE revision > $1 ORDER BY revision LIMIT $2",
                revision, limit,
            )
        return Changes.collect(
            revision,
            limit,
            [(session_of(tuple(r)[:-1]), int(r[-1])) for r in sessions],
            [(Cutoff(*tuple(r)[:-1]), int(r[-1])) for r in cutoffs],
        )

    async def get_cutoff(self, user_id: str) -> Cutoff | None:
        rows = await self._fetch(
            "SELECT user_id, cutoff_at, exempt_session_key FROM user_cutoffs WHERE user_id = $1",
            user_id,
        )
        return Cutoff(*rows[0]) if rows else None

    async def touch(self, touches: Sequence[Touch]) -> None:
        if not touches:
            return
        # One update per session (the largest values win), in id order: the lock order
        # above, so a flush never deadlocks with a revoke_user or another process's flush.
        merged: dict[str, Touch] = {}
        for t in touches:
            seen = merged.get(t.session_id)
            merged[t.session_id] = t if seen is None else Touch(
                t.session_id, max(t.last_seen, seen.last_seen), max(t.expires_at, seen.expires_at)
            )
        async with self._transaction("touch") as db:
            await db.executemany(
                "UPDATE sessions SET last_seen = GREATEST(last_seen, $2), expires_at = GREATEST(expires_at, $3) "
                "WHERE id = $1",
                [(t.session_id, t.last_seen, t.expires_at) for _, t in sorted(merged.items())],
            )

    async def purge_sessions(self, expired_before: float, revoked_before: float, limit: int) -> int:
        # One autocommitted statement. FOR UPDATE re-checks each candidate against its latest
        # committed version (a touch may have extended it) and locks it, so the DELETE
        # removes exactly what was counted; SKIP LOCKED lets a concurrent purge take other
        # rows instead of waiting for these, and skips rows a revoke or touch holds.
        async with self._acquire("purge") as db:
            status = await db.execute(
                "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions WHERE expires_at < $1 "
                "AND (revoked_at IS NULL OR revoked_at < $2) LIMIT $3 FOR UPDATE SKIP LOCKED)",
                expired_before, revoked_before, limit,
            )
        return _affected(status)

    async def purge_cutoffs(self, before: float, limit: int) -> int:
        # As above: a cut-off that a revoke_user raised meanwhile fails the re-check under
        # FOR UPDATE, and one that revoke_user is raising right now is locked and skipped.
        async with self._acquire("purge") as db:
            status = await db.execute(
                "DELETE FROM user_cutoffs WHERE user_id IN (SELECT user_id FROM user_cutoffs "
                "WHERE cutoff_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
                before, limit,
            )
        return _affected(status)

    # ------------------------------------------------------------------ events: history, outbox, retention

    async def list_events(self, user_id: str, *, limit: int, before: ListPosition | None = None) -> list[Event]:
        if before is None:
            rows = await self._fetch(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE user_id = $1 "  # noqa: S608
                "ORDER BY occurred_at DESC, id LIMIT $2",
                user_id, limit,
            )
        else:
            rows = await self._fetch(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE user_id = $1 "  # noqa: S608
                "AND occurred_at <= $2 AND (occurred_at < $2 OR id > $3) "
                "ORDER BY occurred_at DESC, id LIMIT $4",
                user_id, before.created_at, before.id, limit,
            )
        return [event_of(tuple(r)) for r in rows]

    async def claim_deliveries(self, now: float, *, limit: int, lease_seconds: float, claim: str) -> list[Delivery]:
        # One statement: FOR UPDATE SKIP LOCKED hands each due row to one claimer (a
        # concurrent claim takes other rows, never waits), and the UPDATE's lease keeps it
        # from the next claim until delivered, failed, or the lease ends (a killed worker).
        async with self._acquire("claim") as db:
            rows = await db.fetch(
                "UPDATE webhook_outbox SET claimed_until = $2, claim = $3, attempts = attempts + 1 "
                "WHERE id IN (SELECT id FROM webhook_outbox WHERE delivered_at IS NULL AND dead_at IS NULL "
                "AND next_attempt_at <= $1 AND (claimed_until IS NULL OR claimed_until <= $1) "
                "ORDER BY next_attempt_at, id LIMIT $4 FOR UPDATE SKIP LOCKED) "
                "RETURNING id, event_id, url, payload, attempts, claim",
                now, now + lease_seconds, claim, limit,
            )
        return sorted((Delivery(int(r[0]), r[1], r[2], r[3], int(r[4]), r[5]) for r in rows), key=lambda d: d.id)

    async def delivered(self, delivery_id: int, now: float) -> None:
        async with self._acquire("delivered") as db:
            await db.execute(
                "UPDATE webhook_outbox SET delivered_at = COALESCE(delivered_at, $2), claimed_until = NULL, "
                "last_error = NULL WHERE id = $1",
                delivery_id, now,
            )

    async def delivery_failed(
        self, delivery_id: int, claim: str, now: float, *, retry_at: float | None, error: str
    ) -> None:
        async with self._acquire("delivery_failed") as db:
            await db.execute(
                "UPDATE webhook_outbox SET claimed_until = NULL, last_error = $4, "
                "next_attempt_at = COALESCE($5::double precision, next_attempt_at), "
                "dead_at = CASE WHEN $5::double precision IS NULL THEN $3::double precision ELSE NULL END "
                "WHERE id = $1 AND claim = $2 AND delivered_at IS NULL",
                delivery_id, claim, now, error[:500], retry_at,
            )

    async def outbox_counts(self) -> OutboxCounts:
        rows = await self._fetch(
            "SELECT COUNT(*) FILTER (WHERE dead_at IS NULL), COUNT(*) FILTER (WHERE dead_at IS NOT NULL) "
            "FROM webhook_outbox WHERE delivered_at IS NULL"
        )
        return OutboxCounts(int(rows[0][0] or 0), int(rows[0][1] or 0))

    async def purge_events(self, before: float, limit: int) -> int:
        async with self._acquire("purge") as db:
            status = await db.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE occurred_at < $1 LIMIT $2)", before, limit
            )
        return _affected(status)

    async def purge_deliveries(self, delivered_before: float, dead_before: float, limit: int) -> int:
        async with self._acquire("purge") as db:
            status = await db.execute(
                "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox "
                "WHERE delivered_at < $1 OR dead_at < $2 LIMIT $3 FOR UPDATE SKIP LOCKED)",
                delivered_before, dead_before, limit,
            )
        return _affected(status)


def _affected(status: str) -> int:
    """The row count of a command tag such as ``DELETE 3``."""
    return int(status.rsplit(" ", 1)[-1])
