"""App factories: the public listener and the admin listener."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from sidecar.clock import SystemClock
from sidecar.config import Settings
from sidecar.web import admin, api, health
from sidecar.web.envelope import error_middleware
from sidecar.web.introspect import introspect
from sidecar.web.keys import API_RATE, CHECKS_IN_FLIGHT, SERVICES
from sidecar.web.limits import InFlight, RateLimiter
from sidecar.web.openapi import add_openapi_routes
from sidecar.web.services import Services, open_services

# Headers are bounded by the HTTP parser; tokens larger than jwt.max_token_bytes but
# within this bound still get the check's own 401 (SECURITY_CASES A14).
MAX_LINE_SIZE = 16 * 1024
MAX_FIELD_SIZE = 16 * 1024


def runner_kwargs(settings: Settings) -> dict[str, Any]:
    """What every AppRunner of the sidecar is built with (the CLI and the tests alike)."""
    return {
        "access_log": logging.getLogger("sidecar.access") if settings.server.access_log else None,
        "shutdown_timeout": settings.server.shutdown_timeout_seconds,
        "max_line_size": MAX_LINE_SIZE,
        "max_field_size": MAX_FIELD_SIZE,
    }


def create_app(settings: Settings, services: Services | None = None) -> web.Application:
    """The public listener. Without ``services`` the app opens (and closes) its own."""
    app = web.Application(middlewares=[error_middleware], client_max_size=64 * 1024)
    app[CHECKS_IN_FLIGHT] = InFlight(settings.server.max_concurrent_checks)
    app[API_RATE] = RateLimiter(settings.server.api_rate_limit_per_minute, SystemClock())
    if services is not None:
        app[SERVICES] = services
    else:

        async def lifecycle(app: web.Application) -> AsyncIterator[None]:
            async with open_services(settings) as opened:
                app[SERVICES] = opened
                yield

        app.cleanup_ctx.append(lifecycle)
    # The check answers every method on every sub-path: Envoy forwards the client's method
    # and prepends its path_prefix (SECURITY_CASES B19).
    app.router.add_route("*", "/introspect", introspect)
    app.router.add_route("*", r"/introspect/{tail:[\s\S]*}", introspect)
    api.add_routes(app)
    health.add_routes(app)
    add_openapi_routes(app)
    return app


def create_admin_app(settings: Settings, services: Services) -> web.Application:
    """The admin listener; every route needs an admin API key."""
    app = web.Application(
        middlewares=[error_middleware, admin.require_api_key], client_max_size=admin.MAX_BODY
    )
    app[SERVICES] = services
    admin.add_routes(app)
    return app
