"""Builders for the session tests: stored session rows, verified claims, the request's
client, a SessionService with fixed enrichment, and stores opened for a test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sidecar.clock import Clock
from sidecar.enrich.client_ip import ClientInfo
from sidecar.sessions import Session, SessionStore
from sidecar.sessions.service import SessionService
from sidecar.tokens.claims import Claims

NOW = 1_700_000_000.0  # the fixed "now" of the store and service tests
CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)

S = TypeVar("S", bound=SessionStore)


def stored_session(
    user: str = "alice",
    key: str | None = None,
    *,
    created: float = NOW,
    expires: float | None = None,
    revoked: float | None = None,
    **fields: Any,
) -> Session:
    """A session row as registration writes it: a new id, ``key`` (default a new sid),
    logged in and last seen at ``created``, expiring an hour later unless ``expires``."""
    row: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "session_key": key or f"sid:{uuid.uuid4()}",
        "user_id": user,
        "created_at": created,
        "last_seen": created,
        "expires_at": created + 3600 if expires is None else expires,
        "revoked_at": revoked,
        "ip_address": "203.0.113.9",
        "device": "Chrome on Windows",
        "location": "Unknown",
    }
    row.update(fields)
    return Session(**row)


def claims(
    user: str = "alice", key: str = "sid:one", *, iat: float | None = NOW, exp: float = NOW + 3600
) -> Claims:
    """What the verifier hands the session rules for a valid token of ``user``."""
    return Claims(user_id=user, session_key=key, expires_at=exp, issued_at=iat, not_before=None)


def unknown_client() -> ClientInfo:
    """The request's client when the test does not care: no address, no User-Agent."""
    return ClientInfo(ip=None, user_agent=None)


def session_service(store: SessionStore, clock: Clock, **options: Any) -> SessionService:
    """A SessionService over ``store`` (auto registration unless ``registration``), every
    device "Unknown device" and every address "Unknown"."""
    return SessionService(
        store,
        clock,
        registration=options.pop("registration", "auto"),
        describe_device=lambda ua: "Unknown device",
        locate=lambda ip: "Unknown",
        **options,
    )


@asynccontextmanager
async def opened(store: S) -> AsyncIterator[S]:
    """``store`` opened (its schema migrated) for the block, closed after it."""
    await store.open()
    try:
        yield store
    finally:
        await store.close()
