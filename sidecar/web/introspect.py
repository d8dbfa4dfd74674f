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

from sidecar.errors import InvalidTokenError, StoreUnavailableError
from sidecar.logs import REQUEST_ID
from sidecar.routes import Policy, RouteTable
from sidecar.web.envelope import BEARER_CHALLENGE
from sidecar.web.limits import InFlight
from sidecar.web.requests import authenticate_with, has_credentials
from sidecar.web.services import Services

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


def _context(request: web.BaseRequest) -> str:
    """Which request a deny was about, for the log: the gateway's X-Original-* when sent.

    Values are client-controlled, so they are cut short and logged with repr().
    """
    method = request.headers.get("X-Original-Method", request.method)[:16]
    uri = request.headers.get("X-Original-URI", request.path_qs)[:200]
    return f"{method!r} {uri!r} from {request.remote!r}"


# An anonymous allow says so: a client of the check (sidecar.client's middleware) can tell
# it from a 200 of something that is not the sidecar, which must never count as an allow.
_PUBLIC_HEADERS = {"X-Auth-Anonymous": "public", "Cache-Control": "no-store"}
_OPTIONAL_HEADERS = {"X-Auth-Anonymous": "optional", "Cache-Control": "no-store"}
CHECK_PREFIX = "/introspect"
_CHECK_TAIL = CHECK_PREFIX + "/"


def original_request(request: web.BaseRequest) -> tuple[list[str], list[str]]:
    """(methods, paths): every description the gateway gave of the request being checked.

    nginx sends ``X-Original-Method``/``X-Original-URI`` (its subrequest is a GET to
    ``/introspect``); Caddy and Traefik ``X-Forwarded-Method``/``X-Forwarded-Uri``; Envoy
    sends the client's method, and its path under ``/introspect``. All that are present
    count (``RouteTable.policy`` takes the strictest), so a header a client adds can only
    make the answer stricter; the check request's own method counts only when no header
    names one (nginx's subrequest is always a GET).
    """
    getall = request.headers.getall
    methods: list[str] = getall("X-Original-Method", [])
    forwarded = getall("X-Forwarded-Method", ())
    if forwarded:
        methods = [*methods, *forwarded]
    if not methods:
        methods = [request.method]
    paths: list[str] = getall("X-Original-URI", [])
    forwarded = getall("X-Forwarded-Uri", ())
    if forwarded:
        paths = [*paths, *forwarded]
    raw = request.raw_path
    if raw.startswith(_CHECK_TAIL):
        paths = [*paths, raw[len(CHECK_PREFIX) :]]
    return methods, paths


def overloaded() -> web.Response:
    return web.Response(
        status=503,
        body=_OVERLOAD_BODY,
        content_type="application/json",
        headers={"Retry-After": "1", "Cache-Control": "no-store"},
    )


class Check:
    """The handler of ``/introspect``, bound once to the services it needs.

    It is what every request of every upstream costs, so a known token takes the shortest
    way: the verified-claims cache (``authenticate_with``), the session state in memory, one
    response. ``checks_first`` in sidecar.web.app hands requests here before aiohttp's
    router and middleware.
    """

    def __init__(self, in_flight: InFlight, services: Services, routes: RouteTable | None = None) -> None:
        self.in_flight = in_flight
        self.services = services
        self.routes = routes if routes else None  # an empty table: every request is "required"

    def _policy(self, request: web.BaseRequest) -> Policy:
        if self.routes is None:
            return "required"
        try:
            methods, paths = original_request(request)
            return self.routes.policy(methods, paths)
        except Exception:
            # Fail closed: a description of the request that cannot be read is no public route.
            log.exception("check: route policy failed, the normal check applies: %s", _context(request))
            return "required"

    async def handle(self, request: web.BaseRequest) -> web.Response:
        services = self.services
        request_id = request.headers.get("X-Request-Id")
        if request_id is not None:  # each request runs in a task of its own: the default is None
            REQUEST_ID.set(request_id)
        stats = services.metrics.check
        in_flight = self.in_flight
        if not in_flight.try_enter():
            # Too much at once: a fast, clear refusal (the gateway treats it as an error, never
            # an allow) rather than an ever-growing queue (SECURITY_CASES D38).
            stats.overloaded += 1
            return overloaded()
        started = time.perf_counter()
        try:
            policy = "required" if self.routes is None else self._policy(request)
            if policy != "required":
                if policy == "public":
                    stats.public += 1
                    return web.Response(status=200, headers=_PUBLIC_HEADERS)
                if not has_credentials(request, services.settings):
                    stats.anonymous += 1
                    return web.Response(status=200, headers=_OPTIONAL_HEADERS)
            try:
                claims, session_id = await authenticate_with(request, services)
            except InvalidTokenError as e:
                log.info("check: deny %s: %s", e.reason, _context(request))
                stats.deny(e.reason)
                return deny()
            except StoreUnavailableError as e:
                log.error("check: deny, session state unknown (%s): %s", e, _context(request))
                stats.deny("store_unavailable")
                return deny()
            except Exception:
                # Fail closed: an error is never an allow and never a 5xx the gateway could misread.
                log.exception("check: deny after an unexpected error: %s", _context(request))
                stats.deny("internal_error")
                return deny()
            stats.allowed += 1
            identity = {
                "X-Auth-User": claims.user_id,
                "X-Auth-Session": session_id,
                "Cache-Control": "no-store",
            }
            if claims.extra_headers:
                identity.update(claims.extra_headers)
            return web.Response(status=200, headers=identity)
        finally:
            in_flight.leave()
            stats.observe(time.perf_counter() - started)


# The app's check, for ``checks_first`` (here, not in sidecar.web.keys: that would import in a circle).
CHECK = web.AppKey("check", Check)
