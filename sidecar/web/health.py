"""Liveness and readiness."""

from __future__ import annotations

import logging
import os

from aiohttp import web

from sidecar.errors import StoreUnavailableError
from sidecar.web.keys import SERVICES

log = logging.getLogger(__name__)


async def healthz(request: web.Request) -> web.Response:
    """The process is up and its event loop answers (pid: which worker answered)."""
    return web.json_response({"status": "ok", "pid": os.getpid()}, headers={"Cache-Control": "no-store"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the store answers, revocations are current, and (when configured) Redis
    is subscribed and JWKS keys are loaded."""
    services = request.app[SERVICES]
    checks: dict[str, str] = {}
    try:
        await services.store.ping()
        checks["store"] = "ok"
    except StoreUnavailableError as e:
        log.warning("readyz: store unavailable: %s", e)
        checks["store"] = "unavailable"
    if services.push is not None:
        checks["redis"] = "ok" if services.push.connected else "unavailable"
    if not services.sessions.fresh:
        checks["revocations"] = "stale"
    if services.jwks is not None:
        checks["jwks"] = "ok" if services.jwks.loaded else "unavailable"
    ready = all(v == "ok" for v in checks.values())
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
        headers={"Cache-Control": "no-store"},
    )


def add_routes(app: web.Application) -> None:
    for suffix in ("", "/"):
        app.router.add_get("/healthz" + suffix, healthz)
        app.router.add_get("/readyz" + suffix, readyz)
