"""The test credentials and signed tokens (HS256 by default; any key and algorithm PyJWT signs)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

import jwt

SECRET = "test-secret-for-hs256-that-is-long-enough-0123456789"
ADMIN_KEY = "test-admin-key-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


class _Omit:
    def __repr__(self) -> str:
        return "OMIT"


OMIT: Any = _Omit()  # pass as a claim value to drop a default claim, e.g. mint(iat=OMIT)


def mint(
    sub: str | int = "alice",
    *,
    key: Any = SECRET,
    algorithm: str = "HS256",
    ttl: float = 3600,
    now: float | None = None,
    headers: Mapping[str, Any] | None = None,
    sid: str | bool | None = True,
    **claims: Any,
) -> str:
    """A signed token. ``sid=True`` gives a fresh session id; ``sid=None`` omits it.

    ``claims`` add to or replace ``sub``, ``iat``, ``exp`` and ``sid``; OMIT drops one.
    """
    issued = int(now if now is not None else time.time())
    payload: dict[str, Any] = {"sub": sub, "iat": issued, "exp": issued + int(ttl)}
    if sid is True:
        payload["sid"] = str(uuid.uuid4())
    elif isinstance(sid, str):
        payload["sid"] = sid
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not OMIT}
    return jwt.encode(payload, key, algorithm=algorithm, headers=dict(headers) if headers else None)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
