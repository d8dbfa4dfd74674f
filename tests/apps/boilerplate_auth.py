"""An auth service shaped exactly like the FastAPI web boilerplate that users run, unchanged.

    python tests/apps/boilerplate_auth.py --port 9001 --secret S [--record seen.jsonl]

Its tokens are what the sidecar has to live with as they are: HS256
``{"user_id": "<uuid>", "exp": now + 30 min, "type": "access"}``, with no ``iat``, no
``sid`` and no ``jti``; the refresh token has the same shape with ``"type": "refresh"``
and 7 days, and travels in an httponly ``refresh_token`` cookie whose ``expires``
attribute is the boilerplate's malformed ``30 days, 0:00:00`` (``str(timedelta)``), sent
as a raw Set-Cookie header. The service knows nothing of the sidecar: routes that need a
user read ``X-Auth-User``, which it trusts the gateway to have set.

``--record`` appends one JSON line per request (method, path, raw path, query, headers)
*before* it is handled, so a test can tell which requests reached the app. Users and
posts live in memory. Prints uvicorn's ``Uvicorn running on`` once it listens.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import jwt
import uvicorn
from fastapi import Cookie, FastAPI, Header, HTTPException, Response
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

ACCESS_TOKEN_MINUTES = 30
REFRESH_TOKEN_DAYS = 7
ALGORITHM = "HS256"


class Registration(BaseModel):
    name: str
    email: str
    password: str


class Credentials(BaseModel):
    email: str
    password: str


class NewPost(BaseModel):
    title: str
    text: str


def _hash_password(password: str, salt: bytes) -> bytes:
    # The boilerplate uses bcrypt; scrypt (stdlib) is a real password hash too.
    return hashlib.scrypt(password.encode(), salt=salt, n=2**12, r=8, p=1)


def _append(record: Path, line: str) -> None:
    with record.open("a", encoding="utf-8") as f:
        f.write(line + "\n")


class Recorder:
    """ASGI middleware: one JSON line per HTTP request, written before the app sees it."""

    def __init__(self, app: ASGIApp, record: Path) -> None:
        self.app = app
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            seen = {
                "method": scope["method"],
                "path": scope["path"],
                "raw_path": scope.get("raw_path", b"").decode("latin-1"),
                "query": scope["query_string"].decode("latin-1"),
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            }
            _append(self.record, json.dumps(seen))
        await self.app(scope, receive, send)


def create_app(secret: str) -> FastAPI:
    app = FastAPI(title="boilerplate auth service")
    users: dict[str, dict[str, Any]] = {}  # by email
    posts: list[dict[str, Any]] = []

    def create_token(user_id: str, kind: str, lifetime: timedelta) -> str:
        # Exactly the boilerplate's claims: user id, expiry, type. No iat, sid or jti.
        expire = datetime.now(UTC) + lifetime
        return jwt.encode({"user_id": user_id, "exp": expire, "type": kind}, secret, algorithm=ALGORITHM)

    def user_by_id(user_id: str | None) -> dict[str, Any]:
        if user_id:
            for user in users.values():
                if user["id"] == user_id:
                    return user
        raise HTTPException(status_code=401, detail="Not authenticated")

    def public(user: dict[str, Any]) -> dict[str, Any]:
        return {"id": user["id"], "name": user["name"], "email": user["email"]}

    @app.post("/api/v1/auth/register", status_code=201)
    async def register(body: Registration) -> dict[str, Any]:
        if body.email in users:
            raise HTTPException(status_code=400, detail="Email is already registered")
        salt = os.urandom(16)
        user = {
            "id": str(uuid.uuid4()),
            "name": body.name,
            "email": body.email,
            "salt": salt,
            "password": _hash_password(body.password, salt),
        }
        users[body.email] = user
        return public(user)

    @app.post("/api/v1/auth/login")
    async def login(body: Credentials, response: Response) -> dict[str, str]:
        user = users.get(body.email)
        if user is None or not hmac.compare_digest(_hash_password(body.password, user["salt"]), user["password"]):
            raise HTTPException(status_code=401, detail="Wrong email or password")
        access = create_token(user["id"], "access", timedelta(minutes=ACCESS_TOKEN_MINUTES))
        refresh = create_token(user["id"], "refresh", timedelta(days=REFRESH_TOKEN_DAYS))
        # The boilerplate passes a timedelta as expires, which ends up as its str():
        # "expires=30 days, 0:00:00", not a date. Sent raw, as it goes over the wire.
        response.headers.append(
            "Set-Cookie",
            f"refresh_token={refresh}; HttpOnly; Path=/; SameSite=lax; Secure; expires={timedelta(days=30)}",
        )
        return {"access_token": access, "token_type": "bearer"}

    @app.post("/api/v1/auth/refresh-access-token")
    async def refresh_access_token(
        refresh_token: Annotated[str | None, Cookie()] = None,
    ) -> dict[str, str]:
        if not refresh_token:
            raise HTTPException(status_code=401, detail="Refresh token missing")
        try:
            claims = jwt.decode(refresh_token, secret, algorithms=[ALGORITHM])
        except jwt.PyJWTError as e:
            raise HTTPException(status_code=401, detail="Invalid refresh token") from e
        if claims.get("type") != "refresh":
            raise HTTPException(status_code=401, detail="Invalid refresh token")
        user = user_by_id(claims.get("user_id"))
        access = create_token(user["id"], "access", timedelta(minutes=ACCESS_TOKEN_MINUTES))
        return {"access_token": access, "token_type": "bearer"}

    @app.post("/api/v1/auth/logout")
    async def logout(response: Response) -> dict[str, str]:
        response.delete_cookie("refresh_token")
        return {"message": "Logged out successfully"}

    @app.get("/api/v1/posts")
    async def list_posts() -> list[dict[str, Any]]:
        return posts

    @app.post("/api/v1/posts", status_code=201)
    async def create_post(
        body: NewPost, x_auth_user: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        user = user_by_id(x_auth_user)  # the gateway vouches for the user
        post = {"id": len(posts) + 1, "title": body.title, "text": body.text, "created_by_user_id": user["id"]}
        posts.append(post)
        return post

    @app.get("/api/v1/users/me")
    async def read_me(x_auth_user: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        return public(user_by_id(x_auth_user))

    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True, help="the HS256 secret (the sidecar has the same)")
    parser.add_argument("--record", type=Path, help="append one JSON line per request to this file")
    args = parser.parse_args(argv)
    app: ASGIApp = create_app(args.secret)
    if args.record is not None:
        app = Recorder(app, args.record)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
