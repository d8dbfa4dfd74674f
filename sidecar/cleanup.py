"""Reclaim space: delete sessions and cut-offs that can no longer refuse a live token.

Correctness never depends on this running: expiry is checked on every request, so a
worker that is down for days only lets the database grow (SECURITY_CASES D35). What may
go, and why it is safe (``keep`` = ``jwt.leeway_seconds`` + ``celery.cleanup_grace_seconds``,
``lifetime`` = ``celery.max_token_lifetime_seconds``):

- an unrevoked session once its latest token expiry is older than ``keep``: every token
  of it is refused on its own ``exp`` anyway;
- a revoked session (a tombstone) only once that holds *and* it was revoked more than
  ``lifetime + keep`` ago. The first rule covers the tokens the sidecar saw; the second
  covers a token issued before the revocation that it never saw, which would otherwise
  register afresh in ``auto`` mode once the row is gone (C30);
- a user's cut-off once it is older than ``lifetime + keep``: every token issued before it
  has expired by then;
- an event once it is older than ``events.retention_days`` (the history users read, and
  what the login flags compare against), and an outbox row once it was delivered, or has
  been dead, for that long. A pending outbox row is never deleted.

Everything is deleted in batches, each its own short transaction, so checks and API writes
interleave with a long purge instead of waiting behind it. Deleting is idempotent: two
workers running at once delete each row once and do no harm.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sidecar.config import Settings
from sidecar.sessions import SessionStore, store_from_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CleanupPolicy:
    """How long rows are kept past the point where they stop mattering."""

    keep_seconds: float  # leeway + grace after the last token expiry
    max_token_lifetime_seconds: float  # the longest exp - iat the auth service issues
    batch_size: int
    event_retention_seconds: float = 90 * 86400.0

    @classmethod
    def from_settings(cls, settings: Settings) -> CleanupPolicy:
        c = settings.celery
        return cls(
            keep_seconds=settings.jwt.leeway_seconds + c.cleanup_grace_seconds,
            max_token_lifetime_seconds=c.max_token_lifetime_seconds,
            batch_size=c.cleanup_batch_size,
            event_retention_seconds=settings.events.retention_days * 86400.0,
        )


@dataclass(frozen=True, slots=True)
class CleanupReport:
    """What one cleanup run deleted."""

    sessions: int
    cutoffs: int
    events: int = 0
    deliveries: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "sessions": self.sessions, "cutoffs": self.cutoffs, "events": self.events, "deliveries": self.deliveries
        }


async def purge_expired(store: SessionStore, *, now: float, policy: CleanupPolicy) -> CleanupReport:
    """Delete what can no longer refuse a live token, in batches; report the counts.

    A loop ends only on a batch that deletes nothing, so a run racing another one still
    finishes the job; each row is counted by the run that deleted it.
    """
    expired_before = now - policy.keep_seconds
    dead_before = expired_before - policy.max_token_lifetime_seconds
    sessions = 0
    while deleted := await store.purge_sessions(expired_before, dead_before, policy.batch_size):
        sessions += deleted
    cutoffs = 0
    while deleted := await store.purge_cutoffs(dead_before, policy.batch_size):
        cutoffs += deleted
    old = now - policy.event_retention_seconds
    events = 0
    while deleted := await store.purge_events(old, policy.batch_size):
        events += deleted
    deliveries = 0
    while deleted := await store.purge_deliveries(old, old, policy.batch_size):
        deliveries += deleted
    report = CleanupReport(sessions, cutoffs, events, deliveries)
    log.info(
        "cleanup: deleted %d expired session(s), %d old cut-off(s), %d old event(s) and %d outbox row(s)",
        sessions, cutoffs, events, deliveries,
    )
    return report


async def run_cleanup(settings: Settings, *, now: float | None = None) -> CleanupReport:
    """Open the configured store, purge once, close it: what ``sidecar cleanup`` and the
    Celery task both run."""
    store = store_from_settings(settings.storage)
    await store.open()
    try:
        return await purge_expired(
            store,
            now=time.time() if now is None else now,
            policy=CleanupPolicy.from_settings(settings),
        )
    finally:
        await store.close()
