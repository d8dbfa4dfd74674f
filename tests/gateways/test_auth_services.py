"""Real auth services behind real nginx and a real ``sidecar serve``, end to end.

Two FastAPI auth services run as uvicorn processes: ``tests/apps/boilerplate_auth.py``,
shaped like the FastAPI web boilerplate (tokens without ``iat``, ``sid`` or ``jti``), and
``contrib/fastapi/app.py``, the worked example the README recommends (a ``sid`` per login,
``iat``, registration at login and revocation at logout through ``sidecar.client``). Each
sits behind nginx; the sidecar's ``[[routes]]`` make its auth routes public, so one
gateway configuration protects the whole app. Every token used here is one the app
handed out; the test only reads them (``jwt.decode`` without verification).

Tests share the processes of their service and never disturb each other: each uses users
of its own.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import jwt
import pytest
from yarl import URL

from tests.gateways.contract import Reply, assert_refused_401, values
from tests.gateways.support import Gateway, Upstream, run_gateway_sidecar, run_nginx, run_uvicorn_app
from tests.support import CONTRIB, REPO
from tests.support.configs import Listeners
from tests.support.gateways import write_rewritten
from tests.support.ports import free_ports
from tests.support.processes import run_sidecar_file
from tests.support.sessions import CHROME_WINDOWS
from tests.support.sidecar import SidecarProcess
from tests.support.tokens import SECRET

BOILERPLATE_APP = REPO / "tests" / "apps" / "boilerplate_auth.py"
EXAMPLE = CONTRIB / "fastapi"
ADMIN_KEY = "auth-services-test-admin-key-0123456789"
FIREFOX_ANDROID = "Mozilla/5.0 (Android 14; Mobile; rv:133.0) Gecko/133.0 Firefox/133.0"
SAFARI_IOS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
PASSWORD = "correct horse battery staple"

# The boilerplate's routes as an operator would declare them: its auth routes are public,
# reading posts works signed in or not, everything else needs a valid token.
BOILERPLATE_ROUTES = (
    {"path": "/api/v1/auth/*", "policy": "public"},
    {"path": "/api/v1/posts/*", "methods": ["GET", "HEAD"], "policy": "optional"},
)
# The boilerplate's token shape; its access tokens live exactly 30 minutes.
BOILERPLATE_JWT = {"user_claim": "user_id", "token_lifetime_seconds": 1800}


# ---------------------------------------------------------------------------- processes


@pytest.fixture(scope="module")
def boilerplate_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """The boilerplate auth service, recording every request it receives."""
    workdir = tmp_path_factory.mktemp("boilerplate")
    [port] = free_ports(1)
    argv = [sys.executable, str(BOILERPLATE_APP), "--port", str(port), "--secret", SECRET,
            "--record", str(workdir / "received.jsonl")]
    with run_uvicorn_app("boilerplate", workdir, argv, port) as app:
        yield app


@pytest.fixture(scope="module")
def boilerplate_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    """The sidecar configured for the boilerplate's tokens and routes (auto registration)."""
    workdir = tmp_path_factory.mktemp("boilerplate-sidecar")
    with run_gateway_sidecar(workdir, jwt=BOILERPLATE_JWT, routes=BOILERPLATE_ROUTES) as sidecar:
        yield sidecar


@pytest.fixture(scope="module")
def boilerplate_gateway(
    tmp_path_factory: pytest.TempPathFactory, boilerplate_app: Upstream, boilerplate_sidecar: SidecarProcess
) -> Iterator[Gateway]:
    """The shipped contrib/nginx configuration, unchanged, in front of the boilerplate."""
    workdir = tmp_path_factory.mktemp("boilerplate-nginx")
    with run_nginx(workdir, boilerplate_app.port, boilerplate_sidecar.port, boilerplate_sidecar.check_port) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def example_ports() -> tuple[int, int, int, int]:
    """(app, sidecar public, sidecar admin) ports for the contrib/fastapi example."""
    app, public, admin, check = free_ports(4)
    return app, public, admin, check


@pytest.fixture(scope="module")
def example_sidecar(
    tmp_path_factory: pytest.TempPathFactory, example_ports: tuple[int, int, int, int]
) -> Iterator[SidecarProcess]:
    """The sidecar with contrib/fastapi/sidecar.toml as shipped, only its ports rewritten."""
    workdir = tmp_path_factory.mktemp("example-sidecar")
    _, public, admin, check = example_ports
    ports = {8080: public, 8081: admin, 8082: check}
    config = write_rewritten(EXAMPLE / "sidecar.toml", workdir / "sidecar.toml", ports)
    env = {"JWT_SECRET": SECRET, "SIDECAR_ADMIN_KEY": ADMIN_KEY}
    with run_sidecar_file(workdir, config, public, env=env) as service:
        yield SidecarProcess("sidecar", Listeners(public, admin, check), config, service)


@pytest.fixture(scope="module")
def example_app(
    tmp_path_factory: pytest.TempPathFactory, example_ports: tuple[int, int, int, int], example_sidecar: SidecarProcess
) -> Iterator[Upstream]:
    """contrib/fastapi/app.py, configured by its environment variables."""
    workdir = tmp_path_factory.mktemp("example-app")
    port, _, admin, _ = example_ports
    env = {
        "JWT_SECRET": SECRET,
        "SIDECAR_ADMIN_URL": f"http://127.0.0.1:{admin}",
        "SIDECAR_ADMIN_KEY": ADMIN_KEY,
        "APP_PORT": str(port),
    }
    argv = [sys.executable, str(EXAMPLE / "app.py")]
    with run_uvicorn_app("example", workdir, argv, port, env=env) as app:
        yield app


@pytest.fixture(scope="module")
def example_gateway(
    tmp_path_factory: pytest.TempPathFactory, example_app: Upstream, example_sidecar: SidecarProcess
) -> Iterator[Gateway]:
    """nginx with contrib/fastapi/nginx.conf in front of the example."""
    workdir = tmp_path_factory.mktemp("example-nginx")
    with run_nginx(
        workdir, example_app.port, example_sidecar.port, example_sidecar.check_port, EXAMPLE / "nginx.conf"
    ) as gateway:
        yield gateway


# ---------------------------------------------------------------------------- clients


@dataclass
class Device:
    """One browser or phone of a user: its own connection, User-Agent and tokens.

    Cookies are handled by hand (no cookie jar): the boilerplate's refresh cookie has a
    malformed ``expires`` and is ``Secure`` over plain HTTP, so a jar could drop it.
    """

    http: aiohttp.ClientSession
    gateway: Gateway
    user_agent: str
    access: str = ""
    refresh: str = ""
    set_cookies: list[str] = field(default_factory=list)

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """``method path`` through the gateway, with ``token`` as bearer when given."""
        sent = {"User-Agent": self.user_agent, **(headers or {})}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            sent["Content-Type"] = "application/json"
        # encoded=True: the path goes out exactly as written (no client-side dot removal).
        url = URL(self.gateway.url + path, encoded=True)
        async with self.http.request(method, url, headers=sent, data=data, allow_redirects=False) as resp:
            self.set_cookies = resp.headers.getall("Set-Cookie", [])
            return Reply(resp.status, resp.headers, await resp.read())

    async def login(self, email: str) -> Reply:
        """Log in with no token; keep the access token and the refresh cookie's value."""
        reply = await self.call("POST", "/api/v1/auth/login", body={"email": email, "password": PASSWORD})
        assert reply.status == 200, reply.body
        self.access = reply.json()["access_token"]
        self.refresh = refresh_cookie(self.set_cookies)
        return reply

    async def refresh_access(self) -> str:
        """A new access token from the refresh cookie (the app's own answer)."""
        reply = await self.call(
            "POST", "/api/v1/auth/refresh-access-token", headers={"Cookie": f"refresh_token={self.refresh}"}
        )
        assert reply.status == 200, reply.body
        token: str = reply.json()["access_token"]
        return token

    async def me(self, token: str | None = None) -> Reply:
        return await self.call("GET", "/api/v1/users/me", token=self.access if token is None else token)

    async def sessions(self) -> list[dict[str, Any]]:
        reply = await self.call("GET", "/api/v1/sessions/", token=self.access)
        assert reply.status == 200, reply.body
        data: list[dict[str, Any]] = reply.json()["data"]
        return data


def refresh_cookie(set_cookies: list[str]) -> str:
    """The value of the ``refresh_token`` cookie among raw Set-Cookie headers."""
    for header in set_cookies:
        name, _, rest = header.partition("=")
        if name.strip() == "refresh_token":
            return rest.split(";", 1)[0]
    pytest.fail(f"no refresh_token cookie in {set_cookies!r}")


DeviceFactory = Callable[..., Awaitable[Device]]


@pytest.fixture
async def devices() -> AsyncIterator[DeviceFactory]:
    """``await devices(gateway, user_agent, client_address)``: a new device, closed at teardown."""
    async with AsyncExitStack() as stack:

        async def make(gateway: Gateway, user_agent: str, address: str = "127.0.0.1") -> Device:
            connector = aiohttp.TCPConnector(local_addr=(address, 0))
            http = await stack.enter_async_context(
                aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
            )
            return Device(http, gateway, user_agent)

        yield make


async def sign_up(device: Device) -> tuple[str, str]:
    """Register a new user through the gateway with no token; (email, user id)."""
    email = f"{uuid.uuid4().hex[:12]}@example.com"
    reply = await device.call(
        "POST", "/api/v1/auth/register", body={"name": "Ada", "email": email, "password": PASSWORD}
    )
    assert reply.status == 201, reply.body
    user_id: str = reply.json()["id"]
    return email, user_id


def claims_of(token: str) -> dict[str, Any]:
    """What the app put in a token (read, not verified: the sidecar verifies)."""
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


async def next_second() -> None:
    """Wait until the wall clock's second changes.

    Tokens with no ``iat``/``sid``/``jti`` issued in the same second to the same user are
    byte for byte the same token, hence the same session; and a cut-off counts in whole
    seconds. Tests that need two distinct tokens, or a token older than a cut-off, wait.
    """
    now = time.time()
    # A little past the boundary: asyncio's clock (monotonic) and the wall clock may differ
    # by a hair over a second.
    await asyncio.sleep(math.floor(now) + 1 - now + 0.02)


def reached(app: Upstream, path: str, probe: str) -> list[dict[str, Any]]:
    """The requests for ``path`` carrying the query ``probe`` that the app received."""
    return [r for r in app.received(path) if r["query"] == probe]


def probe() -> str:
    return f"probe={uuid.uuid4().hex}"


# ---------------------------------------------------------------------------- the boilerplate


@dataclass
class LoggedOutOthers:
    """A user of the boilerplate after device ``a`` logged out all others."""

    email: str
    user_id: str
    a: Device
    b: Device
    never_used: Device


async def log_out_others(gateway: Gateway, make: DeviceFactory) -> LoggedOutOthers:
    """Devices a and b log in and are used; a third logs in and is never used; a then
    logs out all others, in a later second than every one of those logins."""
    a = await make(gateway, CHROME_WINDOWS, "127.0.0.1")
    b = await make(gateway, FIREFOX_ANDROID, "127.0.0.2")
    never_used = await make(gateway, SAFARI_IOS, "127.0.0.2")
    email, user_id = await sign_up(a)
    for device in (a, b, never_used):
        await next_second()  # three distinct tokens
        await device.login(email)
    for device in (a, b):
        assert (await device.me()).status == 200
    await next_second()  # the never-used token is older than the cut-off
    reply = await a.call("DELETE", "/api/v1/sessions/", token=a.access)
    assert reply.status == 204, reply.body
    return LoggedOutOthers(email, user_id, a, b, never_used)


class TestBoilerplate:
    """An auth service as users run it, unchanged, behind the shipped nginx configuration."""

    async def test_register_and_login_pass_without_a_token(
        self, boilerplate_gateway: Gateway, devices: DeviceFactory
    ) -> None:
        """Register and login are public routes: they reach the app with no token at all."""
        device = await devices(boilerplate_gateway, CHROME_WINDOWS)
        email, user_id = await sign_up(device)
        await device.login(email)
        assert claims_of(device.access)["user_id"] == user_id

    async def test_tokens_are_the_boilerplates_own(
        self, boilerplate_gateway: Gateway, devices: DeviceFactory
    ) -> None:
        """The app's tokens carry no iat, sid or jti, and its refresh cookie has the malformed expires."""
        device = await devices(boilerplate_gateway, CHROME_WINDOWS)
        email, user_id = await sign_up(device)
        await device.login(email)
        access, refresh = claims_of(device.access), claims_of(device.refresh)
        assert set(access) == {"user_id", "exp", "type"}
        assert access["type"] == "access" and access["user_id"] == user_id
        assert set(refresh) == {"user_id", "exp", "type"} and refresh["type"] == "refresh"
        [cookie] = [c for c in device.set_cookies if c.startswith("refresh_token=")]
        assert "HttpOnly" in cookie and "expires=30 days, 0:00:00" in cookie

    async def test_anonymous_read_of_posts_reaches_the_app_without_identity(
        self, boilerplate_gateway: Gateway, boilerplate_app: Upstream, devices: DeviceFactory
    ) -> None:
        """An optional route without a token is let through anonymously; a forged X-Auth-User never reaches the app."""
        device = await devices(boilerplate_gateway, CHROME_WINDOWS)
        query = probe()
        reply = await device.call("GET", f"/api/v1/posts?{query}", headers={"X-Auth-User": str(uuid.uuid4())})
        assert reply.status == 200, reply.body
        assert isinstance(reply.json(), list)
        [seen] = reached(boilerplate_app, "/api/v1/posts", query)
        assert values(seen, "X-Auth-User") == []
        assert values(seen, "X-Auth-Session") == []

    async def test_signed_in_read_of_posts_carries_identity(
        self, boilerplate_gateway: Gateway, boilerplate_app: Upstream, devices: DeviceFactory
    ) -> None:
        """The same optional route with a valid token reaches the app with the user's identity."""
        device = await devices(boilerplate_gateway, CHROME_WINDOWS)
        email, user_id = await sign_up(device)
        await device.login(email)
        query = probe()
        reply = await device.call("GET", f"/api/v1/posts?{query}", token=device.access)
        assert reply.status == 200, reply.body
        [seen] = reached(boilerplate_app, "/api/v1/posts", query)
        assert values(seen, "X-Auth-User") == [user_id]

    async def test_anonymous_post_is_refused_before_the_app(
        self, boilerplate_gateway: Gateway, boilerplate_app: Upstream, devices: DeviceFactory
    ) -> None:
        """Writing a post needs a user: without a token the gateway answers 401 and the app sees nothing."""
        device = await devices(boilerplate_gateway, CHROME_WINDOWS)
        query = probe()
        reply = await device.call("POST", f"/api/v1/posts?{query}", body={"title": "t", "text": "x"})
        assert_refused_401(reply)
        assert reached(boilerplate_app, "/api/v1/posts", query) == []

    async def test_signed_in_post_is_written_as_the_gateways_user(
        self, boilerplate_gateway: Gateway, devices: DeviceFactory
    ) -> None:
        """With a valid token the app writes the post as the user the gateway vouched for."""
        device = await devices(boilerplate_gateway, CHROME_WINDOWS)
        email, user_id = await sign_up(device)
        await device.login(email)
        reply = await device.call("POST", "/api/v1/posts", token=device.access, body={"title": "t", "text": "x"})
        assert reply.status == 201, reply.body
        assert reply.json()["created_by_user_id"] == user_id

    async def test_two_devices_are_listed_with_their_user_agents(
        self, boilerplate_gateway: Gateway, devices: DeviceFactory
    ) -> None:
        """Two devices that log in and use a protected route are both listed, each as its User-Agent's device."""
        a = await devices(boilerplate_gateway, CHROME_WINDOWS, "127.0.0.1")
        b = await devices(boilerplate_gateway, FIREFOX_ANDROID, "127.0.0.2")
        email, user_id = await sign_up(a)
        for device in (a, b):
            await next_second()  # two distinct tokens
            await device.login(email)
            reply = await device.me()
            assert reply.status == 200, reply.body
            assert reply.json()["id"] == user_id
        listed = await a.sessions()
        by_device = {s["device"]: s for s in listed}
        assert len(listed) == 2
        assert set(by_device) == {"Chrome on Windows", "Firefox on Android"}
        assert by_device["Chrome on Windows"]["current"] is True
        assert by_device["Chrome on Windows"]["ip_address"] == "127.0.0.1"
        assert by_device["Firefox on Android"]["ip_address"] == "127.0.0.2"

    async def test_log_out_others_refuses_the_other_device_and_keeps_the_caller(
        self, boilerplate_gateway: Gateway, boilerplate_app: Upstream, devices: DeviceFactory
    ) -> None:
        """After "log out others" the other device is refused at the gateway and the caller goes on."""
        state = await log_out_others(boilerplate_gateway, devices)
        query = probe()
        assert_refused_401(await state.b.call("GET", f"/api/v1/users/me?{query}", token=state.b.access))
        assert reached(boilerplate_app, "/api/v1/users/me", query) == []
        assert (await state.a.me()).status == 200
        [listed] = await state.a.sessions()
        assert listed["current"] is True

    async def test_callers_refreshed_token_works_after_log_out_others(
        self, boilerplate_gateway: Gateway, devices: DeviceFactory
    ) -> None:
        """The caller's next access token, refreshed after "log out others", is let through."""
        state = await log_out_others(boilerplate_gateway, devices)
        refreshed = await state.a.refresh_access()
        assert set(claims_of(refreshed)) == {"user_id", "exp", "type"}
        reply = await state.a.me(refreshed)
        assert reply.status == 200, reply.body

    async def test_fresh_login_works_after_log_out_others(
        self, boilerplate_gateway: Gateway, devices: DeviceFactory
    ) -> None:
        """A new login of the same user after "log out others" is let through (it used to be refused for good)."""
        state = await log_out_others(boilerplate_gateway, devices)
        fresh = await devices(boilerplate_gateway, FIREFOX_ANDROID, "127.0.0.2")
        await next_second()  # not the same token as the caller's
        await fresh.login(state.email)
        reply = await fresh.me()
        assert reply.status == 200, reply.body
        assert reply.json()["id"] == state.user_id

    async def test_never_used_token_from_before_log_out_others_is_refused(
        self, boilerplate_gateway: Gateway, boilerplate_app: Upstream, devices: DeviceFactory
    ) -> None:
        """A token issued before the cut-off and never seen by the sidecar is refused (token_lifetime_seconds dates it)."""
        state = await log_out_others(boilerplate_gateway, devices)
        query = probe()
        reply = await state.never_used.call("GET", f"/api/v1/users/me?{query}", token=state.never_used.access)
        assert_refused_401(reply)
        assert reached(boilerplate_app, "/api/v1/users/me", query) == []

    async def test_other_devices_refresh_cookie_still_mints_a_working_token(
        self, boilerplate_gateway: Gateway, devices: DeviceFactory
    ) -> None:
        """The limit of tokens without sid: a logged-out device's refresh cookie gets a new, working token."""
        # Nothing ties the new token to the logged-out login: it is a new session, issued
        # after the cut-off. contrib/fastapi carries a sid into refreshed tokens for this.
        state = await log_out_others(boilerplate_gateway, devices)
        await next_second()
        refreshed = await state.b.refresh_access()
        assert (await state.b.me(refreshed)).status == 200

    async def test_refresh_token_is_refused_as_a_bearer(
        self, boilerplate_gateway: Gateway, boilerplate_app: Upstream, devices: DeviceFactory
    ) -> None:
        """The refresh token from the app's cookie is refused at the gateway (type rule), the app untouched."""
        device = await devices(boilerplate_gateway, CHROME_WINDOWS)
        email, _ = await sign_up(device)
        await device.login(email)
        query = probe()
        assert_refused_401(await device.call("GET", f"/api/v1/users/me?{query}", token=device.refresh))
        assert reached(boilerplate_app, "/api/v1/users/me", query) == []

    @pytest.mark.parametrize(
        "path",
        [
            "/api/v1/auth/../users/me",
            "/api/v1/auth/%2e%2e/users/me",
            "/api/v1/auth/%2E%2E/users/me",
            "/api/v1/auth;x/../../users/me",
            "/api/v1/auth/..;/users/me",
            "/api/v1/auth%2f..%2fusers/me",
        ],
    )
    async def test_path_confusion_never_reaches_users_me(
        self, boilerplate_gateway: Gateway, boilerplate_app: Upstream, devices: DeviceFactory, path: str
    ) -> None:
        """A spelling of /users/me under the public /auth prefix, without a token, is refused before the app."""
        device = await devices(boilerplate_gateway, CHROME_WINDOWS)
        query = probe()
        reply = await device.call("GET", f"{path}?{query}")
        # The sidecar reads each as /api/v1/users/me or a doubtful path: "required" (401).
        assert 400 <= reply.status < 500, reply.body
        assert [r for r in boilerplate_app.received_all() if r["query"] == query] == []


# ---------------------------------------------------------------------------- the example


def login_time(session: dict[str, Any]) -> float:
    return datetime.strptime(session["login_time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


class TestExample:
    """contrib/fastapi: sid per login, registration at login, revocation at logout."""

    async def test_tokens_carry_the_logins_sid_and_iat(
        self, example_gateway: Gateway, devices: DeviceFactory
    ) -> None:
        """Access, refresh and refreshed access tokens all carry the login's sid, and each its iat."""
        device = await devices(example_gateway, CHROME_WINDOWS)
        email, user_id = await sign_up(device)
        await device.login(email)
        access, refresh = claims_of(device.access), claims_of(device.refresh)
        refreshed = claims_of(await device.refresh_access())
        assert access["user_id"] == user_id and access["type"] == "access"
        assert refresh["type"] == "refresh" and refreshed["type"] == "access"
        assert uuid.UUID(access["sid"]).version == 4
        assert access["sid"] == refresh["sid"] == refreshed["sid"]
        assert all(isinstance(c["iat"], int) for c in (access, refresh, refreshed))

    async def test_login_registers_each_device_before_any_other_call(
        self, example_gateway: Gateway, devices: DeviceFactory
    ) -> None:
        """Both devices are listed right after logging in, with their device, address and login time."""
        a = await devices(example_gateway, CHROME_WINDOWS, "127.0.0.1")
        b = await devices(example_gateway, SAFARI_IOS, "127.0.0.2")
        email, _ = await sign_up(a)
        before = int(time.time())
        await a.login(email)
        await b.login(email)
        after = time.time()
        # a's first call after logging in; b makes none at all.
        listed = await a.sessions()
        by_device = {s["device"]: s for s in listed}
        assert set(by_device) == {"Chrome on Windows", "Safari on iOS"}
        assert by_device["Chrome on Windows"]["current"] is True
        assert by_device["Chrome on Windows"]["ip_address"] == "127.0.0.1"
        assert by_device["Safari on iOS"]["ip_address"] == "127.0.0.2"
        assert by_device["Safari on iOS"]["current"] is False
        for s in listed:
            assert before <= login_time(s) <= after

    async def test_revoked_devices_refreshed_token_is_refused(
        self, example_gateway: Gateway, devices: DeviceFactory
    ) -> None:
        """Once a revokes b through the sessions API, b's refresh still answers but its new token is refused."""
        a = await devices(example_gateway, CHROME_WINDOWS, "127.0.0.1")
        b = await devices(example_gateway, SAFARI_IOS, "127.0.0.2")
        email, _ = await sign_up(a)
        await a.login(email)
        await b.login(email)
        [other] = [s for s in await a.sessions() if not s["current"]]
        reply = await a.call("DELETE", f"/api/v1/sessions/{other['id']}/", token=a.access)
        assert reply.status == 204, reply.body
        assert_refused_401(await b.me())
        refreshed = await b.refresh_access()
        assert claims_of(refreshed)["sid"] == claims_of(b.access)["sid"]
        assert_refused_401(await b.me(refreshed))
        assert (await a.me()).status == 200

    async def test_fresh_login_works_after_log_out_others(
        self, example_gateway: Gateway, devices: DeviceFactory
    ) -> None:
        """After "log out others" the other device is refused, the caller and its refreshed token go on, a new login works."""
        a = await devices(example_gateway, CHROME_WINDOWS, "127.0.0.1")
        b = await devices(example_gateway, SAFARI_IOS, "127.0.0.2")
        email, user_id = await sign_up(a)
        await a.login(email)
        await b.login(email)
        reply = await a.call("DELETE", "/api/v1/sessions/", token=a.access)
        assert reply.status == 204, reply.body
        assert_refused_401(await b.me())
        assert_refused_401(await b.me(await b.refresh_access()))
        assert (await a.me()).status == 200
        assert (await a.me(await a.refresh_access())).status == 200
        fresh = await devices(example_gateway, FIREFOX_ANDROID, "127.0.0.2")
        await fresh.login(email)
        reply = await fresh.me()
        assert reply.status == 200, reply.body
        assert reply.json()["id"] == user_id
        assert {s["device"] for s in await a.sessions()} == {"Chrome on Windows", "Firefox on Android"}

    async def test_logout_refuses_that_token_at_once(
        self, example_gateway: Gateway, devices: DeviceFactory
    ) -> None:
        """Logging out revokes the current session: its token is refused on the very next request."""
        device = await devices(example_gateway, CHROME_WINDOWS)
        other = await devices(example_gateway, SAFARI_IOS)
        email, _ = await sign_up(device)
        await device.login(email)
        await other.login(email)
        reply = await device.call("POST", "/api/v1/auth/logout", token=device.access)
        assert reply.status == 200, reply.body
        assert any(c.startswith('refresh_token=""') or c.startswith("refresh_token=;") for c in device.set_cookies)
        assert_refused_401(await device.me())
        assert_refused_401(await device.me(await device.refresh_access()))
        # Only that session: the user's other device goes on.
        assert (await other.me()).status == 200

    async def test_logout_revokes_the_gateways_session_not_a_forged_one(
        self, example_gateway: Gateway, devices: DeviceFactory
    ) -> None:
        """A client-sent X-Auth-Session naming another user's session is replaced: logout revokes only the caller's."""
        victim = await devices(example_gateway, SAFARI_IOS)
        mallory = await devices(example_gateway, CHROME_WINDOWS)
        victim_email, _ = await sign_up(victim)
        mallory_email, _ = await sign_up(mallory)
        await victim.login(victim_email)
        await mallory.login(mallory_email)
        [target] = await victim.sessions()
        reply = await mallory.call(
            "POST", "/api/v1/auth/logout", token=mallory.access, headers={"X-Auth-Session": target["id"]}
        )
        assert reply.status == 200, reply.body
        assert (await victim.me()).status == 200
        assert_refused_401(await mallory.me())

    async def test_logout_without_a_token_is_refused(
        self, example_gateway: Gateway, devices: DeviceFactory
    ) -> None:
        """Logout is a protected route: without a token the gateway refuses it."""
        device = await devices(example_gateway, CHROME_WINDOWS)
        assert_refused_401(await device.call("POST", "/api/v1/auth/logout"))

    async def test_public_routes_answer_anonymous_users(
        self, example_gateway: Gateway, devices: DeviceFactory
    ) -> None:
        """Reading posts needs no token, writing one does, and a written post is readable anonymously."""
        anonymous = await devices(example_gateway, CHROME_WINDOWS)
        writer = await devices(example_gateway, CHROME_WINDOWS)
        title = uuid.uuid4().hex
        assert_refused_401(await anonymous.call("POST", "/api/v1/posts", body={"title": title, "text": "x"}))
        email, user_id = await sign_up(writer)
        await writer.login(email)
        reply = await writer.call("POST", "/api/v1/posts", token=writer.access, body={"title": title, "text": "x"})
        assert reply.status == 201, reply.body
        reply = await anonymous.call("GET", "/api/v1/posts")
        assert reply.status == 200, reply.body
        [post] = [p for p in reply.json() if p["title"] == title]
        assert post["created_by_user_id"] == user_id
        assert_refused_401(await anonymous.call("GET", "/api/v1/users/me"))
