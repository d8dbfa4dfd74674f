"""Capture routes through real nginx: an auth service whose tokens have no iat, sid or jti.

contrib/nginx/sidecar.conf with its ``include capture.conf;`` line turned on sends the
auth service's login, refresh and logout to the sidecar; everything else is checked by
auth_request and goes to the same auth service as the app. The auth service
(tests/capture/auth_service.py) runs unchanged as a process of its own.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.cookies import set_cookie_values
from tests.capture import ADA, BOILERPLATE_JWT, LOGIN, LOGOUT, REFRESH, capture_routes
from tests.gateways.support import Gateway
from tests.support import CONTRIB, REPO
from tests.support.binaries import nginx_with_auth_request
from tests.support.gateways import NGINX_SERVER_BLOCK, gateway_ports, nginx_argv, nginx_conf_dir
from tests.support.ports import free_ports
from tests.support.processes import REPO_ON_PATH, listens, log_says, running
from tests.support.sidecar import run_sidecar

AGENTS = {
    "laptop": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "phone": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
    "tablet": "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
}


@dataclass
class Stack:
    gateway: Gateway
    auth_port: int


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The auth service, the sidecar with [[capture]], and nginx with capture.conf included."""
    work = tmp_path_factory.mktemp("capture")
    auth_port, listen_port = free_ports(2)
    auth_argv = [sys.executable, str(REPO / "tests" / "capture" / "auth_service.py"), "--port", str(auth_port)]
    text = NGINX_SERVER_BLOCK.read_text()
    assert "    # include capture.conf;" in text
    text = text.replace("    # include capture.conf;", "    include capture.conf;")
    nginx = nginx_with_auth_request()
    with (
        running("auth", auth_argv, work, log_says("auth_service: ready", auth_port), env=REPO_ON_PATH),
        run_sidecar(work, jwt=BOILERPLATE_JWT, capture=capture_routes(f"http://127.0.0.1:{auth_port}")[:3]) as sidecar,
    ):
        conf = nginx_conf_dir(work / "conf", gateway_ports(listen_port, auth_port, sidecar.port, sidecar.check_port), text)
        (conf.parent / "capture.conf").write_text((CONTRIB / "nginx" / "capture.conf").read_text())
        with running("nginx", nginx_argv(nginx, work / "prefix", conf), work, listens(listen_port)) as gw:
            yield Stack(Gateway("nginx", listen_port, gw), auth_port)


@dataclass
class Device:
    agent: str
    access: str = ""
    refresh: str = ""


class Client:
    def __init__(self, http: aiohttp.ClientSession, stack: Stack) -> None:
        self.http = http
        self.base = stack.gateway.url

    async def login(self, device: Device) -> int:
        async with self.http.post(self.base + LOGIN, json=ADA, headers={"User-Agent": device.agent}) as r:
            if r.status == 200:
                device.access = (await r.json())["access_token"]
                device.refresh = set_cookie_values(r.headers.getall("Set-Cookie"))["refresh_token"][0]
            return r.status

    async def refresh(self, device: Device) -> int:
        headers = {"User-Agent": device.agent, "Cookie": f"refresh_token={device.refresh}"}
        async with self.http.post(self.base + REFRESH, headers=headers) as r:
            if r.status == 200:
                device.access = (await r.json())["access_token"]
            return r.status

    async def me(self, device: Device) -> int:
        headers = {"Authorization": f"Bearer {device.access}", "User-Agent": device.agent}
        async with self.http.get(self.base + "/api/v1/users/me", headers=headers) as r:
            return r.status

    async def sessions(self, device: Device) -> list[dict[str, Any]]:
        async with self.http.get(self.base + "/api/v1/sessions/", headers={"Authorization": f"Bearer {device.access}"}) as r:
            assert r.status == 200, await r.text()
            data: list[dict[str, Any]] = (await r.json())["data"]
            return data

    async def delete(self, device: Device, path: str) -> int:
        async with self.http.delete(self.base + path, headers={"Authorization": f"Bearer {device.access}"}) as r:
            return r.status


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        yield Client(http, stack)


async def log_in_three(client: Client) -> dict[str, Device]:
    """Three logins a second apart (without iat or jti, tokens of one second are identical)."""
    devices = {name: Device(agent) for name, agent in AGENTS.items()}
    for i, device in enumerate(devices.values()):
        if i:
            await asyncio.sleep(1.05)
        assert await client.login(device) == 200
    return devices


async def test_the_whole_life_of_three_devices(client: Client) -> None:
    """Listed at login; a revoked device stays out across refresh; refreshes keep one row; log out others; logout."""
    d = await log_in_three(client)
    # Listed before any protected call, with their devices.
    listed = await client.sessions(d["laptop"])
    assert {s["device"] for s in listed} == {"Chrome on Windows", "Safari on iOS", "Firefox on Linux"}
    assert all(s["ip_address"] == "127.0.0.1" for s in listed)
    # Revoke the phone from the laptop: its refresh is refused at the gateway, its old token too.
    phone_id = next(s["id"] for s in listed if s["device"] == "Safari on iOS")
    assert await client.delete(d["laptop"], f"/api/v1/sessions/{phone_id}/") == 204
    assert await client.refresh(d["phone"]) == 401
    assert await client.me(d["phone"]) == 401
    # The tablet refreshes: the new token works and the list still shows one row for it.
    await asyncio.sleep(1.05)
    before = d["tablet"].access
    assert await client.refresh(d["tablet"]) == 200
    assert d["tablet"].access != before
    assert await client.me(d["tablet"]) == 200
    rows = await client.sessions(d["tablet"])
    assert len(rows) == 2
    assert [r["device"] for r in rows if r["current"]] == ["Firefox on Linux"]
    # Log out others from the tablet: the laptop is out, a fresh login works.
    assert await client.delete(d["tablet"], "/api/v1/sessions/") == 204
    assert await client.me(d["laptop"]) == 401
    assert await client.refresh(d["laptop"]) == 401
    await asyncio.sleep(1.05)  # else the fresh token is byte-identical to the tablet's: one session
    fresh = Device(AGENTS["phone"])
    assert await client.login(fresh) == 200
    assert await client.me(fresh) == 200
    # The app's logout through the capture route: refused at once.
    headers = {"Authorization": f"Bearer {fresh.access}", "Cookie": f"refresh_token={fresh.refresh}"}
    async with client.http.post(client.base + LOGOUT, headers=headers) as r:
        assert r.status == 200
    assert await client.me(fresh) == 401
    assert await client.refresh(fresh) == 401
    assert await client.me(d["tablet"]) == 200


async def test_an_auth_service_error_is_passed_through(client: Client) -> None:
    """A wrong password: the auth service's own 401 and body reach the client, nothing is bound."""
    async with client.http.post(client.base + LOGIN, json={**ADA, "password": "nope"}) as r:
        assert r.status == 401
        assert await r.json() == {"detail": "Incorrect email or password"}


async def test_a_refresh_token_is_no_access_token(client: Client) -> None:
    """The refresh token presented as a bearer token is refused by the check (token-type rule)."""
    device = Device(AGENTS["laptop"])
    assert await client.login(device) == 200
    device.access = device.refresh
    assert await client.me(device) == 401


async def test_the_auth_service_down_is_a_clear_502(tmp_path: Path) -> None:
    """With the auth service gone, a login through the gateway answers 502 with the envelope."""
    [nothing] = free_ports(1)
    with run_sidecar(tmp_path, jwt=BOILERPLATE_JWT, capture=capture_routes(f"http://127.0.0.1:{nothing}")[:3]) as sidecar:
        async with aiohttp.ClientSession() as http, http.post(f"{sidecar.url}{LOGIN}", json=ADA) as r:
            assert r.status == 502
            assert (await r.json())["message"] == "Auth service unavailable"
