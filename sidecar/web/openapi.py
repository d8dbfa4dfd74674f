"""The OpenAPI 3.1 description of the public listener, served at ``GET /api/v1/openapi.json``.

Built once from Python literals (no file is read, nothing is computed per request) and kept
true by ``tests/web/test_openapi.py``, which walks the router and validates real responses
against it, and by the schemathesis run in ``tests/web/test_schemathesis.py``.
Of the admin listener only the event history (``GET /admin/v1/users/{user_id}/events``) is
described, under a path-level ``servers`` entry naming that listener: the rest of it is for
the auth service and operators, not API clients.
"""

from __future__ import annotations

import json
from typing import Any, Final

from aiohttp import web

from sidecar import __version__
from sidecar.tokens.bearer import BEARER_CHALLENGE
from sidecar.web.paging import CURSOR_MESSAGE, DEFAULT_LIMIT, LIMIT_MESSAGE, MAX_LIMIT

PATH: Final = "/api/v1/openapi.json"

# The check answers every method (Envoy forwards the client's), so every method is described.
CHECK_METHODS: Final = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

_UUID_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_RFC3339_UTC = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"
# Identifiers are visible ASCII, 1-255 characters (README, "Mapping your auth service's tokens").
_IDENTIFIER_PATTERN = "^[\\x21-\\x7e]{1,255}$"


def _schema(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _header(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/headers/{name}"}


def _response(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/responses/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(status: int, message: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """An error response: the envelope with this status and this exact message."""
    schema = {
        "allOf": [
            _schema("Error"),
            {"properties": {"status_code": {"const": status}, "message": {"const": message}}},
        ]
    }
    return {
        "description": description,
        "headers": {"Cache-Control": _header("NoStore"), **(headers or {})},
        "content": _json(schema),
    }


def _success(message: str, data: dict[str, Any], description: str, *, paged: bool = False) -> dict[str, Any]:
    """A success response: the envelope with this exact message; ``paged`` ones carry ``next``."""
    properties: dict[str, Any] = {"status_code": {"const": 200}, "message": {"const": message}, "data": data}
    part: dict[str, Any] = {"properties": properties}
    if paged:
        part["required"] = ["next"]
    else:
        properties["next"] = False  # only listings have it
    schema = {"allOf": [_schema("Success"), part]}
    return {"description": description, "headers": {"Cache-Control": _header("NoStore")}, "content": _json(schema)}


def _error_of(status: int, messages: tuple[str, ...], description: str) -> dict[str, Any]:
    """An error response that may carry any one of ``messages``."""
    schema = {
        "allOf": [
            _schema("Error"),
            {"properties": {"status_code": {"const": status}, "message": {"enum": list(messages)}}},
        ]
    }
    return {"description": description, "headers": {"Cache-Control": _header("NoStore")}, "content": _json(schema)}


_PAGE_PARAMETERS = [
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": (
            f"How many sessions per page: {DEFAULT_LIMIT} when absent, at most {MAX_LIMIT}. Anything "
            "else (0, 1001, not a decimal integer, given twice) is a 400."
        ),
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    },
    {
        "name": "before",
        "in": "query",
        "required": False,
        "description": (
            "Continue a listing: the `next` of the previous page, as given (an opaque string). "
            "Sessions added or revoked between two page reads make no other session skip a page "
            "or repeat. A malformed cursor is a 400."
        ),
        "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[A-Za-z0-9_-]+$"},
    },
]


_SESSION_ID_PARAMETER = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "A session id (UUID) as listed by `GET /api/v1/sessions/`. Anything else is a 400.",
    "schema": {"type": "string", "format": "uuid"},
}


_USER_ID_PARAMETER = {
    "name": "user_id",
    "in": "path",
    "required": True,
    "description": "The user id as tokens carry it (visible ASCII, 1-255 characters). Anything else is a 400.",
    "schema": {"type": "string", "pattern": _IDENTIFIER_PATTERN},
}
ADMIN_SERVER: Final = {
    "url": "http://127.0.0.1:8081",
    "description": "The admin listener (`[admin]` host and port), not the public one.",
}
ADMIN_CHALLENGE: Final = 'Bearer realm="sidecar-admin"'


def _history_item(*, admin: bool) -> dict[str, Any]:
    timestamp = {"type": "string", "format": "date-time", "pattern": _RFC3339_UTC}
    text = {"type": ["string", "null"]}
    flag = {"type": ["boolean", "null"], "description": "session.created only (null for the others)."}
    properties: dict[str, Any] = {
        "id": {"type": "string", "format": "uuid", "description": "The event's id (the webhooks' webhook-id)."},
        "time": timestamp,
        "event": {"enum": ["session.created", "session.revoked", "user.sessions_revoked"]},
        "summary": {"type": "string", "description": '"New sign-in", "Session ended", "Sessions ended".'},
        "session_id": {
            "type": ["string", "null"],
            "description": "The session it is about (for user.sessions_revoked: the session the user acted from).",
        },
        "device": {**text, "description": '"Chrome on Windows"...: of that session.'},
        "ip_address": text,
        "location": text,
        "reason": {**text, "description": 'Why a session ended, in words: "logged out", "idle timeout"...'},
        "actor": {**text, "description": 'Who ended it: "you, from Chrome on Windows", "an administrator"...'},
        "new_device": {**flag, "description": "A device this user had not signed in on within the history window."},
        "new_country": {**flag, "description": "A country this user had not signed in from within the window."},
        "unusual_travel": {
            **flag,
            "description": "Getting here from the previous sign-in's place in the time between them is "
            "faster than `events.max_travel_kmh`.",
        },
        "count": {
            "type": ["integer", "null"], "description": "user.sessions_revoked only: how many sessions it ended."
        },
    }
    if admin:
        properties.update({
            "user_id": {"type": "string"},
            "reason_code": {**text, "description": "The stored reason: user, others, admin, admin_user, idle..."},
            "actor_code": {**text, "description": 'The stored actor: "user:<id>", "admin:sha256:<fingerprint>"...'},
            "country": {**text, "description": "ISO 3166-1 alpha-2, session.created only."},
        })
    return {
        "type": "object",
        "description": "One event of the user's history." + (" With the codes behind the words." if admin else ""),
        "required": sorted(properties),
        "additionalProperties": False,
        "properties": properties,
    }


def _history_paths() -> dict[str, Any]:
    return {
        "/api/v1/sessions/history/": {
            "get": {
                "tags": ["sessions"],
                "operationId": "session_history",
                "summary": "My history: sign-ins and ended sessions, newest first, a page at a time",
                "description": (
                    "Newest first, ties by id; paged like the session listing (`limit`, `before`, "
                    "`next`). Sign-ins carry the new_device / new_country / unusual_travel flags; "
                    "ended sessions say why and by whom in words."
                ),
                "security": _credentials(),
                "parameters": _PAGE_PARAMETERS,
                "responses": {
                    "200": _success(
                        "History retrieved successfully",
                        {"type": "array", "items": _schema("HistoryEvent")},
                        "One page of the caller's events.",
                        paged=True,
                    ),
                    "400": _response("InvalidPage"),
                    "401": _response("Unauthorized"),
                    "429": _response("RateLimited"),
                    "503": _response("StoreUnavailableError"),
                },
            },
        },
        "/admin/v1/users/{user_id}/events": {
            "servers": [ADMIN_SERVER],
            "parameters": [_USER_ID_PARAMETER],
            "get": {
                "tags": ["admin"],
                "operationId": "admin_user_events",
                "summary": "A user's events, newest first, a page at a time (admin listener)",
                "security": [{"adminKey": []}],
                "parameters": _PAGE_PARAMETERS,
                "responses": {
                    "200": _success(
                        "Events retrieved successfully",
                        {"type": "array", "items": _schema("AdminHistoryEvent")},
                        "One page of the user's events.",
                        paged=True,
                    ),
                    "400": _error_of(
                        400, (LIMIT_MESSAGE, CURSOR_MESSAGE, "Invalid user id"), "A bad page parameter or user id."
                    ),
                    "401": _error(
                        401,
                        "Invalid or missing admin API key",
                        "No `Authorization: Bearer <admin API key>` with one of `admin.api_keys`.",
                        {"WWW-Authenticate": _header("AdminChallenge")},
                    ),
                    "503": _response("StoreUnavailableError"),
                },
            },
        },
    }


# Either credential: the bearer header, or (jwt.cookie_name) the cookie.
def _credentials() -> list[dict[str, list[str]]]:
    return [{"bearer": []}, {"cookie": []}]


def _check_operation(method: str, *, with_tail: bool) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "tags": ["check"],
        "operationId": f"check_{'tail_' if with_tail else ''}{method}",
        "summary": "Gateway check (nginx auth_request, Envoy ext_authz)",
        "description": (
            "Verifies the bearer token and that its session is active. Answers 200 (allow) or "
            "401 (deny) whatever the method and sub-path: never a redirect or another 4xx. The "
            "request body is never read."
        ),
        "security": _credentials(),
        "responses": {
            "200": _response("Allow"),
            "401": _response("Deny"),
            "503": _response("Overloaded"),
        },
    }
    if with_tail:
        operation["parameters"] = [
            {
                "name": "tail",
                "in": "path",
                "required": True,
                "description": "Any sub-path, e.g. the `path_prefix` Envoy prepends; it does not change the answer.",
                "schema": {"type": "string"},
            }
        ]
    return operation


def _health_paths() -> dict[str, Any]:
    health = {
        "tags": ["health"],
        "summary": "Liveness: the process is up and its event loop answers",
        "security": [],
        "responses": {
            "200": {
                "description": "Alive; `pid` says which worker answered.",
                "headers": {"Cache-Control": _header("NoStore")},
                "content": _json(_schema("Health")),
            }
        },
    }
    ready = {
        "tags": ["health"],
        "summary": "Readiness: the store answers, revocations are current, Redis and JWKS when configured",
        "security": [],
        "responses": {
            "200": {
                "description": "Ready: every check is ok.",
                "headers": {"Cache-Control": _header("NoStore")},
                "content": _json(_schema("Ready")),
            },
            "503": {
                "description": "Not ready: at least one check failed (take this process out of rotation).",
                "headers": {"Cache-Control": _header("NoStore")},
                "content": _json(_schema("NotReady")),
            },
        },
    }
    # aiohttp answers HEAD wherever it answers GET here (no body, same headers).
    return {
        "/healthz": {
            "get": {**health, "operationId": "healthz"},
            "head": {**health, "operationId": "healthz_head"},
        },
        "/readyz": {
            "get": {**ready, "operationId": "readyz"},
            "head": {**ready, "operationId": "readyz_head"},
        },
    }


def _components() -> dict[str, Any]:
    timestamp = {"type": "string", "format": "date-time", "pattern": _RFC3339_UTC}
    return {
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": (
                    "`Authorization: Bearer <access token>`: the JWT your auth service issued. "
                    "Exactly one Authorization header; the scheme name is case-insensitive."
                ),
            },
            "adminKey": {
                "type": "http",
                "scheme": "bearer",
                "description": "The admin listener only: `Authorization: Bearer <one of admin.api_keys>`.",
            },
            "cookie": {
                "type": "apiKey",
                "in": "cookie",
                "name": "access_token",
                "description": (
                    "Only when `jwt.cookie_name` is set (the name here is an example: it is that "
                    "key's value): the access token in that cookie, used when the request has no "
                    "Authorization header. A header wins; a header and a cookie that disagree, or "
                    "two cookies of the name with different values, are a 401. With the cookie as "
                    "credential, a DELETE must be same-origin (`Origin` in `server.allowed_origins`, "
                    "or `Sec-Fetch-Site: same-origin`), else 403."
                ),
            },
        },
        "headers": {
            "NoStore": {
                "required": True,
                "description": "No cache may keep this answer (a cached allow would outlive a revocation).",
                "schema": {"type": "string", "const": "no-store"},
            },
            "BearerChallenge": {
                "required": True,
                "description": "RFC 6750 section 3.",
                "schema": {"type": "string", "const": BEARER_CHALLENGE},
            },
            "RetryAfter": {
                "required": True,
                "description": "Seconds to wait before trying again (RFC 9110 section 10.2.3).",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            },
            "Allow": {
                "required": True,
                "description": "The methods this path answers.",
                "schema": {"type": "string"},
            },
            "AdminChallenge": {
                "required": True,
                "description": "The admin listener's challenge.",
                "schema": {"type": "string", "const": ADMIN_CHALLENGE},
            },
        },
        "schemas": {
            "Error": {
                "type": "object",
                "description": "Every error of the public listener.",
                "required": ["status", "status_code", "message", "data"],
                "additionalProperties": False,
                "properties": {
                    "status": {"const": "error"},
                    "status_code": {"type": "integer", "minimum": 400, "maximum": 599},
                    "message": {"type": "string", "minLength": 1},
                    "data": {"type": "object", "maxProperties": 0},
                },
            },
            "Success": {
                "type": "object",
                "description": "Every successful answer of the sessions API that has a body.",
                "required": ["status", "status_code", "message", "data"],
                "additionalProperties": False,
                "properties": {
                    "status": {"const": "success"},
                    "status_code": {"type": "integer", "minimum": 200, "maximum": 299},
                    "message": {"type": "string", "minLength": 1},
                    "data": {},
                    "next": {
                        "type": ["string", "null"],
                        "description": (
                            "Listings only: the cursor of the next page (pass it as `?before=`), "
                            "null on the last page."
                        ),
                    },
                },
            },
            "Session": {
                "type": "object",
                "description": "One login of the caller on one device.",
                "required": [
                    "id", "ip_address", "location", "device", "login_time", "last_seen", "expires_at", "current",
                ],
                "additionalProperties": False,
                "properties": {
                    "id": {"type": "string", "format": "uuid", "pattern": _UUID_PATTERN},
                    "ip_address": {
                        "type": ["string", "null"],
                        "description": "The client address when the session was registered (trusted proxies honoured).",
                    },
                    "location": {
                        "type": "string",
                        "description": '"City, Country", "Country", "Private network" or "Unknown".',
                    },
                    "device": {"type": "string", "description": '"Chrome on Windows", "curl", "Unknown device"...'},
                    "login_time": timestamp,
                    "last_seen": timestamp,
                    "expires_at": {**timestamp, "description": "When the latest token seen for this session expires."},
                    "current": {"type": "boolean", "description": "Whether this is the caller's own session."},
                    "idle_expires_at": {
                        **timestamp,
                        "description": (
                            "Only when `sessions.idle_timeout_seconds` is set: the session is ended for "
                            "idleness unless used before then (last_seen + the timeout; the refusal may come "
                            "up to `last_seen_flush_seconds` + 1 s later, never earlier)."
                        ),
                    },
                    "lifetime_expires_at": {
                        **timestamp,
                        "description": (
                            "Only when `sessions.max_lifetime_seconds` is set: when the session ends however "
                            "fresh its tokens (login_time + the lifetime): log in again after it."
                        ),
                    },
                },
            },
            "HistoryEvent": _history_item(admin=False),
            "AdminHistoryEvent": _history_item(admin=True),
            "Health": {
                "type": "object",
                "required": ["status", "pid"],
                "additionalProperties": False,
                "properties": {"status": {"const": "ok"}, "pid": {"type": "integer", "minimum": 1}},
            },
            "Ready": {
                "type": "object",
                "required": ["status", "checks"],
                "additionalProperties": False,
                "properties": {
                    "status": {"const": "ready"},
                    "checks": {"type": "object", "additionalProperties": {"const": "ok"}},
                },
            },
            "NotReady": {
                "type": "object",
                "required": ["status", "checks"],
                "additionalProperties": False,
                "properties": {
                    "status": {"const": "not ready"},
                    "checks": {
                        "type": "object",
                        "description": "store, redis, jwks: ok | unavailable; revocations: stale.",
                        "additionalProperties": {"enum": ["ok", "unavailable", "stale"]},
                    },
                },
            },
        },
        "responses": {
            "Allow": {
                "description": (
                    "Allow. Empty body; the identity headers below, plus any configured "
                    "`jwt.claim_headers`. Client-sent `X-Auth-*` headers never pass through."
                ),
                "headers": {
                    "X-Auth-User": {
                        "required": True,
                        "description": "The user id (the `jwt.user_claim` claim; integers as decimal).",
                        "schema": {"type": "string", "pattern": _IDENTIFIER_PATTERN},
                    },
                    "X-Auth-Session": {
                        "required": True,
                        "description": "The session id (UUID), as listed by the sessions API.",
                        "schema": {"type": "string", "pattern": _UUID_PATTERN},
                    },
                    "Cache-Control": _header("NoStore"),
                },
            },
            "Deny": _error(
                401,
                "Unauthorized",
                "Deny. The body is fixed and never says why; the reason is logged.",
                {"WWW-Authenticate": _header("BearerChallenge")},
            ),
            "Overloaded": _error(
                503,
                "Overloaded, try again",
                "More checks in flight than `server.max_concurrent_checks`, refused at once: an "
                "error for the gateway, never an allow.",
                {"Retry-After": _header("RetryAfter")},
            ),
            "Unauthorized": _error(
                401,
                "Invalid or missing token",
                "The bearer token is missing, invalid or expired, or its session is not active "
                "(revoked, logged out, cut off). The reason is logged, never sent.",
                {"WWW-Authenticate": _header("BearerChallenge")},
            ),
            "RateLimited": _error(
                429,
                "Too many requests",
                "More sessions API requests from this client address than `server.api_rate_limit_per_minute`.",
                {"Retry-After": _header("RetryAfter")},
            ),
            "StoreUnavailableError": _error(
                503,
                "Session store unavailable, try again",
                "The session store could not answer or commit; nothing was changed.",
                {"Retry-After": _header("RetryAfter")},
            ),
            "InvalidSessionId": _error(400, "Invalid session id", "The id is not a UUID."),
            "InvalidPage": _error_of(
                400,
                (LIMIT_MESSAGE, CURSOR_MESSAGE),
                "`limit` is out of range or not an integer, or `before` is not a cursor this API gave.",
            ),
            "CrossSite": _error(
                403,
                "Cross-site request refused",
                "The credential is the `jwt.cookie_name` cookie and the request is not same-origin: "
                "no `Origin` listed in `server.allowed_origins` and no `Sec-Fetch-Site: same-origin` "
                "(CSRF protection; nothing was changed). Requests with an Authorization header are "
                "never refused this way.",
            ),
            "SessionNotFound": _error(
                404,
                "Session not found",
                "No active session of the caller has this id. Another user's session answers exactly "
                "the same, so ids cannot be probed.",
            ),
            "NoContent": {"description": "Done. No body (HTTP forbids one on 204); the message goes to the log."},
            # Answers of the listener as a whole, for a path or a method it does not serve.
            "NotFound": _error(404, "Not found", "No such path."),
            "MethodNotAllowed": _error(
                405, "Method not allowed", "The path exists, but not for this method.", {"Allow": _header("Allow")}
            ),
        },
    }


def build_document() -> dict[str, Any]:
    """The whole document, as plain JSON-ready data."""
    sessions_list: dict[str, Any] = {"type": "array", "items": _schema("Session")}
    paths: dict[str, Any] = {
        "/introspect": {m: _check_operation(m, with_tail=False) for m in CHECK_METHODS},
        "/introspect/{tail}": {m: _check_operation(m, with_tail=True) for m in CHECK_METHODS},
        "/api/v1/sessions/": {
            "get": {
                "tags": ["sessions"],
                "operationId": "list_sessions",
                "summary": "My active sessions, newest login first, mine marked current, a page at a time",
                "description": (
                    "Newest login first, ties by id. One page of at most `limit` sessions; `next` "
                    "is the cursor of the following page, null on the last, so a client that "
                    "reads only `data` gets the first page."
                ),
                "security": _credentials(),
                "parameters": _PAGE_PARAMETERS,
                "responses": {
                    "200": _success(
                        "Sessions retrieved successfully", sessions_list, "One page of the caller's active sessions.",
                        paged=True,
                    ),
                    "400": _response("InvalidPage"),
                    "401": _response("Unauthorized"),
                    "429": _response("RateLimited"),
                    "503": _response("StoreUnavailableError"),
                },
            },
            "delete": {
                "tags": ["sessions"],
                "operationId": "delete_other_sessions",
                "summary": "Log out every other session of mine",
                "description": (
                    "Revokes every other session of the caller and refuses every older token of "
                    "the caller that was never seen; the current session keeps working."
                ),
                "security": _credentials(),
                "responses": {
                    "204": _response("NoContent"),
                    "401": _response("Unauthorized"),
                    "403": _response("CrossSite"),
                    "429": _response("RateLimited"),
                    "503": _response("StoreUnavailableError"),
                },
            },
        },
        "/api/v1/sessions/{id}/": {
            "parameters": [_SESSION_ID_PARAMETER],
            "get": {
                "tags": ["sessions"],
                "operationId": "get_session",
                "summary": "One of my active sessions",
                "security": _credentials(),
                "responses": {
                    "200": _success("Session retrieved successfully", _schema("Session"), "The session."),
                    "400": _response("InvalidSessionId"),
                    "401": _response("Unauthorized"),
                    "404": _response("SessionNotFound"),
                    "429": _response("RateLimited"),
                    "503": _response("StoreUnavailableError"),
                },
            },
            "delete": {
                "tags": ["sessions"],
                "operationId": "delete_session",
                "summary": "Log out one of my sessions (possibly the current one)",
                "description": "Idempotent: deleting an already revoked or expired session of mine is a 204 again.",
                "security": _credentials(),
                "responses": {
                    "204": _response("NoContent"),
                    "400": _response("InvalidSessionId"),
                    "401": _response("Unauthorized"),
                    "403": _response("CrossSite"),
                    "404": _response("SessionNotFound"),
                    "429": _response("RateLimited"),
                    "503": _response("StoreUnavailableError"),
                },
            },
        },
        **_history_paths(),
        **_health_paths(),
        PATH: {
            "get": {
                "tags": ["meta"],
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The OpenAPI document of the public listener.",
                        "content": _json({"type": "object", "required": ["openapi", "info", "paths"]}),
                    }
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sidecar public API",
            "version": __version__,
            "summary": "The gateway check and the end-user sessions API of sidecar.",
            "description": (
                "The sessions paths (and this document's) answer with and without their trailing "
                "slash, never with a redirect. A path the listener does not serve answers "
                "`components.responses.NotFound`; a method a sessions path does not serve answers "
                "`components.responses.MethodNotAllowed`. Timestamps are RFC 3339 UTC with `Z`."
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [
            {"name": "check", "description": "What nginx/Envoy ask about every request."},
            {"name": "sessions", "description": "The caller's own sessions."},
            {"name": "health", "description": "For orchestrators and load balancers."},
            {"name": "admin", "description": "The admin listener (see each path's `servers`)."},
            {"name": "meta", "description": "This description."},
        ],
        "paths": paths,
        "components": _components(),
    }


DOCUMENT: Final = build_document()
_BODY: Final = json.dumps(DOCUMENT, separators=(",", ":"), sort_keys=True).encode()


async def openapi_json(request: web.Request) -> web.Response:
    """The document; the same bytes on every request."""
    return web.Response(body=_BODY, content_type="application/json", charset="utf-8")


def add_openapi_routes(app: web.Application) -> None:
    for path in (PATH, PATH + "/"):
        app.router.add_get(path, openapi_json, allow_head=False)
