"""A FastAPI auth service done the way the sidecar recommends: the worked example.

    JWT_SECRET=... SIDECAR_ADMIN_KEY=... python contrib/fastapi/app.py

The same API as the FastAPI web boilerplate (register, login, refresh, logout, posts,
users/me), with what the sidecar needs to give its users real session control:

- **A session id per login.** Login creates a ``sid`` (a UUID4); the refresh token carries
  it and every access token refreshed from it carries it again. So all the tokens of one
  login are one session to the sidecar: revoke it, and the next refreshed token is
  refused at the gateway too.
- **iat on every token**, so "log out other sessions" also refuses tokens the sidecar has
  never seen that were issued before it.
- **Registration at login** through ``sidecar.client`` (the admin API), with the client
  address nginx saw (``X-Real-IP``/``X-Forwarded-For``) and the User-Agent: the session
  shows up in the user's list at once, with the login's time and device. The sidecar runs
  with ``registration = "explicit"``, so a token of a login it was not told about is
  refused. When the sidecar cannot be reached, login fails (503) rather than hand out a
  token that would be refused.
- **Logout revokes the current session.** Logout is a protected route: the gateway
  checked the token and passes the session id as ``X-Auth-Session``.

The app itself verifies no access token: it runs behind nginx (contrib/fastapi/nginx.conf)
and trusts the ``X-Auth-User``/``X-Auth-Session`` headers the gateway sets. It must not be
reachable any other way (it listens on loopback). The refresh token is the app's own
business: it verifies it on the refresh route, which is public at the gateway.

Settings (environment variables):

| variable | default | what |
|---|---|---|
| ``JWT_SECRET`` | (required) | HS256 secret, at least 32 bytes; the sidecar reads the same (``secret_env``) |
| ``SIDECAR_ADMIN_URL`` | ``http://127.0.0.1:8081`` | the sidecar's admin listener |
| ``SIDECAR_ADMIN_KEY`` | (required) | an admin API key of the sidecar (``api_keys_env``) |
| ``APP_HOST`` / ``APP_PORT`` | ``127.0.0.1`` / ``8001`` | where the app listens (behind nginx) |
| ``COOKIE_SECURE`` | ``1`` | ``0`` drops ``Secure`` from the refresh cookie (plain-HTTP tries only) |

Users and posts live in memory: this is an example of the token and session handling,
not of storage.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
import uvicorn
from fastapi import Cookie, FastAPI, Header, HTTPException, Request, Response
from pydantic import BaseModel

from sidecar.client import AsyncSidecarAdmin, SidecarClientError

log = logging.getLogger("example")

ALGORITHM = "HS256"
ACCESS_TOKEN_SECONDS = 30 * 60  # the sidecar's jwt.token_lifetime_seconds says the same
REFRESH_TOKEN_SECONDS = 7 * 24 * 3600
REFRESH_COOKIE = "refresh_token"
# The browser sends the refresh cookie to the auth routes only, not with every request.
REFRESH_COOKIE_PATH = "/api/v1/auth"


@dataclass(frozen=True, slots=True)
class Settings:
    jwt_secret: str
    sidecar_admin_url: str
    sidecar_admin_key: str
    host: str = "127.0.0.1"
    port: int = 8001
    cookie_secure: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        missing = [name for name in ("JWT_SECRET", "SIDECAR_ADMIN_KEY") if not environ.get(name)]
        if missing:
            raise SystemExit(f"app: error: set {' and '.join(missing)}")
        secret = environ["JWT_SECRET"]
        if len(secret.encode()) < 32:
            raise SystemExit("app: error: JWT_SECRET must be at least 32 bytes for HS256 (RFC 7518 3.2)")
        return cls(
            jwt_secret=secret,
            sidecar_admin_url=environ.get("SIDECAR_ADMIN_URL", "http://127.0.0.1:8081"),
            sidecar_admin_key=environ["SIDECAR_ADMIN_KEY"],
            host=environ.get("APP_HOST", "127.0.0.1"),
            port=int(environ.get("APP_PORT", "8001")),
            cookie_secure=environ.get("COOKIE_SECURE", "1") != "0",
        )


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


class AccessToken(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 (the OAuth 2 token type, RFC 6750, not a secret)


@dataclass
class User:
    id: str
    name: str
    email: str
    salt: bytes
    password_hash: bytes

    def public(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "email": self.email}


def hash_password(password: str, salt: bytes) -> bytes:
    # scrypt from the standard library keeps the example dependency-free; argon2 or
    # bcrypt (e.g. pwdlib) are as good.
    return hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)


def client_ip(request: Request) -> str | None:
    """The client address nginx saw: X-Real-IP, else the last X-Forwarded-For hop.

    nginx replaces both with ``$remote_addr`` (contrib/fastapi/nginx.conf), and only nginx
    can reach the app, so they are believed. Anything that is not an address is dropped.
    """
    candidates = [request.headers.get("X-Real-IP", "")]
    candidates += reversed(request.headers.get("X-Forwarded-For", "").split(","))
    for candidate in candidates:
        try:
            return str(ipaddress.ip_address(candidate.strip()))
        except ValueError:
            continue
    return None


def create_app(settings: Settings) -> FastAPI:
    users: dict[str, User] = {}  # by email
    posts: list[dict[str, Any]] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncSidecarAdmin(settings.sidecar_admin_url, settings.sidecar_admin_key, timeout=2.0) as admin:
            app.state.sidecar = admin
            yield

    app = FastAPI(title="sidecar FastAPI example", lifespan=lifespan)

    def sidecar(request: Request) -> AsyncSidecarAdmin:
        admin: AsyncSidecarAdmin = request.app.state.sidecar
        return admin

    def issue(user_id: str, sid: str, kind: str, lifetime: int) -> str:
        now = int(time.time())
        claims = {"user_id": user_id, "sid": sid, "iat": now, "exp": now + lifetime, "type": kind}
        return jwt.encode(claims, settings.jwt_secret, algorithm=ALGORITHM)

    def user_by_id(user_id: str | None) -> User:
        """The user the gateway vouched for (X-Auth-User); 401 if there is none."""
        if user_id:
            for user in users.values():
                if user.id == user_id:
                    return user
        raise HTTPException(status_code=401, detail="Not authenticated")

    @app.post("/api/v1/auth/register", status_code=201)
    async def register(body: Registration) -> dict[str, str]:
        if body.email in users:
            raise HTTPException(status_code=400, detail="Email is already registered")
        salt = secrets.token_bytes(16)
        user = User(str(uuid.uuid4()), body.name, body.email, salt, hash_password(body.password, salt))
        users[body.email] = user
        return user.public()

    @app.post("/api/v1/auth/login")
    async def login(body: Credentials, request: Request, response: Response) -> AccessToken:
        user = users.get(body.email)
        if user is None or not hmac.compare_digest(hash_password(body.password, user.salt), user.password_hash):
            raise HTTPException(status_code=401, detail="Wrong email or password")
        sid = str(uuid.uuid4())  # this login's session, for every token it leads to
        access = issue(user.id, sid, "access", ACCESS_TOKEN_SECONDS)
        refresh = issue(user.id, sid, "refresh", REFRESH_TOKEN_SECONDS)
        try:
            await sidecar(request).register(
                access, ip_address=client_ip(request), user_agent=request.headers.get("User-Agent")
            )
        except SidecarClientError as e:
            # The sidecar would refuse a token of a session it was not told about.
            log.error("login: could not register the session with the sidecar: %s", e)
            raise HTTPException(status_code=503, detail="Cannot sign in right now, try again") from e
        response.set_cookie(
            REFRESH_COOKIE,
            refresh,
            max_age=REFRESH_TOKEN_SECONDS,
            path=REFRESH_COOKIE_PATH,
            httponly=True,
            secure=settings.cookie_secure,
            samesite="lax",
        )
        return AccessToken(access_token=access)

    @app.post("/api/v1/auth/refresh-access-token")
    async def refresh_access_token(
        refresh_token: Annotated[str | None, Cookie()] = None,
    ) -> AccessToken:
        if not refresh_token:
            raise HTTPException(status_code=401, detail="Refresh token missing")
        try:
            claims = jwt.decode(
                refresh_token,
                settings.jwt_secret,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "iat", "sid", "user_id", "type"]},
            )
        except jwt.PyJWTError as e:
            raise HTTPException(status_code=401, detail="Invalid refresh token") from e
        if claims["type"] != "refresh":
            raise HTTPException(status_code=401, detail="Invalid refresh token")
        # Same sid: the new token belongs to the login's session. If that session was
        # revoked, the gateway refuses this token on its first use, so the app need not ask.
        user = user_by_id(claims["user_id"])
        return AccessToken(access_token=issue(user.id, claims["sid"], "access", ACCESS_TOKEN_SECONDS))

    @app.post("/api/v1/auth/logout")
    async def logout(
        request: Request,
        response: Response,
        x_auth_session: Annotated[str | None, Header()] = None,
    ) -> dict[str, str]:
        # A protected route: the gateway checked the token and names its session.
        if not x_auth_session:
            raise HTTPException(status_code=401, detail="Not authenticated")
        try:
            await sidecar(request).revoke_session(x_auth_session)
        except SidecarClientError as e:
            log.error("logout: could not revoke session %s: %s", x_auth_session, e)
            raise HTTPException(status_code=503, detail="Cannot sign out right now, try again") from e
        response.delete_cookie(
            REFRESH_COOKIE, path=REFRESH_COOKIE_PATH, httponly=True, secure=settings.cookie_secure, samesite="lax"
        )
        return {"message": "Logged out successfully"}

    @app.get("/api/v1/posts")
    async def list_posts() -> list[dict[str, Any]]:
        return posts

    @app.post("/api/v1/posts", status_code=201)
    async def create_post(body: NewPost, x_auth_user: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        user = user_by_id(x_auth_user)
        post = {"id": len(posts) + 1, "title": body.title, "text": body.text, "created_by_user_id": user.id}
        posts.append(post)
        return post

    @app.get("/api/v1/users/me")
    async def read_me(x_auth_user: Annotated[str | None, Header()] = None) -> dict[str, str]:
        return user_by_id(x_auth_user).public()

    return app


def main() -> None:
    settings = Settings.from_env(os.environ)
    logging.basicConfig(level=logging.INFO)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, access_log=False)


if __name__ == "__main__":
    main()
