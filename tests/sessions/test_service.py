"""Session rules in SessionService, on a controlled clock and a real SQLite store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.clock import ManualClock
from sidecar.errors import SessionRejectedError, StoreUnavailableError
from sidecar.sessions import Session
from sidecar.sessions.sqlite import SqliteStore
from tests.support.sessions import NOW, claims, opened, session_service, unknown_client

T0 = NOW
CLIENT = unknown_client  # the request's client, as SessionService.check takes it


class SlowStore(SqliteStore):
    """A real SQLite store whose session reads can be held at a gate (to stage races)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate: asyncio.Event | None = None
        self.reading = asyncio.Event()

    async def get_by_key(self, session_key: str) -> Session | None:
        row = await super().get_by_key(session_key)
        if self.gate is not None:
            self.reading.set()
            await self.gate.wait()
        return row


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SlowStore]:
    async with opened(SlowStore(tmp_path / "svc.db")) as s:
        yield s


async def test_auto_registration_then_memory_hit(store: SlowStore) -> None:
    """The first check registers the session; later checks are answered from memory."""
    svc = session_service(store, ManualClock(T0))
    sid = await svc.check(claims(), CLIENT)
    assert await svc.check(claims(), CLIENT) == sid
    row = await store.get(sid)
    assert row is not None and row.user_id == "alice"


async def test_slow_read_racing_a_revoke_never_caches_active(store: SlowStore) -> None:
    """A store read that began before a revoke cannot put a stale "active" into memory (C28)."""
    clock = ManualClock(T0)
    svc = session_service(store, clock)
    sid = await svc.check(claims(), CLIENT)
    svc._states.clear()  # force the next check through the store
    store.gate = asyncio.Event()
    racing = asyncio.create_task(svc.check(claims(), CLIENT))
    await store.reading.wait()  # the check has read "active" and is held
    assert await svc.revoke(sid, "alice") is not None
    store.gate.set()
    with pytest.raises(SessionRejectedError):
        await racing
    with pytest.raises(SessionRejectedError):
        await svc.check(claims(), CLIENT)


async def test_cutoff_boundaries(store: SlowStore) -> None:
    """After log-out-others at T, tokens with iat < T are refused, iat >= T pass, the kept session passes."""
    clock = ManualClock(T0 + 100)
    svc = session_service(store, clock)
    await svc.check(claims(key="sid:keep", iat=T0), CLIENT)
    await svc.check(claims(key="sid:other", iat=T0), CLIENT)
    await svc.revoke_user("alice", keep_session_key="sid:keep")
    with pytest.raises(SessionRejectedError, match="revoked"):
        await svc.check(claims(key="sid:other", iat=T0), CLIENT)
    with pytest.raises(SessionRejectedError, match="cut_off"):
        await svc.check(claims(key="sid:never-seen", iat=T0 + 99.999), CLIENT)
    # A token whose age cannot be told is never guessed older (SECURITY_CASES E40).
    assert await svc.check(claims(key="sid:no-iat", iat=None), CLIENT)
    assert await svc.check(claims(key="sid:new-login", iat=T0 + 100), CLIENT)
    assert await svc.check(claims(key="sid:keep", iat=T0), CLIENT)
    # Another process reading the store sees the same cut-off.
    fresh = session_service(store, clock)
    with pytest.raises(SessionRejectedError, match="cut_off"):
        await fresh.check(claims(key="sid:never-seen-2", iat=T0 + 50), CLIENT)


async def test_admin_cutoff_has_no_exception(store: SlowStore) -> None:
    """revoke_user without a kept session refuses every earlier token of the user."""
    svc = session_service(store, ManualClock(T0 + 10))
    await svc.check(claims(key="sid:a", iat=T0), CLIENT)
    await svc.revoke_user("alice", keep_session_key=None)
    for key in ("sid:a", "sid:b"):
        with pytest.raises(SessionRejectedError):
            await svc.check(claims(key=key, iat=T0), CLIENT)


async def test_tombstone_grows_with_newer_tokens(store: SlowStore) -> None:
    """A revoked session seen with a later-expiring token keeps its tombstone until that expiry."""
    clock = ManualClock(T0)
    svc = session_service(store, clock)
    sid = await svc.check(claims(exp=T0 + 60), CLIENT)
    await svc.revoke(sid, None)
    with pytest.raises(SessionRejectedError):
        await svc.check(claims(exp=T0 + 7200), CLIENT)
    await svc.flush()
    row = await store.get(sid)
    assert row is not None and row.expires_at == T0 + 7200 and row.revoked_at is not None


async def test_last_seen_is_batched(store: SlowStore) -> None:
    """Checks update last_seen in memory; one flush writes the newest value."""
    clock = ManualClock(T0)
    svc = session_service(store, clock)
    sid = await svc.check(claims(), CLIENT)
    await svc.flush()
    for _ in range(10):
        clock.advance(1)
        await svc.check(claims(), CLIENT)
    row = await store.get(sid)
    assert row is not None and row.last_seen == T0  # nothing written yet
    listed = await svc.list_active("alice")
    assert listed[0].last_seen == T0 + 10  # the listing shows pending activity
    await svc.flush()
    row = await store.get(sid)
    assert row is not None and row.last_seen == T0 + 10


async def test_failed_flush_keeps_updates(store: SlowStore) -> None:
    """If the store refuses a flush, the updates stay pending and land on the next one."""
    clock = ManualClock(T0)
    svc = session_service(store, clock)
    sid = await svc.check(claims(), CLIENT)
    clock.advance(5)
    await svc.check(claims(), CLIENT)
    blocker_store = store._writer
    store._writer = None  # the writer is gone: touch raises StoreUnavailableError
    await svc.flush()
    store._writer = blocker_store
    await svc.flush()
    row = await store.get(sid)
    assert row is not None and row.last_seen == T0 + 5


async def test_evicted_tombstone_is_reloaded(store: SlowStore) -> None:
    """A revoked session pushed out of the bounded memory is read back from the store as revoked."""
    svc = session_service(store, ManualClock(T0), state_cache_size=2)
    sid = await svc.check(claims(key="sid:victim"), CLIENT)
    await svc.revoke(sid, None)
    for i in range(5):
        await svc.check(claims(key=f"sid:filler-{i}"), CLIENT)
    assert "sid:victim" not in svc._states
    with pytest.raises(SessionRejectedError, match="revoked"):
        await svc.check(claims(key="sid:victim"), CLIENT)


async def test_explicit_mode(store: SlowStore) -> None:
    """Explicit mode refuses unknown sessions and accepts registered ones."""
    svc = session_service(store, ManualClock(T0), registration="explicit")
    with pytest.raises(SessionRejectedError, match="unknown_session"):
        await svc.check(claims(), CLIENT)
    session, created = await svc.register(claims(), CLIENT())
    assert created
    assert await svc.check(claims(), CLIENT) == session.id


async def test_register_refuses_cut_off_tokens(store: SlowStore) -> None:
    """The admin register call refuses a token issued before the user's cut-off."""
    svc = session_service(store, ManualClock(T0 + 10))
    await svc.revoke_user("alice", None)
    with pytest.raises(SessionRejectedError, match="cut_off"):
        await svc.register(claims(iat=T0), CLIENT())


async def test_store_down_on_miss_raises(store: SlowStore) -> None:
    """An unknown session while the store is down raises StoreUnavailableError (the check denies)."""
    svc = session_service(store, ManualClock(T0))
    await store.close()
    with pytest.raises(StoreUnavailableError):
        await svc.check(claims(), CLIENT)


async def test_purged_session_comes_back_as_a_row(store: SlowStore) -> None:
    """A cached session whose row cleanup deleted is written again when a newer token of it arrives."""
    clock = ManualClock(T0)
    svc = session_service(store, clock)
    sid = await svc.check(claims(exp=T0 + 60), CLIENT)
    await svc.flush()
    clock.advance(120)
    assert await store.purge_sessions(T0 + 100, T0, 100) == 1
    again = await svc.check(claims(exp=T0 + 3600), CLIENT)
    assert again != sid
    assert await store.get(again) is not None
    assert [s.id for s in await svc.list_active("alice")] == [again]


async def test_applied_revocations_report_their_propagation_delay(store: SlowStore) -> None:
    """A catch-up that applies another process's revocation reports how long it took, under
    the trigger it was given; catching up again reports nothing."""
    clock = ManualClock(T0)
    svc = session_service(store, clock)
    await svc.start()
    try:
        seen: list[tuple[str, float]] = []
        svc.on_propagated = lambda via, seconds: seen.append((via, seconds))
        sid = await svc.check(claims(), CLIENT)
        await svc.check(claims("bob", key="sid:bob"), CLIENT)
        assert await store.revoke(sid, T0) is not None
        await store.revoke_user("bob", T0 + 0.1, None)
        clock.advance(0.25)
        await svc.catch_up(via="redis")
        await svc.catch_up(via="store")
        # bob's session and bob's cut-off at T0 + 0.1, alice's session at T0.
        assert [(via, round(seconds, 6)) for via, seconds in sorted(seen)] == [
            ("redis", 0.15), ("redis", 0.15), ("redis", 0.25),
        ]
        with pytest.raises(SessionRejectedError, match="revoked"):
            await svc.check(claims(), CLIENT)
    finally:
        await svc.stop()


async def test_catch_up_never_loosens_a_cutoff_in_memory(store: SlowStore) -> None:
    """A cut-off in memory is replaced only by the one the store keeps: an earlier "log out
    others" from a host whose clock is behind, exempting another session, changes nothing."""
    svc = session_service(store, ManualClock(T0 + 10))
    behind = session_service(store, ManualClock(T0 + 5))
    await svc.check(claims(key="sid:keep", iat=T0), CLIENT)
    await svc.start()
    try:
        await svc.revoke_user("alice", keep_session_key="sid:keep")  # cut-off T0 + 10
        await behind.revoke_user("alice", keep_session_key="sid:stolen")  # earlier: the store keeps ours
        await svc.catch_up()
        with pytest.raises(SessionRejectedError, match="cut_off"):
            await svc.check(claims(key="sid:stolen", iat=T0 + 7), CLIENT)
        stored = await store.get_cutoff("alice")
        assert stored is not None and (stored.cutoff_at, stored.exempt_session_key) == (T0 + 10, "sid:keep")
    finally:
        await svc.stop()


async def test_local_log_out_others_with_an_earlier_clock_keeps_the_later_cutoff(store: SlowStore) -> None:
    """A "log out others" whose time is earlier than the cut-off memory holds (another host's
    clock ahead) leaves memory as strict as the store, which keeps the later cut-off."""
    ahead = session_service(store, ManualClock(T0 + 10))
    svc = session_service(store, ManualClock(T0 + 5))
    await svc.check(claims(key="sid:mine", iat=T0 + 6), CLIENT)  # memory holds alice's cut-off: none
    await svc.start()
    try:
        await ahead.revoke_user("alice", keep_session_key=None)  # an admin "revoke user" at T0 + 10
        await svc.catch_up()
        await svc.revoke_user("alice", keep_session_key="sid:other")  # at T0 + 5 by our clock
        stored = await store.get_cutoff("alice")
        assert stored is not None and (stored.cutoff_at, stored.exempt_session_key) == (T0 + 10, None)
        with pytest.raises(SessionRejectedError, match="cut_off"):
            await svc.check(claims(key="sid:other", iat=T0 + 7), CLIENT)
        with pytest.raises(SessionRejectedError, match="cut_off"):
            await session_service(store, ManualClock(T0 + 5)).check(claims(key="sid:other", iat=T0 + 7), CLIENT)
    finally:
        await svc.stop()


async def test_catch_up_applies_what_another_process_revoked(store: SlowStore) -> None:
    """catch_up reads the revision feed and refuses sessions another process revoked."""
    clock = ManualClock(T0)
    svc = session_service(store, clock)
    await svc.start()
    try:
        other = session_service(store, clock)
        sid = await svc.check(claims(), CLIENT)
        await svc.check(claims(key="sid:two"), CLIENT)
        await other.revoke(sid, None)
        await other.revoke_user("bob", None)
        assert await svc.check(claims(), CLIENT) == sid  # memory has not heard yet
        await svc.catch_up()
        with pytest.raises(SessionRejectedError, match="revoked"):
            await svc.check(claims(), CLIENT)
        assert svc.revision == await store.current_revision()
    finally:
        await svc.stop()


async def test_stale_memory_is_not_trusted(store: SlowStore) -> None:
    """When catch-up has not succeeded for max_staleness, checks read the store (and deny if it is down)."""
    clock = ManualClock(T0)
    svc = session_service(store, clock, max_staleness=5.0)
    other = session_service(store, clock)
    sid = await svc.check(claims(), CLIENT)
    await svc.check(claims(key="sid:cached"), CLIENT)
    await other.revoke(sid, None)
    clock.advance(6)  # no catch-up ran in between: memory is stale
    assert not svc.fresh
    with pytest.raises(SessionRejectedError, match="revoked"):
        await svc.check(claims(), CLIENT)
    await store.close()
    with pytest.raises(StoreUnavailableError):
        await svc.check(claims(key="sid:cached"), CLIENT)  # allowed from memory were it fresh


async def test_cutoff_counts_in_whole_seconds(store: SlowStore) -> None:
    """A token issued (whole-second iat) in the same second as the cut-off passes; one a second older does not."""
    svc = session_service(store, ManualClock(T0 + 100.7))
    await svc.revoke_user("alice", None)
    assert await svc.check(claims(key="sid:new", iat=T0 + 100), CLIENT)
    with pytest.raises(SessionRejectedError, match="cut_off"):
        await svc.check(claims(key="sid:old", iat=T0 + 99), CLIENT)


async def test_two_users_racing_for_one_sid_do_not_share_it(store: SlowStore) -> None:
    """When two users' first tokens race to register one sid, only the first user's passes."""
    svc = session_service(store, ManualClock(T0))
    results = await asyncio.gather(
        svc.check(claims("alice", key="sid:shared"), CLIENT),
        svc.check(claims("mallory", key="sid:shared"), CLIENT),
        return_exceptions=True,
    )
    assert sum(isinstance(r, str) for r in results) == 1
    assert sum(isinstance(r, SessionRejectedError) for r in results) == 1
