"""Sessions: models, the store protocol and its backends, and the rules that use them."""

from __future__ import annotations

from sidecar.config import StorageSettings
from sidecar.sessions.models import Changes, Cutoff, Session, Touch
from sidecar.sessions.store import SessionStore


def store_from_settings(settings: StorageSettings) -> SessionStore:
    """The backend ``storage.url`` names (not yet opened)."""
    if settings.backend == "sqlite":
        from sidecar.sessions.sqlite import SqliteStore

        return SqliteStore(settings.sqlite_path, busy_timeout_ms=settings.busy_timeout_ms)
    raise NotImplementedError(f"storage backend {settings.backend!r}")  # rejected by config.load


__all__ = ["Changes", "Cutoff", "Session", "SessionStore", "Touch", "store_from_settings"]
