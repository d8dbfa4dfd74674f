"""The app of the ``middleware`` scenario: one FastAPI endpoint, in three variants.

    BENCH_APP_AUTH=none|sidecar|pyjwt [BENCH_SIDECAR_URL=...] [BENCH_JWT_SECRET_FILE=...] \\
        uvicorn bench.fastapi_app:create_app --factory --workers 1 --no-access-log --port 9000

Served by the ``uvicorn`` command, one worker, as a user runs a FastAPI app (uvloop and
httptools when installed: uvicorn's ``auto``). ``GET /bench`` answers ``{"user": ...}``:

- ``none``: no authentication (``{"user": null}``);
- ``sidecar``: :class:`sidecar.client.asgi.SidecarAuthMiddleware` asks ``sidecar serve`` at
  ``BENCH_SIDECAR_URL`` about every request (the user from ``request.state.sidecar``);
- ``pyjwt``: the app checks the token itself, "do it in the app": a pure ASGI middleware
  like the sidecar's, calling PyJWT's ``jwt.decode`` (HS256 signature, ``exp`` required and
  checked; no session check, so a revoked session passes) with the secret read once.

Both checks sit at the same place (a pure ASGI middleware before the router) and answer
401 the same way, so the difference between the variants is the check alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jwt
from fastapi import FastAPI, Request

from sidecar.client.asgi import ASGIApp, Receive, Scope, Send, SidecarAuthMiddleware

_DENY_BODY = b'{"status": "error", "status_code": 401, "message": "Unauthorized", "data": {}}'


class PyJWTMiddleware:
    """Verify the bearer token with ``jwt.decode``; put its ``sub`` on ``request.state.user``."""

    def __init__(self, app: ASGIApp, secret: bytes) -> None:
        self.app = app
        self.secret = secret

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":  # ASGI servers give lower-case header names
                authorization = value
                break
        try:
            if not authorization.startswith(b"Bearer "):
                raise jwt.InvalidTokenError("no bearer token")
            claims = jwt.decode(authorization[7:], self.secret, algorithms=["HS256"], options={"require": ["exp"]})
        except jwt.InvalidTokenError:
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"),
                (b"www-authenticate", b'Bearer error="invalid_token"'),
                (b"content-length", str(len(_DENY_BODY)).encode()),
            ]})
            await send({"type": "http.response.body", "body": _DENY_BODY})
            return
        state = dict(scope.get("state") or {})
        state["user"] = str(claims["sub"])
        await self.app({**scope, "state": state}, receive, send)


def create_app() -> FastAPI:
    """The app for ``BENCH_APP_AUTH`` (read when uvicorn calls this factory, not at import)."""
    auth = os.environ.get("BENCH_APP_AUTH", "none")
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/bench")
    async def bench(request: Request) -> dict[str, Any]:
        identity = getattr(request.state, "sidecar", None)
        return {"user": identity.user_id if identity is not None else getattr(request.state, "user", None)}

    if auth == "sidecar":
        app.add_middleware(SidecarAuthMiddleware, sidecar_url=os.environ["BENCH_SIDECAR_URL"])
    elif auth == "pyjwt":
        app.add_middleware(PyJWTMiddleware, secret=Path(os.environ["BENCH_JWT_SECRET_FILE"]).read_bytes())
    elif auth != "none":
        raise ValueError(f"BENCH_APP_AUTH must be none, sidecar or pyjwt, not {auth!r}")
    return app
