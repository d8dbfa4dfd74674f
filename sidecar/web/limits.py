"""A per-client rate limit on the sessions API (the bound on checks in flight is sidecar.check.InFlight)."""

from __future__ import annotations

import math

from sidecar.clock import Clock
from sidecar.lru import LRU


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
