"""App factories: the public listener and the admin listener."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from sidecar.clock import SystemClock
from sidecar.config import Settings
from sidecar.web import admin, api, capture, health
from sidecar.web.envelope import error_middleware
from sidecar.web.introspect import CHECK, Check
from sidecar.web.keys import API_RATE, SERVICES
from sidecar.web.limits import RateLimiter
from sidecar.web.listener import server_logger
from sidecar.web.openapi import add_openapi_routes
from sidecar.web.services import Services

# Headers are bounded by the HTTP parser; tokens larger than jwt.max_token_bytes but
# within this bound still get the check's own 401 (SECURITY_CASES A14).
MAX_LINE_SIZE = 16 * 1024
MAX_FIELD_SIZE = 16 * 1024


def handler_kwargs(settings: Settings) -> dict[str, Any]:
    """What every connection's aiohttp RequestHandler is built with."""
    return {
        "access_log": logging.getLogger("sidecar.access") if settings.server.access_log else None,
        "max_line_size": MAX_LINE_SIZE,
        "max_field_size": MAX_FIELD_SIZE,
        # Parser errors quote the request's bytes (a token, an admin key): one line instead.
        "logger": server_logger(),
        # Idle keep-alive connections (and requests part-sent after the first) are closed
        # this long after their last response.
        "keepalive_timeout": settings.server.keepalive_timeout_seconds,
    }


def runner_kwargs(settings: Settings) -> dict[str, Any]:
    """What every AppRunner of the sidecar is built with (the CLI and the tests alike)."""
    return {**handler_kwargs(settings), "shutdown_timeout": settings.server.shutdown_timeout_seconds}


def create_app(settings: Settings, services: Services) -> web.Application:
    """The public listener, over ``services`` (opened and closed by the caller)."""
    app = web.Application(middlewares=[error_middleware], client_max_size=64 * 1024)
    check = app[CHECK] = Check(services.check)
    app[API_RATE] = RateLimiter(settings.server.api_rate_limit_per_minute, SystemClock())
    app[SERVICES] = services
    # The check answers every method on every sub-path: Envoy forwards the client's method
    # and prepends its path_prefix (SECURITY_CASES B19).
    app.router.add_route("*", "/introspect", check.handle)
    app.router.add_route("*", r"/introspect/{tail:[\s\S]*}", check.handle)
    api.add_routes(app)
    capture.add_routes(app, settings.capture, services)
    health.add_routes(app)
    add_openapi_routes(app)
    return app


def is_check_path(path_safe: str) -> bool:
    """Whether the router sends ``path_safe`` (a request's ``rel_url.path_safe``, what it
    matches routes against) to the check: ``/introspect`` and everything under it."""
    return path_safe == "/introspect" or path_safe.startswith("/introspect/")


def checks_first(runner: web.AppRunner) -> None:
    """Let the server of ``runner`` (an AppRunner of ``create_app``'s app, set up and not
    yet listening) hand ``/introspect`` requests straight to the check.

    Every path the router would give the check still reaches it through the app; this
    only skips the router and the middleware chain (the JSON envelope, which the check's
    answers never use) for the one route on the path of every upstream request. The
    dispatch matches the path the router matches (``path_safe``), so each request goes to
    the same handler either way; all other requests go to the app unchanged.
    """
    server = runner.server
    if server is None:
        raise RuntimeError("checks_first: the runner is not set up")
    check = runner.app[CHECK].handle
    to_app = server.request_handler

    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        if is_check_path(request.rel_url.path_safe):
            return await check(request)
        return await to_app(request)

    server.request_handler = dispatch


def create_admin_app(settings: Settings, services: Services) -> web.Application:
    """The admin listener; every route needs an admin API key."""
    app = web.Application(
        middlewares=[error_middleware, admin.require_api_key], client_max_size=admin.MAX_BODY
    )
    app[SERVICES] = services
    admin.add_routes(app)
    return app
