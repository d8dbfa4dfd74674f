"""The Celery worker with beat: real processes, a real Redis broker, a real SQLite file.

Redis: the one on 127.0.0.1:6379 (database 13, a queue name per test), else a throwaway
``redis-server`` this module starts; if neither exists the tests fail and say what to
install. Workers run as subprocesses (Celery warns in-process, and warnings are errors
here) and are always stopped at teardown; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from sidecar.config import load
from sidecar.errors import ConfigError
from sidecar.tasks import CLEANUP_TASK, celery_config, settings_from_env
from tests.support.configs import settings_for, sidecar_config, sqlite_url, write_toml
from tests.support.ports import free_port
from tests.support.processes import redis_server
from tests.support.tokens import SECRET, mint

REDIS_DB = 13
CELERY = Path(sys.executable).with_name("celery")
WAIT = 60.0  # upper bound for any single wait on a worker


# --------------------------------------------------------------------------- helpers


def redis_answers(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis database for the broker: the local one, or a throwaway redis-server."""
    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    if redis_answers(url):
        yield url
        return
    port = free_port()
    with redis_server(tmp_path_factory.mktemp("redis"), port):
        yield f"redis://127.0.0.1:{port}/{REDIS_DB}"


def worker_config(tmp_path: Path, celery: Mapping[str, Any]) -> Path:
    """The TOML the worker reads: the same database and JWT settings as ``settings_for``."""
    config = sidecar_config(None, sqlite_url(tmp_path / "sidecar.db"), celery=celery)
    path = write_toml(tmp_path / "sidecar.toml", config)
    assert load(path, environ={}).storage == settings_for(tmp_path).storage
    return path


@dataclass
class Worker:
    """A ``celery worker --beat`` subprocess with its combined output in a file."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def tail(self) -> str:
        return "\n".join(self.log().splitlines()[-40:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # warm shutdown: finish the task, stop beat
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=20)
        # The worker leads its own process group: this reaches pool children it left behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


WorkerFactory = Callable[..., Worker]


@pytest.fixture
def queue(redis_url: str) -> Iterator[str]:
    """A queue name of this test's own; its broker keys are deleted afterwards."""
    name = f"sidecar-test-{uuid.uuid4().hex[:12]}"
    yield name
    with contextlib.suppress(redis.RedisError), redis.Redis.from_url(redis_url) as client:
        for key in client.scan_iter(match=f"*{name}*"):
            client.delete(key)


@pytest.fixture
def start_worker(tmp_path: Path, redis_url: str, queue: str) -> Iterator[WorkerFactory]:
    """Factory: ``start_worker(config_path, name)`` runs a worker with beat; all stop at teardown.

    It depends on ``queue`` so that the workers are stopped before the queue's keys go.
    """
    if not CELERY.is_file():
        pytest.fail(f"celery executable not found next to {sys.executable}: pip install celery")
    workers: list[Worker] = []

    def start(config: Path, name: str = "w1") -> Worker:
        log_path = tmp_path / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    str(CELERY), "-A", "sidecar.tasks", "worker", "--beat", "--loglevel=INFO",
                    "--concurrency=1", "-s", str(tmp_path / f"{name}-schedule"),
                    "-n", f"{name}-{uuid.uuid4().hex[:8]}@%h",
                    # No broadcast chatter with other workers that may share this Redis.
                    "--without-mingle", "--without-gossip",
                ],
                env={**os.environ, "SIDECAR_CONFIG": str(config)},
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(proc, log_path)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


async def eventually(predicate: Callable[[], bool], what: str, worker: Worker | None = None) -> None:
    """Poll until ``predicate()`` holds; fail after WAIT seconds, showing the worker's log."""
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            log = f"\nworker log:\n{worker.tail()}" if worker is not None else ""
            pytest.fail(f"timed out after {WAIT:g}s waiting for {what}{log}")
        if worker is not None and worker.proc.poll() is not None:
            pytest.fail(f"worker exited with {worker.proc.returncode} while waiting for {what}\n{worker.tail()}")
        await asyncio.sleep(0.2)


def session_rows(db_path: Path) -> dict[str, float | None]:
    """session id -> revoked_at, as committed in the database."""
    with sqlite3.connect(db_path, timeout=10) as db:
        return {r[0]: r[1] for r in db.execute("SELECT id, revoked_at FROM sessions")}


FAST_CLEANUP = {"cleanup_interval_seconds": 1, "cleanup_grace_seconds": 0}
DELETED_SOME = re.compile(r"cleanup: deleted [1-9]\d* expired session\(s\)")


# --------------------------------------------------------------------------- configuration


def test_worker_config_needs_sidecar_config_env() -> None:
    """Without SIDECAR_CONFIG the worker's settings fail with one line naming the variable."""
    with pytest.raises(ConfigError, match=r"^SIDECAR_CONFIG: not set"):
        settings_from_env({})


def test_worker_config_needs_a_broker(tmp_path: Path) -> None:
    """A config without celery.broker_url is refused for the worker with one line naming the key."""
    path = write_toml(tmp_path / "c.toml", {"jwt": {"algorithms": ["HS256"], "secret": SECRET}})
    with pytest.raises(ConfigError, match=r"^celery\.broker_url: not set"):
        settings_from_env({"SIDECAR_CONFIG": str(path)})


@pytest.mark.parametrize(
    ("celery", "message"),
    [
        ({"broker_url": "amqp://guest@localhost//"}, "celery.broker_url: must start with redis://"),
        ({"broker_url": 6379}, "celery.broker_url: must be a string"),
        ({"queue": "two words"}, "celery.queue: use 1-200 of"),
        ({"queue": ""}, "celery.queue: use 1-200 of"),
    ],
)
def test_bad_celery_keys_are_one_line_naming_the_key(tmp_path: Path, celery: dict[str, Any], message: str) -> None:
    """Wrong broker URLs and queue names stop loading with one line that names the key."""
    path = write_toml(tmp_path / "c.toml", {
        "jwt": {"algorithms": ["HS256"], "secret": SECRET}, "celery": celery,
    })
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_celery_settings_come_from_the_sidecar_config(tmp_path: Path) -> None:
    """Broker, queue and the beat interval come from [celery]; a down broker is retried for ever."""
    path = worker_config(tmp_path, {
        "broker_url": "redis://127.0.0.1:6379/13", "queue": "cleanup-q", "cleanup_interval_seconds": 42,
    })
    conf = celery_config(settings_from_env({"SIDECAR_CONFIG": str(path)}))
    assert conf["broker_url"] == "redis://127.0.0.1:6379/13"
    assert conf["task_default_queue"] == "cleanup-q"
    assert conf["broker_connection_retry_on_startup"] is True
    assert conf["broker_connection_max_retries"] is None
    [entry] = conf["beat_schedule"].values()
    assert entry["task"] == CLEANUP_TASK
    assert entry["schedule"] == 42.0
    assert entry["options"]["expires"] == 42.0


def test_default_queue_is_not_celerys_shared_default(tmp_path: Path) -> None:
    """Out of the box the task uses queue "sidecar", not "celery", which other apps' workers consume."""
    assert settings_for(tmp_path).celery.queue == "sidecar"


def test_importing_the_tasks_module_reads_no_config(tmp_path: Path) -> None:
    """Importing sidecar.tasks touches neither the environment nor a file (the config is read lazily)."""
    env = {**os.environ, "SIDECAR_CONFIG": str(tmp_path / "does-not-exist.toml")}
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", "import sidecar.tasks"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("config_text", "env_value", "message"),
    [
        (None, None, "sidecar: error: SIDECAR_CONFIG: not set"),
        (None, "missing.toml", "sidecar: error: missing.toml: no such config file"),
        (
            f'[jwt]\nalgorithms = ["HS256"]\nsecret = "{SECRET}"\n[celery]\nbroker_url = 1\n',
            "bad.toml",
            "sidecar: error: celery.broker_url: must be a string",
        ),
    ],
)
def test_worker_with_bad_config_exits_2_with_one_line(
    tmp_path: Path, config_text: str | None, env_value: str | None, message: str
) -> None:
    """A worker started without a usable config prints one `sidecar: error:` line and exits 2."""
    env = {k: v for k, v in os.environ.items() if k != "SIDECAR_CONFIG"}
    if env_value is not None:
        env["SIDECAR_CONFIG"] = env_value
    if config_text is not None and env_value is not None:
        (tmp_path / env_value).write_text(config_text, encoding="utf-8")
    result = subprocess.run(
        [str(CELERY), "-A", "sidecar.tasks", "worker", "--beat", "-s", str(tmp_path / "schedule")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# --------------------------------------------------------------------------- a real worker


async def test_worker_with_beat_purges_expired_sessions_only(
    start_sidecar: Any, start_worker: WorkerFactory, tmp_path: Path, redis_url: str, queue: str
) -> None:
    """Beat schedules the cleanup, the worker deletes expired sessions and keeps live and revoked-unexpired ones."""
    celery = {**FAST_CLEANUP, "broker_url": redis_url, "queue": queue}
    sidecar = await start_sidecar(settings_for(tmp_path, celery=celery, jwt={"leeway_seconds": 0}))
    db_path = tmp_path / "sidecar.db"

    expiring = [await sidecar.session_id(mint(f"short-{i}", ttl=2)) for i in range(3)]
    live = await sidecar.session_id(mint("bob", ttl=3600))
    carol = mint("carol", ttl=3600)
    revoked = await sidecar.session_id(carol)
    await sidecar.revoke(carol, revoked)
    assert set(session_rows(db_path)) == {*expiring, live, revoked}

    # Two workers, each with its own beat: the worst deployment mistake must do no harm.
    config = worker_config(tmp_path, celery)
    workers = [start_worker(config, "w1"), start_worker(config, "w2")]
    await eventually(
        lambda: not set(expiring) & set(session_rows(db_path)),
        "the expired sessions to be deleted by the scheduled task",
        workers[0],
    )

    rows = session_rows(db_path)
    assert set(rows) == {live, revoked}
    assert rows[live] is None and rows[revoked] is not None
    logs = [w.log() for w in workers]
    assert any(DELETED_SOME.search(log) for log in logs), [w.tail() for w in workers]
    await eventually(lambda: all("succeeded" in w.log() for w in workers), "both workers to run the task")
    for w, log in zip(workers, logs, strict=True):
        assert "Traceback" not in log, w.tail()
        assert w.proc.poll() is None, w.tail()


async def test_revoked_unexpired_token_is_still_refused_after_cleanup(
    start_sidecar: Any, start_worker: WorkerFactory, tmp_path: Path, redis_url: str, queue: str
) -> None:
    """After the worker's cleanup a revoked, unexpired token is refused, by a fresh sidecar too (C30)."""
    celery = {**FAST_CLEANUP, "broker_url": redis_url, "queue": queue}
    settings = settings_for(tmp_path, celery=celery, jwt={"leeway_seconds": 0})
    assert settings.sessions.registration == "auto"
    sidecar = await start_sidecar(settings)
    db_path = tmp_path / "sidecar.db"

    victim = mint("dave", ttl=3600)
    victim_session = await sidecar.session_id(victim)
    await sidecar.revoke(victim, victim_session)
    marker = await sidecar.session_id(mint("erin", ttl=1))  # gone once cleanup ran

    worker = start_worker(worker_config(tmp_path, celery))
    await eventually(
        lambda: marker not in session_rows(db_path), "a cleanup run after the revocation", worker
    )

    assert session_rows(db_path)[victim_session] is not None  # the tombstone survived
    assert await sidecar.check(victim) == 401
    fresh = await start_sidecar(settings)  # empty memory: only the stored tombstone can refuse
    assert await fresh.check(victim) == 401
    assert await fresh.check(mint("dave", ttl=3600)) == 200  # a new login of the user works


async def test_unreachable_broker_is_retried_and_the_sidecar_is_unaffected(
    start_sidecar: Any, start_worker: WorkerFactory, tmp_path: Path, queue: str
) -> None:
    """With the broker down the worker logs connection errors and keeps retrying, and the sidecar serves as usual."""
    dead_broker = f"redis://127.0.0.1:{free_port()}/{REDIS_DB}"  # nothing listens there
    celery = {**FAST_CLEANUP, "broker_url": dead_broker, "queue": queue}
    worker = start_worker(worker_config(tmp_path, celery))

    await eventually(lambda: "Cannot connect to redis://" in worker.log(), "a logged connection error", worker)
    await eventually(lambda: "(2/None)" in worker.log(), "a second connection attempt", worker)
    assert worker.proc.poll() is None, worker.tail()

    sidecar = await start_sidecar(settings_for(tmp_path, celery=celery))
    token = mint("frank")
    session_id = await sidecar.session_id(token)
    assert await sidecar.check(token) == 200
    await sidecar.revoke(token, session_id)
    assert await sidecar.check(token) == 401
    assert worker.proc.poll() is None, worker.tail()
