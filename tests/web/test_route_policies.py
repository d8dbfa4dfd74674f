"""Route policies in the check: public and optional routes, as nginx and Envoy describe them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN, Sidecar, bearer, mint, settings_for

ROUTES: list[dict[str, Any]] = [
    {"path": "/api/v1/auth/*", "policy": "public"},
    {"path": "/api/v1/posts/*", "methods": ["GET", "HEAD"], "policy": "optional"},
]
FORGED = "not.a.token"


@pytest.fixture
async def routed(start_sidecar: Callable[..., Any], tmp_path: Path) -> Sidecar:
    """A sidecar whose app has public auth routes and optional public reads."""
    result: Sidecar = await start_sidecar(settings_for(tmp_path, routes=ROUTES))
    return result


async def nginx_check(sidecar: Sidecar, method: str, uri: str, token: str | None = None, **extra: str) -> Any:
    """The check as nginx asks it: a GET to /introspect naming the original request."""
    headers = {"X-Original-Method": method, "X-Original-URI": uri, **extra}
    if token is not None:
        headers.update(bearer(token))
    async with sidecar.public.get("/introspect", headers=headers) as resp:
        await resp.read()
        return resp


async def envoy_check(sidecar: Sidecar, method: str, path: str, token: str | None = None) -> Any:
    """The check as Envoy asks it: the client's method, its path under /introspect."""
    headers = bearer(token) if token is not None else {}
    async with sidecar.public.request(method, "/introspect" + path, headers=headers) as resp:
        await resp.read()
        return resp


async def test_a_public_route_answers_200_without_looking_at_credentials(routed: Sidecar) -> None:
    """Login is public: 200, no identity headers but X-Auth-Anonymous: public, with no token or a forged one alike."""
    for token in (None, FORGED):
        resp = await nginx_check(routed, "POST", "/api/v1/auth/login", token)
        assert resp.status == 200
        assert "X-Auth-User" not in resp.headers
        assert "X-Auth-Session" not in resp.headers
        assert resp.headers["X-Auth-Anonymous"] == "public"
        assert resp.headers["Cache-Control"] == "no-store"


async def test_an_optional_route_is_anonymous_without_credentials_and_checked_with_them(routed: Sidecar) -> None:
    """Optional: no Authorization -> 200 anonymous (X-Auth-Anonymous: optional); a valid token -> identity; a bad one -> 401."""
    anonymous = await nginx_check(routed, "GET", "/api/v1/posts/7")
    assert anonymous.status == 200
    assert "X-Auth-User" not in anonymous.headers
    assert anonymous.headers["X-Auth-Anonymous"] == "optional"
    known = await nginx_check(routed, "GET", "/api/v1/posts/7", mint("alice"))
    assert known.status == 200
    assert known.headers["X-Auth-User"] == "alice"
    assert "X-Auth-Anonymous" not in known.headers
    assert (await nginx_check(routed, "GET", "/api/v1/posts/7", FORGED)).status == 401
    assert (await nginx_check(routed, "GET", "/api/v1/posts/7", mint("alice", ttl=-10))).status == 401


async def test_a_revoked_token_on_an_optional_route_is_refused(routed: Sidecar) -> None:
    """A credential present on an optional route must belong to an active session."""
    token = mint("bob")
    resp = await nginx_check(routed, "GET", "/api/v1/posts/1", token)
    session = resp.headers["X-Auth-Session"]
    async with routed.admin.delete(f"/admin/v1/sessions/{session}", headers=ADMIN) as r:
        assert r.status == 204
    assert (await nginx_check(routed, "GET", "/api/v1/posts/1", token)).status == 401


async def test_other_methods_and_paths_are_required(routed: Sidecar) -> None:
    """A POST to the optional path and any unlisted path need a valid token."""
    assert (await nginx_check(routed, "POST", "/api/v1/posts/1")).status == 401
    assert (await nginx_check(routed, "GET", "/api/v1/users/me")).status == 401
    assert (await nginx_check(routed, "GET", "/api/v1/users/me", mint("carol"))).status == 200


async def test_nginx_original_method_counts_not_the_subrequest_get(routed: Sidecar) -> None:
    """nginx's subrequest is a GET; X-Original-Method says it was a POST, which is required."""
    assert (await nginx_check(routed, "POST", "/api/v1/posts/1")).status == 401
    assert (await nginx_check(routed, "GET", "/api/v1/posts/1")).status == 200


async def test_envoy_describes_the_request_by_its_method_and_path(routed: Sidecar) -> None:
    """Envoy sends the client's method and path under /introspect: the same policies apply."""
    assert (await envoy_check(routed, "POST", "/api/v1/auth/login")).status == 200
    assert (await envoy_check(routed, "GET", "/api/v1/posts/3?page=2")).status == 200
    assert (await envoy_check(routed, "DELETE", "/api/v1/posts/3")).status == 401
    assert (await envoy_check(routed, "GET", "/api/v1/users/me")).status == 401


@pytest.mark.parametrize(
    "uri",
    [
        "/api/v1/auth/../users/me",
        "/api/v1/auth/%2e%2e/users/me",
        "/api/v1/auth%2f..%2fusers/me",
        "/api/v1/auth;x/../../users/me",
        "/api/v1/auth/%252e%252e/users/me",
        "/API/v1/auth/login",
    ],
)
async def test_path_confusion_never_makes_a_protected_path_public(routed: Sidecar, uri: str) -> None:
    """Spellings of a protected path (or doubtful ones) get the normal check."""
    assert (await nginx_check(routed, "POST", uri)).status == 401


async def test_a_header_a_client_adds_can_only_make_the_answer_stricter(routed: Sidecar) -> None:
    """X-Forwarded-Uri added by a client beside nginx's X-Original-URI: the stricter description wins."""
    resp = await nginx_check(routed, "POST", "/api/v1/users/me", **{"X-Forwarded-Uri": "/api/v1/auth/login"})
    assert resp.status == 401
    resp = await nginx_check(routed, "POST", "/api/v1/auth/login", **{"X-Forwarded-Uri": "/api/v1/users/me"})
    assert resp.status == 401
    resp = await nginx_check(routed, "GET", "/api/v1/posts/1", **{"X-Forwarded-Method": "DELETE"})
    assert resp.status == 401


async def test_a_check_that_names_no_request_is_required(routed: Sidecar) -> None:
    """A bare /introspect with no description of the original request gets the normal check."""
    async with routed.public.get("/introspect") as resp:
        assert resp.status == 401


async def test_without_routes_every_request_is_required(sidecar: Sidecar) -> None:
    """With no [[routes]], X-Original-URI changes nothing: every check needs a valid token."""
    resp = await nginx_check(sidecar, "POST", "/api/v1/auth/login")
    assert resp.status == 401


async def test_metrics_count_public_and_anonymous_answers(routed: Sidecar) -> None:
    """sidecar_check_decisions counts allow/public and allow/anonymous apart from allow/active."""
    await nginx_check(routed, "POST", "/api/v1/auth/login")
    await nginx_check(routed, "GET", "/api/v1/posts/1")
    async with routed.admin.get("/metrics", headers=ADMIN) as resp:
        text = await resp.text()
    assert 'sidecar_check_decisions_total{reason="public",result="allow"} 1.0' in text
    assert 'sidecar_check_decisions_total{reason="anonymous",result="allow"} 1.0' in text


async def test_a_route_policy_that_fails_falls_back_to_the_normal_check(
    routed: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the policy lookup raise, the check applies the normal rules: never a 500, never an allow without a token."""
    from sidecar.routes import RouteTable

    def broken(self: RouteTable, methods: Any, paths: Any) -> str:
        raise RuntimeError("policy lookup failed")

    monkeypatch.setattr(RouteTable, "policy", broken)
    assert (await nginx_check(routed, "POST", "/api/v1/auth/login")).status == 401
    assert (await nginx_check(routed, "POST", "/api/v1/auth/login", mint("dora"))).status == 200
