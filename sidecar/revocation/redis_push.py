"""Revocation push over Redis pub/sub: a message is a hint, the store is the truth.

Every process publishes what it revoked, after the store committed it. A process that
receives a message does not apply what the message says: it reads the store's revision
feed at once (``SessionService.catch_up``), which already holds the committed revocation,
so a revocation still reaches every process in about one network round trip plus one
store read. Reads are coalesced: at most one in flight and one queued, however many
messages arrive, so a flood costs back-to-back reads and never a backlog.

So a message can neither revoke nor allow anything: what memory refuses comes only from
the store, and applying the store's changes only ever makes memory stricter. Anyone who
can publish on the channel (pub/sub ignores Redis database numbers: every client of a
shared Redis can) can cost each process one store read per message, nothing more.

Redis only speeds things up: a message lost while Redis is down is picked up by the
periodic catch-up (every ``sessions.catchup_interval_seconds``), and on each
(re)subscription a process catches up from the store before relying on the channel
again. The message format stays as it was (``encode``/``decode``), for the logs and for
older processes during an upgrade; a malformed message is logged and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sidecar.errors import StoreUnavailableError
from sidecar.sessions.models import Cutoff, Revoked, RevokedRef
from sidecar.sessions.service import SessionService

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1024 * 1024
_VERSION = 1


def encode(sessions: Sequence[RevokedRef], cutoff: Cutoff | None) -> bytes:
    doc = {
        "v": _VERSION,
        "sessions": [[s.session_key, s.id, s.user_id, s.expires_at, s.revoked_at] for s in sessions],
        "cutoffs": [] if cutoff is None else [[cutoff.user_id, cutoff.cutoff_at, cutoff.exempt_session_key]],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v or len(v) > 300:
        raise ValueError("bad string")
    return v


def _num(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError("bad number")
    try:
        number = float(v)
    except OverflowError as e:  # an integer beyond any float: 1 followed by 400 zeros
        raise ValueError("bad number") from e
    if not math.isfinite(number):
        raise ValueError("bad number")
    return number


def decode(data: bytes) -> tuple[list[Revoked], list[Cutoff]]:
    """Parse a message; raise ValueError for anything malformed."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError("message too large")
    try:
        doc = json.loads(data)
    except RecursionError as e:  # deeply nested JSON
        raise ValueError("message nested too deeply") from e
    # type(...) is int: True == 1 in Python, and a boolean is no version.
    if not isinstance(doc, dict) or type(doc.get("v")) is not int or doc["v"] != _VERSION:
        raise ValueError("unknown message version")
    sessions, cutoffs = doc.get("sessions"), doc.get("cutoffs")
    if not isinstance(sessions, list) or not isinstance(cutoffs, list):
        raise ValueError("bad message shape")
    revoked = []
    for item in sessions:
        if not isinstance(item, list) or len(item) != 5:
            raise ValueError("bad session entry")
        key, sid, user, expires_at, revoked_at = item
        revoked.append(Revoked(_str(sid), _str(key), _str(user), _num(expires_at), _num(revoked_at)))
    cuts = []
    for item in cutoffs:
        if not isinstance(item, list) or len(item) != 3:
            raise ValueError("bad cut-off entry")
        user, at, exempt = item
        cuts.append(Cutoff(_str(user), _num(at), None if exempt is None else _str(exempt)))
    return revoked, cuts


class Coalesced:
    """Run an async job whenever asked, at most one run in flight and one queued.

    A request while a run is in flight queues exactly one more run (what it asks for may
    have been committed after the running read began); further requests join that queued
    run. So any number of requests costs at most back-to-back runs, never a backlog.
    """

    def __init__(self, job: Callable[[], Awaitable[None]]) -> None:
        self._job = job
        self._queued = False
        self._task: asyncio.Task[None] | None = None
        self.runs = 0  # how many times the job started (for tests and logs)

    def request(self) -> None:
        self._queued = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self._queued:
            self._queued = False
            self.runs += 1
            try:
                await self._job()
            except Exception:  # the next request (or the periodic catch-up) tries again
                log.exception("redis: coalesced job failed")

    async def idle(self) -> None:
        """Wait until no run is in flight or queued."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def close(self) -> None:
        self._queued = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class RedisPush:
    def __init__(self, url: str, channel: str, sessions: SessionService, *, retry_seconds: float = 0.5) -> None:
        self.channel = channel
        self._sessions = sessions
        self._retry = retry_seconds
        # Publishing must never hold up a revoke response: short timeouts, separate client.
        self._publisher = aioredis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        # The subscriber blocks on reads for as long as the channel is quiet.
        self._subscriber = aioredis.Redis.from_url(url, socket_connect_timeout=1, health_check_interval=5)
        self._listener: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self.connected = False
        self._warned = False  # one warning per outage, not one per retry
        self.received = 0
        self._catch_up = Coalesced(self._hinted_catch_up)

    async def start(self) -> None:
        self._sessions.on_revoked = self.publish
        self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def close(self) -> None:
        self._sessions.on_revoked = None
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._catch_up.close()
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=2)
        await self._publisher.aclose()
        await self._subscriber.aclose()

    def publish(self, sessions: Sequence[RevokedRef], cutoff: Cutoff | None) -> None:
        """Send a revocation to the other processes, in the background."""
        if not sessions and cutoff is None:
            return
        task = asyncio.get_running_loop().create_task(self._publish(encode(sessions, cutoff)))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _publish(self, message: bytes) -> None:
        try:
            await self._publisher.publish(self.channel, message)
        except (RedisError, OSError) as e:
            log.warning("redis: publish failed (others catch up from the store): %s", e)

    def _receive(self, data: bytes) -> None:
        """A message on the channel: a hint that the store changed, never applied itself."""
        try:
            sessions, cutoffs = decode(data)
        except ValueError as e:
            log.warning("redis: ignored a malformed message on %s: %s", self.channel, e)
            return
        self.received += 1
        log.debug(
            "redis: hint on %s (%d session(s), %d cut-off(s)): catching up from the store",
            self.channel, len(sessions), len(cutoffs),
        )
        self._catch_up.request()

    async def _hinted_catch_up(self) -> None:
        try:
            await self._sessions.catch_up(via="redis")
        except StoreUnavailableError as e:
            # The periodic catch-up warns about the store once per interval; a flood of
            # hints while it is down must not add a warning per message.
            log.debug("redis: catch-up on a hint failed: %s", e)

    async def _listen(self) -> None:
        while True:
            pubsub = self._subscriber.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                # Whatever was published while we were away is in the store: read it now,
                # after subscribing, so nothing falls between the two.
                await self._sessions.catch_up()
                if not self.connected:
                    log.info("redis: subscribed to %s", self.channel)
                self.connected = True
                self._warned = False
                async for message in pubsub.listen():
                    if message.get("type") == "message" and isinstance(message.get("data"), bytes):
                        self._receive(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as e:  # connection refused, reset, store down during catch-up
                if self.connected or not self._warned:
                    log.warning("redis: %s unavailable (%s); catching up from the store meanwhile", self.channel, e)
                    self._warned = True
                self.connected = False
                await asyncio.sleep(self._retry)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
