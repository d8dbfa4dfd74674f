"""Cursor pagination of the session listings (OWASP API4: no unbounded answers).

``?limit=`` (default ``DEFAULT_LIMIT``, at most ``MAX_LIMIT``) and ``?before=<cursor>``,
where a cursor is the opaque ``next`` of the previous page: base64url (no padding) of the
JSON ``[created_at, id]`` of that page's last session. Python's JSON writes a float's
shortest round-tripping form, so the position comes back bit for bit and the store's
keyset comparison is exact. A cursor names a position in the caller's own listing only
(the user comes from the token or the path), so a crafted one can reveal nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Final

from aiohttp import web

from sidecar.sessions.models import ListPosition
from sidecar.web.envelope import ApiError

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
LIMIT_MESSAGE: Final = f"Parameter 'limit' must be an integer from 1 to {MAX_LIMIT}"
CURSOR_MESSAGE: Final = "Invalid cursor"

_LIMIT = re.compile(r"[0-9]{1,4}")
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,200}")
_MAX_ID: Final = 100


def encode_cursor(position: ListPosition) -> str:
    raw = json.dumps([position.created_at, position.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> ListPosition:
    """The position a cursor names; ``ApiError(400, "Invalid cursor")`` for anything else."""
    if not _CURSOR.fullmatch(cursor):
        raise ApiError(400, CURSOR_MESSAGE)
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError) as e:
        raise ApiError(400, CURSOR_MESSAGE) from e
    if not (isinstance(value, list) and len(value) == 2):
        raise ApiError(400, CURSOR_MESSAGE)
    created_at, session_id = value
    if isinstance(created_at, bool) or not isinstance(created_at, int | float):
        raise ApiError(400, CURSOR_MESSAGE)
    try:
        created = float(created_at)
    except OverflowError as e:
        raise ApiError(400, CURSOR_MESSAGE) from e
    if not math.isfinite(created) or not isinstance(session_id, str) or not 0 < len(session_id) <= _MAX_ID:
        raise ApiError(400, CURSOR_MESSAGE)
    return ListPosition(created, session_id)


def _one(request: web.Request, name: str, message: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:  # two answers to one question: refuse rather than pick one
        raise ApiError(400, message)
    return values[0] if values else None


def page_params(request: web.Request) -> tuple[int, ListPosition | None]:
    """``(limit, before)`` from the query string, or a 400 that says which is wrong."""
    raw_limit = _one(request, "limit", LIMIT_MESSAGE)
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        if not _LIMIT.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= MAX_LIMIT:
            raise ApiError(400, LIMIT_MESSAGE)
        limit = int(raw_limit)
    raw_cursor = _one(request, "before", CURSOR_MESSAGE)
    return limit, None if raw_cursor is None else decode_cursor(raw_cursor)


def next_cursor(position: ListPosition | None) -> str | None:
    return None if position is None else encode_cursor(position)
