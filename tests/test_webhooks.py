"""Webhooks end to end on real processes: ``sidecar serve``, a Celery worker with beat on a
real Redis broker, and a real HTTP receiver (its own process) that verifies every request
with the ``standardwebhooks`` library; on a SQLite file and on a PostgreSQL database
(SECURITY_CASES E44).

Events come from real checks (session.created) and sessions API calls (session.revoked,
user.sessions_revoked); the set every test expects is the admin events listing of the user.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.sessions.pg import database
from tests.support.ports import free_port
from tests.support.processes import REPO_ON_PATH, Service, listens, running
from tests.support.sidecar import SidecarProcess, run_sidecar
from tests.support.tokens import ADMIN, bearer, mint
from tests.test_tasks import WorkerFactory, queue, redis_url, start_worker  # noqa: F401 (fixtures)

SECRET = "whsec_" + base64.b64encode(b"webhook-secret-for-the-tests-32b").decode()
WAIT = 60.0
USER = "alice"


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The store the sidecar and the workers share: a SQLite file, or a PostgreSQL database of this test's own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.db'}"
    else:
        with database("sidecar_webhooks") as url:
            yield url


class Hook:
    """Where the receiver listens and what it logged (one JSON line per request)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log = workdir / "received.jsonl"
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/sidecar"

    @contextmanager
    def running(self, *, delay: float = 0.0) -> Iterator[Service]:
        self.starts += 1
        argv = [sys.executable, "-m", "tests.events.receiver", str(self.port), SECRET, str(self.log), str(delay)]
        with running(f"receiver-{self.starts}", argv, self.workdir, listens(self.port), env=REPO_ON_PATH) as service:
            yield service

    def requests(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def accepted(self) -> Counter[str]:
        """webhook-id -> how many times the receiver verified and accepted it."""
        return Counter(r["id"] for r in self.requests() if r["body"] is not None and 200 <= r["status"] < 300)


def sections(redis: str, queue_name: str, hook: Hook, secret_file: Path) -> dict[str, Any]:
    return {
        "celery": {"broker_url": redis, "queue": queue_name, "cleanup_interval_seconds": 3600},
        "events": {
            "delivery_interval_seconds": 0.5,
            "delivery_lease_seconds": 5,
            "delivery_batch_size": 20,
            "retry_base_seconds": 0.5,
            "retry_max_seconds": 2,
        },
        "webhooks": [{"url": hook.url, "secret_file": str(secret_file), "max_attempts": 100, "timeout_seconds": 10}],
    }


@pytest.fixture
def setup(tmp_path: Path, redis_url: str, queue: str) -> tuple[Hook, dict[str, Any]]:  # noqa: F811 (fixtures)
    hook = Hook(tmp_path)
    secret_file = tmp_path / "webhook.secret"
    secret_file.write_text(SECRET + "\n")
    return hook, sections(redis_url, queue, hook, secret_file)


async def make_events(sidecar: SidecarProcess, logins: int) -> None:
    """``logins`` sign-ins of USER through the check listener, then one logged out and "log out others"."""
    async with aiohttp.ClientSession() as http:
        tokens = [mint(USER) for _ in range(logins)]
        ids = []
        for token in tokens:
            async with http.get(sidecar.check_url + "/introspect", headers=bearer(token)) as resp:
                assert resp.status == 200, await resp.text()
                ids.append(resp.headers["X-Auth-Session"])
        async with http.delete(f"{sidecar.url}/api/v1/sessions/{ids[1]}/", headers=bearer(tokens[0])) as resp:
            assert resp.status == 204
        async with http.delete(f"{sidecar.url}/api/v1/sessions/", headers=bearer(tokens[0])) as resp:
            assert resp.status == 204


async def event_ids(sidecar: SidecarProcess) -> set[str]:
    """Every event of USER, from the admin listing (the history the store holds)."""
    url = f"{sidecar.admin_url}/admin/v1/users/{USER}/events?limit=1000"
    async with aiohttp.ClientSession() as http, http.get(url, headers=ADMIN) as resp:
        assert resp.status == 200
        body = await resp.json()
    return {e["id"] for e in body["data"]}


async def until(predicate: Any, what: str, *services: Any) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        for s in services:
            proc = getattr(s, "proc", None)
            if proc is not None and proc.poll() is not None:
                pytest.fail(f"{what}: a worker exited with {proc.returncode}\n{s.tail()}")
        if time.monotonic() > deadline:
            logs = "\n".join(getattr(s, "tail", getattr(s, "log_tail", lambda: ""))() for s in services)
            pytest.fail(f"timed out after {WAIT:g}s waiting for {what}\n{logs}")
        await asyncio.sleep(0.2)


def kill_group(pid: int) -> None:
    """SIGKILL a worker we started, with its pool children (it leads its own process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


async def test_receiver_down_then_up_every_event_arrives_once(
    tmp_path: Path, storage_url: str, setup: tuple[Hook, dict[str, Any]], start_worker: WorkerFactory  # noqa: F811
) -> None:
    """With the receiver down the worker retries; once it is up every event arrives, each exactly once."""
    hook, config = setup
    with run_sidecar(tmp_path, storage_url, **config) as sidecar:
        await make_events(sidecar, 5)
        expected = await event_ids(sidecar)
        assert len(expected) == 5 + 1 + 3 + 1  # created, one logged out, the other three, the summary
        worker = start_worker(sidecar.config, "w1")
        await until(lambda: worker.log().count("failed (attempt") >= len(expected), "failed attempts", worker)
        with hook.running():
            await until(lambda: set(hook.accepted()) >= expected, "every event accepted", worker)
        assert all(n == 1 for n in hook.accepted().values()), hook.accepted()
        assert [r for r in hook.requests() if r["body"] is None] == []  # every signature verified


async def test_worker_killed_mid_batch_loses_nothing(
    tmp_path: Path, storage_url: str, setup: tuple[Hook, dict[str, Any]], start_worker: WorkerFactory  # noqa: F811
) -> None:
    """A worker SIGKILLed while its batch is in flight reports nothing; after the lease another delivers it all."""
    hook, config = setup
    with run_sidecar(tmp_path, storage_url, **config) as sidecar, hook.running(delay=2.0):
        await make_events(sidecar, 6)
        expected = await event_ids(sidecar)
        first = start_worker(sidecar.config, "w1")
        await until(lambda: len(hook.requests()) >= 1, "the first request of the batch", first)
        kill_group(first.proc.pid)
        first.proc.wait(timeout=10)
        seen_before_kill = {r["id"] for r in hook.requests()}
        assert not first.log().count("delivered event")  # killed before any answer came back
        second = start_worker(sidecar.config, "w2")
        await until(lambda: set(hook.accepted()) >= expected, "every event accepted", second)
        twice = {i for i, n in hook.accepted().items() if n > 1}
        assert twice <= seen_before_kill  # a duplicate only for what the killed worker had sent


async def test_sidecar_restarted_with_undelivered_events_delivers_them(
    tmp_path: Path, storage_url: str, setup: tuple[Hook, dict[str, Any]], start_worker: WorkerFactory  # noqa: F811
) -> None:
    """Events committed by a sidecar that then stopped are in the outbox after its restart, and are delivered."""
    hook, config = setup
    with run_sidecar(tmp_path, storage_url, **config) as sidecar:
        await make_events(sidecar, 4)
        expected = await event_ids(sidecar)
    with run_sidecar(tmp_path, storage_url, **config) as sidecar, hook.running():
        pending = f'sidecar_webhook_outbox{{state="pending"}} {float(len(expected))}'
        deadline = time.monotonic() + WAIT
        while True:  # the gauge is counted right after start-up
            async with aiohttp.ClientSession() as http, http.get(f"{sidecar.admin_url}/metrics", headers=ADMIN) as r:
                if pending in await r.text():
                    break
            assert time.monotonic() < deadline, "no pending gauge"
            await asyncio.sleep(0.2)
        worker = start_worker(sidecar.config, "w1")
        await until(lambda: set(hook.accepted()) >= expected, "every event accepted", worker)
        assert all(n == 1 for n in hook.accepted().values())


async def test_two_workers_never_deliver_an_event_twice(
    tmp_path: Path, storage_url: str, setup: tuple[Hook, dict[str, Any]], start_worker: WorkerFactory  # noqa: F811
) -> None:
    """Two workers claiming from one outbox, with no failure, deliver each event exactly once between them."""
    hook, config = setup
    config["events"]["delivery_batch_size"] = 3
    with run_sidecar(tmp_path, storage_url, **config) as sidecar, hook.running(delay=0.05):
        await make_events(sidecar, 25)  # a backlog of 50 events, then both workers at once
        expected = await event_ids(sidecar)
        a = start_worker(sidecar.config, "w1")
        b = start_worker(sidecar.config, "w2")
        await until(lambda: set(hook.accepted()) >= expected, "every event accepted", a, b)
        await asyncio.sleep(2)  # anything sent twice would have arrived by now
        assert all(n == 1 for n in hook.accepted().values()), hook.accepted()
        assert len(hook.requests()) == len(expected)
