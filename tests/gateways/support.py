"""The gateway tests' processes: the sidecar, an echo upstream, nginx, Envoy and Caddy.

Every process gets free loopback ports, logs to a file in its own temporary folder, is
waited on until it is ready and is always stopped at teardown (``tests.support``). The
gateways run the files shipped in ``contrib/`` with only the three ports rewritten
(8000 listen, 8001 app, 8080 sidecar).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import CONTRIB
from tests.support.binaries import find_binary, nginx_with_auth_request
from tests.support.gateways import (
    CADDYFILE,
    ENVOY_YAML,
    NGINX_SERVER_BLOCK,
    gateway_ports,
    nginx_argv,
    nginx_conf_dir,
    rewrite_ports,
    write_rewritten,
)
from tests.support.ports import free_ports
from tests.support.processes import Service, listens, log_says, running
from tests.support.sidecar import SidecarProcess, run_sidecar
from tests.support.tokens import SECRET
from tests.support.tokens import mint as mint_token

ECHO_UPSTREAM = CONTRIB / "echo_upstream.py"

# The one origin whose pages may log sessions out with the cookie credential.
APP_ORIGIN = "https://app.example.com"

# Route policies the contract exercises: /public/* needs nothing, GET /optional/* a token
# only when one is sent; everything else (the /probe/... paths) the normal check.
CONTRACT_ROUTES = (
    {"path": "/public/*", "policy": "public"},
    {"path": "/optional/*", "methods": ["GET", "HEAD"], "policy": "optional"},
)


# ---------------------------------------------------------------------------- the pieces


@contextmanager
def run_gateway_sidecar(
    workdir: Path, *, jwt: Mapping[str, Any] | None = None, routes: Sequence[Mapping[str, Any]] = ()
) -> Iterator[SidecarProcess]:
    """``sidecar serve`` as the gateway tests configure it.

    ``jwt`` adds keys to the ``[jwt]`` section (e.g. ``{"user_claim": "user_id"}``);
    ``routes`` come after the contract's two ``[[routes]]`` entries (they match after those).
    """
    # The gateways reach the sidecar from 127.0.0.1: that hop, and only it, is trusted.
    # Clients of the tests connect from 127.0.0.2 when they need to be told apart from it.
    with run_sidecar(
        workdir,
        server={"allowed_origins": [APP_ORIGIN]},
        jwt={
            "token_type_claim": "type",
            "access_token_type": "access",
            # Browsers' tokens come in this cookie when a request has no Authorization header.
            "cookie_name": "access_token",
            **(jwt or {}),
        },
        routes=[*CONTRACT_ROUTES, *routes],
    ) as sidecar:
        yield sidecar


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


@contextmanager
def run_nginx(
    workdir: Path, app_port: int, sidecar_port: int, check_port: int, server_block: Path = NGINX_SERVER_BLOCK
) -> Iterator[Gateway]:
    """nginx with contrib/nginx/nginx.conf around ``server_block`` (by default the shipped
    contrib/nginx/sidecar.conf), ports rewritten, in a private prefix."""
    nginx = nginx_with_auth_request()
    [port] = free_ports(1)
    conf = nginx_conf_dir(workdir / "conf", gateway_ports(port, app_port, sidecar_port, check_port), server_block.read_text())
    argv = nginx_argv(nginx, workdir / "prefix", conf)
    with running("nginx", argv, workdir, listens(port)) as service:
        yield Gateway("nginx", port, service)


@contextmanager
def run_envoy(
    workdir: Path, app_port: int, sidecar_port: int, check_port: int, config_text: str | None = None
) -> Iterator[Gateway]:
    """Envoy with contrib/envoy/envoy.yaml (or ``config_text``, a variant of it), ports rewritten."""
    envoy = find_binary("envoy")
    [port] = free_ports(1)
    config = workdir / "envoy.yaml"
    text = ENVOY_YAML.read_text() if config_text is None else config_text
    config.write_text(rewrite_ports(text, gateway_ports(port, app_port, sidecar_port, check_port)))
    # Several Envoys run at once here: without hot restart they share no base id. Two
    # worker threads are plenty for the tests on any machine.
    argv = [envoy, "-c", str(config), "--disable-hot-restart", "--concurrency", "2"]
    with running("envoy", argv, workdir, listens(port)) as service:
        yield Gateway("envoy", port, service)


@contextmanager
def run_caddy(workdir: Path, app_port: int, sidecar_port: int, check_port: int) -> Iterator[Gateway]:
    """Caddy with contrib/caddy/Caddyfile, ports rewritten; its admin endpoint is off (the
    file says ``admin off``), and its home, config and data folders are in ``workdir``."""
    caddy = find_binary("caddy")
    [port] = free_ports(1)
    config = write_rewritten(CADDYFILE, workdir / "Caddyfile", gateway_ports(port, app_port, sidecar_port, check_port))
    home = workdir / "home"
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"), "XDG_DATA_HOME": str(home / "data")}
    argv = [caddy, "run", "--config", str(config), "--adapter", "caddyfile"]
    with running("caddy", argv, workdir, listens(port), env=env) as service:
        yield Gateway("caddy", port, service)


# ---------------------------------------------------------------------------- tokens


def mint(sub: str = "alice", *, sid: str | None = None, ttl: int = 3600, typ: str = "access", key: str = SECRET) -> str:
    """An HS256 token for the test sidecar; a new session id unless ``sid`` is given.

    ``typ`` is the token type claim (the sidecar accepts only "access"); a negative ``ttl``
    gives a token that expired that many seconds ago.
    """
    now = int(time.time())
    # An expired token was issued before it expired.
    return mint_token(sub, key=key, ttl=ttl, now=now, sid=sid or True, type=typ, iat=min(now, now + ttl - 60))


def probe_path() -> str:
    """A path no other request uses, so the upstream's record tells this request apart."""
    return f"/probe/{uuid.uuid4().hex}"
