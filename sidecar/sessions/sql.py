"""What the SQL backends share: the session columns, row -> Session, the migration runner.

Each backend keeps its own DDL (types differ: REAL vs DOUBLE PRECISION, COLLATE "C") and
its own placeholders; version N is the same logical schema on both, which a test checks.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from sidecar.errors import StoreUnavailableError
from sidecar.sessions.models import IDLE, LIFETIME, LIMIT, POLICY_ACTOR, Session, SessionLimit

# Versioned migrations: (version, statements), applied in order, one transaction each.
# Never edit a released step; append a new one.
Migrations = Sequence[tuple[int, Sequence[str]]]

COLUMNS = (
    "id, session_key, user_id, created_at, last_seen, expires_at, revoked_at, ip_address, device, location, "
    "revoked_reason, revoked_by"
)
# The same columns of the sessions table joined as "s" (a bound key's session).
ALIASED = ", ".join(f"s.{c.strip()}" for c in COLUMNS.split(","))


def session_of(row: Iterable[Any]) -> Session:
    """A row of ``COLUMNS`` as a Session."""
    return Session(*row)


async def migrate(
    execute: Callable[..., Awaitable[Any]],
    current_version: Callable[[], Awaitable[int]],
    migrations: Migrations,
    *,
    record_sql: str,
    where: str,
    log: logging.Logger,
) -> None:
    """Bring a schema to the latest version, inside the caller's transaction.

    ``execute(sql, *args)`` runs a statement; ``record_sql`` inserts one version (with the
    backend's placeholder). A schema newer than this sidecar is refused, never touched.
    """
    latest = migrations[-1][0]
    await execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    current = await current_version()
    if current > latest:
        raise StoreUnavailableError(f"database schema version {current} is newer than this sidecar ({latest})")
    for version, statements in migrations:
        if version <= current:
            continue
        for statement in statements:
            await execute(statement)
        await execute(record_sql, version)
        log.info("%s: migrated to schema version %d", where, version)


def plan_admission(
    rows: Sequence[Session], limit: SessionLimit, newcomer_id: str
) -> tuple[list[Session], list[Session], bool]:
    """What admitting one more session of a user does, decided inside the backend's
    transaction that holds the user (``SessionStore.admit``).

    ``rows``: the user's unrevoked, unexpired sessions. Returns (sessions past their
    lifetime or idle timeout, revoked for that and not counted; sessions the limit pushes
    out; whether the newcomer is refused instead), each revoked one as it will be stored.
    """
    now = limit.now
    stale: list[Session] = []
    live: list[Session] = []
    for s in rows:
        if limit.created_before is not None and s.created_at < limit.created_before:
            stale.append(replace(s, revoked_at=now, revoked_reason=LIFETIME, revoked_by=POLICY_ACTOR))
        elif limit.seen_before is not None and s.last_seen < limit.seen_before:
            stale.append(replace(s, revoked_at=now, revoked_reason=IDLE, revoked_by=POLICY_ACTOR))
        else:
            live.append(s)
    excess = len(live) + 1 - limit.max_sessions
    if excess <= 0:
        return stale, [], False
    if limit.on_limit == "refuse_new":
        return stale, [], True
    if limit.on_limit == "revoke_oldest":
        order = sorted(live, key=lambda s: (s.created_at, s.id))
    else:  # revoke_least_recent: by last seen as the store knows it (activity is batched)
        order = sorted(live, key=lambda s: (s.last_seen, s.created_at, s.id))
    evict = [
        replace(s, revoked_at=now, revoked_reason=LIMIT, revoked_by=f"session:{newcomer_id}") for s in order[:excess]
    ]
    return stale, evict, False
