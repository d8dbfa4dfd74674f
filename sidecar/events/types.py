"""The event types (no imports: the config validates ``[[webhooks]].events`` against them)."""

from __future__ import annotations

from typing import Final

SESSION_CREATED: Final = "session.created"
SESSION_REVOKED: Final = "session.revoked"
USER_SESSIONS_REVOKED: Final = "user.sessions_revoked"
EVENT_TYPES: Final = (SESSION_CREATED, SESSION_REVOKED, USER_SESSIONS_REVOKED)
