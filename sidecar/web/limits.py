"""Load limits: a bound on checks in flight, and a per-client rate limit on the sessions API."""

from __future__ import annotations

import math

from sidecar.clock import Clock
from sidecar.lru import LRU


class InFlight:
    """Counts requests in flight; ``try_enter`` refuses past ``limit`` (0 = unbounded)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def try_enter(self) -> bool:
        if self.limit and self.count >= self.limit:
            return False
        self.count += 1
        return True

    def leave(self) -> None:
        self.count -= 1


class RateLimiter:
    """A token bucket per key (client IP): ``per_minute`` requests, bursting up to that many.

    At most ``max_keys`` buckets are kept (least recently used dropped), so a flood of
    addresses cannot grow memory without bound.
    """

    def __init__(self, per_minute: int, clock: Clock, max_keys: int = 100_000) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._buckets: LRU[str, tuple[float, float]] = LRU(max_keys)

    def allow(self, key: str) -> tuple[bool, int]:
        """(allowed, seconds to wait before the next request would be allowed)."""
        if self.capacity <= 0:
            return True, 0
        now = self._clock.monotonic()
        tokens, last = self._buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets.put(key, (tokens, now))
        wait = 0 if allowed else math.ceil((1.0 - tokens) / self.rate)
        return allowed, wait
