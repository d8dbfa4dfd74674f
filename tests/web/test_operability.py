"""Metrics, the audit trail, and load limits (issue 7: operability and limits)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from sidecar.clock import ManualClock
from sidecar.web.limits import RateLimiter
from sidecar.web.services import count_sessions
from tests.conftest import ADMIN, ADMIN_KEY, Sidecar, bearer, mint, settings_for


async def metrics_text(sidecar: Sidecar) -> str:
    async with sidecar.admin.get("/metrics", headers=ADMIN) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return await resp.text()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    prefix = f"{name}{{{want}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


async def test_metrics_need_the_admin_key(sidecar: Sidecar) -> None:
    """/metrics lives on the admin listener and needs the admin key."""
    async with sidecar.admin.get("/metrics") as resp:
        assert resp.status == 401
    async with sidecar.public.get("/metrics", headers=ADMIN) as resp:
        assert resp.status == 404


async def test_metrics_count_decisions_latency_and_cache(sidecar: Sidecar) -> None:
    """Check decisions by result and reason, the latency histogram and cache lookups are exported."""
    token = mint("alice")
    for _ in range(3):
        assert await sidecar.check(token) == 200
    assert await sidecar.check("not-a-token") == 401
    assert await sidecar.check(None) == 401
    text = await metrics_text(sidecar)
    assert sample(text, "sidecar_check_decisions_total", result="allow", reason="active") == 3
    assert sample(text, "sidecar_check_decisions_total", result="deny", reason="malformed") == 1
    assert sample(text, "sidecar_check_decisions_total", result="deny", reason="missing_token") == 1
    assert sample(text, "sidecar_check_duration_seconds_count") == 5
    assert sample(text, "sidecar_verified_cache_lookups_total", outcome="hit") == 2
    assert sample(text, "sidecar_verified_cache_lookups_total", outcome="miss") == 2  # the token, the junk
    assert sample(text, "sidecar_session_states_in_memory") == 1
    assert sample(text, "sidecar_revocations_fresh") == 1
    await count_sessions(sidecar.services)  # what the background loop runs every 15 s
    assert sample(await metrics_text(sidecar), "sidecar_sessions_active") == 1


async def test_revocations_are_counted_and_audited(sidecar: Sidecar, caplog: pytest.LogCaptureFixture) -> None:
    """Every revocation writes one JSON audit line (who, what, when, which API) and no token."""
    caplog.set_level(logging.INFO)
    me, other, third = mint("alice"), mint("alice"), mint("alice")
    for t in (me, other, third):
        assert await sidecar.check(t) == 200
    sessions = {s["current"]: s["id"] for s in await sidecar.sessions(other)}
    other_id = sessions[True]
    async with sidecar.public.delete(f"/api/v1/sessions/{other_id}/", headers=bearer(me)) as resp:
        assert resp.status == 204
    async with sidecar.public.delete("/api/v1/sessions/", headers=bearer(me)) as resp:
        assert resp.status == 204
    async with sidecar.admin.delete("/admin/v1/users/alice/sessions", headers=ADMIN) as resp:
        assert resp.status == 204

    entries = [vars(r)["audit"] for r in caplog.records if r.name == "sidecar.audit"]
    assert [e["audit"] for e in entries] == ["session.revoked", "user.other_sessions_revoked", "user.revoked"]
    assert entries[0]["api"] == "sessions" and entries[0]["session"] == other_id
    assert entries[0]["actor_user"] == "alice" and entries[0]["user"] == "alice"
    assert len(entries[1]["revoked_sessions"]) == 1  # the third session
    assert entries[2]["api"] == "admin" and entries[2]["actor_key"].startswith("sha256:")
    assert all(e["time"].endswith("Z") for e in entries)
    everything = caplog.text
    for secret in (me, other, third, ADMIN_KEY):
        assert secret not in everything
    text = await metrics_text(sidecar)
    assert sample(text, "sidecar_revocations_total", api="sessions", kind="session") == 1
    assert sample(text, "sidecar_revocations_total", api="admin", kind="user") == 1


async def test_sessions_api_is_rate_limited_per_client(tmp_path: Path, start_sidecar: Any) -> None:
    """Past api_rate_limit_per_minute the sessions API answers 429 with Retry-After; the check is never limited."""
    sidecar: Sidecar = await start_sidecar(settings_for(tmp_path, server={"api_rate_limit_per_minute": 3}))
    token = mint("alice")
    statuses = []
    for _ in range(5):
        async with sidecar.public.get("/api/v1/sessions/", headers=bearer(token)) as resp:
            statuses.append(resp.status)
            if resp.status == 429:
                assert int(resp.headers["Retry-After"]) >= 1
                assert (await resp.json())["message"] == "Too many requests"
    assert statuses == [200, 200, 200, 429, 429]
    assert [await sidecar.check(token) for _ in range(20)] == [200] * 20


def test_rate_limiter_refills_and_bounds_its_memory() -> None:
    """The token bucket refills with time and keeps at most max_keys clients."""
    clock = ManualClock()
    limiter = RateLimiter(60, clock, max_keys=10)
    assert [limiter.allow("a")[0] for _ in range(61)] == [True] * 60 + [False]
    clock.advance(1)
    assert limiter.allow("a") == (True, 0)
    assert limiter.allow("a") == (False, 1)
    for i in range(100):
        limiter.allow(f"ip{i}")
    assert len(limiter._buckets) == 10


async def test_checks_past_the_concurrency_bound_get_503(tmp_path: Path, start_sidecar: Any) -> None:
    """With max_concurrent_checks in flight, the next check answers 503 at once, never 200 (D38)."""
    sidecar: Sidecar = await start_sidecar(settings_for(tmp_path, server={"max_concurrent_checks": 2}))
    gate = asyncio.Event()
    real_check = sidecar.services.sessions.check

    async def held_check(*args: Any, **kwargs: Any) -> str:
        await gate.wait()
        return await real_check(*args, **kwargs)

    sidecar.services.sessions.check = held_check  # type: ignore[method-assign]
    held = [asyncio.create_task(sidecar.check(mint("alice"))) for _ in range(2)]
    await asyncio.sleep(0.2)
    async with sidecar.public.get("/introspect", headers=bearer(mint("alice"))) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert resp.headers["Cache-Control"] == "no-store"
    gate.set()
    assert await asyncio.gather(*held) == [200, 200]
    assert await sidecar.check(mint("alice")) == 200
    text = await metrics_text(sidecar)
    assert sample(text, "sidecar_check_overload_rejections_total") == 1
