"""The end-user sessions API: list mine, log out one, log out all others."""

from __future__ import annotations

import logging
import re

from aiohttp import web

from sidecar.events.history import history_json
from sidecar.sessions.models import OTHERS, USER
from sidecar.web import audit
from sidecar.web.envelope import ApiError, page, session_json, success
from sidecar.web.keys import API_RATE, SERVICES
from sidecar.web.paging import next_cursor, page_params
from sidecar.web.requests import authenticate, client_of, uses_cookie

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


def _rate_limit(request: web.Request) -> None:
    """429 past the per-client budget (SECURITY: a stolen token cannot hammer the API)."""
    client = client_of(request, request.app[SERVICES].settings)
    allowed, wait = request.app[API_RATE].allow(str(client.ip))
    if not allowed:
        request.app[SERVICES].metrics.rate_limited.inc()
        raise ApiError(429, "Too many requests", {"Retry-After": str(wait)})


CROSS_SITE = "Cross-site request refused"


def _same_origin(request: web.Request) -> None:
    """403 for an unsafe request whose credential is the cookie, unless it is same-origin:
    ``Origin`` one of ``server.allowed_origins``, or ``Sec-Fetch-Site: same-origin``. A
    browser attaches the cookie to a cross-site request too; it never lets a page set
    either header, so a forged form or fetch cannot log anyone out (CSRF, SECURITY_CASES E45).
    A request with an Authorization header is not affected: no browser adds one by itself."""
    settings = request.app[SERVICES].settings
    if not uses_cookie(request, settings):
        return
    fetch_site = request.headers.getall("Sec-Fetch-Site", [])
    if fetch_site == ["same-origin"]:
        return
    origins = request.headers.getall("Origin", [])
    if len(origins) == 1 and origins[0].lower() in settings.server.allowed_origins:
        return
    log.info(
        "api: cross-site %s %s with a cookie credential refused (Origin %r)", request.method, request.path, origins[:1]
    )
    raise ApiError(403, CROSS_SITE)


async def list_sessions(request: web.Request) -> web.Response:
    _rate_limit(request)
    limit, before = page_params(request)
    claims, current = await authenticate(request)
    sessions = request.app[SERVICES].sessions
    found = await sessions.list_page(claims.user_id, limit=limit, before=before)
    data = [session_json(s, current_id=current, deadlines=sessions.deadlines(s)) for s in found.sessions]
    return page("Sessions retrieved successfully", data, next_cursor(found.next))


async def delete_other_sessions(request: web.Request) -> web.Response:
    _rate_limit(request)
    _same_origin(request)
    claims, current = await authenticate(request)
    services = request.app[SERVICES]
    # The caller's session by its own key: a token a refresh minted is bound to it.
    keep = await services.sessions.own_key(claims)
    revoked = await services.sessions.revoke_user(
        claims.user_id, keep_session_key=keep, reason=OTHERS, actor=f"user:{claims.user_id}", actor_session=current
    )
    services.metrics.revocations.labels("sessions", "others").inc()
    log.info(
        "All sessions deleted successfully: user %s revoked %d other session(s), kept %s",
        claims.user_id, len(revoked), current,
    )
    audit.record(
        "user.other_sessions_revoked", api="sessions", reason=OTHERS, actor_user=claims.user_id, actor_session=current,
        user=claims.user_id, kept_session=current, revoked_sessions=[s.id for s in revoked],
    )
    return web.Response(status=204)


async def get_session(request: web.Request) -> web.Response:
    _rate_limit(request)
    session_id = session_id_from(request.match_info["tail"])
    claims, current = await authenticate(request)
    sessions = request.app[SERVICES].sessions
    s = await sessions.get_active(session_id, claims.user_id)
    if s is None:
        raise ApiError(404, NOT_FOUND)
    return success(
        "Session retrieved successfully", session_json(s, current_id=current, deadlines=sessions.deadlines(s))
    )


async def delete_session(request: web.Request) -> web.Response:
    _rate_limit(request)
    _same_origin(request)
    session_id = session_id_from(request.match_info["tail"])
    claims, current = await authenticate(request)
    services = request.app[SERVICES]
    # Another user's id answers exactly like an unknown one (SECURITY_CASES C23).
    s = await services.sessions.revoke(
        session_id, claims.user_id, reason=USER, actor=f"user:{claims.user_id}", actor_session=current
    )
    if s is None:
        raise ApiError(404, NOT_FOUND)
    services.metrics.revocations.labels("sessions", "session").inc()
    log.info("Session deleted successfully: user %s revoked %s", claims.user_id, session_id)
    audit.record(
        "session.revoked", api="sessions", reason=USER, actor_user=claims.user_id, actor_session=current,
        user=s.user_id, session=s.id,
    )
    return web.Response(status=204)


async def session_history(request: web.Request) -> web.Response:
    """My events, newest first: sign-ins (with the new device / country / travel flags) and
    ended sessions, with why and by whom in words."""
    _rate_limit(request)
    limit, before = page_params(request)
    claims, _ = await authenticate(request)
    found = await request.app[SERVICES].sessions.history(claims.user_id, limit=limit, before=before)
    return page("History retrieved successfully", [history_json(e) for e in found.events], next_cursor(found.next))


def add_routes(app: web.Application) -> None:
    for path in ("/api/v1/sessions", "/api/v1/sessions/"):
        app.router.add_get(path, list_sessions, allow_head=False)
        app.router.add_delete(path, delete_other_sessions)
    # Before the {tail} pattern, which would read "history" as a malformed session id.
    for path in ("/api/v1/sessions/history", "/api/v1/sessions/history/"):
        app.router.add_get(path, session_history, allow_head=False)
    # One pattern for every id spelling, so a malformed id is a 400, not a routing 404.
    app.router.add_get(r"/api/v1/sessions/{tail:[\s\S]+}", get_session, allow_head=False)
    app.router.add_delete(r"/api/v1/sessions/{tail:[\s\S]+}", delete_session)
