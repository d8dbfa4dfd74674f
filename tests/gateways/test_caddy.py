"""contrib/caddy (forward_auth) end to end: Debian's Caddy, the sidecar, an echo upstream."""

from __future__ import annotations

import aiohttp
import pytest

from tests.gateways.conftest import Launcher
from tests.gateways.contract import GatewayContract, assert_refused_401, only_request, send, values
from tests.gateways.support import Gateway, Upstream, mint, probe_path, run_caddy
from tests.support.tokens import bearer


@pytest.fixture(scope="module")
def launch_gateway() -> Launcher:
    """Caddy with contrib/caddy/Caddyfile."""
    return run_caddy


class TestCaddy(GatewayContract):
    """The shared gateway contract; Caddy answers 502 when it cannot reach the sidecar.

    A hung sidecar is a 504 and a sidecar's 5xx reaches the client as it is (overrides
    below): forward_auth copies every non-2xx answer of the check to the client.
    """

    refused_on_sidecar_failure = 502

    async def test_hung_sidecar_refuses_after_the_timeout(
        self, http: aiohttp.ClientSession, gateway_with_hung_sidecar: Gateway, upstream: Upstream
    ) -> None:
        """A sidecar that never answers is a 504 (Caddy's answer to response_header_timeout), never forwarded.

        Overrides the contract's single failure status: Caddy tells "no connection" (502)
        from "no answer in time" (504); both are refusals.
        """
        path = probe_path()
        reply = await send(http, gateway_with_hung_sidecar, "GET", path, bearer(mint("leo")))
        assert reply.status == 504
        assert upstream.received(path) == []

    async def test_sidecar_error_refuses(
        self, http: aiohttp.ClientSession, gateway_with_broken_sidecar: Gateway, upstream: Upstream
    ) -> None:
        """A 5xx from the check reaches the client as that 5xx, never an allow.

        Overrides the contract's single failure status: forward_auth sends any non-2xx
        answer of the check to the client unchanged (the sidecar's 401 is what the client
        must see; a 5xx goes the same way), so the status is the broken sidecar's own.
        """
        path = probe_path()
        reply = await send(http, gateway_with_broken_sidecar, "GET", path, bearer(mint("mia")))
        assert reply.status == 503
        assert upstream.received(path) == []

    async def test_every_client_x_auth_header_is_removed(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """Any X-Auth-* header a client sends (not only the two the sidecar sets) is removed."""
        path = probe_path()
        forged = [("X-Auth-Role", "admin"), ("x-auth-email", "root@example.com")]
        reply = await send(http, gateway, "GET", path, [*bearer(mint("pat")).items(), *forged])
        assert reply.status == 200, reply.body
        seen = only_request(upstream, path)
        assert values(seen, "X-Auth-Role") == []
        assert values(seen, "X-Auth-Email") == []
        assert values(seen, "X-Auth-User") == ["pat"]

    async def test_anonymous_answers_carry_no_identity_placeholder(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """An anonymous allow (optional route, no token) reaches the app with no X-Auth-* at all, not Caddy's placeholder text."""
        path = "/optional/" + probe_path()[len("/probe/") :]
        assert (await send(http, gateway, "GET", path)).status == 200
        seen = only_request(upstream, path)
        assert [n for n, _ in seen["headers"] if n.lower().startswith("x-auth")] == []

    async def test_client_described_original_request_is_replaced(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """A client's X-Forwarded-Uri / X-Original-URI naming a public path cannot make a protected path public."""
        path = probe_path()
        forged = {"X-Forwarded-Uri": "/public/x", "X-Forwarded-Method": "GET", "X-Original-URI": "/public/x"}
        assert_refused_401(await send(http, gateway, "POST", path, forged))
        assert upstream.received(path) == []
