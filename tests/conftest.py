"""Shared test helpers: settings, token minting, a running sidecar on loopback.

Tests go through real servers (aiohttp's test server on 127.0.0.1), real SQLite files
in a temporary folder and the real MaxMind test databases in ``../shared/testdata``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient

from sidecar.clock import Clock, SystemClock
from sidecar.config import Settings, from_mapping
from sidecar.web import Services, create_admin_app, create_app, open_services
from sidecar.web.app import checks_first, runner_kwargs

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GEOIP_DIR = SHARED / "testdata" / "geoip"

SECRET = "test-secret-for-hs256-that-is-long-enough-0123456789"
ADMIN_KEY = "test-admin-key-0123456789abcdef"
CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)


def geoip_db(name: str = "GeoIP2-City-Test.mmdb") -> Path:
    path = GEOIP_DIR / name
    if not path.is_file():
        pytest.fail(f"MaxMind test database missing: {path} (shared/testdata/geoip beside the repo)")
    return path


def settings_for(tmp_path: Path, **sections: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Settings:
    """Settings for a test: HS256 with SECRET, SQLite in tmp_path, admin key set.

    Keyword arguments override or extend whole sections' keys, e.g.
    ``settings_for(tmp_path, jwt={"user_claim": "user_id"})``; a list is an array of
    tables, e.g. ``routes=[{"path": "/login", "policy": "public"}]``.
    """
    raw: dict[str, dict[str, Any]] = {
        "server": {"trusted_proxies": ["127.0.0.1/32", "::1/128"]},
        "jwt": {"algorithms": ["HS256"], "secret": SECRET, "leeway_seconds": 0},
        "storage": {"url": f"sqlite:///{tmp_path / 'sidecar.db'}"},
        "admin": {"api_keys": [ADMIN_KEY]},
        "sessions": {"last_seen_flush_seconds": 0.2},
    }
    for name, values in sections.items():
        if isinstance(values, Sequence):
            raw[name] = list(values)  # type: ignore[assignment]  # an array of tables
        else:
            raw.setdefault(name, {}).update(values)
    return from_mapping(raw, environ={}, base_dir=tmp_path)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {v!r}")


def write_toml(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write ``sections`` as a TOML config file (what a real process is started with)."""
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def mint(
    sub: str | int = "alice",
    *,
    key: Any = SECRET,
    algorithm: str = "HS256",
    ttl: float = 3600,
    now: float | None = None,
    headers: Mapping[str, Any] | None = None,
    sid: str | bool | None = True,
    **claims: Any,
) -> str:
    """A signed token. ``sid=True`` gives a fresh session id; ``sid=None`` omits it."""
    issued = int(now if now is not None else time.time())
    payload: dict[str, Any] = {"sub": sub, "iat": issued, "exp": issued + int(ttl)}
    if sid is True:
        payload["sid"] = str(uuid.uuid4())
    elif isinstance(sid, str):
        payload["sid"] = sid
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not _OMIT}
    return jwt.encode(payload, key, algorithm=algorithm, headers=dict(headers) if headers else None)


class _Omit:
    def __repr__(self) -> str:
        return "OMIT"


_OMIT: Any = _Omit()
OMIT: Any = _OMIT  # pass as a claim value to drop a default claim, e.g. mint(iat=OMIT)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@dataclass
class Sidecar:
    """A running sidecar: public and admin listeners on loopback, and its services."""

    public: TestClient[Any, Any]
    admin: TestClient[Any, Any]
    services: Services

    async def check(self, token: str | None, **headers: str) -> int:
        h = dict(headers)
        if token is not None:
            h.update(bearer(token))
        async with self.public.get("/introspect", headers=h) as resp:
            return resp.status

    async def sessions(self, token: str) -> list[dict[str, Any]]:
        async with self.public.get("/api/v1/sessions/", headers=bearer(token)) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
            data: list[dict[str, Any]] = body["data"]
            return data


SidecarFactory = Callable[..., Any]


@pytest.fixture
async def start_sidecar(
    tmp_path: Path, aiohttp_client: Any, aiohttp_server: Any
) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await start_sidecar(settings=None, clock=None)`` -> Sidecar."""
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:

        async def start(settings: Settings | None = None, clock: Clock | None = None) -> Sidecar:
            s = settings or settings_for(tmp_path)
            services = await stack.enter_async_context(open_services(s, clock or SystemClock()))
            kwargs = runner_kwargs(s)
            app = create_app(s, services)
            server = await aiohttp_server(app, **kwargs)
            checks_first(server.runner)  # as `sidecar serve` does, before any connection
            public = await aiohttp_client(server)
            admin = await aiohttp_client(await aiohttp_server(create_admin_app(s, services), **kwargs))
            return Sidecar(public, admin, services)

        yield start


@pytest.fixture
async def sidecar(start_sidecar: Callable[..., Any]) -> Sidecar:
    """A sidecar on the default test settings (HS256, auto registration, SQLite)."""
    result: Sidecar = await start_sidecar()
    return result
