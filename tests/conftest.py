"""Fixtures for every test: a running sidecar on loopback, on the harness in tests/support.

Tests go through real servers (aiohttp's test server on 127.0.0.1), real SQLite files
in a temporary folder and the real MaxMind test databases in ``../shared/testdata``.
The helpers themselves (settings, tokens, processes...) live in ``tests/support``; the
names below stay importable from here for the modules that still import them so.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Generator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from sidecar.clock import Clock, SystemClock
from sidecar.config import Settings
from sidecar.web import Services, create_admin_app, create_app, open_services
from sidecar.web.app import checks_first, runner_kwargs
from sidecar.wire import CheckListener
from tests.support import REPO, HarnessError
from tests.support.configs import settings_for, write_toml
from tests.support.sessions import CHROME_WINDOWS
from tests.support.tokens import ADMIN, ADMIN_KEY, OMIT, SECRET, bearer, mint

__all__ = [
    "ADMIN", "ADMIN_KEY", "CHROME_WINDOWS", "GEOIP_DIR", "OMIT", "REPO", "SECRET", "Sidecar", "bearer",
    "geoip_db", "mint", "settings_for", "write_toml",
]

SHARED = REPO.parent / "shared"
GEOIP_DIR = SHARED / "testdata" / "geoip"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """A HarnessError (a binary missing, a process never ready) fails with its message
    alone, no traceback: it is about the machine, not the code."""
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance(HarnessError):
        report.longrepr = str(call.excinfo.value)
    return report


def geoip_db(name: str = "GeoIP2-City-Test.mmdb") -> Path:
    path = GEOIP_DIR / name
    if not path.is_file():
        pytest.fail(f"MaxMind test database missing: {path} (shared/testdata/geoip beside the repo)")
    return path


@dataclass
class Sidecar:
    """A running sidecar: public, admin and check listeners on loopback, and its services.

    ``checker`` is a client of the check listener (``sidecar.wire``), where gateways point:
    ``check`` and ``session_id`` go through it, as ``sidecar serve``'s gateways do; tests
    of ``/introspect`` on the aiohttp listener use ``public``.
    """

    public: TestClient[Any, Any]
    admin: TestClient[Any, Any]
    services: Services
    checker: aiohttp.ClientSession
    listener: CheckListener

    async def check(self, token: str | None, **headers: str) -> int:
        h = dict(headers)
        if token is not None:
            h.update(bearer(token))
        async with self.checker.get("/introspect", headers=h) as resp:
            return resp.status

    async def session_id(self, token: str) -> str:
        """Use a token once (auto registration) and return its session id."""
        async with self.checker.get("/introspect", headers=bearer(token)) as resp:
            assert resp.status == 200, await resp.text()
            return resp.headers["X-Auth-Session"]

    async def revoke(self, token: str, session_id: str) -> None:
        """Revoke ``session_id`` through the sessions API, as the token's user."""
        async with self.public.delete(f"/api/v1/sessions/{session_id}/", headers=bearer(token)) as resp:
            assert resp.status == 204, await resp.text()

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
            listener = CheckListener(services.check, s)
            await listener.start(socket.create_server(("127.0.0.1", 0)))
            stack.push_async_callback(listener.shutdown, 1.0)
            checker = await stack.enter_async_context(aiohttp.ClientSession(f"http://127.0.0.1:{listener.port}"))
            return Sidecar(public, admin, services, checker, listener)

        yield start


@pytest.fixture
async def sidecar(start_sidecar: Callable[..., Any]) -> Sidecar:
    """A sidecar on the default test settings (HS256, auto registration, SQLite)."""
    result: Sidecar = await start_sidecar()
    return result
