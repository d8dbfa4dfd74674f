"""The admin listener (DESIGN.md section 3)."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.conftest import ADMIN, CHROME_WINDOWS, Sidecar, bearer, geoip_db, mint, settings_for


async def test_admin_needs_the_api_key(sidecar: Sidecar) -> None:
    """Every admin route answers 401 without the right key, with a challenge."""
    routes = [
        ("POST", "/admin/v1/sessions"),
        ("GET", "/admin/v1/users/alice/sessions"),
        ("DELETE", "/admin/v1/users/alice/sessions"),
        ("DELETE", f"/admin/v1/sessions/{uuid.uuid4()}"),
    ]
    for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789abc"}, {"Authorization": "Basic x"}, bearer(mint())):
        for method, path in routes:
            async with sidecar.admin.request(method, path, headers=headers) as resp:
                assert resp.status == 401, (method, path, headers)
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                assert (await resp.json())["message"] == "Invalid or missing admin API key"


async def test_admin_routes_are_not_on_the_public_listener(sidecar: Sidecar) -> None:
    """The public listener does not serve admin routes."""
    async with sidecar.public.get("/admin/v1/users/alice/sessions", headers=ADMIN) as resp:
        assert resp.status == 404


async def test_register_session_then_list_it(tmp_path: object, start_sidecar: object) -> None:
    """POST /admin/v1/sessions registers the token's session with the given IP and device -> 201."""
    from pathlib import Path

    settings = settings_for(Path(str(tmp_path)), geoip={"database": str(geoip_db())})
    sidecar: Sidecar = await start_sidecar(settings)  # type: ignore[operator]
    token = mint("alice")
    body = {"token": token, "ip_address": "81.2.69.142", "user_agent": CHROME_WINDOWS}
    async with sidecar.admin.post("/admin/v1/sessions", json=body, headers=ADMIN) as resp:
        assert resp.status == 201
        created = await resp.json()
    assert created["status"] == "success" and created["status_code"] == 201
    data = created["data"]
    assert data["ip_address"] == "81.2.69.142"
    assert data["location"] == "London, United Kingdom"
    assert data["device"] == "Chrome on Windows"
    assert data["user_id"] == "alice"
    async with sidecar.admin.post("/admin/v1/sessions", json=body, headers=ADMIN) as resp:
        assert resp.status == 200  # the same session again: already registered
        assert (await resp.json())["data"]["id"] == data["id"]
    async with sidecar.admin.get("/admin/v1/users/alice/sessions", headers=ADMIN) as resp:
        assert resp.status == 200
        listed = (await resp.json())["data"]
    assert [s["id"] for s in listed] == [data["id"]]
    # The user sees it too, with the location recorded at registration.
    assert (await sidecar.sessions(token))[0]["location"] == "London, United Kingdom"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"not json", 400, "Body must be a JSON object"),
        (b"[1, 2]", 400, "Body must be a JSON object"),
        (b"\xff\xfe", 400, "Body must be a JSON object"),
        (b"[" * 100_000, 413, "Request body too large"),
        (b'{"ip_address": "1.2.3.4"}', 400, "Field 'token' must be a non-empty string"),
        (b'{"token": 12}', 400, "Field 'token' must be a non-empty string"),
        (b'{"token": "x.y.z"}', 422, "Token is not valid"),
        (b'{"token": "TOKEN", "ip_address": "999.1.1.1"}', 400, "Field 'ip_address' must be an IP address"),
        (b'{"token": "TOKEN", "ip_address": 5}', 400, "Field 'ip_address' must be an IP address"),
        (b'{"token": "TOKEN", "user_agent": ["x"]}', 400, "Field 'user_agent' must be a string of at most 4096 characters without control characters"),
    ],
)
async def test_register_rejects_bad_bodies(sidecar: Sidecar, body: bytes, status: int, message: str) -> None:
    """A malformed registration body gets a clear 4xx and registers nothing."""
    body = body.replace(b"TOKEN", mint("alice").encode())
    headers = {**ADMIN, "Content-Type": "application/json"}
    async with sidecar.admin.post("/admin/v1/sessions", data=body, headers=headers) as resp:
        assert resp.status == status
        assert (await resp.json())["message"] == message
    async with sidecar.admin.get("/admin/v1/users/alice/sessions", headers=ADMIN) as resp:
        assert (await resp.json())["data"] == []


async def test_register_refuses_a_revoked_session(sidecar: Sidecar) -> None:
    """Registering a token whose session was revoked answers 409 and stays revoked."""
    token = mint("alice")
    async with sidecar.public.get("/introspect", headers=bearer(token)) as resp:
        sid = resp.headers["X-Auth-Session"]
    async with sidecar.admin.delete(f"/admin/v1/sessions/{sid}", headers=ADMIN) as resp:
        assert resp.status == 204
    async with sidecar.admin.post("/admin/v1/sessions", json={"token": token}, headers=ADMIN) as resp:
        assert resp.status == 409
    assert await sidecar.check(token) == 401


async def test_revoke_user_refuses_every_session_and_older_tokens(sidecar: Sidecar) -> None:
    """DELETE /admin/v1/users/{id}/sessions revokes all sessions and every earlier token, with no exception."""
    seen = [mint("alice", now=time.time() - 5) for _ in range(3)]
    never_seen = mint("alice", now=time.time() - 5)
    bob = mint("bob")
    for t in [*seen, bob]:
        assert await sidecar.check(t) == 200
    async with sidecar.admin.delete("/admin/v1/users/alice/sessions", headers=ADMIN) as resp:
        assert resp.status == 204
        assert await resp.read() == b""
    assert [await sidecar.check(t) for t in [*seen, never_seen]] == [401] * 4
    assert await sidecar.check(bob) == 200
    async with sidecar.admin.get("/admin/v1/users/alice/sessions", headers=ADMIN) as resp:
        assert (await resp.json())["data"] == []


async def test_revoke_one_session(sidecar: Sidecar) -> None:
    """DELETE /admin/v1/sessions/{id} revokes it (204); unknown -> 404; not a UUID -> 400."""
    token = mint("alice")
    async with sidecar.public.get("/introspect", headers=bearer(token)) as resp:
        sid = resp.headers["X-Auth-Session"]
    async with sidecar.admin.delete(f"/admin/v1/sessions/{sid}", headers=ADMIN) as resp:
        assert resp.status == 204
    assert await sidecar.check(token) == 401
    async with sidecar.admin.delete(f"/admin/v1/sessions/{uuid.uuid4()}", headers=ADMIN) as resp:
        assert resp.status == 404
        assert (await resp.json())["message"] == "Session not found"
    async with sidecar.admin.delete("/admin/v1/sessions/nope", headers=ADMIN) as resp:
        assert resp.status == 400


@pytest.mark.parametrize("user_id", ["%00", "a%20b", "%C3%A9", "x" * 300])
async def test_bad_user_ids_are_400(sidecar: Sidecar, user_id: str) -> None:
    """A user id that no token could carry answers 400, never 500."""
    async with sidecar.admin.get(f"/admin/v1/users/{user_id}/sessions", headers=ADMIN) as resp:
        assert resp.status == 400
        assert (await resp.json())["message"] == "Invalid user id"


async def test_health_and_readiness(sidecar: Sidecar) -> None:
    """/healthz answers 200; /readyz answers 200 while the store answers."""
    async with sidecar.public.get("/healthz") as resp:
        assert resp.status == 200
    async with sidecar.public.get("/readyz") as resp:
        assert resp.status == 200
        assert (await resp.json())["checks"] == {"store": "ok"}


async def test_password_change_flow_new_token_works_at_once(sidecar: Sidecar) -> None:
    """Revoke user, then the auth service's new token (same second) is allowed; the old one is not."""
    old = mint("alice", now=time.time() - 5)
    assert await sidecar.check(old) == 200
    async with sidecar.admin.delete("/admin/v1/users/alice/sessions", headers=ADMIN) as resp:
        assert resp.status == 204
    assert await sidecar.check(mint("alice")) == 200
    assert await sidecar.check(old) == 401


async def test_list_user_sessions_pages_with_limit_and_next(sidecar: Sidecar) -> None:
    """GET /admin/v1/users/{id}/sessions pages by ?limit= and ?before=<next>, newest first, next null at the end."""
    ids = []
    for _ in range(5):
        async with sidecar.public.get("/introspect", headers=bearer(mint("alice"))) as resp:
            assert resp.status == 200
            ids.append(resp.headers["X-Auth-Session"])
    async with sidecar.admin.get("/admin/v1/users/alice/sessions", headers=ADMIN) as resp:
        body = await resp.json()
    assert [s["id"] for s in body["data"]] == list(reversed(ids)) and body["next"] is None
    seen: list[str] = []
    query = "?limit=2"
    while True:
        async with sidecar.admin.get(f"/admin/v1/users/alice/sessions{query}", headers=ADMIN) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert len(body["data"]) <= 2
        seen += [s["id"] for s in body["data"]]
        if body["next"] is None:
            break
        query = f"?limit=2&before={body['next']}"
    assert seen == list(reversed(ids))


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("?limit=0", "Parameter 'limit' must be an integer from 1 to 1000"),
        ("?limit=1001", "Parameter 'limit' must be an integer from 1 to 1000"),
        ("?limit=ten", "Parameter 'limit' must be an integer from 1 to 1000"),
        ("?before=not*a*cursor", "Invalid cursor"),
        ("?before=WzEsMl0", "Invalid cursor"),  # base64url of [1,2]
    ],
)
async def test_list_user_sessions_bad_page_parameters_are_400(sidecar: Sidecar, query: str, message: str) -> None:
    """A bad limit or cursor on the admin listing is a 400 in the error envelope."""
    async with sidecar.admin.get(f"/admin/v1/users/alice/sessions{query}", headers=ADMIN) as resp:
        assert resp.status == 400
        assert await resp.json() == {"status": "error", "status_code": 400, "message": message, "data": {}}
