"""The one bounded LRU map every cache of the sidecar uses."""

from __future__ import annotations

import pytest

from sidecar.lru import LRU


def test_put_drops_the_least_recently_used_past_the_bound() -> None:
    """Past ``size`` entries the least recently used goes; a lookup with move_to_end refreshes one."""
    lru: LRU[str, int] = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    lru.move_to_end("a")
    lru.put("c", 3)
    assert dict(lru) == {"a": 1, "c": 3}


def test_put_replaces_and_keep_does_not() -> None:
    """put overwrites a present key; keep returns what is there (None values included)."""
    lru: LRU[str, int | None] = LRU(3)
    lru.put("a", None)
    assert lru.keep("a", 5) is None
    assert lru.put("a", 7) == 7
    assert lru.keep("b", 8) == 8
    assert list(lru) == ["a", "b"]


def test_size_zero_holds_nothing_and_negative_is_refused() -> None:
    """A bound of 0 keeps no entry; a negative bound is an error."""
    lru: LRU[str, int] = LRU(0)
    assert lru.put("a", 1) == 1
    assert len(lru) == 0
    with pytest.raises(ValueError, match="size must be 0 or more"):
        LRU(-1)
