"""Capture routes: login, refresh and logout through the sidecar, the auth service unchanged.

The auth service (tests/capture/auth_service.py) issues tokens with no iat, sid or jti;
through the sidecar's capture routes a revoked device stays out across refreshes, logins
are listed before any protected call, and the app's logout ends the session (issue
"See every token as it is issued").
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.capture.learn import refresh_key
from sidecar.capture.places import TokenPlace, token_in_answer
from sidecar.cookies import request_cookie_values, set_cookie_values
from tests.capture import ADA, BOILERPLATE_JWT, LOGIN, LOGOUT, REFRESH, auth_service, capture_routes
from tests.conftest import Sidecar, bearer, settings_for
from tests.support.ports import free_ports

PHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
LAPTOP = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
TABLET = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"


@dataclass
class Device:
    """One browser: its User-Agent and the cookie the auth service set."""

    agent: str
    access: str = ""
    refresh_cookie: str = ""


@dataclass
class World:
    sidecar: Sidecar
    auth: Any  # the aiohttp test server of the auth service
    http: aiohttp.ClientSession

    def url(self, path: str) -> str:
        return str(self.sidecar.public.make_url(path))

    @property
    def seen(self) -> Any:
        return self.auth.app[auth_service.SEEN]

    async def login(self, device: Device) -> int:
        async with self.http.post(self.url(LOGIN), json=ADA, headers={"User-Agent": device.agent}) as resp:
            if resp.status == 200:
                device.access = (await resp.json())["access_token"]
                device.refresh_cookie = set_cookie_values(resp.headers.getall("Set-Cookie"))["refresh_token"][0]
            return resp.status

    async def refresh(self, device: Device) -> int:
        headers = {"User-Agent": device.agent, "Cookie": f"refresh_token={device.refresh_cookie}"}
        async with self.http.post(self.url(REFRESH), headers=headers) as resp:
            if resp.status == 200:
                device.access = (await resp.json())["access_token"]
            return resp.status

    async def check(self, device: Device) -> int:
        return await self.sidecar.check(device.access)

    async def sessions(self, device: Device) -> list[dict[str, Any]]:
        return await self.sidecar.sessions(device.access)


@pytest.fixture
async def world(start_sidecar: Callable[..., Any], aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[World]:
    auth = await aiohttp_server(auth_service.create_app())
    upstream = str(auth.make_url("")).rstrip("/")
    settings = settings_for(tmp_path, jwt=BOILERPLATE_JWT, capture=capture_routes(upstream))
    sidecar = await start_sidecar(settings)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        yield World(sidecar, auth, http)


async def three_devices(world: World) -> tuple[Device, Device, Device]:
    """Ada logs in on three devices, a second apart (tokens without iat or jti issued in one
    second would be byte-identical, i.e. one session)."""
    devices = (Device(LAPTOP), Device(PHONE), Device(TABLET))
    for i, d in enumerate(devices):
        if i:
            await asyncio.sleep(1.05)
        assert await world.login(d) == 200
    return devices


async def test_logins_are_listed_before_any_protected_call(world: World) -> None:
    """Three logins through the capture route are three sessions with their devices, listed at once."""
    laptop, _phone, _tablet = await three_devices(world)
    assert world.seen[LOGIN] == 3
    listed = {s["device"] for s in await world.sessions(laptop)}
    assert listed == {"Chrome on Windows", "Safari on iOS", "Firefox on Linux"}


async def test_a_revoked_device_stays_out_across_refreshes(world: World) -> None:
    """Revoke the phone: its refresh is refused without reaching the auth service, its old token too."""
    laptop, phone, _tablet = await three_devices(world)
    phone_session = next(s["id"] for s in await world.sessions(laptop) if s["device"] == "Safari on iOS")
    async with world.sidecar.public.delete(f"/api/v1/sessions/{phone_session}/", headers=bearer(laptop.access)) as r:
        assert r.status == 204
    before = world.seen[REFRESH]
    assert await world.refresh(phone) == 401
    assert world.seen[REFRESH] == before  # refused by the sidecar, never forwarded
    assert await world.check(phone) == 401


async def test_a_refresh_keeps_one_row_per_device(world: World) -> None:
    """A refreshed access token belongs to its login's session: it works, and the list keeps one row."""
    laptop, _phone, _tablet = await three_devices(world)
    old = laptop.access
    await asyncio.sleep(1.05)  # a different second: a different token
    assert await world.refresh(laptop) == 200
    assert laptop.access != old
    assert await world.check(laptop) == 200
    rows = await world.sessions(laptop)
    assert len(rows) == 3
    assert [r["current"] for r in rows].count(True) == 1
    assert next(r for r in rows if r["current"])["device"] == "Chrome on Windows"


async def test_log_out_others_keeps_my_refreshes_and_a_fresh_login_works(world: World) -> None:
    """After "log out others", my refreshed token works, the others' refreshes are refused, a new login works."""
    laptop, phone, tablet = await three_devices(world)
    async with world.sidecar.public.delete("/api/v1/sessions/", headers=bearer(laptop.access)) as r:
        assert r.status == 204
    assert await world.check(phone) == 401
    assert await world.refresh(phone) == 401
    assert await world.refresh(tablet) == 401
    await asyncio.sleep(1.05)
    assert await world.refresh(laptop) == 200
    assert await world.check(laptop) == 200
    fresh = Device(PHONE)
    assert await world.login(fresh) == 200
    assert await world.check(fresh) == 200


async def test_the_apps_logout_ends_the_session_at_once(world: World) -> None:
    """A 2xx logout through the capture route revokes the presented token's session before it returns."""
    laptop, phone, _tablet = await three_devices(world)
    headers = {**bearer(phone.access), "Cookie": f"refresh_token={phone.refresh_cookie}"}
    async with world.http.post(world.url(LOGOUT), headers=headers) as resp:
        assert resp.status == 200
        assert "refresh_token=; Max-Age=0; Path=/" in resp.headers.getall("Set-Cookie")
    assert await world.check(phone) == 401
    assert await world.refresh(phone) == 401
    assert await world.check(laptop) == 200
    # Logging out again (already revoked) is still forwarded: the app clears its cookies.
    before = world.seen[LOGOUT]
    async with world.http.post(world.url(LOGOUT), headers=headers) as resp:
        assert resp.status == 200
    assert world.seen[LOGOUT] == before + 1


async def test_logout_by_refresh_cookie_alone(world: World) -> None:
    """A logout that presents only the refresh cookie revokes that cookie's session."""
    laptop = Device(LAPTOP)
    assert await world.login(laptop) == 200
    async with world.http.post(world.url(LOGOUT), headers={"Cookie": f"refresh_token={laptop.refresh_cookie}"}) as r:
        assert r.status == 200
    assert await world.check(laptop) == 401


async def test_the_answer_passes_back_unchanged(world: World) -> None:
    """Status, body and every header (both Set-Cookie lines, the app's own) reach the client."""
    async with world.http.post(world.url(LOGIN), json=ADA, headers={"Connection": "keep-alive, X-Secret"}) as resp:
        assert resp.status == 200
        assert resp.headers["X-Auth-Service"] == "boilerplate"
        cookies = resp.headers.getall("Set-Cookie")
        assert any(c.startswith("refresh_token=") and "expires=30 days, 0:00:00" in c for c in cookies)
        assert "theme=dark; Path=/" in cookies
        assert (await resp.json())["token_type"] == "bearer"
    received = dict((k.lower(), v) for k, v in world.auth.app[auth_service.LAST_HEADERS][LOGIN])
    assert "x-secret" not in received  # named in Connection: hop-by-hop
    assert "connection" not in received or received["connection"].lower() != "keep-alive, x-secret"


async def test_an_error_answer_is_passed_back_and_binds_nothing(world: World) -> None:
    """A 401 from the auth service reaches the client as it was, and no session appears."""
    async with world.http.post(world.url(LOGIN), json={**ADA, "password": "wrong"}) as resp:
        assert resp.status == 401
        assert await resp.json() == {"detail": "Incorrect email or password"}
    assert world.sidecar.services.sessions.states_in_memory == 0


async def test_an_answer_without_the_token_is_passed_through_with_a_warning(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A 2xx answer that lacks the configured token is passed through; a warning says so."""
    with caplog.at_level(logging.WARNING, logger="sidecar.web.capture"):
        async with world.http.post(world.url("/api/v1/auth/tokenless")) as resp:
            assert resp.status == 200
            assert await resp.json() == {"detail": "ok, but no token here"}
    assert any("without a token" in r.getMessage() for r in caplog.records)


async def test_a_slow_auth_service_is_a_504(world: World) -> None:
    """An auth service slower than the route's timeout gets 504 with the envelope, nothing bound."""
    async with world.http.post(world.url("/api/v1/auth/slow")) as resp:
        assert resp.status == 504
        body = await resp.json()
        assert body["status"] == "error" and body["message"] == "Auth service timed out"


async def test_an_auth_service_that_is_down_is_a_502(start_sidecar: Callable[..., Any], tmp_path: Path) -> None:
    """Nothing listening at the upstream: 502 with the envelope."""
    [port] = free_ports(1)
    settings = settings_for(tmp_path, jwt=BOILERPLATE_JWT, capture=capture_routes(f"http://127.0.0.1:{port}"))
    sidecar: Sidecar = await start_sidecar(settings)
    async with sidecar.public.post(LOGIN, json=ADA) as resp:
        assert resp.status == 502
        assert (await resp.json())["message"] == "Auth service unavailable"


async def test_a_body_over_the_bound_is_413(world: World) -> None:
    """A request body larger than max_body_bytes is refused before it is forwarded."""
    before = world.seen[LOGIN]
    async with world.http.post(world.url(LOGIN), data=io.BytesIO(b"x" * (1024 * 1024 + 1))) as resp:
        assert resp.status == 413
    assert world.seen[LOGIN] == before


async def test_two_different_refresh_cookies_are_refused(world: World) -> None:
    """A refresh presenting two different refresh_token cookies is refused, not guessed."""
    async with world.http.post(world.url(REFRESH), headers={"Cookie": "refresh_token=a; refresh_token=b"}) as resp:
        assert resp.status == 400


async def test_identical_logins_are_one_session_and_said_once(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """Two logins answered with byte-identical tokens are one session; one warning says a jti fixes it."""
    with caplog.at_level(logging.WARNING, logger="sidecar.capture.learn"):
        for _ in range(3):
            first, second = Device(LAPTOP), Device(PHONE)
            assert await world.login(first) == 200
            assert await world.login(second) == 200
            if first.access == second.access:
                break
        else:
            pytest.fail("no two logins in one second")
    assert len(await world.sessions(first)) >= 1
    assert [r for r in caplog.records if "jti" in r.getMessage()]


def test_set_cookie_is_read_as_browsers_read_it() -> None:
    """A malformed attribute never hides a cookie; an emptied cookie is no token."""
    found = set_cookie_values([
        "refresh_token=abc.def.ghi; HttpOnly; expires=30 days, 0:00:00; Path=/",
        'quoted="v1"; Path=/',
        "cleared=; Max-Age=0",
        "novalue",
    ])
    assert found == {"refresh_token": ["abc.def.ghi"], "quoted": ["v1"]}
    assert request_cookie_values(["a=1; b=2", "a=1"]) == {"a": ["1", "1"], "b": ["2"]}
    place = TokenPlace("cookie", "refresh_token")
    assert token_in_answer(place, {"set-cookie": ["refresh_token=t; expires=30 days, 0:00:00"]}, None) == "t"


def test_refresh_keys_ignore_encoding_and_signature() -> None:
    """A refresh token re-encoded or re-signed is the same key; its sid, when it has one, is the session's."""
    import jwt

    claims = {"user_id": "u", "exp": 2_000_000_000, "type": "refresh"}
    a = jwt.encode(claims, "k" * 32, algorithm="HS256")
    b = jwt.encode(claims, "other-key" * 4, algorithm="HS256")
    h, p, sig = a.split(".")
    assert refresh_key(a, "sid") == refresh_key(b, "sid") == refresh_key(f"{h}.{p}=.{sig}", "sid")
    assert refresh_key(a, "sid").startswith("rt:")
    assert refresh_key(jwt.encode({**claims, "sid": "s-1"}, "k" * 32, algorithm="HS256"), "sid") == "sid:s-1"
    assert refresh_key("opaque-refresh-token", "sid").startswith("rt:")
    assert refresh_key("opaque-refresh-token", "sid") != refresh_key("opaque-other", "sid")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"event": "login", "upstream": "http://a:1", "access_token": "body:t"}, "capture[0].path: required"),
        ({"path": "/login", "upstream": "http://a:1", "access_token": "body:t"}, "capture[0].event: required"),
        ({"path": "/login", "event": "login", "access_token": "body:t"}, "capture[0].upstream: required"),
        ({"path": "/login", "event": "signin", "upstream": "http://a:1"}, "capture[0].event: must be one of"),
        ({"path": "/login/*", "event": "login", "upstream": "http://a:1", "access_token": "body:t"},
         "capture[0].path: must be an exact"),
        ({"path": "/introspect/x", "event": "login", "upstream": "http://a:1", "access_token": "body:t"},
         "capture[0].path: /introspect/x is served by the sidecar"),
        ({"path": "/api/v1/sessions", "event": "logout", "upstream": "http://a:1"}, "is served by the sidecar"),
        ({"path": "/login", "event": "login", "upstream": "ftp://a", "access_token": "body:t"},
         "capture[0].upstream: must be http"),
        ({"path": "/login", "event": "login", "upstream": "http://a:1/auth", "access_token": "body:t"},
         "capture[0].upstream: must be http"),
        ({"path": "/login", "event": "login", "upstream": "http://a:1"}, "capture[0].access_token: required for login"),
        ({"path": "/login", "event": "login", "upstream": "http://a:1", "access_token": "json:t"},
         "capture[0].access_token: use body:"),
        ({"path": "/out", "event": "logout", "upstream": "http://a:1", "access_token": "body:t"},
         "capture[0].access_token: a logout answer carries no token"),
        ({"path": "/login", "event": "login", "upstream": "http://a:1", "access_token": "body:t", "tls": True},
         "capture[0].tls: unknown key"),
    ],
)
def test_bad_capture_entries_stop_start_up_with_one_line(
    tmp_path: Path, entry: dict[str, Any], message: str
) -> None:
    """Every mistake in a [[capture]] entry names the entry and the key."""
    from sidecar.errors import ConfigError

    with pytest.raises(ConfigError) as raised:
        settings_for(tmp_path, capture=[entry])
    assert message in str(raised.value)


def test_a_path_captured_twice_is_refused(tmp_path: Path) -> None:
    """Two entries for one path are a configuration error."""
    from sidecar.errors import ConfigError

    entry = {"path": "/login", "event": "login", "upstream": "http://a:1", "access_token": "body:t"}
    with pytest.raises(ConfigError, match=r"capture\[1\].path: /login is captured twice"):
        settings_for(tmp_path, capture=[entry, entry])


async def test_a_logout_with_the_access_token_in_a_cookie_ends_its_session(
    start_sidecar: Callable[..., Any], aiohttp_server: Any, tmp_path: Path
) -> None:
    """With jwt.cookie_name, a logout presenting only the access-token cookie revokes that session."""
    auth = await aiohttp_server(auth_service.create_app())
    upstream = str(auth.make_url("")).rstrip("/")
    settings = settings_for(
        tmp_path, jwt={**BOILERPLATE_JWT, "cookie_name": "access_token"}, capture=capture_routes(upstream)
    )
    sidecar: Sidecar = await start_sidecar(settings)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        world = World(sidecar, auth, http)
        device = Device(LAPTOP)
        assert await world.login(device) == 200
        assert await world.check(device) == 200
        async with http.post(world.url(LOGOUT), headers={"Cookie": f"access_token={device.access}"}) as resp:
            assert resp.status == 200
        assert await world.check(device) == 401
