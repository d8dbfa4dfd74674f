"""Session policies through the HTTP surface: the check, the sessions API, the admin API,
metrics and the audit trail, on a controlled clock."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from sidecar.clock import ManualClock
from sidecar.web.envelope import rfc3339
from tests.conftest import ADMIN, Sidecar, bearer, mint, settings_for
from tests.web.test_operability import metrics_text, sample

IDLE = 60
GRACE = 0.2 + 1  # settings_for's last_seen_flush_seconds + 1


async def policy_sidecar(tmp_path: Path, start_sidecar: Any, **sessions: Any) -> tuple[Sidecar, ManualClock]:
    clock = ManualClock(float(int(time.time())))
    sidecar: Sidecar = await start_sidecar(settings_for(tmp_path, sessions=sessions), clock)
    return sidecar, clock


async def admin_listing(sidecar: Sidecar, user: str, query: str = "?include_revoked=true") -> list[dict[str, Any]]:
    async with sidecar.admin.get(f"/admin/v1/users/{user}/sessions{query}", headers=ADMIN) as resp:
        assert resp.status == 200, await resp.text()
        data: list[dict[str, Any]] = (await resp.json())["data"]
        return data


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [vars(r)["audit"] for r in caplog.records if r.name == "sidecar.audit"]


async def test_listing_shows_when_the_policies_end_a_session(tmp_path: Path, start_sidecar: Any) -> None:
    """Listed sessions carry idle_expires_at (last seen + the timeout) and lifetime_expires_at
    (login + the lifetime); without policies neither field is there."""
    sidecar, clock = await policy_sidecar(tmp_path, start_sidecar, idle_timeout_seconds=IDLE, max_lifetime_seconds=3600)
    token = mint("alice", now=clock.wall())
    assert await sidecar.check(token) == 200
    login = clock.wall()
    clock.advance(30)
    [listed] = await sidecar.sessions(token)
    assert listed["idle_expires_at"] == rfc3339(login + 30 + IDLE)  # the listing's own check counts
    assert listed["lifetime_expires_at"] == rfc3339(login + 3600)
    [admin] = await admin_listing(sidecar, "alice", "")
    assert admin["lifetime_expires_at"] == rfc3339(login + 3600)


async def test_no_policy_fields_when_off(sidecar: Sidecar) -> None:
    """With every policy off, listed sessions have no policy fields."""
    token = mint("alice")
    assert await sidecar.check(token) == 200
    [listed] = await sidecar.sessions(token)
    assert "idle_expires_at" not in listed and "lifetime_expires_at" not in listed


async def test_idle_session_is_refused_revoked_counted_and_audited(
    tmp_path: Path, start_sidecar: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A session quiet past timeout + grace is refused at the check and by the API, listed as revoked
    with reason idle by policy, counted under reason idle and audited with its reason."""
    caplog.set_level(logging.INFO)
    sidecar, clock = await policy_sidecar(tmp_path, start_sidecar, idle_timeout_seconds=IDLE)
    token = mint("alice", now=clock.wall(), ttl=7200)
    assert await sidecar.check(token) == 200
    clock.advance(IDLE)
    assert await sidecar.check(token) == 200
    await sidecar.services.sessions.flush()
    clock.advance(IDLE + GRACE + 1)
    assert await sidecar.check(token) == 401
    async with sidecar.public.get("/api/v1/sessions/", headers=bearer(token)) as resp:
        assert resp.status == 401
    [row] = await admin_listing(sidecar, "alice")
    assert (row["revoked_reason"], row["revoked_by"]) == ("idle", "policy")
    assert await admin_listing(sidecar, "alice", "") == []
    assert sample(await metrics_text(sidecar), "sidecar_sessions_revoked_total", reason="idle") == 1
    [line] = audit_lines(caplog)
    assert (line["audit"], line["api"], line["reason"], line["session"]) == ("session.revoked", "policy", "idle", row["id"])


async def test_lifetime_refuses_a_refreshed_token_of_an_old_login(tmp_path: Path, start_sidecar: Any) -> None:
    """A fresh token of a session whose login is older than max_lifetime_seconds is refused."""
    sidecar, clock = await policy_sidecar(tmp_path, start_sidecar, max_lifetime_seconds=600)
    sid = "login-1"
    assert await sidecar.check(mint("alice", now=clock.wall(), sid=sid)) == 200
    clock.advance(601)
    assert await sidecar.check(mint("alice", now=clock.wall(), sid=sid)) == 401
    [row] = await admin_listing(sidecar, "alice")
    assert row["revoked_reason"] == "lifetime"
    assert await sidecar.check(mint("alice", now=clock.wall(), sid="login-2")) == 200  # a new login


async def test_limit_refuse_new_at_the_check_and_the_admin_api(tmp_path: Path, start_sidecar: Any) -> None:
    """With refuse_new, a user's session past the limit gets 401 at the check and 409 with a clear
    message from the admin register; the admitted ones keep working."""
    sidecar, clock = await policy_sidecar(tmp_path, start_sidecar, max_sessions_per_user=2)
    first, second = mint("alice", now=clock.wall()), mint("alice", now=clock.wall())
    assert await sidecar.check(first) == 200
    assert await sidecar.check(second) == 200
    assert await sidecar.check(mint("alice", now=clock.wall())) == 401
    async with sidecar.admin.post("/admin/v1/sessions", headers=ADMIN, json={"token": mint("alice", now=clock.wall())}) as resp:
        assert resp.status == 409
        assert (await resp.json())["message"].startswith("Session limit reached")
    assert await sidecar.check(first) == 200 and await sidecar.check(second) == 200
    assert await sidecar.check(mint("bob", now=clock.wall())) == 200


async def test_limit_revoke_oldest_records_the_newcomer(
    tmp_path: Path, start_sidecar: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """With revoke_oldest, the newcomer is admitted, the oldest login refused at once, listed with
    reason limit by the newcomer, counted and audited."""
    caplog.set_level(logging.INFO)
    sidecar, clock = await policy_sidecar(
        tmp_path, start_sidecar, max_sessions_per_user=1, on_session_limit="revoke_oldest"
    )
    old, new = mint("alice", now=clock.wall()), mint("alice", now=clock.wall())
    assert await sidecar.check(old) == 200
    clock.advance(1)
    async with sidecar.public.get("/introspect", headers=bearer(new)) as resp:
        assert resp.status == 200
        newcomer = resp.headers["X-Auth-Session"]
    assert await sidecar.check(old) == 401
    assert await sidecar.check(new) == 200
    revoked = [s for s in await admin_listing(sidecar, "alice") if s["revoked_at"] is not None]
    assert [(s["revoked_reason"], s["revoked_by"]) for s in revoked] == [("limit", f"session:{newcomer}")]
    assert sample(await metrics_text(sidecar), "sidecar_sessions_revoked_total", reason="limit") == 1
    [line] = audit_lines(caplog)
    assert (line["reason"], line["actor"], line["session"]) == ("limit", f"session:{newcomer}", revoked[0]["id"])


async def test_every_revocation_records_its_reason_and_actor(
    sidecar: Sidecar, caplog: pytest.LogCaptureFixture
) -> None:
    """User, others, admin and admin_user revocations are stored, counted and audited with their reason."""
    caplog.set_level(logging.INFO)
    me, one, other, admin_one = mint("alice"), mint("alice"), mint("alice"), mint("bob")
    for t in (me, one, other, admin_one):
        assert await sidecar.check(t) == 200
    ids = {s["current"]: s["id"] for s in await sidecar.sessions(one)}
    async with sidecar.public.delete(f"/api/v1/sessions/{ids[True]}/", headers=bearer(me)) as resp:
        assert resp.status == 204
    async with sidecar.public.delete("/api/v1/sessions/", headers=bearer(me)) as resp:
        assert resp.status == 204
    [bob] = await sidecar.sessions(admin_one)
    async with sidecar.admin.delete(f"/admin/v1/sessions/{bob['id']}", headers=ADMIN) as resp:
        assert resp.status == 204
    async with sidecar.admin.delete("/admin/v1/users/alice/sessions", headers=ADMIN) as resp:
        assert resp.status == 204
    reasons = sorted((s["revoked_reason"], s["revoked_by"]) for s in await admin_listing(sidecar, "alice"))
    assert [r for r, _ in reasons] == ["admin_user", "others", "user"]
    assert reasons[0][1].startswith("admin:sha256:")
    assert reasons[1][1] == reasons[2][1] == "user:alice"
    [bobs] = await admin_listing(sidecar, "bob")
    assert bobs["revoked_reason"] == "admin" and bobs["revoked_by"].startswith("admin:sha256:")
    text = await metrics_text(sidecar)
    for reason in ("user", "others", "admin", "admin_user"):
        assert sample(text, "sidecar_sessions_revoked_total", reason=reason) == 1
    assert [e.get("reason") for e in audit_lines(caplog)] == ["user", "others", "admin", "admin_user"]


async def test_include_revoked_must_be_true_or_false(sidecar: Sidecar) -> None:
    """?include_revoked takes true or false, once; anything else is a 400."""
    for query in ("?include_revoked=yes", "?include_revoked=true&include_revoked=true"):
        async with sidecar.admin.get(f"/admin/v1/users/alice/sessions{query}", headers=ADMIN) as resp:
            assert resp.status == 400
            assert (await resp.json())["message"] == "Parameter 'include_revoked' must be true or false"
    assert await admin_listing(sidecar, "alice", "?include_revoked=false") == []
