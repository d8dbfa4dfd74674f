"""Sessions: models, the store protocol and its backends, and the rules that use them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar.config import StorageSettings
from sidecar.errors import StoreUnavailableError
from sidecar.sessions.models import Changes, Cutoff, ListPosition, Session, Touch
from sidecar.sessions.store import SessionStore

if TYPE_CHECKING:  # sidecar.events.models imports sidecar.sessions.models
    from sidecar.events.models import EventOptions


def store_from_settings(settings: StorageSettings, events: EventOptions | None = None) -> SessionStore:
    """The backend ``storage.url`` names (not yet opened).

    Raises ``StoreUnavailableError`` when the backend's optional driver is not installed.
    """
    if settings.backend == "postgresql":
        try:
            from sidecar.sessions.postgres import PostgresStore
        except ModuleNotFoundError as e:
            if e.name != "asyncpg":
                raise
            raise StoreUnavailableError(
                "storage.url names PostgreSQL, which needs asyncpg: pip install 'sidecar[postgres]'"
            ) from e
        return PostgresStore(
            settings.url,
            pool_min_size=settings.pool_min_size,
            pool_max_size=settings.pool_max_size,
            statement_timeout_ms=settings.statement_timeout_ms,
            connect_timeout_seconds=settings.connect_timeout_seconds,
            events=events,
        )
    from sidecar.sessions.sqlite import SqliteStore

    return SqliteStore(settings.sqlite_path, busy_timeout_ms=settings.busy_timeout_ms, events=events)


__all__ = ["Changes", "Cutoff", "ListPosition", "Session", "SessionStore", "Touch", "store_from_settings"]
