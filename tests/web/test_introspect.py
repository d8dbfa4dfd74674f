"""The gateway check, /introspect (DESIGN.md sections 2-3; SECURITY_CASES B17-B22, C27-C30)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN, SECRET, Sidecar, bearer, mint, settings_for

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "path", ["/introspect", "/introspect/", "/introspect/api/v1/sessions/", "/introspect/a/b%0a?x=1"]
)
async def test_every_method_and_sub_path_is_checked(sidecar: Sidecar, method: str, path: str) -> None:
    """Every method on every sub-path gets the same check: 200 with a token, 401 without (B19)."""
    token = mint("alice")
    async with sidecar.public.request(method, path, headers=bearer(token)) as resp:
        assert resp.status == 200
        assert resp.headers["X-Auth-User"] == "alice"
    async with sidecar.public.request(method, path) as resp:
        assert resp.status == 401


async def test_allow_is_exactly_200_empty_with_identity_headers(sidecar: Sidecar) -> None:
    """Allow is 200 with an empty body, X-Auth-User, X-Auth-Session and no-store (B17, B22)."""
    async with sidecar.public.get("/introspect", headers=bearer(mint("alice"))) as resp:
        assert resp.status == 200
        assert await resp.read() == b""
        assert resp.headers["X-Auth-User"] == "alice"
        assert len(resp.headers["X-Auth-Session"]) == 36
        assert resp.headers["Cache-Control"] == "no-store"


async def test_deny_is_401_with_challenge_and_says_nothing(sidecar: Sidecar) -> None:
    """Deny is 401 with the RFC 6750 challenge, no-store, and a body that gives no reason."""
    expired = mint("alice", now=time.time() - 7200)
    async with sidecar.public.get("/introspect", headers=bearer(expired)) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        assert resp.headers["Cache-Control"] == "no-store"
        body = await resp.json()
    assert body == {"status": "error", "status_code": 401, "message": "Unauthorized", "data": {}}
    assert "X-Auth-User" not in resp.headers


async def test_client_identity_headers_never_pass_through(sidecar: Sidecar) -> None:
    """Client-sent X-Auth-* headers are ignored: identity comes from the token only (B20)."""
    forged = {"X-Auth-User": "root", "X-Auth-Session": "forged", "X_Auth_User": "root"}
    async with sidecar.public.get("/introspect", headers={**forged, **bearer(mint("alice"))}) as resp:
        assert resp.headers["X-Auth-User"] == "alice"
        assert resp.headers["X-Auth-Session"] != "forged"
    async with sidecar.public.get("/introspect", headers=forged) as resp:
        assert resp.status == 401
        assert "X-Auth-User" not in resp.headers


async def test_same_session_same_id_across_tokens(sidecar: Sidecar) -> None:
    """Two access tokens of one sid map to one session id."""
    a = mint("alice", sid="login-1", now=time.time() - 1)
    b = mint("alice", sid="login-1")
    ids = set()
    for t in (a, b):
        async with sidecar.public.get("/introspect", headers=bearer(t)) as resp:
            ids.add(resp.headers["X-Auth-Session"])
    assert len(ids) == 1


async def test_session_key_falls_back_to_jti_then_claims_hash(sidecar: Sidecar) -> None:
    """Without sid, jti names the session; without both, the verified claims do."""
    with_jti = mint("alice", sid=None, jti="token-1", now=time.time() - 1)
    again_jti = mint("alice", sid=None, jti="token-1")
    bare = mint("alice", sid=None)

    async def sid_of(t: str) -> str:
        async with sidecar.public.get("/introspect", headers=bearer(t)) as resp:
            assert resp.status == 200
            return resp.headers["X-Auth-Session"]

    assert await sid_of(with_jti) == await sid_of(again_jti)
    assert await sid_of(bare) == await sid_of(bare)
    assert await sid_of(bare) != await sid_of(with_jti)


async def test_a_sid_of_another_user_is_refused(sidecar: Sidecar) -> None:
    """A token whose sid belongs to another user's session is refused."""
    assert await sidecar.check(mint("alice", sid="shared")) == 200
    assert await sidecar.check(mint("mallory", sid="shared")) == 401


async def test_revoke_then_check_immediately_denies(sidecar: Sidecar) -> None:
    """Once the revoke returned, the very next check on this process denies, no sleep (C27)."""
    for _ in range(20):
        token = mint("alice")
        async with sidecar.public.get("/introspect", headers=bearer(token)) as resp:
            sid = resp.headers["X-Auth-Session"]
        async with sidecar.admin.delete(f"/admin/v1/sessions/{sid}", headers=ADMIN) as resp:
            assert resp.status == 204
        assert await sidecar.check(token) == 401


async def test_revoke_racing_checks_never_allows_after_it_returned(sidecar: Sidecar) -> None:
    """Concurrent checks during a revoke: none that started after the revoke returned is allowed (C28)."""
    loop = asyncio.get_running_loop()
    for _ in range(5):
        token = mint("alice")
        async with sidecar.public.get("/introspect", headers=bearer(token)) as resp:
            sid = resp.headers["X-Auth-Session"]
        # Drop the in-memory state so the checks below race the revoke through the store.
        sidecar.services.sessions._states.clear()
        revoked_at: list[float] = []
        results: list[tuple[float, int]] = []

        async def check_once(t: str = token, out: list[tuple[float, int]] = results) -> None:
            started = loop.time()
            status = await sidecar.check(t)
            out.append((started, status))

        async def revoke(s: str = sid, out: list[float] = revoked_at) -> None:
            async with sidecar.admin.delete(f"/admin/v1/sessions/{s}", headers=ADMIN) as r:
                assert r.status == 204
            out.append(loop.time())

        tasks = [asyncio.create_task(check_once()) for _ in range(30)]
        tasks.append(asyncio.create_task(revoke()))
        tasks += [asyncio.create_task(check_once()) for _ in range(30)]
        await asyncio.gather(*tasks)
        late = [status for started, status in results if started > revoked_at[0]]
        assert all(status == 401 for status in late)
        assert await sidecar.check(token) == 401


async def test_revoked_session_stays_refused_after_restart(tmp_path: Path, start_sidecar: Any) -> None:
    """A revocation is durable: a new process on the same database still refuses the token."""
    settings = settings_for(tmp_path)
    first: Sidecar = await start_sidecar(settings)
    token = mint("alice")
    async with first.public.get("/introspect", headers=bearer(token)) as resp:
        sid = resp.headers["X-Auth-Session"]
    async with first.admin.delete(f"/admin/v1/sessions/{sid}", headers=ADMIN) as resp:
        assert resp.status == 204
    second: Sidecar = await start_sidecar(settings)
    assert await second.check(token) == 401


async def test_explicit_mode_refuses_unknown_sessions(tmp_path: Path, start_sidecar: Any) -> None:
    """In explicit mode only sessions registered through the admin API pass."""
    sidecar: Sidecar = await start_sidecar(settings_for(tmp_path, sessions={"registration": "explicit"}))
    token = mint("alice")
    assert await sidecar.check(token) == 401
    async with sidecar.admin.post("/admin/v1/sessions", json={"token": token}, headers=ADMIN) as resp:
        assert resp.status == 201
    assert await sidecar.check(token) == 200


async def test_claim_headers_are_forwarded(tmp_path: Path, start_sidecar: Any) -> None:
    """Configured claim->header mappings are set on allow; unsafe values are left out."""
    settings = settings_for(tmp_path, jwt={"claim_headers": {"email": "X-Auth-Email", "role": "X-Auth-Role"}})
    sidecar: Sidecar = await start_sidecar(settings)
    token = mint("alice", email="alice@example.com", role="bad\nvalue")
    async with sidecar.public.get("/introspect", headers=bearer(token)) as resp:
        assert resp.status == 200
        assert resp.headers["X-Auth-Email"] == "alice@example.com"
        assert "X-Auth-Role" not in resp.headers


async def test_typical_auth_service_token_shape(tmp_path: Path, start_sidecar: Any) -> None:
    """A {"user_id", "exp", "type"} token works with user_claim/token_type_claim set; refresh is refused."""
    settings = settings_for(
        tmp_path,
        jwt={"user_claim": "user_id", "token_type_claim": "type", "access_token_type": "access"},
    )
    sidecar: Sidecar = await start_sidecar(settings)
    import jwt as pyjwt

    now = int(time.time())
    access = pyjwt.encode({"user_id": 42, "exp": now + 300, "iat": now, "type": "access", "jti": "a1"}, SECRET)
    refresh = pyjwt.encode({"user_id": 42, "exp": now + 300, "iat": now, "type": "refresh", "jti": "r1"}, SECRET)
    async with sidecar.public.get("/introspect", headers=bearer(access)) as resp:
        assert resp.status == 200
        assert resp.headers["X-Auth-User"] == "42"
    assert await sidecar.check(refresh) == 401


async def test_store_failure_denies(sidecar: Sidecar) -> None:
    """When the store cannot answer, a check of an unknown session denies, never allows (fail closed)."""
    await sidecar.services.store.close()
    assert await sidecar.check(mint("alice")) == 401
    async with sidecar.public.get("/readyz") as resp:
        assert resp.status == 503


async def test_expired_token_of_known_session_is_refused(sidecar: Sidecar) -> None:
    """Expiry is checked on every request, cleanup or not (D35)."""
    token = mint("alice", ttl=1)
    assert await sidecar.check(token) == 200
    await asyncio.sleep(1.1)
    assert await sidecar.check(token) == 401
