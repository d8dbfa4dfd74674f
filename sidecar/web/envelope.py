"""The JSON envelope of the sessions and admin APIs, and the one place errors become HTTP."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from sidecar.errors import InvalidTokenError, StoreUnavailableError
from sidecar.logs import REQUEST_ID
from sidecar.sessions.models import Session
from sidecar.tokens.bearer import BEARER_CHALLENGE

log = logging.getLogger(__name__)

# RFC 6750 section 3: the challenge a bearer-protected resource answers with.


class ApiError(Exception):
    """An error a handler raises with the status and message the client sees."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def success(message: str, data: Any, status: int = 200) -> web.Response:
    return web.json_response(
        {"status": "success", "status_code": status, "message": message, "data": data},
        status=status,
        headers={"Cache-Control": "no-store"},
    )


def page(message: str, data: list[Any], next_cursor: str | None) -> web.Response:
    """A success envelope for one page of a listing: ``next`` is the cursor of the next
    page (``?before=``), null on the last, so a client that only reads ``data`` gets page one."""
    return web.json_response(
        {"status": "success", "status_code": 200, "message": message, "data": data, "next": next_cursor},
        headers={"Cache-Control": "no-store"},
    )


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"status": "error", "status_code": status, "message": message, "data": {}},
        status=status,
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


# What RFC 3339 can write (four-digit years): 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
_MIN_RFC3339 = -62_135_596_800
_MAX_RFC3339 = 253_402_300_799


def rfc3339(ts: float) -> str:
    """Epoch seconds -> '2025-02-27T10:00:00Z' (RFC 3339, UTC, whole seconds).

    A stored time outside what RFC 3339 can write (or NaN) is clamped to its bounds rather
    than raised: the verifier refuses such an ``exp``, but a row written before it did must
    not turn a listing into a 500.
    """
    if not ts >= _MIN_RFC3339:  # NaN fails every comparison
        ts = _MIN_RFC3339
    elif ts > _MAX_RFC3339:
        ts = _MAX_RFC3339
    t = time.gmtime(ts)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}Z"


def session_json(
    s: Session,
    *,
    current_id: str | None = None,
    with_user: bool = False,
    deadlines: tuple[float | None, float | None] = (None, None),
) -> dict[str, Any]:
    """A session as the APIs show it. ``deadlines`` (``SessionService.deadlines``): when the
    idle timeout and the lifetime end it, each only when that policy is on."""
    out: dict[str, Any] = {
        "id": s.id,
        "ip_address": s.ip_address,
        "location": s.location,
        "device": s.device,
        "login_time": rfc3339(s.created_at),
        "last_seen": rfc3339(s.last_seen),
        "expires_at": rfc3339(s.expires_at),
    }
    idle, lifetime = deadlines
    if idle is not None:
        out["idle_expires_at"] = rfc3339(idle)
    if lifetime is not None:
        out["lifetime_expires_at"] = rfc3339(lifetime)
    if current_id is not None:
        out["current"] = s.id == current_id
    if with_user:
        out["user_id"] = s.user_id
        out["revoked_at"] = rfc3339(s.revoked_at) if s.revoked_at is not None else None
        out["revoked_reason"] = s.revoked_reason
        out["revoked_by"] = s.revoked_by
    return out


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map domain errors and aiohttp's own (404, 405, 413) onto the envelope.

    Also notes the gateway's X-Request-Id for the log lines of this request.
    """
    REQUEST_ID.set(request.headers.get("X-Request-Id"))
    try:
        return await handler(request)
    except ApiError as e:
        return error(e.status, e.message, e.headers)
    except InvalidTokenError as e:
        log.info("api: token refused (%s) %s %s", e.reason, request.method, request.path)
        return error(401, "Invalid or missing token", {"WWW-Authenticate": BEARER_CHALLENGE})
    except StoreUnavailableError as e:
        log.error("api: store unavailable on %s %s: %s", request.method, request.path, e)
        return error(503, "Session store unavailable, try again", {"Retry-After": "1"})
    except web.HTTPException as e:
        if e.status < 400:
            raise
        message = {404: "Not found", 405: "Method not allowed", 413: "Request body too large"}.get(
            e.status, e.reason
        )
        headers = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
        return error(e.status, message, headers)
    except Exception:
        log.exception("api: unhandled error on %s %s", request.method, request.path)
        return error(500, "Internal server error")
