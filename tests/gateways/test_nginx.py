"""contrib/nginx (auth_request) end to end: Debian's nginx, the sidecar, an echo upstream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.gateways.conftest import OTHER_CLIENT_ADDRESS, Launcher
from tests.gateways.contract import GatewayContract, assert_refused_401, only_request, send, values
from tests.gateways.support import Gateway, Upstream, mint, probe_path, run_nginx
from tests.support.gateways import NGINX_SERVER_BLOCK, nginx_check_on_unix_socket
from tests.support.ports import gateway_socket_dir
from tests.support.sidecar import SidecarProcess, run_sidecar
from tests.support.tokens import ADMIN_KEY, bearer


@pytest.fixture(scope="module")
def launch_gateway() -> Launcher:
    """nginx with contrib/nginx/nginx.conf and sidecar.conf."""
    return run_nginx


class TestNginx(GatewayContract):
    """The shared gateway contract; nginx answers 500 when the check itself fails."""

    refused_on_sidecar_failure = 500

    async def test_check_location_is_internal(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """The internal location that asks the sidecar cannot be requested by a client."""
        reply = await send(http, gateway, "GET", "/_sidecar/check", bearer(mint("nina")))
        assert reply.status == 404
        assert upstream.received("/_sidecar/check") == []

    async def test_allowed_answer_is_the_apps_own(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """On allow the client gets the app's answer, with no Cache-Control added by nginx."""
        path = probe_path()
        reply = await send(http, gateway, "GET", path, bearer(mint("oscar")))
        assert reply.status == 200
        assert reply.json()["path"] == path
        assert "Cache-Control" not in reply.headers

    async def test_failed_check_answer_is_not_cacheable(
        self, http: aiohttp.ClientSession, gateway_without_sidecar: Gateway
    ) -> None:
        """The 500 nginx answers when the check fails carries Cache-Control: no-store."""
        reply = await send(http, gateway_without_sidecar, "GET", probe_path(), bearer(mint("oscar")))
        assert reply.status == 500
        assert reply.headers.get("Cache-Control") == "no-store"


@pytest.fixture(scope="module")
def unix_socket_folder() -> Iterator[Path]:
    """The socket's folder, as a deployment would set it up for nginx's workers."""
    with gateway_socket_dir() as folder:
        yield folder


@pytest.fixture(scope="module")
def unix_sidecar(tmp_path_factory: pytest.TempPathFactory, unix_socket_folder: Path) -> Iterator[SidecarProcess]:
    """A sidecar whose check listener is on a Unix socket, with no trusted_proxies at all."""
    path = unix_socket_folder / "check.sock"
    with run_sidecar(
        tmp_path_factory.mktemp("unix-sidecar"), name="unix", server={"trusted_proxies": []},
        check={"unix_socket": str(path)},
    ) as node:
        yield node


@pytest.fixture(scope="module")
def unix_gateway(
    tmp_path_factory: pytest.TempPathFactory, unix_sidecar: SidecarProcess, upstream: Upstream,
    unix_socket_folder: Path,
) -> Iterator[Gateway]:
    """nginx with the shipped sidecar.conf, its sidecar_check upstream on the Unix socket."""
    workdir = tmp_path_factory.mktemp("unix-gateway")
    block = workdir / "sidecar.conf"
    block.write_text(nginx_check_on_unix_socket(NGINX_SERVER_BLOCK.read_text(), unix_socket_folder / "check.sock"))
    with run_nginx(workdir, upstream.port, unix_sidecar.port, unix_sidecar.check_port, server_block=block) as gw:
        yield gw


async def test_check_through_a_unix_socket_allows_records_the_client_and_refuses_a_revoked_token(
    http_elsewhere: aiohttp.ClientSession, unix_gateway: Gateway, unix_sidecar: SidecarProcess, upstream: Upstream
) -> None:
    """nginx asking the sidecar over its Unix socket: an allowed request reaches the app
    with X-Auth-User, the session records the client's address nginx passed on (the socket
    counts as a trusted proxy), and once revoked the token is refused with 401."""
    token = mint("ulla")
    path = probe_path()
    reply = await send(http_elsewhere, unix_gateway, "GET", path, bearer(token))
    assert reply.status == 200, reply.body
    seen = only_request(upstream, path)
    assert values(seen, "X-Auth-User") == ["ulla"]
    [session] = values(seen, "X-Auth-Session")
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with http_elsewhere.get(f"{unix_sidecar.admin_url}/admin/v1/users/ulla/sessions", headers=admin) as resp:
        assert resp.status == 200
        [row] = (await resp.json())["data"]
    assert row["id"] == session and row["ip_address"] == OTHER_CLIENT_ADDRESS
    async with http_elsewhere.delete(f"{unix_sidecar.admin_url}/admin/v1/sessions/{session}", headers=admin) as resp:
        assert resp.status == 204
    refused = probe_path()
    assert_refused_401(await send(http_elsewhere, unix_gateway, "GET", refused, bearer(token)))
    assert upstream.received(refused) == []
