"""Fixtures for the gateway tests: real processes, one set per test module.

A test module names its gateway by overriding ``launch_gateway`` (``run_nginx`` or
``run_envoy``); the fixtures here start the sidecar, the echo upstream and four copies of
that gateway: one in front of the live sidecar, and one each in front of a sidecar that is
down (nothing listens), hung (never answers) or broken (answers 503 to everything).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import aiohttp
import pytest

from tests.gateways.support import Gateway, Upstream, run_gateway_sidecar, run_upstream
from tests.support.ports import blackhole, free_ports
from tests.support.sidecar import SidecarProcess

Launcher = Callable[[Path, int, int, int], AbstractContextManager[Gateway]]

# The client address the tests use when the sidecar must tell the client from the gateway
# (which reaches it from 127.0.0.1, the one trusted proxy). All of 127/8 is loopback.
OTHER_CLIENT_ADDRESS = "127.0.0.2"


@pytest.fixture(scope="module")
def launch_gateway() -> Launcher:
    """Overridden by each test module: which gateway to start."""
    pytest.fail("a gateway test module must override the launch_gateway fixture")


@pytest.fixture(scope="module")
def sidecar_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    """The sidecar, serving from its own SQLite file on a free port."""
    with run_gateway_sidecar(tmp_path_factory.mktemp("sidecar")) as running:
        yield running


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """The echo app behind every gateway, recording each request it receives."""
    with run_upstream(tmp_path_factory.mktemp("upstream")) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(
    launch_gateway: Launcher,
    tmp_path_factory: pytest.TempPathFactory,
    sidecar_process: SidecarProcess,
    upstream: Upstream,
) -> Iterator[Gateway]:
    """The gateway with the shipped configuration, in front of the live sidecar."""
    with launch_gateway(tmp_path_factory.mktemp("gateway"), upstream.port, sidecar_process.port, sidecar_process.check_port) as gw:
        yield gw


@pytest.fixture(scope="module")
def gateway_without_sidecar(
    launch_gateway: Launcher, tmp_path_factory: pytest.TempPathFactory, upstream: Upstream
) -> Iterator[Gateway]:
    """The gateway pointed at a port where no sidecar listens."""
    [nothing] = free_ports(1)
    with launch_gateway(tmp_path_factory.mktemp("gateway-down"), upstream.port, nothing, nothing) as gw:
        yield gw


@pytest.fixture(scope="module")
def gateway_with_hung_sidecar(
    launch_gateway: Launcher, tmp_path_factory: pytest.TempPathFactory, upstream: Upstream
) -> Iterator[Gateway]:
    """The gateway pointed at a sidecar that accepts connections and never answers."""
    with (
        blackhole() as port,
        launch_gateway(tmp_path_factory.mktemp("gateway-hung"), upstream.port, port, port) as gw,
    ):
        yield gw


@pytest.fixture(scope="module")
def gateway_with_broken_sidecar(
    launch_gateway: Launcher, tmp_path_factory: pytest.TempPathFactory, upstream: Upstream
) -> Iterator[Gateway]:
    """The gateway pointed at a sidecar that answers 503 to every check."""
    with (
        run_upstream(tmp_path_factory.mktemp("broken-sidecar"), status=503) as broken,
        launch_gateway(tmp_path_factory.mktemp("gateway-broken"), upstream.port, broken.port, broken.port) as gw,
    ):
        yield gw


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client on 127.0.0.1, the same address the gateway uses to reach the sidecar."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def http_elsewhere() -> AsyncIterator[aiohttp.ClientSession]:
    """A client connecting from 127.0.0.2: an address the sidecar does not trust."""
    connector = aiohttp.TCPConnector(local_addr=(OTHER_CLIENT_ADDRESS, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session
