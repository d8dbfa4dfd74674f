"""The check listener (``sidecar.wire``) on a Unix domain socket, in process.

The same ``CheckListener`` as in tests/test_wire.py, started on a socket that
``sidecar.server.bind_unix`` bound, talked to byte by byte with the same strict reader.
A connection on the socket has no address and counts as a trusted proxy; a TCP peer
outside ``server.trusted_proxies`` still does not.
"""

from __future__ import annotations

import asyncio
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from sidecar.server import bind_unix
from sidecar.web import Services, open_services
from sidecar.wire import CheckListener
from tests.conftest import mint, settings_for
from tests.support.ports import unix_socket_dir
from tests.test_wire import Client, allow_ok, assert_closed, deny_body_ok, read_reply, request

CLIENT = "198.51.100.7"


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short private folder for sockets (pytest's tmp_path can pass sun_path's 107 bytes)."""
    with unix_socket_dir() as folder:
        yield folder


class UnixWire:
    """A check listener on a Unix socket (or on loopback TCP, to compare) and its services."""

    def __init__(self, listener: CheckListener, services: Services, path: Path | None, port: int | None) -> None:
        self.listener = listener
        self.services = services
        self.path = path
        self.port = port
        self.clients: list[Client] = []

    async def connect(self) -> Client:
        if self.path is not None:
            reader, writer = await asyncio.open_unix_connection(str(self.path))
        else:
            assert self.port is not None
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        client = Client(reader, writer)
        self.clients.append(client)
        return client


StartUnixWire = Callable[..., Awaitable[UnixWire]]


@pytest.fixture
async def start_unix_wire(tmp_path: Path, socket_dir: Path) -> AsyncIterator[StartUnixWire]:
    """Factory: ``await start(tcp=False, **sections)`` -> a started listener on its own services."""
    async with AsyncExitStack() as stack:
        started: list[UnixWire] = []

        async def start(*, tcp: bool = False, **sections: Any) -> UnixWire:
            folder = tmp_path / f"wire{len(started)}"
            folder.mkdir()
            path = socket_dir / f"check{len(started)}.sock"
            if not tcp:
                sections["check"] = {"unix_socket": str(path), **sections.get("check", {})}
            settings = settings_for(folder, **sections)
            services = await stack.enter_async_context(open_services(settings))
            listener = CheckListener(services.check, settings)
            if tcp:
                sock = socket.create_server(("127.0.0.1", 0))
            else:
                assert settings.check.unix_socket is not None
                sock = bind_unix(settings.check.unix_socket, settings.check.unix_socket_mode)
            await listener.start(sock)
            port = None if not tcp else int(sock.getsockname()[1])
            wire = UnixWire(listener, services, None if tcp else path, port)
            started.append(wire)
            return wire

        try:
            yield start
        finally:
            for wire in started:
                for client in wire.clients:
                    client.writer.close()
                await wire.listener.shutdown(0)


async def test_unix_socket_allows_a_known_token_and_denies_without_one(start_unix_wire: StartUnixWire) -> None:
    """On the Unix socket a new token registers and is allowed, the same token is allowed
    again at once, and a request without one is the usual 401."""
    w = await start_unix_wire()
    assert w.listener.unix
    token = mint(sub="ursula")
    client = await w.connect()
    first = await client.ask(request(token=token))
    allow_ok(first, "ursula")
    again = await client.ask(request(token=token))
    allow_ok(again, "ursula")
    assert again.get("X-Auth-Session") == first.get("X-Auth-Session")
    deny_body_ok(await client.ask(request()))
    deny_body_ok(await client.ask(request(token="garbage")))


async def test_unix_socket_keeps_alive_and_answers_pipelined_requests_in_order(
    start_unix_wire: StartUnixWire,
) -> None:
    """One connection: two pipelined requests (allow, deny) answered in that order, without
    Connection: close, and the connection serves the next request; Connection: close ends it."""
    w = await start_unix_wire()
    token = mint(sub="uma")
    client = await w.connect()
    allow_ok(await client.ask(request(token=token)), "uma")
    await client.send(request(token=token) + request(token="garbage"))
    first, second = await read_reply(client.reader), await read_reply(client.reader)
    allow_ok(first, "uma")
    deny_body_ok(second)
    assert not first.closes and not second.closes
    assert len(w.listener.connections) == 1
    last = await client.ask(request(token=token, headers=[("Connection", "close")]))
    allow_ok(last, "uma")
    assert last.closes
    await assert_closed(client.reader)


async def test_forwarded_client_address_is_believed_on_the_unix_socket(start_unix_wire: StartUnixWire) -> None:
    """A session registered through the Unix socket records the X-Forwarded-For address
    (the connection counts as a trusted proxy), even with no trusted_proxies configured."""
    w = await start_unix_wire(server={"trusted_proxies": []})
    client = await w.connect()
    reply = await client.ask(request(token=mint(sub="ulrich"), headers=[("X-Forwarded-For", f"1.1.1.1, {CLIENT}")]))
    allow_ok(reply, "ulrich")
    session_id = reply.get("X-Auth-Session")
    assert session_id is not None
    row = await w.services.store.get(session_id)
    assert row is not None and row.ip_address == CLIENT


async def test_no_forwarded_header_on_the_unix_socket_records_no_address(start_unix_wire: StartUnixWire) -> None:
    """Without a forwarded header a Unix-socket session has no address (never a made-up one)."""
    w = await start_unix_wire()
    client = await w.connect()
    reply = await client.ask(request(token=mint(sub="uwe")))
    allow_ok(reply, "uwe")
    session_id = reply.get("X-Auth-Session")
    assert session_id is not None
    row = await w.services.store.get(session_id)
    assert row is not None and row.ip_address is None


async def test_tcp_peer_outside_trusted_proxies_is_still_not_believed(start_unix_wire: StartUnixWire) -> None:
    """On TCP, a peer (127.0.0.1) outside server.trusted_proxies is the client, whatever
    its X-Forwarded-For says: the Unix socket's trust does not reach the TCP path."""
    w = await start_unix_wire(tcp=True, server={"trusted_proxies": ["10.0.0.0/8"]})
    assert not w.listener.unix
    client = await w.connect()
    reply = await client.ask(request(token=mint(sub="tess"), headers=[("X-Forwarded-For", CLIENT)]))
    allow_ok(reply, "tess")
    session_id = reply.get("X-Auth-Session")
    assert session_id is not None
    row = await w.services.store.get(session_id)
    assert row is not None and row.ip_address == "127.0.0.1"


async def test_unix_socket_past_max_connections_gets_503_and_close(start_unix_wire: StartUnixWire) -> None:
    """server.max_connections bounds the Unix socket's connections as it does TCP's."""
    w = await start_unix_wire(server={"max_connections": 1})
    first = await w.connect()
    deny_body_ok(await first.ask(request()))
    second = await w.connect()
    refused = await read_reply(second.reader)
    assert refused.status == 503 and refused.closes
    await assert_closed(second.reader)
    deny_body_ok(await first.ask(request()))  # the first one goes on


async def test_bind_unix_creates_the_socket_with_the_mode(socket_dir: Path) -> None:
    """bind_unix leaves a listening socket file with exactly the configured permission bits."""
    path = socket_dir / "mode.sock"
    sock = bind_unix(str(path), 0o600)
    try:
        st = path.lstat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
    finally:
        sock.close()
