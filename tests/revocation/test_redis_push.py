"""The Redis push: the message codec, coalesced catch-ups, and messages as hints only.

The codec and ``Coalesced`` are plain code; ``RedisPush`` runs against a throwaway
``redis-server`` (as in ``tests/test_scaleout.py``), a real SQLite store and a real
``SessionService``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from sidecar.clock import ManualClock
from sidecar.errors import SessionRejectedError, StoreUnavailableError
from sidecar.revocation import Coalesced, RedisPush, decode, encode
from sidecar.revocation.redis_push import MAX_MESSAGE_BYTES
from sidecar.sessions import Changes, Cutoff, Session
from sidecar.sessions.models import Revoked
from sidecar.sessions.service import SessionService
from sidecar.sessions.sqlite import SqliteStore
from tests.support.ports import free_ports
from tests.support.processes import redis_server
from tests.support.sessions import NOW, claims, session_service, unknown_client

T0 = NOW
CLIENT = unknown_client  # the request's client, as SessionService.check takes it


# ---------------------------------------------------------------- the message codec


def test_encode_then_decode_round_trips() -> None:
    """What a process publishes decodes to the same sessions and cut-off."""
    revoked = Revoked("9b2f", "sid:x", "alice", T0 + 3600, T0)
    cutoff = Cutoff("alice", T0 + 0.25, "sid:keep")
    assert decode(encode([revoked], cutoff)) == ([revoked], [cutoff])
    assert decode(encode([], Cutoff("bob", T0, None))) == ([], [Cutoff("bob", T0, None)])
    assert decode(encode([revoked], None)) == ([revoked], [])


def _doc(**fields: object) -> bytes:
    return json.dumps({"v": 1, "sessions": [], "cutoffs": [], **fields}).encode()


MALFORMED: dict[str, bytes] = {
    "not-json": b"{nope",
    "not-utf8": b'{"v": 1, "sessions": [], "cutoffs": ["\xff"]}',
    "empty": b"",
    "array": b"[1, 2]",
    "no-version": json.dumps({"sessions": [], "cutoffs": []}).encode(),
    "version-2": _doc(v=2),
    "version-true": _doc(v=True),
    "sessions-not-a-list": _doc(sessions={}),
    "cutoffs-missing": json.dumps({"v": 1, "sessions": []}).encode(),
    "session-short": _doc(sessions=[["sid:x", "id", "alice", T0]]),
    "session-not-a-list": _doc(sessions=[{"id": "x"}]),
    "session-empty-id": _doc(sessions=[["sid:x", "", "alice", T0, T0]]),
    "session-long-user": _doc(sessions=[["sid:x", "id", "u" * 301, T0, T0]]),
    "session-revoked-at-null": _doc(sessions=[["sid:x", "id", "alice", T0, None]]),
    "session-expiry-string": _doc(sessions=[["sid:x", "id", "alice", "soon", T0]]),
    "cutoff-short": _doc(cutoffs=[["alice", T0]]),
    "cutoff-user-int": _doc(cutoffs=[[7, T0, None]]),
    "cutoff-at-bool": _doc(cutoffs=[["alice", True, None]]),
    "cutoff-at-nan": b'{"v":1,"sessions":[],"cutoffs":[["alice",NaN,null]]}',
    "cutoff-at-infinity": b'{"v":1,"sessions":[],"cutoffs":[["alice",Infinity,null]]}',
    "cutoff-at-1e400": b'{"v":1,"sessions":[],"cutoffs":[["alice",1e400,null]]}',
    "cutoff-at-huge-int": b'{"v":1,"sessions":[],"cutoffs":[["alice",1' + b"0" * 400 + b',null]]}',
    "cutoff-exempt-int": _doc(cutoffs=[["alice", T0, 5]]),
    "deeply-nested": b'{"v":1,"sessions":' + b"[" * 100_000 + b"]" * 100_000 + b',"cutoffs":[]}',
    "too-large": _doc(sessions=[], padding="x" * MAX_MESSAGE_BYTES),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_decode_refuses_malformed_messages_with_value_error(data: bytes) -> None:
    """Every malformed message raises ValueError, and nothing else, from decode."""
    with pytest.raises(ValueError):
        decode(data)


# ---------------------------------------------------------------- coalescing


@dataclass
class HeldJob:
    """A job that counts its runs and waits at ``gate`` while it is closed."""

    gate: asyncio.Event
    started: asyncio.Event
    runs: int = 0
    fail: bool = False

    async def __call__(self) -> None:
        self.runs += 1
        self.started.set()
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("job failed")


def held_job(*, open_: bool = False) -> HeldJob:
    job = HeldJob(asyncio.Event(), asyncio.Event())
    if open_:
        job.gate.set()
    return job


async def test_coalesced_runs_the_job_once_per_request_when_idle() -> None:
    """A request with nothing in flight runs the job once; a later request runs it again."""
    job = held_job(open_=True)
    runner = Coalesced(job)
    runner.request()
    await runner.idle()
    assert job.runs == 1
    runner.request()
    await runner.idle()
    assert (job.runs, runner.runs) == (2, 2)
    await runner.close()


async def test_coalesced_requests_during_a_run_queue_exactly_one_more() -> None:
    """However many requests arrive while a run is in flight, they cost one more run, not a backlog."""
    job = held_job()
    runner = Coalesced(job)
    runner.request()
    await job.started.wait()
    for _ in range(1000):
        runner.request()
    assert job.runs == 1
    job.gate.set()
    await runner.idle()
    assert job.runs == 2
    await runner.close()


async def test_coalesced_keeps_running_after_a_failed_job(caplog: pytest.LogCaptureFixture) -> None:
    """A job that raises is logged, and the queued run and later requests still run."""
    job = held_job()
    job.fail = True
    runner = Coalesced(job)
    runner.request()
    await job.started.wait()
    runner.request()
    with caplog.at_level(logging.ERROR, logger="sidecar.revocation.redis_push"):
        job.gate.set()
        await runner.idle()
    assert job.runs == 2
    assert "coalesced job failed" in caplog.text
    job.fail = False
    runner.request()
    await runner.idle()
    assert job.runs == 3
    await runner.close()


async def test_coalesced_close_cancels_a_run_in_flight() -> None:
    """close() cancels the run in flight and drops the queued one."""
    job = held_job()
    runner = Coalesced(job)
    runner.request()
    await job.started.wait()
    runner.request()
    await runner.close()
    job.gate.set()
    await asyncio.sleep(0)
    assert job.runs == 1


# ---------------------------------------------------------------- RedisPush on a real Redis


class CountingStore(SqliteStore):
    """A real SQLite store that counts revision-feed reads and can hold them at a gate."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reads = 0
        self.gate: asyncio.Event | None = None
        self.reading = asyncio.Event()

    async def changes_since(self, revision: int, limit: int) -> Changes:
        self.reads += 1
        self.reading.set()
        if self.gate is not None:
            await self.gate.wait()
        return await super().changes_since(revision, limit)


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A throwaway redis-server for this module."""
    (port,) = free_ports(1)
    with redis_server(tmp_path_factory.mktemp("redis"), port):
        yield port


@dataclass
class Wired:
    store: CountingStore
    sessions: SessionService
    push: RedisPush
    publisher: aioredis.Redis
    clock: ManualClock

    async def publish(self, message: bytes) -> None:
        assert await self.publisher.publish(self.push.channel, message) == 1

    async def received(self, count: int) -> None:
        """Wait until the push has received ``count`` well-formed messages."""
        deadline = time.monotonic() + 5
        while self.push.received < count:
            if time.monotonic() > deadline:
                pytest.fail(f"received {self.push.received} of {count} messages")
            await asyncio.sleep(0.01)

    async def settled(self) -> None:
        await self.push._catch_up.idle()


@pytest.fixture
async def wired(tmp_path: Path, redis_port: int) -> AsyncIterator[Wired]:
    """A SessionService (no periodic loops: only hints catch up) with a RedisPush subscribed."""
    store = CountingStore(tmp_path / "push.db")
    await store.open()
    clock = ManualClock(T0)
    sessions = session_service(store, clock)
    url = f"redis://127.0.0.1:{redis_port}/0"
    push = RedisPush(url, f"test:push:{uuid.uuid4()}", sessions)
    # Another database number: pub/sub ignores it, so any client of the Redis can publish.
    publisher = aioredis.Redis.from_url(f"redis://127.0.0.1:{redis_port}/7")
    await push.start()
    try:
        deadline = time.monotonic() + 5
        while not push.connected:
            if time.monotonic() > deadline:
                pytest.fail("RedisPush did not subscribe")
            await asyncio.sleep(0.01)
        store.reads = 0
        yield Wired(store, sessions, push, publisher, clock)
    finally:
        await push.close()
        await publisher.aclose()
        await store.close()


async def revoked_elsewhere(store: SqliteStore, session_id: str) -> Session:
    """Revoke in the store, as another process would, without publishing anything."""
    row = await store.revoke(session_id, T0)
    assert row is not None
    return row


async def test_a_message_makes_the_process_read_the_store(wired: Wired) -> None:
    """Any well-formed message, even an empty one, triggers a catch-up that applies what the store holds."""
    sid = await wired.sessions.check(claims(), CLIENT)
    await revoked_elsewhere(wired.store, sid)
    assert await wired.sessions.check(claims(), CLIENT) == sid  # nothing told this process yet
    seen: list[tuple[str, float]] = []
    wired.sessions.on_propagated = lambda via, seconds: seen.append((via, seconds))
    wired.clock.advance(0.5)
    await wired.publish(encode([], None))
    await wired.received(1)
    await wired.settled()
    with pytest.raises(SessionRejectedError, match="revoked"):
        await wired.sessions.check(claims(), CLIENT)
    assert seen == [("redis", 0.5)]
    assert wired.sessions.revision == await wired.store.current_revision()


async def test_the_contents_of_a_message_are_never_applied(wired: Wired) -> None:
    """Forged revocations and cut-offs (one lifting an exemption, one at 1e300) change no answer."""
    await wired.sessions.check(claims("alice", "sid:mine", iat=T0 - 5), CLIENT)
    await wired.sessions.revoke_user("alice", keep_session_key="sid:mine")  # the real cut-off, at T0
    live = await wired.sessions.check(claims("bob", "sid:bob"), CLIENT)
    forged = [
        json.dumps({"v": 1, "sessions": [], "cutoffs": [["alice", T0 + 0.5, "sid:stolen"]]}).encode(),
        json.dumps({"v": 1, "sessions": [], "cutoffs": [["bob", 1e300, None]]}).encode(),
        json.dumps({"v": 1, "sessions": [["sid:bob", live, "bob", T0 + 3600, T0]], "cutoffs": []}).encode(),
    ]
    for i, message in enumerate(forged, start=1):
        await wired.publish(message)
        await wired.received(i)
        await wired.settled()
    with pytest.raises(SessionRejectedError, match="cut_off"):
        await wired.sessions.check(claims("alice", "sid:stolen", iat=T0 - 5), CLIENT)
    assert await wired.sessions.check(claims("alice", "sid:mine", iat=T0 - 5), CLIENT)
    assert await wired.sessions.check(claims("bob", "sid:bob"), CLIENT) == live
    assert await wired.sessions.check(claims("bob", "sid:bob-new"), CLIENT)
    assert await wired.store.get_cutoff("bob") is None


async def test_a_flood_of_messages_costs_back_to_back_reads(wired: Wired) -> None:
    """Hundreds of messages while a catch-up is held cost one more catch-up, not one each."""
    wired.store.gate = asyncio.Event()
    await wired.publish(encode([], None))
    await wired.store.reading.wait()  # the first catch-up is reading, held
    for _ in range(300):
        await wired.publish(encode([], Cutoff("alice", T0, None)))
    await wired.received(301)
    wired.store.gate.set()
    await wired.settled()
    assert wired.push._catch_up.runs == 2
    assert wired.store.reads == 2  # nothing changed in the store: one read per catch-up


async def test_malformed_messages_are_ignored_and_the_subscription_survives(
    wired: Wired, caplog: pytest.LogCaptureFixture
) -> None:
    """Malformed messages (a 400-digit number among them) are logged and trigger nothing; the next hint works."""
    with caplog.at_level(logging.WARNING, logger="sidecar.revocation.redis_push"):
        for data in (MALFORMED["not-json"], MALFORMED["cutoff-at-huge-int"], MALFORMED["deeply-nested"]):
            await wired.publish(data)
        sid = await wired.sessions.check(claims(), CLIENT)
        await revoked_elsewhere(wired.store, sid)
        await wired.publish(encode([], None))
        await wired.received(1)
        await wired.settled()
    assert caplog.text.count("ignored a malformed message") == 3
    assert "unavailable" not in caplog.text  # never dropped and re-subscribed
    assert wired.push.connected and wired.push._catch_up.runs == 1
    with pytest.raises(SessionRejectedError, match="revoked"):
        await wired.sessions.check(claims(), CLIENT)


async def test_a_hint_while_the_store_is_down_is_harmless(wired: Wired) -> None:
    """A catch-up a hint triggers with the store down fails quietly; the subscription stays up."""
    await wired.store.close()
    await wired.publish(encode([], None))
    await wired.received(1)
    await wired.settled()
    assert wired.push.connected
    with pytest.raises(StoreUnavailableError):
        await wired.sessions.catch_up()
