"""Session policies in SessionService: idle timeout, absolute lifetime, the per-user limit.

On a controlled clock and real SQLite files; two services on one file stand for two
processes (each with its own memory and batched activity). Real processes: tests/test_policies_scaleout.py.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from sidecar.clock import ManualClock
from sidecar.errors import SessionRejectedError
from sidecar.sessions import Session
from sidecar.sessions.service import SESSION_LIMIT, SessionService, _State
from sidecar.sessions.sqlite import SqliteStore
from tests.sessions.test_service import CLIENT, T0
from tests.support.sessions import claims

IDLE = 60.0
FLUSH = 5.0
GRACE = FLUSH + 1.0  # what SessionSettings.idle_grace_seconds gives for FLUSH


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "policies.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


Recorded = list[tuple[str, str | None, list[str]]]


def service(store: SqliteStore, clock: ManualClock, recorded: Recorded | None = None, **kw: Any) -> SessionService:
    svc = SessionService(
        store,
        clock,
        registration="auto",
        describe_device=lambda ua: "Unknown device",
        locate=lambda ip: "Unknown",
        flush_interval=FLUSH,
        idle_grace=GRACE,
        **kw,
    )
    if recorded is not None:

        def record(reason: str, actor: str | None, sessions: Sequence[Session]) -> None:
            recorded.append((reason, actor, [s.id for s in sessions]))

        svc.on_recorded = record
    return svc


async def refused(svc: SessionService, key: str, reason: str, user: str = "alice", **kw: Any) -> None:
    with pytest.raises(SessionRejectedError) as e:
        await svc.check(claims(user, key, **kw), CLIENT)
    assert e.value.reason == reason


# ---------------------------------------------------------------- off


def test_policy_refusal_is_none_with_policies_off(tmp_path: Path) -> None:
    """With every policy off, no session, however old or quiet, is held back by a policy."""
    svc = service(SqliteStore(tmp_path / "unused.db"), ManualClock(T0))
    ancient = _State("id", "alice", False, math.inf, created_at=0.0, last_seen=0.0)
    assert svc._policy_refusal(ancient, T0 * 10) is None
    row = Session("id", "sid:x", "alice", T0, T0, T0 + 60, None, None, "d", "l")
    assert svc.deadlines(row) == (None, None)


# ---------------------------------------------------------------- lifetime


async def test_lifetime_refuses_however_fresh_the_token(store: SqliteStore) -> None:
    """A session is allowed until its login is max_lifetime old, then refused with reason lifetime,
    also for a newer token of the same sid, recorded in the store, and after a restart."""
    clock = ManualClock(T0)
    recorded: Recorded = []
    svc = service(store, clock, recorded, max_lifetime=3600)
    sid = await svc.check(claims(exp=T0 + 600), CLIENT)
    clock.advance(3600)  # exactly the lifetime: still allowed
    assert await svc.check(claims(iat=T0 + 3500, exp=T0 + 7200), CLIENT) == sid
    clock.advance(0.5)
    await refused(svc, "sid:one", "lifetime", iat=T0 + 3600, exp=T0 + 9000)
    row = await store.get(sid)
    assert row is not None and (row.revoked_reason, row.revoked_by, row.revoked_at) == ("lifetime", "policy", T0 + 3600.5)
    assert recorded == [("lifetime", "policy", [sid])]
    await refused(svc, "sid:one", "revoked", iat=T0 + 3600, exp=T0 + 9000)
    restarted = service(store, clock, max_lifetime=3600)
    await refused(restarted, "sid:one", "revoked", iat=T0 + 3600, exp=T0 + 9000)
    assert svc.deadlines(row) == (None, T0 + 3600)


async def test_lifetime_refuses_admin_registration_of_an_old_session(store: SqliteStore) -> None:
    """Registering again (admin API) a session past its lifetime is refused with reason lifetime."""
    clock = ManualClock(T0)
    svc = service(store, clock, max_lifetime=100)
    await svc.register(claims(), CLIENT())
    clock.advance(101)
    with pytest.raises(SessionRejectedError, match="lifetime"):
        await svc.register(claims(exp=T0 + 7200), CLIENT())


# ---------------------------------------------------------------- idle, one process


async def test_idle_allows_within_the_timeout_and_revokes_past_the_grace(store: SqliteStore) -> None:
    """Checks within the idle timeout of each other pass; quiet longer than timeout + grace in the
    store is revoked with reason idle, refused from then on, also after a restart."""
    clock = ManualClock(T0)
    recorded: Recorded = []
    svc = service(store, clock, recorded, idle_timeout=IDLE)
    sid = await svc.check(claims(), CLIENT)
    for _ in range(5):
        clock.advance(IDLE)  # exactly the timeout: still allowed
        assert await svc.check(claims(), CLIENT) == sid
    await svc.flush()
    clock.advance(IDLE + GRACE + 0.5)
    await refused(svc, "sid:one", "idle")
    row = await store.get(sid)
    assert row is not None and (row.revoked_reason, row.revoked_by) == ("idle", "policy")
    assert recorded == [("idle", "policy", [sid])]
    await refused(svc, "sid:one", "revoked")
    await refused(service(store, clock, idle_timeout=IDLE), "sid:one", "revoked")


async def test_idle_within_the_grace_passes_and_is_written_through(store: SqliteStore) -> None:
    """Quiet a little past the timeout but within the grace passes, and the check is written to the
    store at once (not batched), so no other process decides idle on the older activity."""
    clock = ManualClock(T0)
    svc = service(store, clock, idle_timeout=IDLE)
    sid = await svc.check(claims(), CLIENT)
    clock.advance(IDLE + GRACE / 2)
    assert await svc.check(claims(), CLIENT) == sid
    row = await store.get(sid)
    assert row is not None and row.last_seen == T0 + IDLE + GRACE / 2 and row.revoked_at is None


# ---------------------------------------------------------------- idle, two processes on one store


async def test_idle_never_revokes_a_session_another_process_saw(store: SqliteStore) -> None:
    """Process A, which last saw the session long ago, lets it through when the store shows B saw
    it inside the window; once B's last check is timeout + grace old in the store, A revokes it
    and B refuses it on its next check (SECURITY_CASES E43)."""
    clock = ManualClock(T0)
    a = service(store, clock, idle_timeout=IDLE)
    b = service(store, clock, idle_timeout=IDLE)
    sid = await a.check(claims(), CLIENT)
    clock.advance(10)
    assert await b.check(claims(), CLIENT) == sid
    clock.advance(FLUSH)
    await b.flush()  # B's flush interval elapsed: the store shows T0 + 10
    clock.advance(47)
    assert await b.check(claims(), CLIENT) == sid  # T0 + 62, from B's memory, not yet written
    clock.advance(4)
    assert await a.check(claims(), CLIENT) == sid  # T0 + 66: A's memory says idle, the store says not
    await a.flush()
    clock.advance(1)
    await b.flush()  # T0 + 67: B's activity of T0 + 62 reaches the store
    clock.advance(IDLE + GRACE + 0.5)  # both quiet since
    await refused(a, "sid:one", "idle")
    await refused(b, "sid:one", "revoked")


async def test_idle_first_check_on_a_process_within_the_grace_protects_the_session(store: SqliteStore) -> None:
    """B's first check of a session comes within the grace: it passes and is written through, so A,
    which registered it and saw nothing since, does not revoke it moments later."""
    clock = ManualClock(T0)
    a = service(store, clock, idle_timeout=IDLE)
    b = service(store, clock, idle_timeout=IDLE)
    sid = await a.check(claims(), CLIENT)
    clock.advance(IDLE + 1)
    assert await b.check(claims(), CLIENT) == sid
    clock.advance(GRACE)  # T0 + 68: without B's write-through the store would show T0, 68 s quiet
    assert await a.check(claims(), CLIENT) == sid


async def test_idle_sweep_revokes_unchecked_sessions_for_every_process(store: SqliteStore) -> None:
    """The sweep revokes in the store a session no check came for; the listing drops it before and
    after, and another process's memory learns it on catch-up."""
    clock = ManualClock(T0)
    recorded: Recorded = []
    a = service(store, clock, recorded, idle_timeout=IDLE)
    b = service(store, clock, idle_timeout=IDLE)
    await b.start()
    try:
        sid = await a.check(claims(), CLIENT)
        keep = await a.check(claims(key="sid:busy"), CLIENT)
        assert await b.check(claims(), CLIENT) == sid
        await a.flush()
        await b.flush()
        clock.advance(IDLE + GRACE / 2)
        assert await a.check(claims(key="sid:busy"), CLIENT) == keep
        await a.sweep()
        assert recorded == []  # not idle for certain yet
        clock.advance(GRACE)
        assert [s.id for s in await a.list_active("alice")] == [keep]  # idle for certain: not listed
        await a.sweep()
        assert recorded == [("idle", "policy", [sid])]
        await b.catch_up()
        assert b._states["sid:one"].revoked
        await refused(b, "sid:one", "revoked")
        assert await a.check(claims(key="sid:busy"), CLIENT) == keep
    finally:
        await b.stop()


async def test_lifetime_sweep_and_listing_deadlines(store: SqliteStore) -> None:
    """Listed sessions carry when idleness and lifetime end them; the sweep revokes one past its
    lifetime with reason lifetime."""
    clock = ManualClock(T0)
    svc = service(store, clock, idle_timeout=IDLE, max_lifetime=100)
    sid = await svc.check(claims(), CLIENT)
    clock.advance(30)
    await svc.check(claims(), CLIENT)
    [listed] = await svc.list_active("alice")
    assert svc.deadlines(listed) == (T0 + 30 + IDLE, T0 + 100)
    clock.advance(71)
    await svc.flush()
    await svc.sweep()
    row = await store.get(sid)
    assert row is not None and row.revoked_reason == "lifetime"


# ---------------------------------------------------------------- the session limit


async def test_limit_refuse_new(store: SqliteStore) -> None:
    """With refuse_new, the user's third session is refused while two are active; the first two keep
    working; once one is revoked, the third is admitted; other users are not affected."""
    clock = ManualClock(T0)
    svc = service(store, clock, max_sessions=2, on_session_limit="refuse_new")
    first = await svc.check(claims(key="sid:1"), CLIENT)
    await svc.check(claims(key="sid:2"), CLIENT)
    await refused(svc, "sid:3", SESSION_LIMIT)
    with pytest.raises(SessionRejectedError, match=SESSION_LIMIT):
        await svc.register(claims(key="sid:3"), CLIENT())
    assert await svc.check(claims(key="sid:1"), CLIENT) == first
    assert await svc.check(claims("bob", "sid:b1"), CLIENT)
    await svc.revoke(first, None)
    assert await svc.check(claims(key="sid:3"), CLIENT)


@pytest.mark.parametrize(("on_limit", "pushed_out"), [("revoke_oldest", "sid:1"), ("revoke_least_recent", "sid:2")])
async def test_limit_revokes_the_chosen_session(store: SqliteStore, on_limit: str, pushed_out: str) -> None:
    """Past the limit the new session is admitted and the oldest login (or least recently seen) is
    revoked with reason limit by the newcomer, refused on this process's very next check."""
    clock = ManualClock(T0)
    recorded: Recorded = []
    svc = service(store, clock, recorded, max_sessions=2, on_session_limit=on_limit)
    ids = {}
    for key in ("sid:1", "sid:2"):
        ids[key] = await svc.check(claims(key=key), CLIENT)
        clock.advance(1)
    await svc.check(claims(key="sid:1"), CLIENT)  # sid:1 is the oldest login but the latest seen
    await svc.flush()
    newcomer = await svc.check(claims(key="sid:3"), CLIENT)
    assert recorded == [("limit", f"session:{newcomer}", [ids[pushed_out]])]
    await refused(svc, pushed_out, "revoked")
    kept = next(k for k in ids if k != pushed_out)
    assert await svc.check(claims(key=kept), CLIENT) == ids[kept]
    assert {s.id for s in await svc.list_active("alice")} == {newcomer, ids[kept]}


@pytest.mark.parametrize("on_limit", ["refuse_new", "revoke_oldest"])
async def test_limit_holds_when_two_processes_race(store: SqliteStore, tmp_path: Path, on_limit: str) -> None:
    """Seven first checks of one user's new sessions racing on two services over one file leave three
    active; with refuse_new exactly three pass."""
    other = SqliteStore(tmp_path / "policies.db")
    await other.open()
    try:
        clock = ManualClock(T0)
        a = service(store, clock, max_sessions=3, on_session_limit=on_limit)
        b = service(other, clock, max_sessions=3, on_session_limit=on_limit)
        results = await asyncio.gather(
            *((a if i % 2 else b).check(claims(key=f"sid:race-{i}"), CLIENT) for i in range(7)),
            return_exceptions=True,
        )
        passed = [r for r in results if isinstance(r, str)]
        assert len(await store.list_active("alice", T0)) == 3
        if on_limit == "refuse_new":
            assert len(passed) == 3
            assert all(isinstance(r, SessionRejectedError) and r.reason == SESSION_LIMIT for r in results if r not in passed)
    finally:
        await other.close()
