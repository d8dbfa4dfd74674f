"""The admin listener: what the auth service and operators call (loopback by default)."""

from __future__ import annotations

import binascii
import hmac
import json
import logging
import re
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST

from sidecar.enrich.client_ip import ClientInfo, IPAddress, parse_address
from sidecar.errors import InvalidTokenError, SessionRejectedError
from sidecar.events.history import history_json
from sidecar.sessions.models import ADMIN, ADMIN_USER, LIFETIME
from sidecar.sessions.service import SESSION_LIMIT
from sidecar.web import audit, oauth2
from sidecar.web.api import NOT_FOUND, session_id_from
from sidecar.web.envelope import ApiError, page, session_json, success
from sidecar.web.keys import ADMIN_ACTOR, SERVICES
from sidecar.web.paging import next_cursor, page_params

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
MAX_USER_AGENT = 4096
# C0 controls but HTAB, DEL, C1 controls and lone surrogates (which no store can encode).
_NOT_IN_A_HEADER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")
_ADMIN_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="sidecar-admin"'}
_OAUTH_CHALLENGE = {"WWW-Authenticate": 'Basic realm="sidecar-admin", Bearer realm="sidecar-admin"'}


def _basic_candidate(credentials: str) -> bytes | None:
    """The admin key a ``Basic`` credential offers (RFC 7617): the password, or the user
    name when the password is empty (``curl -u KEY:``); the other half is ignored."""
    try:
        decoded = binascii.a2b_base64(credentials.strip().encode("ascii"), strict_mode=True)
        user, colon, password = decoded.decode("utf-8").partition(":")
    except (UnicodeError, ValueError):
        return None
    if not colon:
        return None
    return (password or user).encode() or None


@web.middleware
async def require_api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    keys = request.app[SERVICES].settings.admin.api_keys
    values = request.headers.getall("Authorization", [])
    given = values[0].strip() if len(values) == 1 else ""
    scheme, _, key = given.partition(" ")
    oauth = request.path in oauth2.PATHS
    candidate: bytes | None = None
    if scheme.lower() == "bearer" and key:
        candidate = key.strip().encode()
    elif oauth and scheme.lower() == "basic" and key:
        # RFC 7662 section 2.1 / RFC 7009 section 2.1 clients authenticate with HTTP Basic.
        # Only on these two routes: a browser remembers Basic credentials and replays them
        # on cross-site requests, so the other admin routes accept only Bearer.
        candidate = _basic_candidate(key)
    matched: str | None = None
    if candidate is not None:
        # Compare against every key in constant time, whatever matches first.
        for k in keys:
            if hmac.compare_digest(candidate, k.encode()):
                matched = k
    if matched is None:
        if oauth:
            return oauth2.oauth_error(401, "invalid_client", _OAUTH_CHALLENGE)
        raise ApiError(401, "Invalid or missing admin API key", _ADMIN_CHALLENGE)
    request[ADMIN_ACTOR] = audit.key_fingerprint(matched)
    return await handler(request)


def _user_id(request: web.Request) -> str:
    user_id = request.match_info["user_id"]
    if not (0 < len(user_id) <= 255) or not all(0x21 <= ord(c) <= 0x7E for c in user_id):
        raise ApiError(400, "Invalid user id")
    return user_id


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, "Request body too large")
    return json_object_body(await request.content.read(MAX_BODY + 1))


def json_object_body(raw: bytes) -> dict[str, Any]:
    """The JSON object ``raw`` holds, or ``ApiError`` 413 (over ``MAX_BODY``) or 400 (anything else)."""
    if len(raw) > MAX_BODY:
        raise ApiError(413, "Request body too large")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ApiError(400, "Body must be a JSON object") from e
    if not isinstance(body, dict):
        raise ApiError(400, "Body must be a JSON object")
    return body


def _ip_address(raw: Any) -> IPAddress | None:
    """The client address as the check path reads one (``parse_address``: zone ids dropped,
    ``[v6]:port`` and ``v4:port`` accepted); anything else, or any control or non-ASCII
    character anywhere in it (a zone id is an interface name), is a 400."""
    if raw is None:
        return None
    ip = parse_address(raw) if isinstance(raw, str) and raw.isascii() and raw.isprintable() else None
    if ip is None:
        raise ApiError(400, "Field 'ip_address' must be an IP address")
    return ip


def _user_agent(raw: Any) -> str | None:
    """The login request's User-Agent: at most 4096 characters, none of them a control
    character. A real header cannot carry one (only HTAB, which passes), so a value that
    does is refused (400) rather than quietly cleaned."""
    if raw is None:
        return None
    if not isinstance(raw, str) or len(raw) > MAX_USER_AGENT or _NOT_IN_A_HEADER.search(raw):
        raise ApiError(
            400,
            f"Field 'user_agent' must be a string of at most {MAX_USER_AGENT} characters without control characters",
        )
    return raw


# Why a registration was refused, as the auth service is told (409).
_REFUSED = {
    SESSION_LIMIT: "Session limit reached: the user has sessions.max_sessions_per_user active sessions",
    LIFETIME: "Session lifetime is over: the user must log in again",
}


def _include_revoked(request: web.Request) -> bool:
    values = request.query.getall("include_revoked", [])
    if not values:
        return False
    if len(values) > 1 or values[0] not in ("true", "false"):
        raise ApiError(400, "Parameter 'include_revoked' must be true or false")
    return values[0] == "true"


async def register_session(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    body = await _json_body(request)
    token = body.get("token")
    if not isinstance(token, str) or not token:
        raise ApiError(400, "Field 'token' must be a non-empty string")
    ip = _ip_address(body.get("ip_address"))
    user_agent = _user_agent(body.get("user_agent"))
    try:
        claims = await services.verifier.verify(token)
    except InvalidTokenError as e:
        log.info("admin: registration refused, token invalid (%s)", e.reason)
        raise ApiError(422, "Token is not valid") from e
    try:
        session, created = await services.sessions.register(claims, ClientInfo(ip=ip, user_agent=user_agent))
    except SessionRejectedError as e:
        log.info("admin: registration refused (%s) for user %s", e.reason, claims.user_id)
        raise ApiError(409, _REFUSED.get(e.reason, "Session is revoked")) from e
    shown = session_json(session, with_user=True, deadlines=services.sessions.deadlines(session))
    if created:
        return success("Session registered successfully", shown, 201)
    return success("Session already registered", shown, 200)


async def list_user_sessions(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    limit, before = page_params(request)
    include_revoked = _include_revoked(request)
    sessions = request.app[SERVICES].sessions
    found = await sessions.list_page(user_id, limit=limit, before=before, include_revoked=include_revoked)
    data = [
        session_json(s, with_user=True, deadlines=sessions.deadlines(s) if s.revoked_at is None else (None, None))
        for s in found.sessions
    ]
    return page("Sessions retrieved successfully", data, next_cursor(found.next))


async def list_user_events(request: web.Request) -> web.Response:
    """A user's events, newest first, with the codes behind the words."""
    user_id = _user_id(request)
    limit, before = page_params(request)
    found = await request.app[SERVICES].sessions.history(user_id, limit=limit, before=before)
    return page(
        "Events retrieved successfully", [history_json(e, raw=True) for e in found.events], next_cursor(found.next)
    )


async def revoke_user(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    services = request.app[SERVICES]
    revoked = await services.sessions.revoke_user(
        user_id, keep_session_key=None, reason=ADMIN_USER, actor=f"admin:{request[ADMIN_ACTOR]}"
    )
    services.metrics.revocations.labels("admin", "user").inc()
    log.info("admin: revoked user %s: %d session(s) and every earlier token", user_id, len(revoked))
    audit.record(
        "user.revoked", api="admin", reason=ADMIN_USER, actor_key=request[ADMIN_ACTOR], user=user_id,
        revoked_sessions=[s.id for s in revoked],
    )
    return web.Response(status=204)


async def revoke_session(request: web.Request) -> web.Response:
    session_id = session_id_from(request.match_info["tail"])
    services = request.app[SERVICES]
    s = await services.sessions.revoke(session_id, None, reason=ADMIN, actor=f"admin:{request[ADMIN_ACTOR]}")
    if s is None:
        raise ApiError(404, NOT_FOUND)
    services.metrics.revocations.labels("admin", "session").inc()
    log.info("admin: revoked session %s of user %s", s.id, s.user_id)
    audit.record(
        "session.revoked", api="admin", reason=ADMIN, actor_key=request[ADMIN_ACTOR], user=s.user_id, session=s.id
    )
    return web.Response(status=204)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[SERVICES].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
    oauth2.add_routes(app)
    app.router.add_post("/admin/v1/sessions", register_session)
    app.router.add_delete(r"/admin/v1/sessions/{tail:[\s\S]+}", revoke_session)
    for path in ("/admin/v1/users/{user_id}/sessions", "/admin/v1/users/{user_id}/sessions/"):
        app.router.add_get(path, list_user_sessions, allow_head=False)
        app.router.add_delete(path, revoke_user)
    for path in ("/admin/v1/users/{user_id}/events", "/admin/v1/users/{user_id}/events/"):
        app.router.add_get(path, list_user_events, allow_head=False)
