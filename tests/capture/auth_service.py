"""A small auth service shaped like the FastAPI boilerplate users run, as an aiohttp app.

Access tokens ``{"user_id", "exp", "type": "access"}`` (no iat, sid or jti), 30 minutes;
refresh tokens the same shape with ``"type": "refresh"``, 7 days, in an httponly cookie
whose ``expires`` attribute is malformed the way the boilerplate writes it. It counts
the requests it receives per path, so tests can tell what reached it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import jwt
from aiohttp import web

SECRET = "test-secret-for-hs256-that-is-long-enough-0123456789"  # tests.support.tokens.SECRET; runs as a script too

ACCESS_SECONDS = 30 * 60
REFRESH_SECONDS = 7 * 86400
USERS = {"ada@example.com": ("pw-ada", "6f1c0d9e-1111-4b4b-9c9c-000000000001")}
SEEN = web.AppKey("seen", Counter)
LAST_HEADERS = web.AppKey("last_headers", dict)


def token(user_id: str, kind: str, seconds: int) -> str:
    return jwt.encode({"user_id": user_id, "exp": int(time.time()) + seconds, "type": kind}, SECRET, algorithm="HS256")


def _refresh_cookie(value: str) -> str:
    # The boilerplate's own spelling: expires is not an HTTP date.
    return f"refresh_token={value}; HttpOnly; Path=/; SameSite=lax; expires=30 days, 0:00:00"


def create_app() -> web.Application:
    app = web.Application()
    app[SEEN] = Counter()
    app[LAST_HEADERS] = {}

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        request.app[SEEN][request.path] += 1
        request.app[LAST_HEADERS][request.path] = list(request.headers.items())
        response: web.StreamResponse = await handler(request)
        return response

    app.middlewares.append(count)

    async def login(request: web.Request) -> web.Response:
        body = await request.json()
        known = USERS.get(body.get("email", ""))
        if known is None or known[0] != body.get("password"):
            return web.json_response({"detail": "Incorrect email or password"}, status=401)
        user_id = known[1]
        response = web.json_response({"access_token": token(user_id, "access", ACCESS_SECONDS), "token_type": "bearer"})
        response.headers.add("Set-Cookie", _refresh_cookie(token(user_id, "refresh", REFRESH_SECONDS)))
        response.headers.add("Set-Cookie", "theme=dark; Path=/")
        response.headers["X-Auth-Service"] = "boilerplate"
        return response

    async def refresh(request: web.Request) -> web.Response:
        raw = request.cookies.get("refresh_token")
        try:
            claims = jwt.decode(raw or "", SECRET, algorithms=["HS256"])
        except jwt.PyJWTError:
            return web.json_response({"detail": "Invalid refresh token"}, status=401)
        if claims.get("type") != "refresh":
            return web.json_response({"detail": "Invalid refresh token"}, status=401)
        return web.json_response(
            {"access_token": token(claims["user_id"], "access", ACCESS_SECONDS), "token_type": "bearer"}
        )

    async def logout(request: web.Request) -> web.Response:
        response = web.json_response({"detail": "Logged out"})
        response.headers.add("Set-Cookie", "refresh_token=; Max-Age=0; Path=/")
        return response

    async def me(request: web.Request) -> web.Response:
        # A protected route: behind the gateway, the identity is the sidecar's header.
        return web.json_response({"user_id": request.headers.get("X-Auth-User")})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({"access_token": "never"})

    async def tokenless(request: web.Request) -> web.Response:
        return web.json_response({"detail": "ok, but no token here"})

    app.router.add_post("/api/v1/auth/login", login)
    app.router.add_post("/api/v1/auth/refresh-access-token", refresh)
    app.router.add_post("/api/v1/auth/logout", logout)
    app.router.add_get("/api/v1/users/me", me)
    app.router.add_post("/api/v1/auth/slow", slow)
    app.router.add_post("/api/v1/auth/tokenless", tokenless)
    return app


def main() -> None:
    """Serve on 127.0.0.1:<port> as a process of its own (the gateway tests run it so)."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    async def serve() -> None:
        runner = web.AppRunner(create_app())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port).start()
        print("auth_service: ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
