"""Session policies on real processes: two `sidecar serve` on one PostgreSQL database and on
one SQLite file, each with its own memory and batched activity (last_seen_flush_seconds 0.5,
so the idle grace is 1.5 s), no Redis: what one process revokes reaches the other through
the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.tokens import ADMIN_KEY, mint
from tests.test_scaleout import refused_within, shared_store, sidecar, status

__all__ = ["shared_store"]  # the fixture, imported for this module's tests

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
IDLE = 2.0
GRACE = 0.5 + 1.0  # last_seen_flush_seconds in tests.test_scaleout.sidecar, + 1 s


@dataclass(frozen=True)
class Two:
    port_a: int
    port_b: int
    admin_a: int
    admin_b: int


@pytest.fixture
def two(tmp_path: Path, request: pytest.FixtureRequest, shared_store: Path | str) -> Iterator[Two]:
    """Two sidecar processes on one store with the policies of the test's parameter."""
    policies: dict[str, Any] = request.param
    with ExitStack() as stack:
        a = stack.enter_context(sidecar(tmp_path, "sidecar-a", shared_store, sessions=policies))
        b = stack.enter_context(sidecar(tmp_path, "sidecar-b", shared_store, sessions=policies))
        yield Two(a.port, b.port, a.admin_port, b.admin_port)


def policies(**keys: Any) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("two", [keys], ids=["-".join(f"{k}={v}" for k, v in keys.items())], indirect=True)


async def listing(http: aiohttp.ClientSession, admin_port: int, user: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{admin_port}/admin/v1/users/{user}/sessions?include_revoked=true"
    async with http.get(url, headers=ADMIN) as resp:
        assert resp.status == 200
        data: list[dict[str, Any]] = (await resp.json())["data"]
        return data


async def check(http: aiohttp.ClientSession, port: int, token: str) -> int:
    return await status(http, port, token)


@policies(max_sessions_per_user=3)
async def test_limit_refuse_new_under_a_race_on_two_processes(two: Two) -> None:
    """Eight first checks of one user's new sessions racing on two processes admit exactly three;
    the refused ones stay refused on both processes."""
    tokens = [mint("lena") for _ in range(8)]
    async with aiohttp.ClientSession() as http:
        results = await asyncio.gather(
            *(check(http, two.port_a if i % 2 else two.port_b, t) for i, t in enumerate(tokens))
        )
        assert sorted(results) == [200] * 3 + [401] * 5
        active = [s for s in await listing(http, two.admin_a, "lena") if s["revoked_at"] is None]
        assert len(active) == 3
        for i, t in enumerate(tokens):
            for port in (two.port_a, two.port_b):
                assert await check(http, port, t) == results[i]


@policies(max_sessions_per_user=3, on_session_limit="revoke_oldest")
async def test_limit_revoke_oldest_under_a_race_on_two_processes(two: Two) -> None:
    """Eight first checks racing on two processes with revoke_oldest: every one is admitted (one
    pushed out by a newer login before its own answer may already get 401), three stay active,
    the others are revoked with reason limit and refused by both processes."""
    tokens = [mint("mona") for _ in range(8)]
    async with aiohttp.ClientSession() as http:
        results = await asyncio.gather(
            *(check(http, two.port_a if i % 2 else two.port_b, t) for i, t in enumerate(tokens))
        )
        assert results.count(200) >= 3
        rows = await listing(http, two.admin_b, "mona")
        assert len(rows) == 8  # every one was admitted
        assert len([s for s in rows if s["revoked_at"] is None]) == 3
        assert {s["revoked_reason"] for s in rows if s["revoked_at"] is not None} == {"limit"}
        await asyncio.sleep(0.5 * 3)  # three catch-up intervals: each process has read the other's revocations
        for port in (two.port_a, two.port_b):
            answers = [await check(http, port, t) for t in tokens]
            assert sorted(answers) == [200] * 3 + [401] * 5


@policies(idle_timeout_seconds=IDLE)
async def test_idle_counts_activity_on_either_process(two: Two) -> None:
    """A session used only on B for longer than the idle timeout is not idle on A, which last saw it
    at login; once nobody uses it for timeout + grace, both processes refuse it, reason idle."""
    token = mint("nina")
    async with aiohttp.ClientSession() as http:
        assert await check(http, two.port_a, token) == 200
        started = time.monotonic()
        while time.monotonic() - started < IDLE + GRACE + 1.0:
            assert await check(http, two.port_b, token) == 200
            await asyncio.sleep(0.4)
        assert await check(http, two.port_a, token) == 200  # A's memory says idle; the store does not
        await asyncio.sleep(IDLE + GRACE + 0.5)
        assert await check(http, two.port_b, token) == 401
        assert await check(http, two.port_a, token) == 401
        [row] = await listing(http, two.admin_a, "nina")
        assert (row["revoked_reason"], row["revoked_by"]) == ("idle", "policy")


@policies(idle_timeout_seconds=IDLE)
async def test_idle_sweep_revokes_a_session_nobody_checks(two: Two) -> None:
    """A session nobody presents again is revoked as idle by the processes' sweeps, and listed so."""
    token = mint("olga")
    async with aiohttp.ClientSession() as http:
        assert await check(http, two.port_a, token) == 200
        deadline = time.monotonic() + IDLE + GRACE + 3.0
        while True:
            rows = await listing(http, two.admin_b, "olga")  # idle for certain but not yet swept: not listed
            if rows and rows[0]["revoked_at"] is not None:
                break
            if time.monotonic() > deadline:
                pytest.fail("the idle session was never swept")
            await asyncio.sleep(0.2)
        assert rows[0]["revoked_reason"] == "idle"
        assert await check(http, two.port_b, token) == 401


@policies(max_lifetime_seconds=2)
async def test_lifetime_ends_a_session_on_both_processes_and_after_a_restart(
    tmp_path: Path, two: Two, shared_store: Path | str
) -> None:
    """Past max_lifetime_seconds from login, both processes refuse the session, also a freshly
    refreshed token of the same sid, and a process started afterwards refuses it too."""
    token = mint("petra", sid="petra-login")
    async with aiohttp.ClientSession() as http:
        assert await check(http, two.port_a, token) == 200
        assert await check(http, two.port_b, token) == 200
        await asyncio.sleep(2.2)
        refreshed = mint("petra", sid="petra-login")
        assert await check(http, two.port_b, refreshed) == 401
        await refused_within(http, two.port_a, token, 2.0)
        [row] = await listing(http, two.admin_a, "petra")
        assert row["revoked_reason"] == "lifetime"
        with sidecar(tmp_path, "sidecar-c", shared_store, sessions={"max_lifetime_seconds": 2}) as c:
            assert await check(http, c.port, refreshed) == 401
            assert await check(http, c.port, mint("petra")) == 200  # a new login
