"""Events in the store, on both backends: each change writes its events in its own
transaction, the history reads them newest first a page at a time, and the webhook outbox
is claimed by one worker at a time, retried, delivered or dead, then purged."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.events.models import Event, EventOptions, Place, Target
from sidecar.events.types import SESSION_CREATED, SESSION_REVOKED, USER_SESSIONS_REVOKED
from sidecar.sessions import ListPosition, SessionStore
from sidecar.sessions.models import ADMIN_USER, IDLE, LIMIT, OTHERS, POLICY_ACTOR, USER, SessionLimit
from tests.sessions.test_store_contract import BACKENDS, postgres_url  # noqa: F401 (a fixture)
from tests.support.sessions import NOW, stored_session

HOOK = "http://127.0.0.1:9/hook"
ONLY_REVOKED = "http://127.0.0.1:9/revoked"
LONDON = Place("GB", 51.5142, -0.0931)
PARIS = Place("FR", 48.8566, 2.3522)
SYDNEY = Place("AU", -33.8688, 151.2093)


@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    s: Any = await BACKENDS[request.param](request, tmp_path)
    s.events = EventOptions(targets=(Target(HOOK), Target(ONLY_REVOKED, frozenset({SESSION_REVOKED}))))
    try:
        yield s
    finally:
        await s.close()


async def history(store: SessionStore, user: str = "alice") -> list[Event]:
    return await store.list_events(user, limit=1000)


async def test_insert_records_session_created_with_what_the_session_shows(store: SessionStore) -> None:
    """A created session writes one session.created event with its user, device, address and place."""
    s = stored_session()
    await store.insert(s, place=LONDON)
    await store.insert(stored_session(key=s.session_key))  # the same key again: nothing new
    [event] = await history(store)
    assert event.type == SESSION_CREATED and event.session_id == s.id and event.occurred_at == s.created_at
    assert event.data["device"] == "Chrome on Windows" and event.data["ip_address"] == "203.0.113.9"
    assert event.data["country"] == "GB" and event.data["new_device"] and event.data["new_country"]
    assert not event.data["unusual_travel"]


async def test_new_device_and_new_country_compare_with_earlier_logins(store: SessionStore) -> None:
    """A device or country the user logged in from before is not new; another one is."""
    await store.insert(stored_session(created=NOW), place=LONDON)
    await store.insert(stored_session(created=NOW + 86400), place=LONDON)
    await store.insert(stored_session(created=NOW + 2 * 86400, device="Firefox on Linux"), place=PARIS)
    await store.insert(stored_session(created=NOW + 3 * 86400, device="Firefox on Linux"), place=Place())
    newest_first = [e.data for e in await history(store)]
    assert [(d["new_device"], d["new_country"]) for d in newest_first] == [
        (False, False), (True, True), (False, False), (True, True)
    ]


async def test_devices_outside_the_history_window_are_new_again(store: Any) -> None:
    """A device last seen before the history window counts as new."""
    store.events = EventOptions(history_seconds=86400)
    await store.insert(stored_session(created=NOW))
    await store.insert(stored_session(created=NOW + 2 * 86400))
    assert [e.data["new_device"] for e in await history(store)] == [True, True]


async def test_unusual_travel_is_faster_than_the_limit_between_two_logins(store: SessionStore) -> None:
    """London then Sydney an hour later is unusual travel; London then Paris ten hours later is not."""
    await store.insert(stored_session(created=NOW), place=LONDON)
    await store.insert(stored_session(created=NOW + 3600), place=SYDNEY)
    await store.insert(stored_session(user="bob", created=NOW), place=LONDON)
    await store.insert(stored_session(user="bob", created=NOW + 36000), place=PARIS)
    alice = (await history(store))[0].data
    bob = (await history(store, "bob"))[0].data
    assert alice["unusual_travel"] and alice["travel_kmh"] > 10000
    assert not bob["unusual_travel"] and 30 < bob["travel_kmh"] < 40


async def test_no_travel_is_judged_without_coordinates(store: SessionStore) -> None:
    """A login without coordinates (a Country database, a private address) is never unusual travel."""
    await store.insert(stored_session(created=NOW), place=LONDON)
    await store.insert(stored_session(created=NOW + 1), place=Place("AU"))
    [latest, _] = await history(store)
    assert not latest.data["unusual_travel"] and "travel_kmh" not in latest.data


async def test_revoke_records_reason_actor_and_the_acting_session_once(store: SessionStore) -> None:
    """A revoke writes session.revoked with reason, actor and the acting session's device; again, nothing."""
    mine = stored_session(device="Safari on iOS")
    other = stored_session(created=NOW + 1)
    await store.insert(mine)
    await store.insert(other)
    await store.revoke(other.id, NOW + 5, reason=USER, actor="user:alice", actor_session=mine.id)
    await store.revoke(other.id, NOW + 6, reason=USER, actor="user:alice", actor_session=mine.id)
    revoked = [e for e in await history(store) if e.type == SESSION_REVOKED]
    assert len(revoked) == 1
    assert revoked[0].session_id == other.id and revoked[0].occurred_at == NOW + 5
    assert revoked[0].data["reason"] == USER and revoked[0].data["actor"] == "user:alice"
    assert revoked[0].data["actor_device"] == "Safari on iOS"


async def test_revoke_user_records_each_session_and_the_count(store: SessionStore) -> None:
    """Log out others writes session.revoked per session and one user.sessions_revoked with the count."""
    keep = stored_session()
    await store.insert(keep)
    for i in range(3):
        await store.insert(stored_session(created=NOW + 1 + i))
    await store.revoke_user("alice", NOW + 10, keep.session_key, reason=OTHERS, actor="user:alice", actor_session=keep.id)
    events = [e for e in await history(store) if e.occurred_at == NOW + 10]
    assert sorted(e.type for e in events) == [SESSION_REVOKED] * 3 + [USER_SESSIONS_REVOKED]
    [summary] = [e for e in events if e.type == USER_SESSIONS_REVOKED]
    assert summary.data["count"] == 3 and summary.data["reason"] == OTHERS and summary.session_id == keep.id
    await store.revoke_user("alice", NOW + 20, None, reason=ADMIN_USER, actor="admin:sha256:abc")
    latest = (await history(store))[:2]
    assert {e.type for e in latest} == {SESSION_REVOKED, USER_SESSIONS_REVOKED}


async def test_policy_revocations_record_events(store: SessionStore) -> None:
    """Sessions the idle sweep or the session limit revoke each write session.revoked."""
    idle = stored_session(created=NOW)
    await store.insert(idle)
    await store.revoke_stale(NOW + 100, seen_before=NOW + 50, created_before=None, limit=10)
    first = stored_session(user="lim", created=NOW)
    await store.insert(first)
    await store.admit(stored_session(user="lim", created=NOW + 1), SessionLimit(1, "revoke_oldest", NOW + 1))
    [swept] = [e for e in await history(store) if e.type == SESSION_REVOKED]
    assert swept.data["reason"] == IDLE and swept.data["actor"] == POLICY_ACTOR
    lim = await history(store, "lim")
    assert [e.type for e in lim].count(SESSION_CREATED) == 2
    [pushed] = [e for e in lim if e.type == SESSION_REVOKED]
    assert pushed.session_id == first.id and pushed.data["reason"] == LIMIT


async def test_history_pages_newest_first_without_skips_or_repeats(store: SessionStore) -> None:
    """Keyset pages over events (ties in time broken by id) read every event exactly once."""
    for i in range(7):
        await store.insert(stored_session(created=NOW + i // 2))
    seen: list[str] = []
    before: ListPosition | None = None
    while True:
        page = await store.list_events("alice", limit=3, before=before)
        seen += [e.id for e in page]
        if len(page) < 3:
            break
        before = ListPosition(page[-1].occurred_at, page[-1].id)
    everything = await history(store)
    assert seen == [e.id for e in everything] and len(seen) == 7
    assert [e.occurred_at for e in everything] == sorted((e.occurred_at for e in everything), reverse=True)


async def test_outbox_rows_follow_each_webhooks_filter(store: SessionStore) -> None:
    """Every event is queued for the webhook of all types, only session.revoked for the filtered one."""
    s = stored_session()
    await store.insert(s)
    await store.revoke(s.id, NOW + 1, reason=USER, actor="user:alice")
    claimed = await store.claim_deliveries(NOW + 2, limit=100, lease_seconds=60, claim="w1")
    assert sorted((d.url, json.loads(d.payload)["type"]) for d in claimed) == [
        (HOOK, SESSION_CREATED), (HOOK, SESSION_REVOKED), (ONLY_REVOKED, SESSION_REVOKED)
    ]
    body = json.loads(claimed[0].payload)
    assert set(body) == {"type", "timestamp", "data"} and body["timestamp"].endswith("Z")
    assert all(d.attempts == 1 for d in claimed)


async def test_concurrent_claims_never_share_a_row(store: SessionStore) -> None:
    """Ten claimers at once take disjoint rows, and together every due row."""
    for i in range(40):
        await store.insert(stored_session(user=f"u{i}"))
    batches = await asyncio.gather(
        *(store.claim_deliveries(NOW + 1, limit=7, lease_seconds=60, claim=f"w{i}") for i in range(10))
    )
    ids = [d.id for batch in batches for d in batch]
    assert len(ids) == len(set(ids)) == 40


async def test_a_claim_whose_lease_ends_is_claimed_again_with_the_same_event(store: SessionStore) -> None:
    """An unreported claim (a killed worker) comes back after its lease, same event, one more attempt."""
    await store.insert(stored_session())
    [first] = [d for d in await store.claim_deliveries(NOW + 1, limit=10, lease_seconds=30, claim="a") if d.url == HOOK]
    assert await store.claim_deliveries(NOW + 20, limit=10, lease_seconds=30, claim="b") == []
    [again] = await store.claim_deliveries(NOW + 31, limit=10, lease_seconds=30, claim="c")
    assert again.id == first.id and again.event_id == first.event_id and again.payload == first.payload
    assert again.attempts == 2
    await store.delivery_failed(first.id, "a", NOW + 32, retry_at=NOW + 40, error="stale claim")  # not a's any more
    assert await store.claim_deliveries(NOW + 33, limit=10, lease_seconds=30, claim="d") == []


async def test_failures_retry_then_die_and_are_counted(store: SessionStore) -> None:
    """A failure makes a row due at its retry time; a failure with no retry left is dead and counted."""
    await store.insert(stored_session())
    [d] = await store.claim_deliveries(NOW + 1, limit=10, lease_seconds=30, claim="a")
    await store.delivery_failed(d.id, "a", NOW + 2, retry_at=NOW + 10, error="HTTP 500")
    assert await store.claim_deliveries(NOW + 5, limit=10, lease_seconds=30, claim="b") == []
    assert (await store.outbox_counts()).pending == 1
    [d2] = await store.claim_deliveries(NOW + 10, limit=10, lease_seconds=30, claim="b")
    await store.delivery_failed(d2.id, "b", NOW + 11, retry_at=None, error="HTTP 500")
    counts = await store.outbox_counts()
    assert (counts.pending, counts.dead) == (0, 1)
    assert await store.claim_deliveries(NOW + 10_000, limit=10, lease_seconds=30, claim="c") == []


async def test_delivered_rows_are_done_and_purged_with_old_events(store: SessionStore) -> None:
    """A delivered row is never claimed again; retention purges old events and delivered rows, not pending ones."""
    await store.insert(stored_session(created=NOW))
    await store.insert(stored_session(user="bob", created=NOW + 1000))
    claimed = await store.claim_deliveries(NOW + 1, limit=1, lease_seconds=30, claim="a")
    await store.delivered(claimed[0].id, NOW + 2)
    assert [d.id for d in await store.claim_deliveries(NOW + 3, limit=10, lease_seconds=30, claim="b")] != [
        claimed[0].id
    ]
    assert await store.purge_events(NOW + 500, 100) == 1
    assert await history(store) == [] and len(await history(store, "bob")) == 1
    assert await store.purge_deliveries(NOW + 500, NOW + 500, 100) == 1
    assert (await store.outbox_counts()).pending == 1


async def test_events_off_records_nothing(store: Any) -> None:
    """With events disabled no event and no outbox row is written."""
    store.events = EventOptions(enabled=False, targets=(Target(HOOK),))
    s = stored_session()
    await store.insert(s)
    await store.revoke(s.id, NOW + 1, reason=USER, actor="user:alice")
    assert await history(store) == []
    assert await store.claim_deliveries(NOW + 2, limit=10, lease_seconds=30, claim="a") == []


async def test_a_change_whose_event_cannot_be_written_is_not_committed(tmp_path: Path) -> None:
    """One transaction: when the event cannot be written the revocation (and the insert) roll back with it."""
    import sqlite3

    from sidecar.errors import StoreUnavailableError
    from sidecar.sessions.sqlite import SqliteStore

    path = tmp_path / "atomic.db"
    store = SqliteStore(path)
    await store.open()
    try:
        s = stored_session()
        await store.insert(s)
        with sqlite3.connect(path) as db:
            db.execute("ALTER TABLE events RENAME TO events_elsewhere")
        with pytest.raises(StoreUnavailableError):
            await store.revoke(s.id, NOW + 1, reason=USER, actor="user:alice")
        with pytest.raises(StoreUnavailableError):
            await store.insert(stored_session(user="bob"))
        row = await store.get(s.id)
        assert row is not None and row.revoked_at is None
        assert await store.list_active("bob", NOW) == []
    finally:
        await store.close()
