"""The one bounded least-recently-used map: session states, cut-offs, verified tokens, rate buckets.

An ``OrderedDict`` underneath, so a lookup on a hot path stays a C-level ``get`` plus a
``move_to_end``; only inserting goes through ``put``/``keep``, which hold the bound.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(OrderedDict[K, V]):
    """At most ``size`` entries; inserting past it drops the least recently used."""

    def __init__(self, size: int) -> None:
        super().__init__()
        if size < 0:
            raise ValueError(f"size must be 0 or more, got {size}")
        self.size = size

    def put(self, key: K, value: V) -> V:
        """Insert or replace ``key`` as the most recently used; return ``value``."""
        if self.size == 0:
            return value
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)
        return value

    def keep(self, key: K, value: V) -> V:
        """What ``key`` holds (now the most recently used), else ``put(key, value)``."""
        if key in self:
            self.move_to_end(key)
            return self[key]
        return self.put(key, value)
