"""``checks_first``: /introspect skips aiohttp's router and middleware, and nothing else does.

The dispatch must send a request to the check exactly when the app's router would: a path
it took from the router could change what an API route answers, and a check path it left
to the router only costs time. Both directions are tested against the router itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_urldispatcher import UrlDispatcher
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.web import create_app, open_services
from sidecar.web.app import is_check_path
from sidecar.web.introspect import CHECK
from tests.conftest import Sidecar, bearer, mint, settings_for

# Path characters as a client may send them, with the ones routing cares about most often.
_PIECES = st.sampled_from(
    ["/", "introspect", "Introspect", "introspect/", "api", "v1", "sessions", "healthz", "%2F", "%2f", "%2e",
     "..", ".", "%69ntrospect", "%20", "%", "?", "#", "x", "-", "~", "%C3%A9", "é", ";", "//"]
)
PATHS = st.lists(_PIECES, max_size=8).map(lambda parts: "/" + "".join(parts))

EXAMPLES = [
    "/introspect", "/introspect/", "/introspect/x", "/introspectx", "/introspect%2F", "/introspect%2Fx",
    "/%69ntrospect", "/introspect/../api/v1/sessions", "/Introspect", "//introspect", "/introspect?x=1",
    "/api/v1/sessions", "/healthz", "/", "/introspect/%2e%2e/", "/introspect#frag", "/introspect;x",
]


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[Any]:
    settings = settings_for(tmp_path)
    async with open_services(settings) as services:
        app = create_app(settings, services)
        app.freeze()
        yield app


async def _router_picks_check(app: Any, raw_path: str) -> tuple[bool, bool]:
    """(the router sends it to the check, the dispatch would)."""
    request = make_mocked_request("GET", raw_path, app=app)
    match = await app.router.resolve(request)
    return match.handler == app[CHECK].handle, is_check_path(request.rel_url.path_safe)


@pytest.mark.parametrize("raw_path", EXAMPLES)
async def test_dispatch_agrees_with_the_router(app: Any, raw_path: str) -> None:
    by_router, by_dispatch = await _router_picks_check(app, raw_path)
    assert by_router == by_dispatch


# The app is only read (its router resolves paths), so one per test serves every example.
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw_path=PATHS)
async def test_dispatch_agrees_with_the_router_on_any_path(app: Any, raw_path: str) -> None:
    try:
        by_router, by_dispatch = await _router_picks_check(app, raw_path)
    except ValueError:  # not a URL aiohttp's request accepts: never reaches either
        return
    assert by_router == by_dispatch, raw_path


async def test_a_running_check_skips_the_router_and_the_rest_does_not(sidecar: Sidecar) -> None:
    """Through a listener set up as `sidecar serve` sets it up: checks never call the router
    (nor its middleware), the API and health routes still do, and both answer as before."""
    real_resolve = UrlDispatcher.resolve
    with mock.patch.object(UrlDispatcher, "resolve", autospec=True, side_effect=real_resolve) as resolve:
        token = mint("alice")
        for path in ("/introspect", "/introspect/some/app/path"):
            async with sidecar.public.get(path, headers=bearer(token)) as resp:
                assert resp.status == 200
                assert resp.headers["X-Auth-User"] == "alice"
        async with sidecar.public.get("/introspect") as resp:
            assert resp.status == 401
        assert resolve.call_count == 0
        async with sidecar.public.get("/api/v1/sessions", headers=bearer(token)) as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "success"
        async with sidecar.public.get("/no/such/path") as resp:
            assert resp.status == 404
            assert (await resp.json())["message"] == "Not found"  # the envelope: middleware ran
        assert resolve.call_count == 2
