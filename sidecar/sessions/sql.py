"""What the SQL backends share: the session columns, row -> Session, the migration runner.

Each backend keeps its own DDL (types differ: REAL vs DOUBLE PRECISION, COLLATE "C") and
its own placeholders; version N is the same logical schema on both, which a test checks.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from sidecar.errors import StoreUnavailableError
from sidecar.sessions.models import Session

# Versioned migrations: (version, statements), applied in order, one transaction each.
# Never edit a released step; append a new one.
Migrations = Sequence[tuple[int, Sequence[str]]]

COLUMNS = "id, session_key, user_id, created_at, last_seen, expires_at, revoked_at, ip_address, device, location"
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
