"""Cleanup: what it deletes, what it must keep, and that checks keep answering meanwhile.

The store-level tests run on a real SQLite file with a fixed ``now``; the end-to-end ones
go through a real sidecar on loopback (SECURITY_CASES C30, D35).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from sidecar.cleanup import CleanupPolicy, CleanupReport, purge_expired, run_cleanup
from sidecar.config import from_mapping
from sidecar.errors import ConfigError
from sidecar.sessions import Session
from sidecar.sessions.sqlite import SqliteStore
from tests.support.configs import settings_for
from tests.support.sessions import opened, stored_session
from tests.support.tokens import mint

NOW = 1_700_000_000.0
DAY = 86400.0
# keep = leeway + grace; lifetime = the longest token lifetime the auth service issues.
POLICY = CleanupPolicy(keep_seconds=60.0, max_token_lifetime_seconds=DAY, batch_size=3)


def session(key: str, *, expires: float, revoked: float | None = None, user: str = "alice") -> Session:
    return stored_session(user, key, created=expires - 3600, expires=expires, revoked=revoked)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with opened(SqliteStore(tmp_path / "cleanup.db", busy_timeout_ms=5000)) as s:
        yield s


def keys_in(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {r[0] for r in db.execute("SELECT session_key FROM sessions")}


def cutoff_users_in(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {r[0] for r in db.execute("SELECT user_id FROM user_cutoffs")}


def insert_expired_rows(path: Path, count: int, *, expired_at: float) -> None:
    """Bulk-load expired, unrevoked sessions straight into the table (fast, one commit)."""
    rows = [
        (
            str(uuid.uuid4()), f"sid:bulk-{i}", f"bulk-{i % 1000}", expired_at - 3600,
            expired_at - 3600, expired_at, None, "203.0.113.9", "curl", "Unknown",
        )
        for i in range(count)
    ]
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO sessions (id, session_key, user_id, created_at, last_seen, expires_at,"
            " revoked_at, ip_address, device, location) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


# --------------------------------------------------------------------- what goes, what stays


async def test_unrevoked_session_goes_only_after_expiry_plus_leeway_and_grace(store: SqliteStore) -> None:
    """An unrevoked session is deleted once its expiry lies more than keep_seconds back, not before."""
    await store.insert(session("sid:gone", expires=NOW - 61))
    await store.insert(session("sid:within-grace", expires=NOW - 59))
    await store.insert(session("sid:live", expires=NOW + 3600))
    report = await purge_expired(store, now=NOW, policy=POLICY)
    assert report == CleanupReport(sessions=1, cutoffs=0)
    assert keys_in(store.path) == {"sid:within-grace", "sid:live"}


async def test_tombstone_of_revoked_unexpired_session_survives(store: SqliteStore) -> None:
    """A revoked session whose token has not expired keeps its row: that row refuses the token (C30)."""
    await store.insert(session("sid:revoked-live", expires=NOW + 600, revoked=NOW - 2 * DAY))
    report = await purge_expired(store, now=NOW, policy=POLICY)
    assert report.sessions == 0
    assert keys_in(store.path) == {"sid:revoked-live"}


async def test_tombstone_outlives_every_token_issued_before_the_revocation(store: SqliteStore) -> None:
    """A revoked, expired session stays until max_token_lifetime after the revocation, then goes."""
    # Its seen token expired long ago, but a token issued just before the revocation (and
    # never shown to the sidecar) may live until revoked_at + lifetime.
    await store.insert(session("sid:recently-revoked", expires=NOW - DAY / 2, revoked=NOW - DAY / 2))
    await store.insert(session("sid:long-revoked", expires=NOW - 2 * DAY, revoked=NOW - DAY - 61))
    report = await purge_expired(store, now=NOW, policy=POLICY)
    assert report.sessions == 1
    assert keys_in(store.path) == {"sid:recently-revoked"}


async def test_cutoff_goes_once_no_token_issued_before_it_can_be_alive(store: SqliteStore) -> None:
    """A cut-off older than max_token_lifetime + keep_seconds is deleted; a younger one stays."""
    await store.revoke_user("old", NOW - DAY - 61, None)
    await store.revoke_user("young", NOW - DAY - 59, "sid:kept")
    report = await purge_expired(store, now=NOW, policy=POLICY)
    assert report == CleanupReport(sessions=0, cutoffs=1)
    assert cutoff_users_in(store.path) == {"young"}
    assert await store.get_cutoff("old") is None


async def test_cleanup_is_idempotent(store: SqliteStore) -> None:
    """A second run right after the first deletes nothing and leaves the same rows."""
    for i in range(10):
        await store.insert(session(f"sid:old-{i}", expires=NOW - DAY))
        await store.revoke_user(f"user-{i}", NOW - 3 * DAY, None)
    await store.insert(session("sid:live", expires=NOW + 60))
    first = await purge_expired(store, now=NOW, policy=POLICY)
    second = await purge_expired(store, now=NOW, policy=POLICY)
    assert first == CleanupReport(sessions=10, cutoffs=10)
    assert second == CleanupReport(sessions=0, cutoffs=0)
    assert keys_in(store.path) == {"sid:live"}


class CountingStore(SqliteStore):
    """A real SQLite store that records the size of every purge batch."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, busy_timeout_ms=5000)
        self.batches: list[int] = []

    async def purge_sessions(self, expired_before: float, revoked_before: float, limit: int) -> int:
        deleted = await super().purge_sessions(expired_before, revoked_before, limit)
        self.batches.append(deleted)
        return deleted


async def test_cleanup_deletes_in_batches_of_at_most_batch_size(tmp_path: Path) -> None:
    """Each delete transaction removes at most batch_size rows; together they remove all."""
    path = tmp_path / "batches.db"
    counting = CountingStore(path)
    await counting.open()
    try:
        insert_expired_rows(path, 10, expired_at=NOW - DAY)
        report = await purge_expired(counting, now=NOW, policy=POLICY)
    finally:
        await counting.close()
    assert report.sessions == 10
    assert counting.batches == [3, 3, 3, 1, 0]


async def test_two_concurrent_cleanups_total_the_right_count(tmp_path: Path) -> None:
    """Two cleanups racing on one database (two connections each) delete every row exactly once."""
    path = tmp_path / "race.db"
    a, b = SqliteStore(path), SqliteStore(path)
    await a.open()
    await b.open()
    try:
        insert_expired_rows(path, 500, expired_at=NOW - DAY)
        for i in range(200):
            await a.revoke_user(f"user-{i}", NOW - 3 * DAY, None)
        await a.insert(session("sid:live", expires=NOW + 60))
        policy = CleanupPolicy(keep_seconds=60.0, max_token_lifetime_seconds=DAY, batch_size=7)
        one, two = await asyncio.gather(
            purge_expired(a, now=NOW, policy=policy), purge_expired(b, now=NOW, policy=policy)
        )
    finally:
        await a.close()
        await b.close()
    assert one.sessions + two.sessions == 500
    assert one.cutoffs + two.cutoffs == 200
    assert keys_in(path) == {"sid:live"}
    assert cutoff_users_in(path) == set()


class RacingStore(SqliteStore):
    """A real SQLite store where a "log out others" lands between finding and deleting cut-offs."""

    async def _fetch(self, sql: str, params: Sequence[Any], *, scan: bool = False) -> list[Any]:
        rows = await super()._fetch(sql, params, scan=scan)
        if "FROM user_cutoffs WHERE cutoff_at" in sql:
            await self.revoke_user("mallory-victim", NOW, None)
        return rows


async def test_a_cutoff_raised_during_the_purge_is_kept(tmp_path: Path) -> None:
    """A cut-off renewed after cleanup picked it as old is not deleted: the new one must hold."""
    racing = RacingStore(tmp_path / "racing.db")
    await racing.open()
    try:
        await racing.revoke_user("mallory-victim", NOW - 3 * DAY, None)
        report = await purge_expired(racing, now=NOW, policy=POLICY)
        cutoff = await racing.get_cutoff("mallory-victim")
    finally:
        await racing.close()
    assert report.cutoffs == 0
    assert cutoff is not None and cutoff.cutoff_at == NOW


# --------------------------------------------------------------------- configuration


def test_policy_reads_leeway_grace_lifetime_and_batch_size(tmp_path: Path) -> None:
    """keep_seconds is jwt.leeway_seconds + celery.cleanup_grace_seconds; the rest map one to one."""
    settings = settings_for(
        tmp_path,
        jwt={"leeway_seconds": 5},
        celery={"cleanup_grace_seconds": 100, "max_token_lifetime_seconds": 7200, "cleanup_batch_size": 50},
    )
    assert CleanupPolicy.from_settings(settings) == CleanupPolicy(
        keep_seconds=105.0, max_token_lifetime_seconds=7200.0, batch_size=50
    )


def test_max_token_lifetime_defaults_to_thirty_days(tmp_path: Path) -> None:
    """Without the key, cleanup assumes tokens live at most 30 days (a conservative bound)."""
    assert settings_for(tmp_path).celery.max_token_lifetime_seconds == 30 * DAY


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "celery.max_token_lifetime_seconds: must be between"),
        (-1, "celery.max_token_lifetime_seconds: must be between"),
        ("30d", "celery.max_token_lifetime_seconds: must be a number"),
    ],
)
def test_bad_max_token_lifetime_is_one_line_naming_the_key(tmp_path: Path, value: Any, message: str) -> None:
    """A bad celery.max_token_lifetime_seconds stops loading with one line that names it."""
    raw = {
        "jwt": {"algorithms": ["HS256"], "secret": "x" * 32},
        "celery": {"max_token_lifetime_seconds": value},
    }
    with pytest.raises(ConfigError) as info:
        from_mapping(raw, environ={}, base_dir=tmp_path)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------- through a real sidecar


async def test_unseen_token_of_a_revoked_session_stays_refused_after_cleanup(
    start_sidecar: Any, tmp_path: Path
) -> None:
    """A token issued before a revocation but never seen is refused by a restarted sidecar after cleanup (C30)."""
    settings = settings_for(
        tmp_path, jwt={"leeway_seconds": 0}, celery={"cleanup_grace_seconds": 0}
    )
    first = await start_sidecar(settings)
    sid = str(uuid.uuid4())
    seen = mint("alice", sid=sid, ttl=60)
    unseen = mint("alice", sid=sid, ttl=3600)  # e.g. refreshed, not used yet
    session_id = await first.session_id(seen)
    await first.revoke(seen, session_id)
    await first.services.sessions.flush()

    # Long after the seen token expired, but within max_token_lifetime of the revocation.
    report = await run_cleanup(settings, now=time.time() + 600)
    assert report.sessions == 0

    restarted = await start_sidecar(settings)  # nothing in memory: only the row can refuse
    assert await restarted.check(unseen) == 401
    assert await first.check(unseen) == 401


async def test_checks_keep_answering_while_100k_rows_are_purged(start_sidecar: Any, tmp_path: Path) -> None:
    """Purging 100,000 expired rows in batches leaves room for checks that register sessions between batches."""
    settings = settings_for(tmp_path, celery={"cleanup_grace_seconds": 0, "cleanup_batch_size": 1000})
    db_path = settings.storage.sqlite_path
    sidecar = await start_sidecar(settings)  # creates the schema
    insert_expired_rows(db_path, 100_000, expired_at=time.time() - 3600)

    purger = CountingStore(db_path)  # a second writer on the file, like the Celery worker
    await purger.open()
    total_batches = 100_000 // 1000 + 1  # the last one finds nothing left
    answers: list[tuple[int, int]] = []  # (batches done when answered, status)
    stop = asyncio.Event()

    async def keep_checking() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            # A new session each time: every check writes (registers), so it needs the
            # same write lock the purge batches take.
            status = await sidecar.check(mint(f"checker-{n}"))
            answers.append((len(purger.batches), status))

    checker = asyncio.create_task(keep_checking())
    try:
        report = await purge_expired(
            purger, now=time.time(), policy=CleanupPolicy.from_settings(settings)
        )
    finally:
        stop.set()
        await asyncio.wait_for(checker, timeout=30)
        await purger.close()

    assert report.sessions == 100_000
    assert len(purger.batches) == total_batches
    during = [status for done, status in answers if 0 < done < total_batches]
    assert len(during) > 0, "no check was answered while the purge was running"
    assert {status for _, status in answers} == {200}
    assert not any(k.startswith("sid:bulk-") for k in keys_in(db_path))
    assert len(keys_in(db_path)) == len(answers)  # every registered session is still there


# --------------------------------------------------------------------- events and the outbox


async def test_events_past_retention_and_finished_outbox_rows_go_in_batches(tmp_path: Path) -> None:
    """Cleanup deletes events older than the retention and delivered outbox rows that old; pending rows stay."""
    from sidecar.events.models import EventOptions, Target

    policy = CleanupPolicy(keep_seconds=60.0, max_token_lifetime_seconds=DAY, batch_size=3, event_retention_seconds=DAY)
    store = SqliteStore(tmp_path / "events.db", events=EventOptions(targets=(Target("http://127.0.0.1:9/"),)))
    async with opened(store):
        for i in range(5):
            await store.insert(stored_session(f"old-{i}", created=NOW - 2 * DAY, expires=NOW + DAY))
        await store.insert(stored_session("new", created=NOW - 10, expires=NOW + DAY))
        for d in await store.claim_deliveries(NOW - 2 * DAY, limit=4, lease_seconds=60, claim="w"):
            await store.delivered(d.id, NOW - 2 * DAY)
        report = await purge_expired(store, now=NOW, policy=policy)
        assert (report.events, report.deliveries) == (5, 4)
        assert [e.user_id for e in await store.list_events("new", limit=10)] == ["new"]
        assert (await store.outbox_counts()).pending == 2  # one old undelivered, the new one
