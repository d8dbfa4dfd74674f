"""The store contract: one behaviour suite that every backend must pass.

Backends are listed in ``BACKENDS``; the PostgreSQL one joins this list when it exists.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from sidecar.errors import StoreUnavailable
from sidecar.sessions import Session, SessionStore, Touch
from sidecar.sessions.sqlite import SCHEMA_VERSION, SqliteStore

NOW = 1_700_000_000.0


def sqlite_backend(tmp_path: Path) -> SessionStore:
    return SqliteStore(tmp_path / "contract.db", busy_timeout_ms=200)


BACKENDS: dict[str, Callable[[Path], SessionStore]] = {"sqlite": sqlite_backend}


@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionStore]:
    s = BACKENDS[request.param](tmp_path)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def session(user: str = "alice", key: str | None = None, *, expires: float = NOW + 3600, created: float = NOW) -> Session:
    return Session(
        id=str(uuid.uuid4()),
        session_key=key or f"sid:{uuid.uuid4()}",
        user_id=user,
        created_at=created,
        last_seen=created,
        expires_at=expires,
        revoked_at=None,
        ip_address="203.0.113.9",
        device="Chrome on Windows",
        location="Unknown",
    )


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
    await store.touch([])
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


async def test_values_round_trip_unchanged(store: SessionStore) -> None:
    """Identifiers with quotes, SQL and unicode in stored text round-trip as plain data."""
    s = replace(session(user="o'brien\"; DROP TABLE sessions; --", key="sid:' OR '1'='1"), location="Linköping, Sweden")
    await store.insert(s)
    assert await store.get_by_key("sid:' OR '1'='1") == s
    assert [r.id for r in await store.list_active(s.user_id, NOW)] == [s.id]


async def test_ping(store: SessionStore) -> None:
    """ping answers while the store is open and raises StoreUnavailable once closed."""
    await store.ping()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.ping()


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
    with pytest.raises(StoreUnavailable, match="newer than this sidecar"):
        await SqliteStore(tmp_path / "x.db").open()


async def test_sqlite_locked_by_another_writer_fails_revoke_cleanly(tmp_path: Path) -> None:
    """A write lock held by another process past the timeout -> StoreUnavailable, nothing half-done (D33)."""
    store = SqliteStore(tmp_path / "x.db", busy_timeout_ms=100)
    await store.open()
    try:
        s = session()
        await store.insert(s)
        blocker = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreUnavailable):
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


async def test_sqlite_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    """A database path that cannot be created fails open() with StoreUnavailable."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreUnavailable, match="cannot open SQLite database"):
        await SqliteStore(tmp_path / "file" / "x.db").open()
