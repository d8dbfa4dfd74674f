"""contrib/nginx (auth_request) end to end: Debian's nginx, the sidecar, an echo upstream."""

from __future__ import annotations

import aiohttp
import pytest

from tests.gateways.conftest import Launcher
from tests.gateways.contract import GatewayContract, send
from tests.gateways.support import Gateway, Upstream, mint, probe_path, run_nginx
from tests.support.tokens import bearer


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
