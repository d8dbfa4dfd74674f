"""Tokens as many auth services issue them: ``{user_id, exp, type}``, no iat, sid or jti.

"Log out others" and admin "revoke user" must never lock such a user out (SECURITY_CASES
E40): every token issued after the cut-off works, the caller's own session keeps working
through its refreshes, and older tokens are refused wherever their age can be told
(``jwt.token_lifetime_seconds``); where it cannot, the sidecar says so and lets them in.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from tests.conftest import ADMIN, SECRET, Sidecar, bearer, settings_for

LIFETIME = 1800
BOILERPLATE_JWT = {
    "user_claim": "user_id",
    "token_type_claim": "type",
    "access_token_type": "access",
}


def boilerplate_token(user: str, *, exp: float | None = None, typ: str = "access") -> str:
    """What the FastAPI boilerplate issues: user_id, exp and type, nothing else."""
    expires = int(exp if exp is not None else time.time() + LIFETIME)
    return jwt.encode({"user_id": user, "exp": expires, "type": typ}, SECRET, algorithm="HS256")


def issued(seconds_ago: float) -> float:
    """The exp of a token of LIFETIME issued ``seconds_ago`` (whole seconds, as issuers write)."""
    return int(time.time()) - seconds_ago + LIFETIME


async def use(sidecar: Sidecar, token: str) -> int:
    return await sidecar.check(token)


async def delete_others(sidecar: Sidecar, token: str) -> int:
    async with sidecar.public.delete("/api/v1/sessions/", headers=bearer(token)) as resp:
        return resp.status


@pytest.fixture
async def ageless(start_sidecar: Callable[..., Any], tmp_path: Any) -> Sidecar:
    """A sidecar configured for boilerplate tokens, without jwt.token_lifetime_seconds."""
    result: Sidecar = await start_sidecar(settings_for(tmp_path, jwt=BOILERPLATE_JWT))
    return result


@pytest.fixture
async def with_lifetime(start_sidecar: Callable[..., Any], tmp_path: Any) -> Sidecar:
    """The same, with the issuer's fixed lifetime configured."""
    result: Sidecar = await start_sidecar(
        settings_for(tmp_path, jwt={**BOILERPLATE_JWT, "token_lifetime_seconds": LIFETIME})
    )
    return result


async def test_log_out_others_never_locks_the_user_out(ageless: Sidecar) -> None:
    """After "log out others", a fresh login and the caller's refreshed token work; the other device is refused."""
    user = str(uuid.uuid4())
    laptop, phone = boilerplate_token(user, exp=issued(20)), boilerplate_token(user, exp=issued(10))
    assert await use(ageless, laptop) == 200
    assert await use(ageless, phone) == 200
    assert await delete_others(ageless, laptop) == 204
    assert await use(ageless, phone) == 401  # seen before: its session is revoked
    assert await use(ageless, laptop) == 200  # the caller's own session
    assert await use(ageless, boilerplate_token(user)) == 200  # the caller's next refreshed token
    assert await use(ageless, boilerplate_token(user, exp=issued(-1))) == 200  # a fresh login
    assert len(await ageless.sessions(laptop)) == 3


async def test_admin_revoke_user_never_locks_the_user_out(ageless: Sidecar) -> None:
    """After admin "revoke user" (a password change), the next login works and can be registered."""
    user = str(uuid.uuid4())
    old = boilerplate_token(user, exp=issued(30))
    assert await use(ageless, old) == 200
    async with ageless.admin.delete(f"/admin/v1/users/{user}/sessions", headers=ADMIN) as resp:
        assert resp.status == 204
    assert await use(ageless, old) == 401
    fresh = boilerplate_token(user)
    async with ageless.admin.post("/admin/v1/sessions", headers=ADMIN, json={"token": fresh}) as resp:
        assert resp.status == 201, await resp.text()
    assert await use(ageless, fresh) == 200


async def test_without_a_lifetime_an_unseen_older_token_is_let_through_and_said_once(
    ageless: Sidecar, caplog: pytest.LogCaptureFixture
) -> None:
    """A never-seen token without iat cannot be told older: it passes, and one warning says what is lost."""
    user = str(uuid.uuid4())
    me, stolen = boilerplate_token(user, exp=issued(60)), boilerplate_token(user, exp=issued(50))
    assert await use(ageless, me) == 200
    assert await delete_others(ageless, me) == 204
    with caplog.at_level(logging.WARNING, logger="sidecar.sessions.service"):
        assert await use(ageless, stolen) == 200
        assert await use(ageless, boilerplate_token(user, exp=issued(40))) == 200
    told = [r for r in caplog.records if "jwt.token_lifetime_seconds" in r.getMessage()]
    assert len(told) == 1


async def test_with_a_lifetime_unseen_older_tokens_are_refused(with_lifetime: Sidecar) -> None:
    """With jwt.token_lifetime_seconds, a never-seen token issued before the cut-off dies; later ones live."""
    user = str(uuid.uuid4())
    me = boilerplate_token(user, exp=issued(60))
    stolen = boilerplate_token(user, exp=issued(50))  # issued before the cut-off, never used
    assert await use(with_lifetime, me) == 200
    assert await delete_others(with_lifetime, me) == 204
    assert await use(with_lifetime, stolen) == 401
    assert await use(with_lifetime, me) == 200  # the caller's session is exempt
    assert await use(with_lifetime, boilerplate_token(user, exp=issued(0))) == 200  # same second: passes
    assert await use(with_lifetime, boilerplate_token(user)) == 200


async def test_a_lifetime_never_overrides_iat(with_lifetime: Sidecar) -> None:
    """A token that carries iat is judged by its iat, whatever its exp says."""
    user = str(uuid.uuid4())
    now = int(time.time())
    me = boilerplate_token(user, exp=issued(60))
    assert await use(with_lifetime, me) == 200
    assert await delete_others(with_lifetime, me) == 204
    # exp far off, as if issued long before; iat says now: allowed.
    newer = jwt.encode({"user_id": user, "iat": now, "exp": now + 60, "type": "access"}, SECRET, algorithm="HS256")
    assert await use(with_lifetime, newer) == 200
    older = jwt.encode({"user_id": user, "iat": now - 30, "exp": now + 3600, "type": "access"}, SECRET, algorithm="HS256")
    assert await use(with_lifetime, older) == 401


async def test_refresh_tokens_are_refused_with_the_type_rule(ageless: Sidecar) -> None:
    """With the token-type keys set, the boilerplate's refresh token opens neither the check nor the API."""
    refresh = boilerplate_token(str(uuid.uuid4()), typ="refresh")
    assert await use(ageless, refresh) == 401
    async with ageless.public.get("/api/v1/sessions/", headers=bearer(refresh)) as resp:
        assert resp.status == 401


async def test_tokens_without_a_session_claim_are_told_once(
    ageless: Sidecar, caplog: pytest.LogCaptureFixture
) -> None:
    """The first token without sid or jti logs, once per process, that each such token is its own session."""
    with caplog.at_level(logging.WARNING, logger="sidecar.tokens.verifier"):
        for _ in range(3):
            assert await use(ageless, boilerplate_token(str(uuid.uuid4()))) == 200
    told = [r for r in caplog.records if "its own session" in r.getMessage()]
    assert len(told) == 1
