"""Several sidecar processes sharing one store: revocations reach all of them.

Real processes (`sidecar serve`), a real store shared between them, and a throwaway
redis-server that the tests stop and start again.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal as sig
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import redis.asyncio as aioredis

from sidecar.config import from_mapping
from sidecar.sessions import SessionStore, store_from_settings
from tests.sessions.pg import database
from tests.support.configs import sidecar_config, sqlite_url
from tests.support.ports import free_ports
from tests.support.processes import Service, redis_server
from tests.support.sessions import opened
from tests.support.sidecar import SidecarProcess, run_sidecar
from tests.support.tokens import ADMIN_KEY, bearer, mint


def sidecar(
    workdir: Path,
    name: str,
    store: Path | str,
    *,
    redis_port: int | None = None,
    workers: int = 1,
    catchup: float = 0.5,
    sessions: Mapping[str, Any] | None = None,
) -> AbstractContextManager[SidecarProcess]:
    """``sidecar serve`` on ``store`` (a SQLite file or a PostgreSQL URL), with Redis when
    ``redis_port``; ``sessions`` adds [sessions] keys (session policies)."""
    sections: dict[str, Any] = {
        "server": {"workers": workers, "shutdown_timeout_seconds": 2},
        "sessions": {
            "catchup_interval_seconds": catchup,
            "max_staleness_seconds": catchup * 6,
            "last_seen_flush_seconds": 0.5,
            **(sessions or {}),
        },
    }
    if redis_port:
        # One channel per test: its processes share it.
        sections["redis"] = {"url": f"redis://127.0.0.1:{redis_port}/0", "channel": f"test:{workdir.name}"}
    url = store if isinstance(store, str) else sqlite_url(store)
    return run_sidecar(workdir, url, name=name, **sections)


async def status(http: aiohttp.ClientSession, port: int, token: str) -> int:
    async with http.get(f"http://127.0.0.1:{port}/introspect", headers=bearer(token)) as resp:
        return resp.status


async def session_id(http: aiohttp.ClientSession, port: int, token: str) -> str:
    async with http.get(f"http://127.0.0.1:{port}/introspect", headers=bearer(token)) as resp:
        assert resp.status == 200
        return resp.headers["X-Auth-Session"]


async def refused_within(http: aiohttp.ClientSession, port: int, token: str, seconds: float) -> float:
    """Poll until the check refuses the token; return how long it took (fail past ``seconds``)."""
    started = time.monotonic()
    while True:
        if await status(http, port, token) == 401:
            return time.monotonic() - started
        if time.monotonic() - started > seconds:
            pytest.fail(f"token still allowed on port {port} after {seconds} s")
        await asyncio.sleep(0.01)


BOTH_PATHS = pytest.mark.parametrize("two_sidecars", [0.5, 60.0], ids=["catchup-0.5s", "push-only"], indirect=True)
CATCHUP_ONLY = pytest.mark.parametrize("two_sidecars", [0.5], ids=["catchup-0.5s"], indirect=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | str]:
    """The store both processes share: a SQLite file, or a PostgreSQL database of this test's own."""
    if request.param == "sqlite":
        yield tmp_path / "shared.db"
    else:
        with database("sidecar_scaleout") as url:
            yield url


@pytest.fixture
def two_sidecars(
    tmp_path: Path, request: pytest.FixtureRequest, shared_store: Path | str
) -> Iterator[tuple[int, int, int, Service]]:
    """Two sidecar processes on one store and one Redis: (port A, port B, admin A, redis).

    With a 60 s catch-up interval only the Redis push can deliver a revocation within the
    tests' 2 s bound, so those runs prove the push itself.
    """
    [redis_port] = free_ports(1)
    catchup = request.param
    with ExitStack() as stack:
        redis = stack.enter_context(redis_server(tmp_path, redis_port))
        a = stack.enter_context(sidecar(tmp_path, "sidecar-a", shared_store, redis_port=redis_port, catchup=catchup))
        b = stack.enter_context(sidecar(tmp_path, "sidecar-b", shared_store, redis_port=redis_port, catchup=catchup))
        yield a.port, b.port, a.admin_port, redis


@BOTH_PATHS
async def test_session_through_a_is_listed_and_revoked_through_b(two_sidecars: tuple[int, int, int, Service]) -> None:
    """A session registered through A is listed through B; revoked through B, A refuses it."""
    port_a, port_b, _, _ = two_sidecars
    token, other = mint("alice"), mint("alice")
    async with aiohttp.ClientSession() as http:
        sid = await session_id(http, port_a, token)
        await session_id(http, port_b, other)
        async with http.get(f"http://127.0.0.1:{port_b}/api/v1/sessions/", headers=bearer(other)) as resp:
            listed = {s["id"] for s in (await resp.json())["data"]}
        assert sid in listed
        async with http.delete(f"http://127.0.0.1:{port_b}/api/v1/sessions/{sid}/", headers=bearer(other)) as resp:
            assert resp.status == 204
        assert await status(http, port_b, token) == 401  # read-your-writes on B
        await refused_within(http, port_a, token, 2.0)


@BOTH_PATHS
async def test_log_out_others_reaches_the_other_process(two_sidecars: tuple[int, int, int, Service]) -> None:
    """"Log out all others" through B refuses on A every other session and never-seen older tokens."""
    port_a, port_b, _, _ = two_sidecars
    seen_on_a = mint("bob", now=time.time() - 5)
    never_seen = mint("bob", now=time.time() - 5)
    me = mint("bob", now=time.time() - 5)
    async with aiohttp.ClientSession() as http:
        await session_id(http, port_a, seen_on_a)  # A now holds bob's state (no cut-off) in memory
        await session_id(http, port_b, me)
        async with http.delete(f"http://127.0.0.1:{port_b}/api/v1/sessions/", headers=bearer(me)) as resp:
            assert resp.status == 204
        await refused_within(http, port_a, seen_on_a, 2.0)
        await refused_within(http, port_a, never_seen, 2.0)
        assert await status(http, port_a, me) == 200


@CATCHUP_ONLY
async def test_redis_down_falls_back_to_the_store_and_push_resumes(
    tmp_path: Path, two_sidecars: tuple[int, int, int, Service]
) -> None:
    """Redis stopped mid-run: revocations still reach the other process by catch-up; back up, push resumes."""
    _, port_b, admin_a, redis = two_sidecars
    redis_port = int(redis.name.split("-")[1])
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with aiohttp.ClientSession() as http:
        redis.stop()
        for _ in range(3):
            token = mint("carol")
            sid = await session_id(http, port_b, token)
            async with http.delete(f"http://127.0.0.1:{admin_a}/admin/v1/sessions/{sid}", headers=admin) as resp:
                assert resp.status == 204  # Redis down never fails a revoke
            await refused_within(http, port_b, token, 0.5 + 1.5)  # catch-up interval + margin
        async with http.get(f"http://127.0.0.1:{port_b}/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["checks"]["redis"] == "unavailable"
        with redis_server(tmp_path, redis_port):
            deadline = time.monotonic() + 10
            while True:
                async with http.get(f"http://127.0.0.1:{port_b}/readyz") as resp:
                    if resp.status == 200:
                        break
                if time.monotonic() > deadline:
                    pytest.fail("sidecar B did not resubscribe to Redis")
                await asyncio.sleep(0.1)
            token = mint("carol")
            sid = await session_id(http, port_b, token)
            async with http.delete(f"http://127.0.0.1:{admin_a}/admin/v1/sessions/{sid}", headers=admin) as resp:
                assert resp.status == 204
            await refused_within(http, port_b, token, 2.0)


async def test_two_workers_share_a_port_and_honour_each_others_revocations(tmp_path: Path) -> None:
    """workers = 2 serves one port; a revocation through either worker is honoured by both."""
    with sidecar(tmp_path, "workers", tmp_path / "w.db", workers=2) as node:
        port, service = node.port, node.service
        # One client per worker: keep-alive pins a connection, /healthz says which pid it reached.
        pinned: dict[int, aiohttp.ClientSession] = {}
        try:
            deadline = time.monotonic() + 20
            while len(pinned) < 2:
                http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    pid = (await resp.json())["pid"]
                if pid in pinned:
                    await http.close()
                else:
                    pinned[pid] = http
                if time.monotonic() > deadline:
                    pytest.fail(f"only reached workers {list(pinned)}:\n{service.log_tail()}")
            (pid_a, a), (pid_b, b) = pinned.items()
            assert pid_a != pid_b != service.proc.pid
            for revoker, other in ((a, b), (b, a)):
                token = mint("dave")
                sid = await session_id(revoker, port, token)
                assert await status(other, port, token) == 200
                async with revoker.delete(f"http://127.0.0.1:{port}/api/v1/sessions/{sid}/", headers=bearer(token)) as r:
                    assert r.status == 204
                assert await status(revoker, port, token) == 401
                await refused_within(other, port, token, 0.5 + 1.5)
        finally:
            for http in pinned.values():
                await http.close()
        service.stop()
        assert service.proc.returncode == 0


def test_a_killed_worker_is_replaced(tmp_path: Path) -> None:
    """With workers = 2, a worker killed with SIGKILL is restarted and the port keeps answering."""
    with sidecar(tmp_path, "restart", tmp_path / "r.db", workers=2) as node:
        service = node.service
        children = subprocess.run(
            ["pgrep", "-P", str(service.proc.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        assert len(children) == 2, service.log_tail()
        os.kill(int(children[0]), sig.SIGKILL)
        deadline = time.monotonic() + 15
        while True:
            now_children = subprocess.run(
                ["pgrep", "-P", str(service.proc.pid)], capture_output=True, text=True, check=False
            ).stdout.split()
            if len(now_children) == 2 and children[0] not in now_children:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"worker not replaced:\n{service.log_tail()}")
            time.sleep(0.1)
        assert "exited with -9; restarting it" in service.log.read_text()


# ---------------------------------------------------------------- Redis messages are hints


@dataclass(frozen=True)
class Pair:
    """Two sidecar processes on one store and one Redis, and what a test needs to reach them."""

    port_a: int
    port_b: int
    admin_a: int
    admin_b: int
    redis_port: int
    channel: str
    store: Path | str


@pytest.fixture
def pair(tmp_path: Path, request: pytest.FixtureRequest, shared_store: Path | str) -> Iterator[Pair]:
    """Like ``two_sidecars``, with every port and the channel, for tests that speak to Redis themselves."""
    [redis_port] = free_ports(1)
    catchup = request.param
    with ExitStack() as stack:
        stack.enter_context(redis_server(tmp_path, redis_port))
        a = stack.enter_context(sidecar(tmp_path, "sidecar-a", shared_store, redis_port=redis_port, catchup=catchup))
        b = stack.enter_context(sidecar(tmp_path, "sidecar-b", shared_store, redis_port=redis_port, catchup=catchup))
        yield Pair(a.port, b.port, a.admin_port, b.admin_port, redis_port, f"test:{tmp_path.name}", shared_store)


PAIR_CATCHUP = pytest.mark.parametrize("pair", [0.5], ids=["catchup-0.5s"], indirect=True)
PAIR_PUSH_ONLY = pytest.mark.parametrize("pair", [30.0], ids=["catchup-30s"], indirect=True)


async def subscribed(http: aiohttp.ClientSession, *ports: int) -> None:
    """Wait until every process on ``ports`` is ready, Redis subscription included."""
    deadline = time.monotonic() + 10
    for port in ports:
        while True:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                if resp.status == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"sidecar on port {port} did not become ready (Redis subscription)")
            await asyncio.sleep(0.05)


async def forge(p: Pair, cutoffs: list[list[Any]], sessions: list[list[Any]] | None = None) -> None:
    """Publish a forged revocation message as any client of the Redis could: from another
    database number (pub/sub ignores it), without touching the store."""
    message = json.dumps({"v": 1, "sessions": sessions or [], "cutoffs": cutoffs})
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{p.redis_port}/5")
    try:
        assert await client.publish(p.channel, message) == 2  # both processes heard it
    finally:
        await client.aclose()


async def messages_received(http: aiohttp.ClientSession, admin_port: int) -> float:
    async with http.get(f"http://127.0.0.1:{admin_port}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as r:
        text = await r.text()
    match = re.search(r"^sidecar_redis_messages_received_total (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def heard(http: aiohttp.ClientSession, admin_port: int, count: int) -> None:
    """Wait until the process behind ``admin_port`` has received ``count`` messages."""
    deadline = time.monotonic() + 5
    while await messages_received(http, admin_port) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"the sidecar with admin port {admin_port} never received message {count}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def opened_store(where: Path | str) -> AsyncIterator[SessionStore]:
    """The shared store, opened by the test itself (to write what no process publishes)."""
    url = where if isinstance(where, str) else sqlite_url(where)
    settings = from_mapping(sidecar_config(None, url), environ={}, base_dir=Path("/"))
    async with opened(store_from_settings(settings.storage)) as store:
        yield store


async def store_caught_up(http: aiohttp.ClientSession, p: Pair) -> None:
    """Wait until both processes ran a store catch-up that started after this call: revoke a
    session in the store behind their backs (nothing published) and wait for both to refuse it."""
    token = mint("catch-up-marker")
    sid = await session_id(http, p.port_a, token)
    assert await status(http, p.port_b, token) == 200
    async with opened_store(p.store) as store:
        assert await store.revoke(sid, time.time()) is not None
    await refused_within(http, p.port_a, token, 5.0)
    await refused_within(http, p.port_b, token, 5.0)


@PAIR_CATCHUP
async def test_forged_cutoff_message_cannot_lift_a_cutoff(pair: Pair) -> None:
    """A forged message carrying a later cut-off that exempts another session does not let
    that session's older, never-seen token through: not when it arrives, not after catch-up."""
    p = pair
    victim_sid = f"stolen-{uuid.uuid4()}"
    stolen = mint("ursula", now=time.time() - 5, sid=victim_sid)  # never seen by anyone
    me = mint("ursula", now=time.time() - 5)
    async with aiohttp.ClientSession() as http:
        await subscribed(http, p.port_a, p.port_b)
        await session_id(http, p.port_b, me)
        async with http.delete(f"http://127.0.0.1:{p.port_a}/api/v1/sessions/", headers=bearer(me)) as resp:
            assert resp.status == 204
        await refused_within(http, p.port_b, stolen, 2.0)
        assert await status(http, p.port_a, stolen) == 401
        before = await messages_received(http, p.admin_b)
        await forge(p, [["ursula", time.time() + 0.5, f"sid:{victim_sid}"]])
        await heard(http, p.admin_b, int(before) + 1)
        await heard(http, p.admin_a, 1)
        assert await status(http, p.port_b, stolen) == 401
        assert await status(http, p.port_a, stolen) == 401
        await store_caught_up(http, p)
        assert await status(http, p.port_b, stolen) == 401
        assert await status(http, p.port_a, stolen) == 401
        assert await status(http, p.port_a, me) == 200  # the real exemption still holds


@PAIR_CATCHUP
async def test_forged_far_future_cutoff_does_not_lock_the_user_out(pair: Pair) -> None:
    """A forged cut-off at 1e300 refuses nothing: the user's known and fresh tokens keep getting 200."""
    p = pair
    known = mint("wanda")
    async with aiohttp.ClientSession() as http:
        await subscribed(http, p.port_a, p.port_b)
        await session_id(http, p.port_a, known)  # both processes hold wanda's state and cut-off (none)
        await session_id(http, p.port_b, known)
        before = await messages_received(http, p.admin_b)
        await forge(p, [["wanda", 1e300, None]])
        await heard(http, p.admin_b, int(before) + 1)
        for port in (p.port_a, p.port_b):
            assert await status(http, port, known) == 200
            assert await status(http, port, mint("wanda")) == 200
        await store_caught_up(http, p)
        for port in (p.port_a, p.port_b):
            assert await status(http, port, known) == 200
            assert await status(http, port, mint("wanda")) == 200


@PAIR_CATCHUP
async def test_forged_session_revocation_denies_nothing(pair: Pair) -> None:
    """A forged message naming a live session as revoked does not refuse it: only the store can."""
    p = pair
    token = mint("xavier")
    async with aiohttp.ClientSession() as http:
        await subscribed(http, p.port_a, p.port_b)
        sid = await session_id(http, p.port_a, token)
        await session_id(http, p.port_b, token)
        claims_key = f"sid:{jwt.decode(token, options={'verify_signature': False})['sid']}"
        before = await messages_received(http, p.admin_b)
        await forge(p, [], [[claims_key, sid, "xavier", time.time() + 3600, time.time()]])
        await heard(http, p.admin_b, int(before) + 1)
        assert await status(http, p.port_b, token) == 200
        assert await status(http, p.port_a, token) == 200


@PAIR_PUSH_ONLY
async def test_revocation_reaches_the_other_process_through_the_hint(pair: Pair) -> None:
    """With a 30 s catch-up interval, a revocation and a "log out others" through A are refused
    by B within a second: the message makes B read the store at once."""
    p = pair
    one, mine, other = mint("yann"), mint("yann", now=time.time() - 5), mint("yann", now=time.time() - 5)
    async with aiohttp.ClientSession() as http:
        await subscribed(http, p.port_a, p.port_b)
        sid = await session_id(http, p.port_a, one)
        assert await status(http, p.port_b, one) == 200
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with http.delete(f"http://127.0.0.1:{p.admin_a}/admin/v1/sessions/{sid}", headers=admin) as resp:
            assert resp.status == 204
        await refused_within(http, p.port_b, one, 1.0)
        await session_id(http, p.port_a, mine)
        assert await status(http, p.port_b, other) == 200
        async with http.delete(f"http://127.0.0.1:{p.port_a}/api/v1/sessions/", headers=bearer(mine)) as resp:
            assert resp.status == 204
        await refused_within(http, p.port_b, other, 1.0)
        await refused_within(http, p.port_b, mint("yann", now=time.time() - 5), 1.0)
        assert await status(http, p.port_b, mine) == 200
