"""RFC 7662 introspection and RFC 7009 revocation on the admin listener (SECURITY_CASES E46)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.conftest import ADMIN, ADMIN_KEY, Sidecar, bearer, mint, settings_for

INACTIVE = {"active": False}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def introspect(sidecar: Sidecar, form: dict[str, str] | str, headers: dict[str, str] = ADMIN) -> tuple[int, Any, Any]:
    async with sidecar.admin.post("/oauth2/introspect", data=form, headers=headers) as resp:
        return resp.status, resp.headers, await resp.json()


async def revoke(sidecar: Sidecar, form: dict[str, str], headers: dict[str, str] = ADMIN) -> tuple[int, str]:
    async with sidecar.admin.post("/oauth2/revoke", data=form, headers=headers) as resp:
        return resp.status, await resp.text()


async def test_an_active_token_is_described_with_its_claims_and_session(tmp_path: Path, start_sidecar: Any) -> None:
    """An active session's token answers active with sub, the session UUID as sid, and the token's own claims."""
    settings = settings_for(tmp_path, jwt={"issuer": "https://auth.example", "audience": ["api"]})
    sidecar: Sidecar = await start_sidecar(settings)
    token = mint("alice", iss="https://auth.example", aud="api", jti="j-1", scope="read write", client_id="web")
    assert await sidecar.check(token) == 200
    sid = (await sidecar.sessions(token))[0]["id"]
    status, headers, body = await introspect(sidecar, {"token": token, "token_type_hint": "access_token"})
    assert status == 200
    assert headers["Cache-Control"] == "no-store" and headers["Pragma"] == "no-cache"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert body == {
        "active": True, "sub": "alice", "sid": sid, "exp": claims["exp"], "iat": claims["iat"],
        "iss": "https://auth.example", "aud": "api", "jti": "j-1", "scope": "read write", "client_id": "web",
        "token_type": "access",
    }


async def test_only_claims_present_are_listed(sidecar: Sidecar) -> None:
    """A token without iss, aud, jti, scope or client_id answers without those members."""
    status, _, body = await introspect(sidecar, {"token": mint("bob")})
    assert status == 200
    assert set(body) == {"active", "sub", "sid", "exp", "iat", "token_type"}


async def test_a_never_seen_token_registers_its_session_in_auto_mode(sidecar: Sidecar) -> None:
    """Introspection is the check's verdict: a new valid token registers its session, with no client details."""
    token = mint("carol")
    _, _, body = await introspect(sidecar, {"token": token})
    assert body["active"] is True
    [session] = await sidecar.sessions(token)
    assert session["id"] == body["sid"]
    assert session["ip_address"] is None and session["device"] == "Unknown device"


@pytest.mark.parametrize(
    "case", ["revoked", "expired", "forged", "other-key", "empty", "garbage", "refresh", "cut-off"]
)
async def test_anything_but_an_active_token_is_exactly_inactive(tmp_path: Path, start_sidecar: Any, case: str) -> None:
    """Revoked, expired, forged, other-key, empty, garbage, refresh and cut-off tokens all answer exactly {"active": false}."""
    settings = settings_for(tmp_path, jwt={"token_type_claim": "type", "access_token_type": "access"})
    sidecar: Sidecar = await start_sidecar(settings)
    token = mint("alice", type="access")
    if case == "revoked":
        assert await sidecar.check(token) == 200
        sid = (await sidecar.sessions(token))[0]["id"]
        async with sidecar.admin.delete(f"/admin/v1/sessions/{sid}", headers=ADMIN) as resp:
            assert resp.status == 204
    elif case == "expired":
        token = mint("alice", type="access", now=time.time() - 7200)
    elif case == "forged":
        head, _, sig = token.split(".")
        other = base64.urlsafe_b64encode(json.dumps({"sub": "mallory", "exp": 2**31}).encode()).decode().rstrip("=")
        token = f"{head}.{other}.{sig}"
    elif case == "other-key":
        token = mint("alice", type="access", key="another-secret-that-is-long-enough-0123456789")
    elif case == "empty":
        token = ""
    elif case == "garbage":
        token = "not.a.token"
    elif case == "refresh":
        token = mint("alice", type="refresh")
    elif case == "cut-off":
        async with sidecar.admin.delete("/admin/v1/users/alice/sessions", headers=ADMIN) as resp:
            assert resp.status == 204
        token = mint("alice", type="access", now=time.time() - 60)
    status, headers, body = await introspect(sidecar, {"token": token})
    assert (status, body) == (200, INACTIVE)
    assert headers["Cache-Control"] == "no-store" and headers["Pragma"] == "no-cache"


async def test_store_failure_is_inactive(sidecar: Sidecar) -> None:
    """When the session state cannot be read, introspection answers inactive, as the check denies."""
    await sidecar.services.store.close()
    assert (await introspect(sidecar, {"token": mint("alice")}))[::2] == (200, INACTIVE)


@pytest.mark.parametrize(
    "headers",
    [ADMIN, basic("resource-server", ADMIN_KEY), basic(ADMIN_KEY, ""), {"Authorization": f"basic  {base64.b64encode(f'x:{ADMIN_KEY}'.encode()).decode()}"}],
    ids=["bearer", "basic-password", "basic-username", "basic-lower-case"],
)
async def test_bearer_and_basic_admin_key_are_accepted(sidecar: Sidecar, headers: dict[str, str]) -> None:
    """The admin key is accepted as a Bearer token, as a Basic password (any user name) or as a Basic user name with an empty password."""
    assert (await introspect(sidecar, {"token": mint()}, headers))[2]["active"] is True
    assert (await revoke(sidecar, {"token": "x"}, headers))[0] == 200


@pytest.mark.parametrize(
    "headers",
    [{}, basic("user", "wrong-key-0123456789abcdef"), basic("wrong-key-0123456789abcdef", ""), basic(ADMIN_KEY, "x"),
     {"Authorization": "Basic !!!"}, {"Authorization": "Basic " + base64.b64encode(ADMIN_KEY.encode()).decode()},
     bearer(mint())],
    ids=["none", "wrong-password", "wrong-username", "key-as-user-with-password", "bad-base64", "no-colon", "user-token"],
)
async def test_without_the_admin_key_both_routes_answer_401(sidecar: Sidecar, headers: dict[str, str]) -> None:
    """Without the admin key both routes answer 401 invalid_client with Basic and Bearer challenges."""
    for path in ("/oauth2/introspect", "/oauth2/revoke"):
        async with sidecar.admin.post(path, data={"token": mint()}, headers=headers) as resp:
            assert resp.status == 401
            assert await resp.json() == {"error": "invalid_client"}
            assert resp.headers["WWW-Authenticate"].startswith("Basic")


async def test_basic_is_not_accepted_on_the_other_admin_routes(sidecar: Sidecar) -> None:
    """HTTP Basic with the right key is refused outside the two OAuth routes (browsers replay it cross-site)."""
    async with sidecar.admin.get("/admin/v1/users/alice/sessions", headers=basic("x", ADMIN_KEY)) as resp:
        assert resp.status == 401


@pytest.mark.parametrize("path", ["/oauth2/introspect", "/oauth2/revoke"])
@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        ("", "application/x-www-form-urlencoded", 400),
        ("token_type_hint=access_token", "application/x-www-form-urlencoded", 400),
        ("token=a&token=b", "application/x-www-form-urlencoded", 400),
        ('{"token": "a"}', "application/json", 400),
        (b"token=\xff", "application/x-www-form-urlencoded", 400),
        ("token=" + "a" * 80_000, "application/x-www-form-urlencoded", 413),
    ],
    ids=["empty", "no-token", "twice", "json", "not-utf8", "too-large"],
)
async def test_malformed_requests_are_invalid_request(
    sidecar: Sidecar, path: str, body: str | bytes, content_type: str, status: int
) -> None:
    """A missing or repeated token, another media type, non-UTF-8 or an oversized body is invalid_request."""
    headers = {**ADMIN, "Content-Type": content_type}
    async with sidecar.admin.post(path, data=body, headers=headers) as resp:
        assert resp.status == status
        assert await resp.json() == {"error": "invalid_request"}
        assert resp.headers["Cache-Control"] == "no-store"


async def test_revoke_then_introspect_and_check_refuse(sidecar: Sidecar, caplog: pytest.LogCaptureFixture) -> None:
    """After a revocation the token is inactive, the gateway check denies it, and it is audited and counted."""
    token = mint("alice")
    assert await sidecar.check(token) == 200
    sid = (await sidecar.sessions(token))[0]["id"]
    with caplog.at_level("INFO", logger="sidecar.audit"):
        assert await revoke(sidecar, {"token": token, "token_type_hint": "access_token"}) == (200, "")
    assert await sidecar.check(token) == 401
    assert (await introspect(sidecar, {"token": token}))[2] == INACTIVE
    [line] = [vars(r)["audit"] for r in caplog.records if r.name == "sidecar.audit"]
    assert line["audit"] == "session.revoked" and line["api"] == "oauth2" and line["session"] == sid
    assert line["actor_key"].startswith("sha256:") and token not in json.dumps(line)
    async with sidecar.admin.get("/metrics", headers=ADMIN) as resp:
        assert 'sidecar_revocations_total{api="oauth2",kind="session"} 1.0' in await resp.text()
    assert await revoke(sidecar, {"token": token}) == (200, "")  # again: idempotent


async def test_revoking_a_never_seen_token_keeps_it_refused(sidecar: Sidecar) -> None:
    """A valid token revoked before its first use is refused afterwards, in auto mode too."""
    token = mint("alice")
    assert (await revoke(sidecar, {"token": token}))[0] == 200
    assert await sidecar.check(token) == 401


@pytest.mark.parametrize("token", ["", "garbage", mint("alice", key="another-secret-that-is-long-enough-0123456789")])
async def test_revoking_an_invalid_token_answers_200(sidecar: Sidecar, token: str) -> None:
    """RFC 7009 section 2.2: an invalid or unknown token is answered 200 like any other."""
    assert await revoke(sidecar, {"token": token}) == (200, "")


async def test_revoke_when_the_store_cannot_commit_is_503(sidecar: Sidecar) -> None:
    """A revocation the store cannot commit answers 503 with Retry-After, never 200."""
    token = mint("alice")
    assert await sidecar.check(token) == 200
    await sidecar.services.store.close()
    async with sidecar.admin.post("/oauth2/revoke", data={"token": token}, headers=ADMIN) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert await resp.json() == {"error": "temporarily_unavailable"}

