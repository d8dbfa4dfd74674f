"""The gateway check: ``ANY /introspect[/{tail}]`` -> 200 + identity headers, or 401.

Nothing but 200 and 401 ever leaves this handler (SECURITY_CASES B17, B18): nginx turns
any other status into a 500 and an operator could configure Envoy to let errors through.
Every failure, expected or not, is a deny; the reason is logged, never sent.
"""

from __future__ import annotations

import json
import logging
import time

from aiohttp import web

from sidecar.errors import InvalidToken, StoreUnavailable
from sidecar.web.envelope import BEARER_CHALLENGE
from sidecar.web.keys import CHECKS_IN_FLIGHT, SERVICES
from sidecar.web.requests import authenticate

log = logging.getLogger(__name__)

_OVERLOAD_BODY = json.dumps(
    {"status": "error", "status_code": 503, "message": "Overloaded, try again", "data": {}}
).encode()
_DENY_BODY = json.dumps(
    {"status": "error", "status_code": 401, "message": "Unauthorized", "data": {}}
).encode()


def deny() -> web.Response:
    return web.Response(
        status=401,
        body=_DENY_BODY,
        content_type="application/json",
        headers={"WWW-Authenticate": BEARER_CHALLENGE, "Cache-Control": "no-store"},
    )


def _context(request: web.Request) -> str:
    """Which request a deny was about, for the log: the gateway's X-Original-* when sent.

    Values are client-controlled, so they are cut short and logged with repr().
    """
    method = request.headers.get("X-Original-Method", request.method)[:16]
    uri = request.headers.get("X-Original-URI", request.path_qs)[:200]
    return f"{method!r} {uri!r} from {request.remote!r}"


def overloaded() -> web.Response:
    return web.Response(
        status=503,
        body=_OVERLOAD_BODY,
        content_type="application/json",
        headers={"Retry-After": "1", "Cache-Control": "no-store"},
    )


async def introspect(request: web.Request) -> web.Response:
    stats = request.app[SERVICES].metrics.check
    in_flight = request.app[CHECKS_IN_FLIGHT]
    if not in_flight.try_enter():
        # Too much at once: a fast, clear refusal (the gateway treats it as an error, never
        # an allow) rather than an ever-growing queue (SECURITY_CASES D38).
        stats.overloaded += 1
        return overloaded()
    started = time.perf_counter()
    try:
        try:
            claims, session_id = await authenticate(request)
        except InvalidToken as e:
            log.info("check: deny %s: %s", e.reason, _context(request))
            stats.deny(e.reason)
            return deny()
        except StoreUnavailable as e:
            log.error("check: deny, session state unknown (%s): %s", e, _context(request))
            stats.deny("store_unavailable")
            return deny()
        except Exception:
            # Fail closed: an error is never an allow and never a 5xx the gateway could misread.
            log.exception("check: deny after an unexpected error: %s", _context(request))
            stats.deny("internal_error")
            return deny()
        stats.allowed += 1
        headers = {
            "X-Auth-User": claims.user_id,
            "X-Auth-Session": session_id,
            "Cache-Control": "no-store",
        }
        headers.update(claims.extra_headers)
        return web.Response(status=200, headers=headers)
    finally:
        in_flight.leave()
        stats.observe(time.perf_counter() - started)
