"""Revocation push over Redis pub/sub.

Every process publishes what it revoked and applies what others publish, so a revocation
reaches every process in about one network round trip. Redis only speeds things up: a
message lost while Redis is down is picked up by the store catch-up (every
``sessions.catchup_interval_seconds``), and on each (re)subscription a process catches up
from the store before relying on the channel again. A message can only ever revoke, never
allow, so the worst a bad message can do is deny.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

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
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError("bad number")
    return float(v)


def decode(data: bytes) -> tuple[list[Revoked], list[Cutoff]]:
    """Parse a message; raise ValueError for anything malformed."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError("message too large")
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("v") != _VERSION:
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

    async def start(self) -> None:
        self._sessions.on_revoked = self.publish
        self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def close(self) -> None:
        self._sessions.on_revoked = None
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
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
        try:
            sessions, cutoffs = decode(data)
        except (ValueError, RecursionError) as e:
            log.warning("redis: ignored a malformed message on %s: %s", self.channel, e)
            return
        self.received += 1
        self._sessions.apply(sessions, cutoffs, via="redis")

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
