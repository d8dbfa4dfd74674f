"""The processes under test: the bare responder, ``sidecar serve``, nginx, Envoy, an app,
and the FastAPI app of the middleware row under uvicorn.

The gateways run the files shipped in ``contrib/`` with only the ports rewritten (8000
listen, 8001 app, 8080 sidecar), as ``tests/gateways`` does. The app behind them is a
second nginx answering ``return 200``: the cheapest app there is, so that what the
gateway numbers compare is the check, not the app.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp

from bench.load import USER_AGENT
from bench.procs import BenchError, Processes
from bench.tokens import Identity, SigningKey
from tests.support.binaries import find_binary, nginx_with_auth_request
from tests.support.configs import Listeners, sqlite_url, write_sidecar_config
from tests.support.gateways import (
    ENVOY_YAML,
    NGINX_SERVER_BLOCK,
    gateway_ports,
    nginx_argv,
    nginx_check_on_unix_socket,
    nginx_conf_dir,
    write_rewritten,
)
from tests.support.ports import free_ports
from tests.support.processes import REPO_ON_PATH, Service, listens, log_says, sidecar_argv

UVICORN_HINT = ".venv/bin/pip install fastapi uvicorn (the project's test extras have both)"


@dataclass(frozen=True)
class Server:
    """A started process that answers HTTP on ``port``."""

    name: str
    port: int
    proc: Service

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


# ---------------------------------------------------------------------------- bare and sidecar


def start_bare(
    procs: Processes, name: str = "bare", *, identity_headers: bool = False, pyjwt: SigningKey | None = None
) -> Server:
    """bench.bare; with ``pyjwt``, verifying every token with PyJWT against that key."""
    [port] = free_ports(1)
    argv = [sys.executable, "-m", "bench.bare", "--port", str(port)]
    if identity_headers:
        argv.append("--identity-headers")
    if pyjwt is not None:
        key_file = procs.fresh(f"{name}-key", ".pem")
        key_file.write_bytes(pyjwt.public_pem if pyjwt.public_pem is not None else pyjwt.signing_pem)
        argv += ["--pyjwt", pyjwt.algorithm, "--key", str(key_file)]
    # Processes run in the work directory: make bench.bare importable from there.
    proc = procs.start(name, argv, log_says("bare: ready", port), env=REPO_ON_PATH)
    return Server(name, port, proc)


def start_raw(procs: Processes, name: str = "raw", *, unix: Path | None = None) -> Server:
    """bench.raw: a fixed 200 from httptools on uvloop, the check listener's ceiling (with
    ``unix``, on that Unix socket: ``port`` is then unused)."""
    [port] = free_ports(1)
    where = ["--unix", str(unix)] if unix is not None else ["--port", str(port)]
    argv = [sys.executable, "-m", "bench.raw", *where]
    ready = log_says("raw: ready", port) if unix is None else (lambda service: service.says("raw: ready"))
    return Server(name, port, procs.start(name, argv, ready, env=REPO_ON_PATH))


@dataclass(frozen=True)
class Sidecar(Server):
    """``port`` is the check listener (where gateways point, and what every scenario
    measures); ``aiohttp`` is the same process addressed at its public listener's
    ``/introspect`` (the same check core behind aiohttp)."""

    config: Path
    database: Path
    public_port: int
    gc_stats: Path | None = None  # written on SIGUSR1 when started through bench.gcwrap

    @property
    def aiohttp(self) -> Sidecar:
        return replace(self, name=f"{self.name}-aiohttp", port=self.public_port)

    def gc_snapshot(self, timeout: float = 5.0) -> dict[str, Any]:
        """Ask bench.gcwrap for its totals (SIGUSR1) and read them."""
        if self.gc_stats is None:
            raise BenchError(f"{self.name} was not started with --gc")
        before = self.gc_stats.stat().st_mtime_ns if self.gc_stats.exists() else 0
        os.kill(self.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.gc_stats.exists() and self.gc_stats.stat().st_mtime_ns != before:
                data: dict[str, Any] = json.loads(self.gc_stats.read_text())
                return data
            time.sleep(0.02)
        raise BenchError(f"{self.name}: no GC statistics after SIGUSR1:\n{self.proc.log_tail()}")


def gc_delta(a: dict[str, Any], b: dict[str, Any], requests: int) -> dict[str, Any]:
    """Collections and pause time between two snapshots, per generation and per request."""
    seconds = [y - x for x, y in zip(a["seconds"], b["seconds"], strict=True)]
    return {
        "collections": [y - x for x, y in zip(a["collections"], b["collections"], strict=True)],
        "ms": [round(s * 1000, 1) for s in seconds],
        "us_per_request": round(sum(seconds) * 1e6 / requests, 2) if requests else None,
        "longest_ms_so_far": round(b["longest_seconds"] * 1000, 2),
        "tracked_objects": b["tracked_objects"],
    }


def write_config(
    path: Path,
    listeners: Listeners,
    database: Path,
    key: SigningKey,
    key_file: Path | None,
    *,
    sessions: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """The harness's sidecar config, tuned for measuring: no access log, no admin key,
    the sidecar's own leeway and flush interval, room for every stored session."""
    if key.secret is None and key_file is None:
        raise ValueError(f"{key.algorithm} needs a public key file")
    return write_sidecar_config(
        path, listeners, sqlite_url(database),
        server={"access_log": False},
        jwt={
            "algorithms": [key.algorithm],
            "secret": key.secret,
            "public_key_file": None if key.secret is not None else str(key_file),
            "leeway_seconds": None,
        },
        # Room for every stored session of the largest run (1,000,000) to be held in memory.
        sessions={
            "registration": "auto",
            "state_cache_size": 2_000_000,
            "last_seen_flush_seconds": None,
            **(sessions or {}),
        },
        admin={"api_keys": None},  # the admin listener stays off (nothing here registers through it)
        **(extra or {}),
        logging={"level": "INFO"},
    )


def start_sidecar(
    procs: Processes,
    name: str,
    key: SigningKey,
    database: Path | None = None,
    *,
    gc: bool = False,
    sessions: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Sidecar:
    """``sidecar serve`` with ``key``'s algorithm, on a free port, its own SQLite file;
    with ``gc``, through bench.gcwrap (garbage collections counted)."""
    listeners = Listeners.free()
    key_file = None
    if key.public_pem is not None:
        key_file = procs.fresh(f"{name}-{key.algorithm.lower()}", ".pem")
        key_file.write_bytes(key.public_pem)
    database = database or procs.fresh(name, ".db")
    config = write_config(
        procs.fresh(name, ".toml"), listeners, database, key, key_file, sessions=sessions, extra=extra
    )
    argv = sidecar_argv(config)
    gc_stats = None
    if gc:
        gc_stats = procs.fresh(f"{name}-gc", ".json")
        argv = [sys.executable, "-m", "bench.gcwrap", str(gc_stats), "serve", "--config", str(config)]
    port = listeners.public
    proc = procs.start(name, argv, log_says("sidecar: ready", port), env=REPO_ON_PATH)
    return Sidecar(name, listeners.check, proc, config, database, port, gc_stats)


async def _introspect_all(url: str, tokens: Sequence[str], concurrency: int) -> list[int]:
    semaphore = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(token: str) -> int:
            async with semaphore:
                headers = {"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT}
                async with http.get(url, headers=headers) as response:
                    await response.read()
                    return response.status

        return await asyncio.gather(*(one(t) for t in tokens))


def introspect_each(server: Server, tokens: Sequence[str], concurrency: int = 8) -> None:
    """Send every token once (registering or loading its session); all must be allowed."""
    statuses = asyncio.run(_introspect_all(server.url("/introspect"), tokens, concurrency))
    refused = [s for s in statuses if s != 200]
    if refused:
        raise BenchError(
            f"{server.name}: {len(refused)} of {len(tokens)} tokens refused "
            f"(statuses {sorted(set(refused))}):\n{server.proc.log_tail()}"
        )


# ---------------------------------------------------------------------------- a FastAPI app


def uvicorn_implementations() -> dict[str, str]:
    """What uvicorn's ``auto`` loop and HTTP parser resolve to in this Python (its rule:
    uvloop and httptools when importable, else asyncio and h11)."""
    import importlib.util

    return {
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
    }


def start_fastapi(
    procs: Processes, name: str, auth: str, *, sidecar: Server | None = None, key: SigningKey | None = None
) -> Server:
    """bench.fastapi_app under the ``uvicorn`` command, one worker, no access log; ``auth``
    none, sidecar (the middleware asking ``sidecar``) or pyjwt (``key``'s HS256 secret)."""
    uvicorn = find_binary("uvicorn", UVICORN_HINT)
    [port] = free_ports(1)
    env = {**REPO_ON_PATH, "BENCH_APP_AUTH": auth}
    if sidecar is not None:
        env["BENCH_SIDECAR_URL"] = sidecar.url("")
    if key is not None:
        if key.secret is None:
            raise ValueError("the in-app PyJWT variant verifies HS256 only")
        secret_file = procs.fresh(f"{name}-secret")
        secret_file.write_bytes(key.signing_pem)
        env["BENCH_JWT_SECRET_FILE"] = str(secret_file)
    argv = [
        uvicorn, "bench.fastapi_app:create_app", "--factory", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--no-access-log",
    ]
    proc = procs.start(name, argv, log_says("Application startup complete", port), env=env)
    return Server(name, port, proc)


# ---------------------------------------------------------------------------- stored sessions


@dataclass(frozen=True)
class SessionSpace:
    """``count`` stored sessions, their ids derived from the index (nothing held in memory).

    Four sessions per user. Ids are UUID-shaped and distinct per space.
    """

    count: int
    base: int

    @classmethod
    def new(cls, count: int) -> SessionSpace:
        return cls(count, uuid.uuid4().int >> 32 << 32)  # room for 2**32 consecutive ids

    def identity(self, index: int) -> Identity:
        return Identity(f"user-{self.base % 10**6}-{index // 4}", str(uuid.UUID(int=self.base + index)))

    def sample(self, k: int, seed: int = 1) -> list[Identity]:
        import random

        picks = random.Random(seed).sample(range(self.count), k)
        return [self.identity(i) for i in picks]

    def range(self, start: int, stop: int) -> list[Identity]:
        return [self.identity(i) for i in range(start, stop)]


_EXPECTED_COLUMNS = [
    "id", "session_key", "user_id", "created_at", "last_seen", "expires_at", "revoked_at",
    "ip_address", "device", "location", "revision", "revoked_reason", "revoked_by",
]


async def _create_schema(database: Path) -> None:
    from sidecar.sessions.sqlite import SqliteStore

    store = SqliteStore(database)
    await store.open()  # runs the migrations up to SCHEMA_VERSION
    await store.close()


def populate(database: Path, space: SessionSpace) -> float:
    """Create the schema with the sidecar's own store, then insert ``space``'s sessions in
    one transaction. Returns the seconds it took."""
    from sidecar.sessions.sqlite import SCHEMA_VERSION

    started = time.monotonic()
    asyncio.run(_create_schema(database))
    conn = sqlite3.connect(database)
    try:
        [(version,)] = conn.execute("SELECT MAX(version) FROM schema_version").fetchall()
        columns = [row[1] for row in conn.execute("PRAGMA table_info(sessions)")]
        if version != SCHEMA_VERSION or columns != _EXPECTED_COLUMNS:
            raise BenchError(
                f"sessions schema changed (version {version}, columns {columns}): update "
                f"bench/servers.py populate() to match sidecar/sessions/sqlite.py"
            )
        conn.execute("PRAGMA synchronous = OFF")  # a throw-away file: no need to fsync it
        now = time.time()

        def rows() -> Iterator[tuple[object, ...]]:
            id_base = uuid.uuid4().int >> 32 << 32
            for i in range(space.count):
                who = space.identity(i)
                yield (
                    str(uuid.UUID(int=id_base + i)), f"sid:{who.sid}", who.user,
                    now - 3600, now - 60, now + 86400, None,
                    "127.0.0.1", "Chrome on Windows", "Private network", 0, None, None,
                )

        with conn:
            conn.executemany(
                f"INSERT INTO sessions ({', '.join(_EXPECTED_COLUMNS)}) VALUES ({', '.join('?' * len(_EXPECTED_COLUMNS))})",  # noqa: S608
                rows(),
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.monotonic() - started


# ---------------------------------------------------------------------------- gateways


APP_NGINX_CONF = """\
# Written by bench/servers.py: the app behind the gateways, as cheap as an app can be.
worker_processes 1;
pid app.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path client_body_temp;
    proxy_temp_path proxy_temp;
    fastcgi_temp_path fastcgi_temp;
    uwsgi_temp_path uwsgi_temp;
    scgi_temp_path scgi_temp;
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


def _nginx_argv(nginx: str, prefix: Path, conf: Path) -> list[str]:
    return nginx_argv(nginx, prefix, conf, "-e", "stderr")


def start_app(procs: Processes) -> Server:
    nginx = nginx_with_auth_request()
    [port] = free_ports(1)
    conf = procs.fresh("app-nginx", ".conf")
    conf.write_text(APP_NGINX_CONF.format(port=port))
    proc = procs.start("app", _nginx_argv(nginx, procs.fresh("app-prefix"), conf), listens(port))
    return Server("app", port, proc)


def start_nginx(
    procs: Processes,
    name: str,
    app_port: int,
    check_port: int,
    *,
    without_check: bool = False,
    check_socket: Path | None = None,
) -> Server:
    """contrib/nginx/{nginx,sidecar}.conf with the ports rewritten, in a private prefix;
    ``without_check``: the same file with its ``auth_request`` line taken out (nginx alone:
    what the check adds is measured against it); ``check_socket``: its check upstream on
    that Unix socket (the shipped commented line)."""
    nginx = nginx_with_auth_request()
    [port] = free_ports(1)
    block = NGINX_SERVER_BLOCK.read_text()
    if check_socket is not None:
        block = nginx_check_on_unix_socket(block, check_socket)
    if without_check:
        line = "        auth_request /_sidecar/check;\n"
        if line not in block:
            raise BenchError("contrib/nginx/sidecar.conf no longer has its auth_request line")
        block = block.replace(line, "", 1)
    conf = nginx_conf_dir(procs.fresh(f"{name}-conf"), gateway_ports(port, app_port, check_port, check_port), block)
    argv = _nginx_argv(nginx, procs.fresh(f"{name}-prefix"), conf)
    return Server(name, port, procs.start(name, argv, listens(port)))


def start_envoy(procs: Processes, name: str, app_port: int, check_port: int) -> Server:
    """contrib/envoy/envoy.yaml with the ports rewritten; one worker thread on its one core."""
    envoy = find_binary("envoy")
    [port] = free_ports(1)
    config = write_rewritten(ENVOY_YAML, procs.fresh(name, ".yaml"), gateway_ports(port, app_port, check_port, check_port))
    argv = [envoy, "-c", str(config), "--disable-hot-restart", "--concurrency", "1", "-l", "warning"]
    return Server(name, port, procs.start(name, argv, listens(port)))


def expect_allowed(server: Server, token: str, path: str = "/bench") -> None:
    """One request through ``server`` must come back 200 (the chain works end to end)."""
    _expect(server, {"Authorization": f"Bearer {token}"}, path, 200)


def expect_refused(server: Server, path: str = "/bench") -> None:
    """A request without a token must come back 401 (the check is really on)."""
    _expect(server, {}, path, 401)


def _expect(server: Server, headers: dict[str, str], path: str, expected: int) -> None:
    request = urllib.request.Request(  # noqa: S310 (a loopback http:// URL built here)
        server.url(path), headers={**headers, "User-Agent": USER_AGENT}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (same)
            status = response.status
    except urllib.error.HTTPError as e:
        status = e.code
    except OSError as e:
        raise BenchError(f"{server.name}: request failed: {e}\n{server.proc.log_tail()}") from e
    if status != expected:
        raise BenchError(f"{server.name}: {path} answered {status}, not {expected}:\n{server.proc.log_tail()}")
