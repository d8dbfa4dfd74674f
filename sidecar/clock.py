"""Time, injectable: token and session rules read the wall clock, caches a monotonic one.

Cache lifetimes use ``monotonic()`` so a wall clock that jumps backwards never stretches
them (SECURITY_CASES D39). Tests pass a ``ManualClock`` to walk across every boundary.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def wall(self) -> float:
        """Seconds since the epoch (what ``exp``/``iat``/``nbf`` are compared with)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (what cache lifetimes use)."""
        ...


class SystemClock:
    # The C functions themselves: a clock read on the check's every request costs no
    # Python call of its own.
    wall = staticmethod(time.time)
    monotonic = staticmethod(time.monotonic)


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, wall: float = 1_700_000_000.0, monotonic: float = 1000.0) -> None:
        self._wall = wall
        self._mono = monotonic

    def wall(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += max(seconds, 0.0)

    def set_wall(self, wall: float) -> None:
        """Jump the wall clock (either way); the monotonic clock does not move."""
        self._wall = wall
