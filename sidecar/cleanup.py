"""Reclaim space: delete sessions whose tokens can no longer be used.

Correctness never depends on this running: expiry is checked on every request. A row is
only deleted once its latest token expiry, plus the verification leeway, plus a grace
period, lies in the past, so a revoked session's tombstone outlives every token of it
(SECURITY_CASES C30, D35).
"""

from __future__ import annotations

import logging

from sidecar.sessions.store import SessionStore

log = logging.getLogger(__name__)


async def purge_expired(store: SessionStore, *, now: float, keep_seconds: float, batch_size: int) -> int:
    """Delete expired sessions in batches of ``batch_size``; return how many were deleted.

    Each batch is its own short transaction, so checks and API writes interleave with a
    long purge instead of waiting behind it.
    """
    before = now - keep_seconds
    total = 0
    while True:
        deleted = await store.purge_expired(before, batch_size)
        total += deleted
        if deleted < batch_size:
            break
    log.info("cleanup: deleted %d expired session(s)", total)
    return total
