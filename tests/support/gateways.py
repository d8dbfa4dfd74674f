"""The gateway files shipped in ``contrib/``, with only their ports rewritten.

The shipped configurations use 8000 (listen), 8001 (the app) and 8080 (the sidecar);
the tests and the benchmarks swap each for a free one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from tests.support import CONTRIB, HarnessError

LISTEN_PORT, APP_PORT, SIDECAR_PORT, CHECK_PORT = 8000, 8001, 8080, 8082
NGINX_CONF = CONTRIB / "nginx" / "nginx.conf"
NGINX_SERVER_BLOCK = CONTRIB / "nginx" / "sidecar.conf"
ENVOY_YAML = CONTRIB / "envoy" / "envoy.yaml"
CADDYFILE = CONTRIB / "caddy" / "Caddyfile"


def gateway_ports(listen: int, app: int, sidecar: int, check: int) -> dict[int, int]:
    """The shipped port -> the port to use instead (``sidecar``: the public listener, which
    serves the sessions API; ``check``: the check listener)."""
    return {LISTEN_PORT: listen, APP_PORT: app, SIDECAR_PORT: sidecar, CHECK_PORT: check}


def rewrite_ports(text: str, ports: Mapping[int, int]) -> str:
    """Replace each shipped port number by the one to use; fail if one is not in the text."""
    for shipped in ports:
        if not re.search(rf"(?<![0-9]){shipped}(?![0-9])", text):
            raise HarnessError(f"the shipped configuration no longer mentions port {shipped}")
    pattern = re.compile(r"(?<![0-9])(" + "|".join(str(p) for p in ports) + r")(?![0-9])")
    return pattern.sub(lambda m: str(ports[int(m.group(1))]), text)


NGINX_CHECK_TCP = "    server 127.0.0.1:8082;\n"
NGINX_CHECK_UNIX = "    # server unix:/run/sidecar/check.sock;\n"


def nginx_check_on_unix_socket(text: str, path: Path) -> str:
    """contrib/nginx/sidecar.conf with its sidecar_check upstream on the Unix socket at
    ``path``: the shipped commented ``server unix:`` line in use, the TCP one commented out."""
    for line in (NGINX_CHECK_TCP, NGINX_CHECK_UNIX):
        if text.count(line) != 1:
            raise HarnessError(f"the shipped nginx configuration no longer has the line {line.strip()!r} once")
    return text.replace(NGINX_CHECK_TCP, "    # server 127.0.0.1:8082;\n").replace(
        NGINX_CHECK_UNIX, f"    server unix:{path};\n"
    )


ENVOY_CHECK_TCP = "              socket_address: { address: 127.0.0.1, port_value: 8082 }\n"
ENVOY_CHECK_UNIX = "              # pipe: { path: /run/sidecar/check.sock }\n"


def envoy_check_on_unix_socket(text: str, path: Path) -> str:
    """contrib/envoy/envoy.yaml with its sidecar_check endpoint on the Unix socket at
    ``path``: the shipped commented ``pipe`` address in use instead of the socket_address."""
    for line in (ENVOY_CHECK_TCP, ENVOY_CHECK_UNIX):
        if text.count(line) != 1:
            raise HarnessError(f"the shipped Envoy configuration no longer has the line {line.strip()!r} once")
    return text.replace(ENVOY_CHECK_TCP, "").replace(ENVOY_CHECK_UNIX, f"              pipe: {{ path: {path} }}\n")


def write_rewritten(source: Path, target: Path, ports: Mapping[int, int]) -> Path:
    """``source`` with its ports rewritten, written to ``target``."""
    target.write_text(rewrite_ports(source.read_text(), ports))
    return target


def nginx_conf_dir(conf_dir: Path, ports: Mapping[int, int], server_block: str | None = None) -> Path:
    """contrib/nginx/nginx.conf and the server block (by default contrib/nginx/sidecar.conf
    as shipped) with its ports rewritten, in ``conf_dir``; the path of nginx.conf."""
    conf_dir.mkdir()
    # nginx.conf only includes sidecar.conf, which holds the addresses.
    (conf_dir / "nginx.conf").write_text(NGINX_CONF.read_text())
    text = NGINX_SERVER_BLOCK.read_text() if server_block is None else server_block
    (conf_dir / "sidecar.conf").write_text(rewrite_ports(text, ports))
    return conf_dir / "nginx.conf"


def nginx_argv(nginx: str, prefix: Path, conf: Path, *extra: str) -> list[str]:
    """nginx in the foreground with ``conf``, in the private prefix ``prefix`` (created here)."""
    prefix.mkdir(mode=0o700)  # private, like `mktemp -d`
    return [nginx, "-p", str(prefix), *extra, "-c", str(conf), "-g", "daemon off;"]
