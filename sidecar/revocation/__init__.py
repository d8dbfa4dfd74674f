"""Telling other processes about revocations: Redis pub/sub push (the store's revision
feed, polled by ``SessionService.catch_up``, is the fallback that needs no Redis)."""

from __future__ import annotations

from sidecar.revocation.redis_push import Coalesced, RedisPush, decode, encode

__all__ = ["Coalesced", "RedisPush", "decode", "encode"]
