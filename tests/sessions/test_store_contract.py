"""The store contract: one behaviour suite that every backend must pass.

Backends are listed in ``BACKENDS``: SQLite in a temporary file, and PostgreSQL in one
database per test run (``tests/sessions/pg.py`` finds or starts the server), emptied
before each test so the suite stays fast. Backend-specific tests follow the contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from sidecar.config import StorageSettings
from sidecar.errors import StoreUnavailableError
from sidecar.sessions import ListPosition, Session, SessionStore, Touch, store_from_settings
from sidecar.sessions.models import SessionLimit
from sidecar.sessions.sqlite import SCHEMA_VERSION, SqliteStore
from tests.sessions import pg
from tests.support.ports import free_port
from tests.support.sessions import NOW, stored_session

if TYPE_CHECKING:
    from sidecar.sessions.postgres import PostgresStore


Backend = Callable[[pytest.FixtureRequest, Path], Awaitable[SessionStore]]


async def sqlite_backend(request: pytest.FixtureRequest, tmp_path: Path) -> SessionStore:
    store = SqliteStore(tmp_path / "contract.db", busy_timeout_ms=200)
    await store.open()
    return store


def postgres_store(url: str, **options: Any) -> PostgresStore:
    """A PostgresStore (imported here, so a missing asyncpg fails only the PostgreSQL tests)."""
    pg.asyncpg()
    from sidecar.sessions.postgres import PostgresStore

    options = {"pool_max_size": 4, "statement_timeout_ms": 5000, "connect_timeout_seconds": 5.0, **options}
    return PostgresStore(url, **options)


async def postgres_backend(request: pytest.FixtureRequest, tmp_path: Path) -> SessionStore:
    url: str = request.getfixturevalue("postgres_url")
    store = postgres_store(url)
    await store.open()
    # One database per run, emptied per test: far faster than a database per test.
    await pg.execute(
        url,
        "DELETE FROM sessions",
        "DELETE FROM user_cutoffs",
        "UPDATE revision_counter SET value = 0",
        "DELETE FROM events",
        "DELETE FROM webhook_outbox",
    )
    return store


BACKENDS: dict[str, Backend] = {"sqlite": sqlite_backend, "postgresql": postgres_backend}


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """This run's own PostgreSQL database (schema created by the first store that opens it)."""
    with pg.database() as url:
        yield url


@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionStore]:
    s = await BACKENDS[request.param](request, tmp_path)
    try:
        yield s
    finally:
        await s.close()


def session(user: str = "alice", key: str | None = None, *, expires: float = NOW + 3600, created: float = NOW) -> Session:
    return stored_session(user, key, created=created, expires=expires)


async def test_insert_then_get_by_id_and_key(store: SessionStore) -> None:
    """An inserted session reads back identically by id and by key."""
    s = session()
    row, created = await store.insert(s)
    assert created and row == s
    assert await store.get(s.id) == s
    assert await store.get_by_key(s.session_key) == s
    assert await store.get(str(uuid.uuid4())) is None


async def test_insert_same_key_returns_the_existing_row(store: SessionStore) -> None:
    """A second insert of one session key returns the first row, not a duplicate."""
    first = session(key="sid:k")
    await store.insert(first)
    row, created = await store.insert(session(key="sid:k"))
    assert not created and row == first


async def test_concurrent_inserts_of_one_key_make_one_row(store: SessionStore) -> None:
    """Many concurrent inserts of one key agree on a single row."""
    results = await asyncio.gather(*(store.insert(session(key="sid:race")) for _ in range(20)))
    assert len({r.id for r, _ in results}) == 1
    assert sum(created for _, created in results) == 1


async def test_list_active_is_newest_first_and_filters(store: SessionStore) -> None:
    """list_active returns the user's unrevoked, unexpired sessions, newest login first."""
    old = session(created=NOW - 100)
    new = session(created=NOW - 10)
    expired = session(expires=NOW - 1)
    revoked = session()
    other = session("bob")
    for s in (old, new, expired, revoked, other):
        await store.insert(s)
    await store.revoke(revoked.id, NOW)
    assert [s.id for s in await store.list_active("alice", NOW)] == [new.id, old.id]


async def read_pages(store: SessionStore, user: str, size: int, between: Callable[[int], Awaitable[None]] | None = None) -> list[list[str]]:
    """Page through the user's listing ``size`` at a time, each page after the last one's
    final session; ``between(n)`` runs after page n is read."""
    pages: list[list[str]] = []
    before: ListPosition | None = None
    for _ in range(100):
        rows = await store.list_active(user, NOW, limit=size, before=before)
        assert len(rows) <= size
        if rows:
            pages.append([r.id for r in rows])
        if len(rows) < size:
            return pages
        before = ListPosition.of(rows[-1])
        if between is not None:
            await between(len(pages))
    pytest.fail("the listing never ended")


def ten_sessions() -> list[Session]:
    """Ten sessions of alice, three of them logged in at the same instant (ties by id)."""
    created = [NOW - 90, NOW - 80, NOW - 50, NOW - 50, NOW - 50, NOW - 40, NOW - 30, NOW - 20, NOW - 10, NOW - 1]
    return [session(created=c) for c in created]


async def test_list_active_pages_cover_every_session_once_in_order(store: SessionStore) -> None:
    """Pages of 3 over 10 sessions, each after the last one's position, list every session
    exactly once, in the unpaged order (newest login first, ties by id)."""
    sessions = ten_sessions()
    for s in sessions:
        await store.insert(s)
    await store.insert(session("bob"))
    full = [s.id for s in await store.list_active("alice", NOW)]
    assert full == [s.id for s in sorted(sessions, key=lambda s: (-s.created_at, s.id))]
    for size in (1, 3, 4, 10):
        pages = await read_pages(store, "alice", size)
        assert [len(p) for p in pages] == [min(size, 10 - i) for i in range(0, 10, size)]
        assert [i for p in pages for i in p] == full, size


async def test_list_active_order_breaks_ties_by_id(store: SessionStore) -> None:
    """Sessions logged in at the same instant are listed by id, across a page boundary too."""
    tied = [session(created=NOW - 5) for _ in range(5)]
    for s in tied:
        await store.insert(s)
    assert [s.id for s in await store.list_active("alice", NOW)] == sorted(s.id for s in tied)
    assert [i for p in await read_pages(store, "alice", 2) for i in p] == sorted(s.id for s in tied)


async def test_list_active_pages_neither_skip_nor_repeat_when_sessions_change_between_reads(
    store: SessionStore,
) -> None:
    """A session logged in, and sessions revoked (one already listed, one not yet), between two
    page reads make no other session skip a page or appear twice."""
    sessions = ten_sessions()
    for s in sessions:
        await store.insert(s)
    full = [s.id for s in await store.list_active("alice", NOW)]
    newcomer = session(created=NOW - 0.5)
    listed_then_revoked, revoked_unlisted = full[1], full[6]

    async def meanwhile(pages_read: int) -> None:
        if pages_read == 1:
            await store.insert(newcomer)
            await store.revoke(listed_then_revoked, NOW)
            await store.revoke(revoked_unlisted, NOW)

    seen = [i for p in await read_pages(store, "alice", 3, meanwhile) for i in p]
    assert len(seen) == len(set(seen))
    assert seen == [i for i in full if i != revoked_unlisted]
    assert newcomer.id not in seen  # logged in after the listing began: it belongs on page one


async def test_list_active_limit_and_position_bounds(store: SessionStore) -> None:
    """limit caps the rows; a position past the last session, or one no session holds, lists by value."""
    sessions = ten_sessions()
    for s in sessions:
        await store.insert(s)
    full = [s.id for s in await store.list_active("alice", NOW)]
    assert [s.id for s in await store.list_active("alice", NOW, limit=1)] == full[:1]
    assert [s.id for s in await store.list_active("alice", NOW, limit=1000)] == full
    assert await store.list_active("alice", NOW, limit=5, before=ListPosition(NOW - 1000, "")) == []
    between = ListPosition(NOW - 45, str(uuid.uuid4()))  # no session there: starts at the next one
    assert [s.id for s in await store.list_active("alice", NOW, before=between)] == full[-5:]
    assert [s.id for s in await store.list_active("alice", NOW, before=ListPosition(NOW + 1e9, ""))] == full
    assert await store.list_active("nobody", NOW, limit=3) == []


async def test_count_active(store: SessionStore) -> None:
    """count_active counts the sessions that are neither revoked nor expired."""
    live, expired, revoked = session(), session(expires=NOW - 1), session()
    for s in (live, expired, revoked):
        await store.insert(s)
    await store.revoke(revoked.id, NOW)
    assert await store.count_active(NOW) == 1


async def test_revoke_is_idempotent_and_keeps_first_time(store: SessionStore) -> None:
    """Revoking twice keeps the first revocation time; unknown ids give None."""
    s = session()
    await store.insert(s)
    first = await store.revoke(s.id, NOW + 1)
    second = await store.revoke(s.id, NOW + 2)
    assert first is not None and first.revoked_at == NOW + 1
    assert second is not None and second.revoked_at == NOW + 1
    assert await store.revoke(str(uuid.uuid4()), NOW) is None


async def test_revoke_user_revokes_others_and_sets_cutoff(store: SessionStore) -> None:
    """revoke_user revokes every other session of the user and records the cut-off, atomically."""
    keep, a, b, bob = session(key="sid:keep"), session(), session(), session("bob")
    for s in (keep, a, b, bob):
        await store.insert(s)
    revoked = await store.revoke_user("alice", NOW + 5, "sid:keep")
    assert {s.id for s in revoked} == {a.id, b.id}
    assert all(s.revoked_at == NOW + 5 for s in revoked)
    assert [s.id for s in await store.list_active("alice", NOW)] == [keep.id]
    assert [s.id for s in await store.list_active("bob", NOW)] == [bob.id]
    cutoff = await store.get_cutoff("alice")
    assert cutoff is not None
    assert (cutoff.cutoff_at, cutoff.exempt_session_key) == (NOW + 5, "sid:keep")
    assert await store.get_cutoff("bob") is None


async def test_cutoff_never_moves_back(store: SessionStore) -> None:
    """A later cut-off replaces an earlier one; an earlier one never replaces a later one."""
    await store.revoke_user("alice", NOW + 10, None)
    await store.revoke_user("alice", NOW + 5, "sid:x")
    cutoff = await store.get_cutoff("alice")
    assert cutoff is not None and (cutoff.cutoff_at, cutoff.exempt_session_key) == (NOW + 10, None)
    await store.revoke_user("alice", NOW + 20, "sid:y")
    cutoff = await store.get_cutoff("alice")
    assert cutoff is not None and (cutoff.cutoff_at, cutoff.exempt_session_key) == (NOW + 20, "sid:y")


async def test_touch_only_raises_values(store: SessionStore) -> None:
    """touch raises last_seen and expires_at and never lowers them."""
    s = session()
    await store.insert(s)
    await store.touch([Touch(s.id, NOW + 50, NOW + 7200)])
    await store.touch([Touch(s.id, NOW + 10, NOW + 60)])
    row = await store.get(s.id)
    assert row is not None and (row.last_seen, row.expires_at) == (NOW + 50, NOW + 7200)
    await store.touch([Touch(str(uuid.uuid4()), NOW, NOW)])  # a deleted session: no error


async def test_purge_sessions_in_batches_keeps_tombstones(store: SessionStore) -> None:
    """purge_sessions deletes at most `limit` expired rows per call; recently revoked rows stay."""
    expired = [session(expires=NOW - 10) for _ in range(5)]
    live = session()
    tombstone = session(expires=NOW - 10)
    old_tombstone = session(expires=NOW - 10)
    for s in (*expired, live, tombstone, old_tombstone):
        await store.insert(s)
    await store.revoke(tombstone.id, NOW - 1)
    await store.revoke(old_tombstone.id, NOW - 1000)
    assert await store.purge_sessions(NOW, NOW - 500, 2) == 2
    assert await store.purge_sessions(NOW, NOW - 500, 10) == 4
    assert await store.purge_sessions(NOW, NOW - 500, 10) == 0
    assert await store.get(live.id) is not None
    assert await store.get(tombstone.id) is not None
    assert await store.get(old_tombstone.id) is None


async def test_purge_cutoffs(store: SessionStore) -> None:
    """purge_cutoffs deletes cut-offs set before the bound and keeps newer ones."""
    await store.revoke_user("old", NOW - 100, None)
    await store.revoke_user("new", NOW, None)
    assert await store.purge_cutoffs(NOW - 50, 10) == 1
    assert await store.purge_cutoffs(NOW - 50, 10) == 0
    assert await store.get_cutoff("old") is None
    assert await store.get_cutoff("new") is not None


async def test_revision_feed_lists_revocations_and_cutoffs_in_order(store: SessionStore) -> None:
    """Each revocation and cut-off gets a new revision; changes_since returns what came after one."""
    assert await store.current_revision() == 0
    a, b, c = session(), session(), session("bob")
    for s in (a, b, c):
        await store.insert(s)
    start = await store.current_revision()
    await store.revoke(a.id, NOW)
    after_a = await store.current_revision()
    assert after_a > start
    await store.revoke(a.id, NOW + 1)  # already revoked: nothing new to tell
    assert await store.current_revision() == after_a
    await store.revoke_user("bob", NOW + 2, None)
    changes = await store.changes_since(start, 100)
    assert [s.id for s in changes.sessions] == [a.id, c.id]
    assert [(x.user_id, x.cutoff_at) for x in changes.cutoffs] == [("bob", NOW + 2)]
    assert changes.revision == await store.current_revision()
    later = await store.changes_since(changes.revision, 100)
    assert (later.sessions, later.cutoffs, later.revision) == ((), (), changes.revision)
    assert [s.id for s in (await store.changes_since(after_a, 100)).sessions] == [c.id]


async def test_revision_feed_pages_without_skipping(store: SessionStore) -> None:
    """Reading the feed in small pages visits every revocation exactly once or more, never zero times."""
    sessions = [session(f"user{i}") for i in range(7)]
    for s in sessions:
        await store.insert(s)
    for i, s in enumerate(sessions):
        if i % 2:
            await store.revoke(s.id, NOW)
        else:
            await store.revoke_user(s.user_id, NOW, None)
    seen: set[str] = set()
    users: set[str] = set()
    revision = 0
    for _ in range(20):
        changes = await store.changes_since(revision, 2)
        seen |= {s.id for s in changes.sessions}
        users |= {c.user_id for c in changes.cutoffs}
        if changes.revision == revision:
            break
        revision = changes.revision
    assert seen == {s.id for s in sessions}
    assert users == {s.user_id for i, s in enumerate(sessions) if i % 2 == 0}


async def test_revision_feed_pages_never_split_a_revoke_all(store: SessionStore) -> None:
    """"Revoke all" stamps one revision on every session it revokes: a page of the feed
    never ends inside it, even when it holds more rows than the page size (a page that
    did, and the next read starting after that revision, skipped the rest)."""
    lone = session("carol")
    many = [session("dave") for _ in range(5)]
    for s in (lone, *many):
        await store.insert(s)
    await store.revoke(lone.id, NOW)
    await store.revoke_user("dave", NOW + 1, None)
    for page in (1, 2, 3, 4, 7):
        seen: list[str] = []
        revision = 0
        for _ in range(20):
            changes = await store.changes_since(revision, page)
            seen += [s.id for s in changes.sessions]
            if changes.revision == revision:
                break
            revision = changes.revision
        assert set(seen) == {s.id for s in (lone, *many)}, page
        assert revision == await store.current_revision()
    first = await store.changes_since(0, 1)
    assert [s.id for s in first.sessions] == [lone.id]
    second = await store.changes_since(first.revision, 1)  # 5 rows for a page of 1: the whole revision
    assert sorted(s.id for s in second.sessions) == sorted(s.id for s in many)


async def test_values_round_trip_unchanged(store: SessionStore) -> None:
    """Identifiers with quotes, SQL and unicode in stored text round-trip as plain data."""
    s = replace(session(user="o'brien\"; DROP TABLE sessions; --", key="sid:' OR '1'='1"), location="Linköping, Sweden")
    await store.insert(s)
    assert await store.get_by_key("sid:' OR '1'='1") == s
    assert [r.id for r in await store.list_active(s.user_id, NOW)] == [s.id]


async def test_ping(store: SessionStore) -> None:
    """ping answers while the store is open and raises StoreUnavailableError once closed."""
    await store.ping()
    await store.close()
    with pytest.raises(StoreUnavailableError):
        await store.ping()


async def test_timestamps_round_trip_exactly(store: SessionStore) -> None:
    """Epoch-second floats come back bit for bit, fractions and all."""
    odd = 1_700_000_000.1 + 0.2
    s = replace(session(created=odd), last_seen=odd + 1e-6, expires_at=4_102_444_800.000_001)
    await store.insert(s)
    assert await store.get(s.id) == s
    revoked = await store.revoke(s.id, NOW + 1 / 3)
    assert revoked is not None and revoked.revoked_at == NOW + 1 / 3
    assert await store.get(s.id) == revoked


async def test_concurrent_revokes_of_one_session_take_one_revision(store: SessionStore) -> None:
    """Many concurrent revokes of one session agree on one revocation time and take one revision."""
    s = session()
    await store.insert(s)
    before = await store.current_revision()
    results = await asyncio.gather(*(store.revoke(s.id, NOW + i) for i in range(10)))
    times = {r.revoked_at for r in results if r is not None}
    assert len(times) == 1 and len(results) == 10
    assert await store.current_revision() == before + 1


async def test_touch_batch_with_one_session_twice_keeps_the_largest(store: SessionStore) -> None:
    """Two touches of one session in one batch leave the larger of each value."""
    s = session()
    await store.insert(s)
    await store.touch([Touch(s.id, NOW + 50, NOW + 60), Touch(s.id, NOW + 40, NOW + 7200)])
    row = await store.get(s.id)
    assert row is not None and (row.last_seen, row.expires_at) == (NOW + 50, NOW + 7200)


async def test_revoke_user_keeping_an_unknown_session_revokes_all(store: SessionStore) -> None:
    """A keep key that matches no session exempts nothing but that key in the cut-off."""
    a, b = session(), session()
    for s in (a, b):
        await store.insert(s)
    revoked = await store.revoke_user("alice", NOW, "sid:not-registered")
    assert {s.id for s in revoked} == {a.id, b.id}
    assert await store.list_active("alice", NOW - 1) == []
    again = await store.revoke_user("alice", NOW + 1, None)
    assert again == []


# ---------------------------------------------------------------- SQLite specifics


async def test_sqlite_reopen_keeps_data_and_schema_version(tmp_path: Path) -> None:
    """Reopening a database migrates nothing twice and keeps every row."""
    s = session()
    first = SqliteStore(tmp_path / "x.db")
    await first.open()
    await first.insert(s)
    await first.close()
    second = SqliteStore(tmp_path / "x.db")
    await second.open()
    try:
        assert await second.get(s.id) == s
    finally:
        await second.close()
    with sqlite3.connect(tmp_path / "x.db") as db:
        assert [r[0] for r in db.execute("SELECT version FROM schema_version")] == list(range(1, SCHEMA_VERSION + 1))
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    """A database written by a newer sidecar is refused with a clear error."""
    store = SqliteStore(tmp_path / "x.db")
    await store.open()
    await store.close()
    with sqlite3.connect(tmp_path / "x.db") as db:
        db.execute("INSERT INTO schema_version (version) VALUES (999)")
    with pytest.raises(StoreUnavailableError, match="newer than this sidecar"):
        await SqliteStore(tmp_path / "x.db").open()


async def test_sqlite_locked_by_another_writer_fails_revoke_cleanly(tmp_path: Path) -> None:
    """A write lock held by another process past the timeout -> StoreUnavailableError, nothing half-done (D33)."""
    store = SqliteStore(tmp_path / "x.db", busy_timeout_ms=100)
    await store.open()
    try:
        s = session()
        await store.insert(s)
        blocker = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreUnavailableError):
                await store.revoke(s.id, NOW)
            # Reads still work in WAL mode while the other writer holds the lock.
            row = await store.get(s.id)
            assert row is not None and row.revoked_at is None
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        revoked = await store.revoke(s.id, NOW)
        assert revoked is not None and revoked.revoked_at == NOW
    finally:
        await store.close()


async def test_sqlite_closed_under_a_read_in_flight(tmp_path: Path) -> None:
    """Reads and writes on a store closed while they were on their way raise StoreUnavailableError, nothing else."""
    store = SqliteStore(tmp_path / "x.db")
    await store.open()
    reader, writer = store._reader, store._writer
    pending = [asyncio.create_task(store.count_active(NOW)) for _ in range(20)]
    await store.close()
    for task in pending:
        with contextlib.suppress(StoreUnavailableError):  # a read may also have finished first
            await task
    store._reader, store._writer = reader, writer  # closed connections, as a racing caller sees them
    with pytest.raises(StoreUnavailableError):
        await store.count_active(NOW)
    with pytest.raises(StoreUnavailableError):
        await store.insert(session())


async def test_sqlite_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    """A database path that cannot be created fails open() with StoreUnavailableError."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreUnavailableError, match="cannot open SQLite database"):
        await SqliteStore(tmp_path / "file" / "x.db").open()


# ---------------------------------------------------------------- PostgreSQL specifics


@asynccontextmanager
async def opened(url: str, **options: Any) -> AsyncIterator[PostgresStore]:
    """An open PostgresStore on ``url``, closed afterwards."""
    s = postgres_store(url, **options)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def fresh_schema(url: str) -> str:
    """``url`` pointed at a new, empty schema of this run's database (for migration tests)."""
    name = f"s_{uuid.uuid4().hex[:16]}"
    await pg.execute(url, f'CREATE SCHEMA "{name}"')
    return pg.with_params(url, search_path=name)


async def test_postgres_reopen_keeps_data_and_migrates_once(postgres_url: str) -> None:
    """Reopening a database migrates nothing twice and keeps every row."""
    url = await fresh_schema(postgres_url)
    s = session()
    async with opened(url) as first:
        await first.insert(s)
    async with opened(url) as second:
        assert await second.get(s.id) == s
    from sidecar.sessions import postgres

    conn = await pg.asyncpg().connect(url)
    try:
        versions = [r[0] for r in await conn.fetch("SELECT version FROM schema_version ORDER BY version")]
        types = dict(await conn.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = 'sessions'"
        ))
    finally:
        await conn.close()
    assert versions == list(range(1, postgres.SCHEMA_VERSION + 1))
    assert postgres.SCHEMA_VERSION == SCHEMA_VERSION  # one logical schema version on both backends
    assert types["created_at"] == types["revoked_at"] == "double precision"
    assert types["id"] == types["session_key"] == types["user_id"] == "text"


async def test_postgres_processes_starting_at_once_migrate_once(postgres_url: str) -> None:
    """Several stores opening one new database at the same moment all succeed and migrate it once."""
    url = await fresh_schema(postgres_url)
    stores = [postgres_store(url, pool_max_size=1) for _ in range(6)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        await asyncio.gather(*(s.ping() for s in stores))
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    count = await pg.fetchval(url, "SELECT count(*) FROM schema_version")
    assert count == SCHEMA_VERSION


async def test_postgres_refuses_a_newer_schema(postgres_url: str) -> None:
    """A database written by a newer sidecar is refused with a clear error."""
    url = await fresh_schema(postgres_url)
    async with opened(url):
        pass
    await pg.execute(url, "INSERT INTO schema_version (version) VALUES (999)")
    with pytest.raises(StoreUnavailableError, match="newer than this sidecar"):
        await postgres_store(url).open()


async def _wait_for_lock_wait(url: str, task: asyncio.Task[Any]) -> None:
    """Return once a backend of this database waits on a lock to bump the revision counter."""
    for _ in range(500):
        assert not task.done(), "the revoke committed while an earlier revision was still uncommitted"
        waiting = await pg.fetchval(
            url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE 'UPDATE revision_counter%'",
        )
        if waiting:
            return
        await asyncio.sleep(0.01)
    pytest.fail("the second revocation never waited for the first")


@pytest.mark.parametrize("store", ["postgresql"], indirect=True)
async def test_postgres_revisions_become_visible_in_commit_order(store: SessionStore, postgres_url: str) -> None:
    """A revocation waits for an uncommitted earlier one, so a reader never sees revision r + 1 before r."""
    a, b = session(), session("bob")
    for s in (a, b):
        await store.insert(s)
    start = await store.current_revision()
    # Another process, mid-revocation: it has taken revision r and not yet committed.
    conn = await pg.asyncpg().connect(postgres_url)
    try:
        tx = conn.transaction()
        await tx.start()
        r = await conn.fetchval("UPDATE revision_counter SET value = value + 1 WHERE id = 1 RETURNING value")
        await conn.execute("UPDATE sessions SET revoked_at = $2, revision = $3 WHERE id = $1", a.id, NOW, r)
        async with opened(postgres_url) as other:
            later = asyncio.create_task(other.revoke(b.id, NOW))
            await _wait_for_lock_wait(postgres_url, later)
            seen = await store.changes_since(start, 100)
            assert (seen.sessions, seen.revision) == ((), start)
            await tx.commit()
            revoked = await later
    finally:
        await conn.close()
    assert revoked is not None and revoked.revoked_at == NOW
    changes = await store.changes_since(seen.revision, 100)
    assert [s.id for s in changes.sessions] == [a.id, b.id]
    assert changes.revision == r + 1


async def test_postgres_concurrent_revocations_across_two_pools(postgres_url: str) -> None:
    """Revokes, revoke_users and touches racing through two pools each revoke a row once, take one
    revision per change, never deadlock, and a reader polling meanwhile misses none of them."""
    async with opened(postgres_url) as a, opened(postgres_url) as b, opened(postgres_url) as reader:
        await pg.execute(postgres_url, "DELETE FROM sessions", "DELETE FROM user_cutoffs")
        users = [f"race-{uuid.uuid4().hex[:8]}-{i}" for i in range(12)]
        sessions = [session(u) for u in users for _ in range(5)]
        for s in sessions:
            await a.insert(s)
        start = await a.current_revision()
        clock = itertools.count(1)
        calls: list[tuple[str, Any, float, Any]] = []  # (kind, target, now, coroutine)
        for s in sessions:
            for via in (a, b):
                now = NOW + next(clock) / 1000
                calls.append(("revoke", s.id, now, via.revoke(s.id, now)))
        for user in users[:6]:
            for via in (a, b):
                now = NOW + next(clock) / 1000
                calls.append(("user", user, now, via.revoke_user(user, now, None)))
        random.Random(5).shuffle(calls)
        touches = [Touch(s.id, NOW + 1, NOW + 9000) for s in sessions]
        random.Random(6).shuffle(touches)

        done = asyncio.Event()
        seen_sessions: set[str] = set()
        seen_users: set[str] = set()

        async def poll() -> None:
            revision = start
            while True:
                finished = done.is_set()
                changes = await reader.changes_since(revision, 7)
                seen_sessions.update(x.id for x in changes.sessions)
                seen_users.update(c.user_id for c in changes.cutoffs)
                if finished and changes.revision == revision:
                    return
                revision = changes.revision
                await asyncio.sleep(0)

        poller = asyncio.create_task(poll())

        async def writes() -> list[Any]:
            results = await asyncio.gather(
                *(c for *_, c in calls), b.touch(touches[:30]), a.touch(touches[30:]), b.touch(touches)
            )
            return results[: len(calls)]

        try:
            results = await writes()
        finally:
            done.set()
            await poller

        winners = [target for (kind, target, now, _), r in zip(calls, results, strict=True)
                   if kind == "revoke" and r is not None and r.revoked_at == now]
        by_user = [x.id for (kind, *_), r in zip(calls, results, strict=True) if kind == "user" for x in r]
        assert sorted(winners + by_user) == sorted(s.id for s in sessions)  # each row revoked exactly once
        assert await a.current_revision() == start + len(winners) + 12  # one revision per change
        assert seen_sessions == {s.id for s in sessions}
        assert seen_users == set(users[:6])
        for user in users[:6]:
            cutoff = await reader.get_cutoff(user)
            latest = max(now for kind, target, now, _ in calls if kind == "user" and target == user)
            assert cutoff is not None and cutoff.cutoff_at == latest  # the later cut-off won
        row = await reader.get(sessions[0].id)
        assert row is not None and row.expires_at == NOW + 9000


async def test_postgres_concurrent_purges_count_each_row_once(postgres_url: str) -> None:
    """Two processes purging at once delete every expired row once and count it once."""
    async with opened(postgres_url) as a, opened(postgres_url) as b:
        await pg.execute(postgres_url, "DELETE FROM sessions", "DELETE FROM user_cutoffs")
        expired = [session(f"u{i % 10}", expires=NOW - 10) for i in range(300)]
        live = session()
        for s in (*expired, live):
            await a.insert(s)
        for i in range(40):
            await a.revoke_user(f"old{i}", NOW - 100, None)

        async def purge(s: PostgresStore) -> tuple[int, int]:
            sessions = cutoffs = 0
            while deleted := await s.purge_sessions(NOW, NOW - 500, 7):
                sessions += deleted
            while deleted := await s.purge_cutoffs(NOW - 50, 3):
                cutoffs += deleted
            return sessions, cutoffs

        (sa, ca), (sb, cb) = await asyncio.gather(purge(a), purge(b))
        assert (sa + sb, ca + cb) == (300, 40)
        assert await pg.fetchval(postgres_url, "SELECT count(*) FROM sessions") == 1
        assert await a.get(live.id) == live


async def test_postgres_unreachable_server_fails_open_without_leaking_the_password(postgres_url: str) -> None:
    """Nothing listening -> open() raises StoreUnavailableError naming host and database, never the password."""
    port = free_port()
    url = f"postgresql://sidecar:hunter2-secret@127.0.0.1:{port}/sessions"
    s = postgres_store(url, connect_timeout_seconds=2.0)
    with pytest.raises(StoreUnavailableError, match=f"cannot open PostgreSQL database 127.0.0.1:{port}/sessions") as info:
        await s.open()
    assert "hunter2" not in str(info.value) and "hunter2" not in repr(s)
    with pytest.raises(StoreUnavailableError, match="not open"):
        await s.ping()


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5432


async def test_postgres_server_going_away_is_store_unavailable_until_it_returns(postgres_url: str) -> None:
    """A server that drops every connection fails reads and writes with StoreUnavailableError; the store
    reconnects by itself once the server is back, with nothing half-written."""
    proxy = pg.TcpProxy(*_address(postgres_url))
    port = await proxy.start()
    try:
        async with opened(pg.with_address(postgres_url, "127.0.0.1", port), pool_max_size=2) as s:
            row = session()
            await s.insert(row)
            await proxy.cut()
            with pytest.raises(StoreUnavailableError):
                await s.get(row.id)
            with pytest.raises(StoreUnavailableError):
                await s.revoke(row.id, NOW)
            with pytest.raises(StoreUnavailableError):
                await s.ping()
            await proxy.start()
            await s.ping()
            stored = await s.get(row.id)
            assert stored is not None and stored.revoked_at is None
            revoked = await s.revoke(row.id, NOW)
            assert revoked is not None and revoked.revoked_at == NOW
    finally:
        await proxy.close()


async def test_postgres_hung_server_fails_in_bounded_time(postgres_url: str) -> None:
    """A server that stops answering mid-connection fails the call with StoreUnavailableError after the
    command timeout instead of hanging it, and the store recovers when it answers again."""
    proxy = pg.TcpProxy(*_address(postgres_url))
    port = await proxy.start()
    try:
        url = pg.with_address(postgres_url, "127.0.0.1", port)
        async with opened(url, pool_max_size=2, statement_timeout_ms=200, connect_timeout_seconds=1.0) as s:
            await s.ping()
            proxy.freeze()
            with pytest.raises(StoreUnavailableError, match="TimeoutError"):
                await s.get(str(uuid.uuid4()))
            with pytest.raises(StoreUnavailableError):
                await s.revoke(str(uuid.uuid4()), NOW)
            proxy.thaw()
            await s.ping()
    finally:
        await proxy.close()


@pytest.mark.parametrize("store", ["postgresql"], indirect=True)
async def test_postgres_lock_held_past_the_timeout_fails_revoke_cleanly(store: SessionStore, postgres_url: str) -> None:
    """A row lock held by another process past statement_timeout -> StoreUnavailableError, nothing half-done (D33)."""
    s = session()
    await store.insert(s)
    conn = await pg.asyncpg().connect(postgres_url)
    try:
        async with opened(postgres_url, statement_timeout_ms=100) as impatient:
            tx = conn.transaction()
            await tx.start()
            await conn.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", s.id)
            before = await impatient.current_revision()
            with pytest.raises(StoreUnavailableError, match="statement timeout"):
                await impatient.revoke(s.id, NOW)
            row = await impatient.get(s.id)  # reads never wait on row locks
            assert row is not None and row.revoked_at is None
            assert await impatient.current_revision() == before
            await tx.rollback()
            revoked = await impatient.revoke(s.id, NOW)
            assert revoked is not None and revoked.revoked_at == NOW
    finally:
        await conn.close()


# ---------------------------------------------------------------- choosing a backend


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_store_from_settings_picks_postgres_for_its_urls(scheme: str) -> None:
    """postgresql:// and postgres:// URLs select the PostgreSQL store with the configured pool."""
    settings = StorageSettings(url=f"{scheme}://sidecar:pw-xyz@db.internal:5433/sessions", pool_max_size=3)
    s: Any = store_from_settings(settings)
    assert type(s).__name__ == "PostgresStore"
    assert (s.pool_max_size, s.where) == (3, "db.internal:5433/sessions")
    assert "pw-xyz" not in repr(s)
    assert isinstance(store_from_settings(StorageSettings(url="sqlite:///x.db")), SqliteStore)


def test_store_from_settings_without_asyncpg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without asyncpg installed, choosing PostgreSQL fails with the pip command that fixes it."""
    monkeypatch.delitem(sys.modules, "sidecar.sessions.postgres", raising=False)
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    with pytest.raises(StoreUnavailableError, match=r"pip install 'sidecar\[postgres\]'"):
        store_from_settings(StorageSettings(url="postgresql://db.internal/sessions"))


async def test_bound_keys_read_back_their_session(store: SessionStore) -> None:
    """A key bound to a session reads back that session by get_by_key, durably and idempotently."""
    s = session(key="sha256:login")
    await store.insert(s)
    await store.bind(s.id, ["sha256:refreshed", "rt:refresh-token"])
    await store.bind(s.id, ["sha256:refreshed"])  # again: no error, no change
    assert await store.get_by_key("sha256:refreshed") == s
    assert await store.get_by_key("rt:refresh-token") == s
    assert await store.get_by_key(s.session_key) == s
    assert await store.get_by_key("rt:never-bound") is None


async def test_a_bound_key_keeps_its_first_session(store: SessionStore) -> None:
    """Binding a key again to another session, or binding another session's own key, changes nothing."""
    first, second = session(key="sid:first"), session(key="sid:second")
    await store.insert(first)
    await store.insert(second)
    await store.bind(first.id, ["rt:shared"])
    await store.bind(second.id, ["rt:shared", "sid:first"])
    assert await store.get_by_key("rt:shared") == first
    assert await store.get_by_key("sid:first") == first
    await store.bind(str(uuid.uuid4()), ["rt:orphan"])  # no such session: nothing bound
    assert await store.get_by_key("rt:orphan") is None


async def test_bindings_follow_revocation_and_go_with_their_session(store: SessionStore) -> None:
    """A bound key reads the session as revoked once it is, and is gone once cleanup deletes it."""
    s = session(key="sha256:gone", expires=NOW - 10)
    await store.insert(s)
    await store.bind(s.id, ["rt:gone"])
    await store.revoke(s.id, NOW - 1000)
    bound = await store.get_by_key("rt:gone")
    assert bound is not None and bound.revoked_at == NOW - 1000
    assert await store.purge_sessions(NOW, NOW - 500, 10) == 1
    assert await store.get_by_key("rt:gone") is None
    # The key can be bound afresh to a new session afterwards.
    again = session(key="sha256:again")
    await store.insert(again)
    await store.bind(again.id, ["rt:gone"])
    assert await store.get_by_key("rt:gone") == again


async def test_inserting_a_bound_key_returns_its_session(store: SessionStore) -> None:
    """A new session whose key is already bound to another is that session, not a second row."""
    s = session(key="sid:login")
    await store.insert(s)
    await store.bind(s.id, ["sha256:refreshed"])
    row, created = await store.insert(session(key="sha256:refreshed"))
    assert not created and row == s


def test_both_backends_list_the_same_schema_versions() -> None:
    """SQLite and PostgreSQL migrate through the same numbered versions, in order."""
    from sidecar.sessions import postgres, sqlite

    assert [v for v, _ in sqlite.MIGRATIONS] == [v for v, _ in postgres.MIGRATIONS] == list(
        range(1, sqlite.SCHEMA_VERSION + 1)
    )


# ---------------------------------------------------------------- session policies (issue 15)


async def test_revoke_records_reason_and_actor_and_keeps_the_first(store: SessionStore) -> None:
    """A revocation stores its reason and actor; revoking again keeps the first ones."""
    s = session()
    await store.insert(s)
    row = await store.revoke(s.id, NOW + 1, reason="admin", actor="admin:sha256:abc")
    assert row is not None and (row.revoked_reason, row.revoked_by, row.revoked_at) == ("admin", "admin:sha256:abc", NOW + 1)
    again = await store.revoke(s.id, NOW + 2, reason="user", actor="user:alice")
    assert again == row
    assert await store.get(s.id) == row


async def test_revoke_seen_before_spares_a_session_seen_since(store: SessionStore) -> None:
    """The idle revoke leaves a session whose last_seen is not before the bound, and takes one that is."""
    s = session(created=NOW)
    await store.insert(s)
    await store.touch([Touch(s.id, NOW + 50, s.expires_at)])
    kept = await store.revoke(s.id, NOW + 100, reason="idle", actor="policy", seen_before=NOW + 50)
    assert kept is not None and kept.revoked_at is None
    gone = await store.revoke(s.id, NOW + 100, reason="idle", actor="policy", seen_before=NOW + 51)
    assert gone is not None and (gone.revoked_at, gone.revoked_reason) == (NOW + 100, "idle")


async def test_revoke_user_records_reason_and_actor(store: SessionStore) -> None:
    """"Revoke user" stores its reason and actor on every session it revokes, and returns them so."""
    a, b = session("ruth"), session("ruth")
    await store.insert(a)
    await store.insert(b)
    rows = await store.revoke_user("ruth", NOW + 1, None, reason="admin_user", actor="admin:k")
    assert {(r.revoked_reason, r.revoked_by) for r in rows} == {("admin_user", "admin:k")}
    for s in (a, b):
        stored = await store.get(s.id)
        assert stored is not None and stored.revoked_reason == "admin_user" and stored.revoked_by == "admin:k"


async def test_revoke_stale_takes_lifetime_and_idle_sessions_in_the_feed(store: SessionStore) -> None:
    """The sweep revokes sessions logged in or last seen before its bounds (lifetime first), skips
    expired and revoked ones, and its revocations reach the revision feed."""
    old_login = session("sam", created=NOW - 1000)
    idle = session("sam", created=NOW - 10)
    both = session("sam", created=NOW - 1000)
    fresh = session("sam", created=NOW)
    expired = session("sam", created=NOW - 1000, expires=NOW - 1)
    revoked = session("sam", created=NOW - 1000)
    for s in (old_login, idle, both, fresh, expired, revoked):
        await store.insert(s)
    await store.touch([Touch(old_login.id, NOW, old_login.expires_at), Touch(fresh.id, NOW, fresh.expires_at)])
    await store.revoke(revoked.id, NOW - 5)
    start = await store.current_revision()
    rows = await store.revoke_stale(NOW, seen_before=NOW - 5, created_before=NOW - 500, limit=100)
    assert {r.id: r.revoked_reason for r in rows} == {old_login.id: "lifetime", both.id: "lifetime", idle.id: "idle"}
    assert {r.revoked_by for r in rows} == {"policy"}
    changes = await store.changes_since(start, 100)
    assert {s.id for s in changes.sessions} == {old_login.id, both.id, idle.id}
    assert await store.revoke_stale(NOW, seen_before=NOW - 5, created_before=NOW - 500, limit=100) == []
    assert await store.revoke_stale(NOW, seen_before=None, created_before=None, limit=100) == []
    stored = await store.get(revoked.id)
    assert stored is not None and stored.revoked_at == NOW - 5


def limit_of(n: int, on_limit: str, **bounds: float) -> SessionLimit:
    return SessionLimit(n, on_limit, NOW, **bounds)  # type: ignore[arg-type]  # a Literal, from a parameter


async def test_admit_refuse_new_admits_up_to_the_limit(store: SessionStore) -> None:
    """With refuse_new, the limit's sessions are admitted and the next is refused, nothing inserted;
    a key already held is answered with its row whatever the limit."""
    admitted = []
    for i in range(3):
        a = await store.admit(session("tess", created=NOW + i), limit_of(3, "refuse_new"))
        assert a.created and a.session is not None and a.revoked == ()
        admitted.append(a.session)
    newcomer = session("tess", created=NOW + 5)
    refused = await store.admit(newcomer, limit_of(3, "refuse_new"))
    assert refused.session is None and not refused.created
    assert await store.get(newcomer.id) is None
    again = await store.admit(replace(admitted[0], id=str(uuid.uuid4())), limit_of(3, "refuse_new"))
    assert again.session == admitted[0] and not again.created
    assert len(await store.list_active("tess", NOW)) == 3
    other = await store.admit(session("ulla"), limit_of(3, "refuse_new"))
    assert other.created  # the limit is per user


@pytest.mark.parametrize(("on_limit", "evicted"), [("revoke_oldest", 0), ("revoke_least_recent", 1)])
async def test_admit_revokes_the_chosen_session(store: SessionStore, on_limit: str, evicted: int) -> None:
    """Past the limit the newcomer is admitted and the oldest login, or the least recently seen,
    is revoked with reason limit by the newcomer, in the revision feed."""
    rows = [session("vera", created=NOW + i) for i in range(2)]
    for s in rows:
        await store.insert(s)
    await store.touch([Touch(rows[0].id, NOW + 100, rows[0].expires_at)])  # the oldest login, seen last
    start = await store.current_revision()
    newcomer = session("vera", created=NOW + 200)
    a = await store.admit(newcomer, limit_of(2, on_limit))
    assert a.created and a.session is not None and a.session.id == newcomer.id
    assert [(r.id, r.revoked_reason, r.revoked_by) for r in a.revoked] == [
        (rows[evicted].id, "limit", f"session:{newcomer.id}")
    ]
    assert {s.id for s in await store.list_active("vera", NOW)} == {newcomer.id, rows[1 - evicted].id}
    assert [s.id for s in (await store.changes_since(start, 100)).sessions] == [rows[evicted].id]


async def test_admit_revokes_stale_sessions_instead_of_counting_them(store: SessionStore) -> None:
    """Sessions past the idle or lifetime bound are revoked for that, not counted against the limit."""
    old = session("wes", created=NOW - 1000)
    quiet = session("wes", created=NOW - 10)
    for s in (old, quiet):
        await store.insert(s)
    a = await store.admit(session("wes"), limit_of(1, "refuse_new", seen_before=NOW - 5, created_before=NOW - 500))
    assert a.created
    assert {(r.id, r.revoked_reason) for r in a.revoked} == {(old.id, "lifetime"), (quiet.id, "idle")}
    assert len(await store.list_active("wes", NOW)) == 1


@pytest.mark.parametrize("on_limit", ["refuse_new", "revoke_oldest", "revoke_least_recent"])
async def test_concurrent_admits_never_pass_the_limit(store: SessionStore, on_limit: str) -> None:
    """Ten registrations of one user's new sessions racing leave at most three active; with
    refuse_new exactly three are admitted."""
    results = await asyncio.gather(*(store.admit(session("xena"), limit_of(3, on_limit)) for _ in range(10)))
    active = await store.list_active("xena", NOW)
    assert len(active) == 3
    admitted = [r for r in results if r.created]
    assert len(admitted) == (3 if on_limit == "refuse_new" else 10)


async def test_list_active_with_revoked_shows_tombstones(store: SessionStore) -> None:
    """include_revoked adds the user's revoked sessions, with their reason, to the listing."""
    live, gone = session("yuri", created=NOW), session("yuri", created=NOW + 1)
    for s in (live, gone):
        await store.insert(s)
    await store.revoke(gone.id, NOW + 2, reason="admin", actor="admin:k")
    assert [s.id for s in await store.list_active("yuri", NOW)] == [live.id]
    both = await store.list_active("yuri", NOW, include_revoked=True)
    assert [(s.id, s.revoked_reason) for s in both] == [(gone.id, "admin"), (live.id, None)]


async def test_postgres_admits_racing_through_two_pools_never_pass_the_limit(postgres_url: str) -> None:
    """Registrations of one user racing through two pools (two processes' worth) never leave more
    than the limit active, and with refuse_new admit exactly the limit."""
    async with opened(postgres_url) as a, opened(postgres_url) as b:
        for on_limit in ("refuse_new", "revoke_oldest"):
            user = f"zed-{uuid.uuid4().hex[:8]}"
            calls = [via.admit(session(user), limit_of(4, on_limit)) for _ in range(12) for via in (a, b)]
            results = await asyncio.gather(*calls)
            assert len(await a.list_active(user, NOW)) == 4
            assert sum(r.created for r in results) == (4 if on_limit == "refuse_new" else 24)
