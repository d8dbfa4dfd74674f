"""The admin listener: what the auth service and operators call (loopback by default)."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST

from sidecar.errors import InvalidToken, SessionRejected
from sidecar.sessions.service import ClientInfo
from sidecar.web import audit
from sidecar.web.api import NOT_FOUND, session_id_from
from sidecar.web.envelope import ApiError, page, session_json, success
from sidecar.web.keys import ADMIN_ACTOR, SERVICES
from sidecar.web.paging import next_cursor, page_params

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
_ADMIN_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="sidecar-admin"'}


@web.middleware
async def require_api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    keys = request.app[SERVICES].settings.admin.api_keys
    values = request.headers.getall("Authorization", [])
    given = values[0].strip() if len(values) == 1 else ""
    scheme, _, key = given.partition(" ")
    matched: str | None = None
    if scheme.lower() == "bearer" and key:
        candidate = key.strip().encode()
        # Compare against every key in constant time, whatever matches first.
        for k in keys:
            if hmac.compare_digest(candidate, k.encode()):
                matched = k
    if matched is None:
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


async def register_session(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    body = await _json_body(request)
    token = body.get("token")
    if not isinstance(token, str) or not token:
        raise ApiError(400, "Field 'token' must be a non-empty string")
    ip_raw = body.get("ip_address")
    ip = None
    if ip_raw is not None:
        if not isinstance(ip_raw, str):
            raise ApiError(400, "Field 'ip_address' must be an IP address")
        try:
            ip = ipaddress.ip_address(ip_raw.strip())
        except ValueError as e:
            raise ApiError(400, "Field 'ip_address' must be an IP address") from e
    user_agent = body.get("user_agent")
    if user_agent is not None and (not isinstance(user_agent, str) or len(user_agent) > 4096):
        raise ApiError(400, "Field 'user_agent' must be a string of at most 4096 characters")
    try:
        claims = await services.verifier.verify(token)
    except InvalidToken as e:
        log.info("admin: registration refused, token invalid (%s)", e.reason)
        raise ApiError(422, "Token is not valid") from e
    try:
        session, created = await services.sessions.register(claims, ClientInfo(ip=ip, user_agent=user_agent))
    except SessionRejected as e:
        log.info("admin: registration refused (%s) for user %s", e.reason, claims.user_id)
        raise ApiError(409, "Session is revoked") from e
    if created:
        return success("Session registered successfully", session_json(session, with_user=True), 201)
    return success("Session already registered", session_json(session, with_user=True), 200)


async def list_user_sessions(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    limit, before = page_params(request)
    found = await request.app[SERVICES].sessions.list_page(user_id, limit=limit, before=before)
    data = [session_json(s, with_user=True) for s in found.sessions]
    return page("Sessions retrieved successfully", data, next_cursor(found.next))


async def revoke_user(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    services = request.app[SERVICES]
    revoked = await services.sessions.revoke_user(user_id, keep_session_key=None)
    services.metrics.revocations.labels("admin", "user").inc()
    log.info("admin: revoked user %s: %d session(s) and every earlier token", user_id, len(revoked))
    audit.record(
        "user.revoked", api="admin", actor_key=request[ADMIN_ACTOR], user=user_id,
        revoked_sessions=[s.id for s in revoked],
    )
    return web.Response(status=204)


async def revoke_session(request: web.Request) -> web.Response:
    session_id = session_id_from(request.match_info["tail"])
    services = request.app[SERVICES]
    s = await services.sessions.revoke(session_id, None)
    if s is None:
        raise ApiError(404, NOT_FOUND)
    services.metrics.revocations.labels("admin", "session").inc()
    log.info("admin: revoked session %s of user %s", s.id, s.user_id)
    audit.record("session.revoked", api="admin", actor_key=request[ADMIN_ACTOR], user=s.user_id, session=s.id)
    return web.Response(status=204)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[SERVICES].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/admin/v1/sessions", register_session)
    app.router.add_delete(r"/admin/v1/sessions/{tail:[\s\S]+}", revoke_session)
    for path in ("/admin/v1/users/{user_id}/sessions", "/admin/v1/users/{user_id}/sessions/"):
        app.router.add_get(path, list_user_sessions, allow_head=False)
        app.router.add_delete(path, revoke_user)
