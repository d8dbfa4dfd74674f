"""The end-user sessions API: list mine, log out one, log out all others."""

from __future__ import annotations

import logging
import re

from aiohttp import web

from sidecar.web.envelope import ApiError, session_json, success
from sidecar.web.keys import SERVICES
from sidecar.web.requests import authenticate

log = logging.getLogger(__name__)

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
NOT_FOUND = "Session not found"


def session_id_from(raw: str) -> str:
    """A canonical lower-case UUID, or 400 "Invalid session id" (SECURITY_CASES C24)."""
    if raw.endswith("/"):
        raw = raw[:-1]
    if not _UUID.fullmatch(raw):
        raise ApiError(400, "Invalid session id")
    return raw.lower()


async def list_sessions(request: web.Request) -> web.Response:
    claims, current = await authenticate(request)
    sessions = await request.app[SERVICES].sessions.list_active(claims.user_id)
    data = [session_json(s, current_id=current) for s in sessions]
    return success("Sessions retrieved successfully", data)


async def delete_other_sessions(request: web.Request) -> web.Response:
    claims, current = await authenticate(request)
    revoked = await request.app[SERVICES].sessions.revoke_user(claims.user_id, keep_session_key=claims.session_key)
    log.info(
        "All sessions deleted successfully: user %s revoked %d other session(s), kept %s",
        claims.user_id, len(revoked), current,
    )
    return web.Response(status=204)


async def get_session(request: web.Request) -> web.Response:
    session_id = session_id_from(request.match_info["tail"])
    claims, current = await authenticate(request)
    s = await request.app[SERVICES].sessions.get_active(session_id, claims.user_id)
    if s is None:
        raise ApiError(404, NOT_FOUND)
    return success("Session retrieved successfully", session_json(s, current_id=current))


async def delete_session(request: web.Request) -> web.Response:
    session_id = session_id_from(request.match_info["tail"])
    claims, _ = await authenticate(request)
    # Another user's id answers exactly like an unknown one (SECURITY_CASES C23).
    s = await request.app[SERVICES].sessions.revoke(session_id, claims.user_id)
    if s is None:
        raise ApiError(404, NOT_FOUND)
    log.info("Session deleted successfully: user %s revoked %s", claims.user_id, session_id)
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    for path in ("/api/v1/sessions", "/api/v1/sessions/"):
        app.router.add_get(path, list_sessions, allow_head=False)
        app.router.add_delete(path, delete_other_sessions)
    # One pattern for every id spelling, so a malformed id is a 400, not a routing 404.
    app.router.add_get(r"/api/v1/sessions/{tail:[\s\S]+}", get_session, allow_head=False)
    app.router.add_delete(r"/api/v1/sessions/{tail:[\s\S]+}", delete_session)
