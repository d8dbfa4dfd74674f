"""Several sidecar processes sharing one store: revocations reach all of them.

Real processes (`sidecar serve`), a real store shared between them, and a throwaway
redis-server that the tests stop and start again.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal as sig
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import ADMIN_KEY, SECRET, mint
from tests.gateways.support import Service, free_ports, log_says, running
from tests.sessions.pg import database


@contextmanager
def redis_server(workdir: Path, port: int) -> Iterator[Service]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not on PATH: install it (apt-get install redis-server)")
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with running(f"redis-{port}", argv, workdir, log_says("Ready to accept connections", port)) as service:
        yield service


def config(workdir: Path, name: str, port: int, admin_port: int, database: Path | str, **extra: Any) -> Path:
    redis = extra.get("redis_port")
    workers = extra.get("workers", 1)
    catchup = extra.get("catchup", 0.5)
    channel = f"test:{workdir.name}"  # one channel per test: its processes share it
    path = workdir / f"{name}.toml"
    path.write_text(
        f"""
[server]
port = {port}
workers = {workers}
trusted_proxies = ["127.0.0.1/32"]
shutdown_timeout_seconds = 2

[jwt]
algorithms = ["HS256"]
secret = "{SECRET}"
leeway_seconds = 0

[sessions]
catchup_interval_seconds = {catchup}
max_staleness_seconds = {catchup * 6}
last_seen_flush_seconds = 0.5

[storage]
url = "{database if isinstance(database, str) else f'sqlite:///{database}'}"

[admin]
port = {admin_port}
api_keys = ["{ADMIN_KEY}"]
"""
        + (f'\n[redis]\nurl = "redis://127.0.0.1:{redis}/0"\nchannel = "{channel}"\n' if redis else "")
    )
    return path


@contextmanager
def sidecar(workdir: Path, name: str, cfg: Path, port: int) -> Iterator[Service]:
    argv = [sys.executable, "-m", "sidecar", "serve", "--config", str(cfg)]
    with running(name, argv, workdir, log_says("sidecar: ready", port)) as service:
        yield service


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


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
    port_a, admin_a, port_b, admin_b, redis_port = free_ports(5)
    db = shared_store
    catchup = request.param
    with ExitStack() as stack:
        redis = stack.enter_context(redis_server(tmp_path, redis_port))
        cfg_a = config(tmp_path, "a", port_a, admin_a, db, redis_port=redis_port, catchup=catchup)
        cfg_b = config(tmp_path, "b", port_b, admin_b, db, redis_port=redis_port, catchup=catchup)
        stack.enter_context(sidecar(tmp_path, "sidecar-a", cfg_a, port_a))
        stack.enter_context(sidecar(tmp_path, "sidecar-b", cfg_b, port_b))
        yield port_a, port_b, admin_a, redis


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
    port, admin_port = free_ports(2)
    cfg = config(tmp_path, "w", port, admin_port, tmp_path / "w.db", workers=2)
    with sidecar(tmp_path, "workers", cfg, port) as service:
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
    port, admin_port = free_ports(2)
    cfg = config(tmp_path, "r", port, admin_port, tmp_path / "r.db", workers=2)
    with sidecar(tmp_path, "restart", cfg, port) as service:
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
