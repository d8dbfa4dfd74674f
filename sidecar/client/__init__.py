"""The auth service's side of the sidecar: a typed client of the admin listener.

Register a session at login, revoke it at logout, revoke a user on a password change,
list a user's sessions::

    from sidecar.client import SidecarAdmin            # or AsyncSidecarAdmin, same methods, awaited

    admin = SidecarAdmin("http://127.0.0.1:8081", api_key=ADMIN_KEY)
    session, created = admin.register(token, ip_address=ip, user_agent=ua)
    admin.revoke_session(session.id)
    admin.revoke_user(user_id)

Needs only aiohttp and the standard library; it imports nothing of the server.
"""

from __future__ import annotations

from sidecar.client._check import Identity
from sidecar.client._protocol import Registration, SessionInfo
from sidecar.client.aio import AsyncSidecarAdmin
from sidecar.client.blocking import SidecarAdmin
from sidecar.client.errors import (
    AdminKeyRefusedError,
    BadRequestError,
    SessionRevokedError,
    SidecarClientError,
    SidecarUnavailableError,
    TokenRejectedError,
)

__all__ = [
    "AdminKeyRefusedError",
    "AsyncSidecarAdmin",
    "BadRequestError",
    "Identity",
    "Registration",
    "SessionInfo",
    "SessionRevokedError",
    "SidecarAdmin",
    "SidecarClientError",
    "SidecarUnavailableError",
    "TokenRejectedError",
]
