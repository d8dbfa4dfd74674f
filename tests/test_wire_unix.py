"""The check listener (``sidecar.wire``) on a Unix domain socket, in process.

The same ``CheckListener`` as in tests/test_wire.py, started on a socket that
``sidecar.server.bind_unix`` bound, talked to byte by byte with the same strict reader.
A connection on the socket has no address and counts as a trusted proxy; a TCP peer
outside ``server.trusted_proxies`` still does not.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.server import bind_unix
from tests import test_wire
from tests.conftest import mint
from tests.support.ports import unix_socket_dir
from tests.test_wire import StartWire, Wire, allow_ok, assert_closed, deny_body_ok, read_reply, request

CLIENT = "198.51.100.7"
start_wire = test_wire.start_wire  # the listener fixture of tests/test_wire.py, used here by name


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short private folder for sockets (pytest's tmp_path can pass sun_path's 107 bytes)."""
    with unix_socket_dir() as folder:
        yield folder


@pytest.fixture
def start_unix_wire(start_wire: StartWire, socket_dir: Path) -> StartWire:
    """``start_wire`` on a Unix socket in ``socket_dir`` (``tcp=True``: on loopback TCP, to compare)."""
    count = 0

    async def start(*, tcp: bool = False, **sections: Any) -> Wire:
        nonlocal count
        count += 1
        return await start_wire(unix=None if tcp else socket_dir / f"check{count}.sock", **sections)

    return start


async def test_unix_socket_allows_a_known_token_and_denies_without_one(start_unix_wire: StartWire) -> None:
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
    start_unix_wire: StartWire,
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


async def test_forwarded_client_address_is_believed_on_the_unix_socket(start_unix_wire: StartWire) -> None:
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


async def test_no_forwarded_header_on_the_unix_socket_records_no_address(start_unix_wire: StartWire) -> None:
    """Without a forwarded header a Unix-socket session has no address (never a made-up one)."""
    w = await start_unix_wire()
    client = await w.connect()
    reply = await client.ask(request(token=mint(sub="uwe")))
    allow_ok(reply, "uwe")
    session_id = reply.get("X-Auth-Session")
    assert session_id is not None
    row = await w.services.store.get(session_id)
    assert row is not None and row.ip_address is None


async def test_tcp_peer_outside_trusted_proxies_is_still_not_believed(start_unix_wire: StartWire) -> None:
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


async def test_unix_socket_past_max_connections_gets_503_and_close(start_unix_wire: StartWire) -> None:
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
