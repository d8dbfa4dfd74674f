"""A FastAPI app behind ``SidecarAuthMiddleware``, with no gateway: what tests/test_middleware.py runs.

    SIDECAR_URL=http://127.0.0.1:8080 APP_PORT=9000 [SIDECAR_TIMEOUT=1.0] python tests/apps/middleware_fastapi.py

``/health`` and ``/calls`` are the middleware's public paths (never checked); every other
path answers what the handler saw in ``request.state.sidecar``, and counts in ``/calls``.
Prints uvicorn's ``Uvicorn running on`` once it listens.
"""

from __future__ import annotations

import os
from typing import Any

import uvicorn
from fastapi import FastAPI, Request

from sidecar.client.asgi import SidecarAuthMiddleware
from tests.apps.middleware_common import Calls, seen


def create_app(sidecar_url: str, timeout: float) -> FastAPI:
    app = FastAPI()
    app.add_middleware(
        SidecarAuthMiddleware, sidecar_url=sidecar_url, timeout=timeout, public=["/health", "/calls"]
    )
    calls = Calls()

    @app.get("/calls")
    async def count() -> dict[str, int]:
        return {"calls": calls.count}

    @app.api_route("/{path:path}", methods=["GET", "POST", "DELETE"])
    async def anything(request: Request, path: str) -> dict[str, Any]:
        calls.count += 1
        return seen(request.state.sidecar)

    return app


if __name__ == "__main__":
    app = create_app(os.environ["SIDECAR_URL"], float(os.environ.get("SIDECAR_TIMEOUT", "1.0")))
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["APP_PORT"]), log_level="info")
