"""The check listener (``sidecar.wire``) on the wire: raw sockets against a real listener.

Every test opens the real services on a temporary SQLite file, starts a ``CheckListener``
on a loopback socket and talks HTTP/1.1 to it byte by byte. Answers are read by a strict
reader (status line, ``Name: value`` lines, exactly ``Content-Length`` body bytes, CRLF
everywhere), so a framing fault shows up as a failed read of the next answer rather than
passing unnoticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sidecar.enrich.device import DeviceParser
from sidecar.errors import StoreUnavailableError
from sidecar.events.models import Place
from sidecar.logs import _RequestIdFilter
from sidecar.server import bind_unix
from sidecar.sessions.models import Session
from sidecar.tokens.bearer import BEARER_CHALLENGE
from sidecar.web import Services, open_services
from sidecar.wire import MAX_HEAD, MAX_TARGET, CheckListener, CheckProtocol
from tests.conftest import mint, settings_for

READ_TIMEOUT = 5.0
_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9]{2}) ([\x21-\x7e][\x20-\x7e]*)\r\n")
_HEADER_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+): ([\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?)\r\n")


# ---------------------------------------------------------------------- the wire, client side


@dataclass
class Reply:
    """One answer as it came off the wire."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def get(self, name: str) -> str | None:
        """The header's value; None when absent; a header sent twice fails the test."""
        values = self.all(name)
        assert len(values) <= 1, f"{name} sent {len(values)} times: {self.headers}"
        return values[0] if values else None

    @property
    def closes(self) -> bool:
        return (self.get("Connection") or "").lower() == "close"


async def _read_reply(reader: asyncio.StreamReader, head: bool) -> Reply:
    line = await reader.readuntil(b"\r\n")
    status_line = _STATUS_LINE.fullmatch(line)
    assert status_line is not None, f"not a status line: {line!r}"
    status = int(status_line[1])
    headers: list[tuple[str, str]] = []
    while True:
        line = await reader.readuntil(b"\r\n")
        if line == b"\r\n":
            break
        header = _HEADER_LINE.fullmatch(line)
        assert header is not None, f"not a header line: {line!r}"
        headers.append((header[1].decode("ascii"), header[2].decode("ascii")))
    reply = Reply(status, status_line[2].decode("ascii"), headers, b"")
    assert reply.get("Transfer-Encoding") is None, "the check listener never sends a chunked answer"
    if 100 <= status < 200:
        assert headers == [], f"an interim answer with headers: {headers}"
        return reply
    length = reply.get("Content-Length")
    assert length is not None and length.isdigit(), f"no usable Content-Length: {headers}"
    if not head:
        reply.body = await reader.readexactly(int(length))
    return reply


async def read_reply(reader: asyncio.StreamReader, *, head: bool = False, within: float = READ_TIMEOUT) -> Reply:
    """The next answer on the connection (``head``: the answer to a HEAD, no body bytes)."""
    return await asyncio.wait_for(_read_reply(reader, head), within)


async def read_rest(reader: asyncio.StreamReader, within: float = READ_TIMEOUT) -> bytes:
    """Every byte until the server closes (a reset counts as the close, with no bytes)."""
    try:
        return await asyncio.wait_for(reader.read(), within)
    except ConnectionResetError:
        return b""


async def assert_closed(reader: asyncio.StreamReader, within: float = READ_TIMEOUT) -> None:
    rest = await read_rest(reader, within)
    assert rest == b"", f"bytes after the last answer: {rest[:300]!r}"


async def assert_silent(reader: asyncio.StreamReader, seconds: float = 0.15) -> None:
    """Nothing (not even EOF) arrives within ``seconds``."""
    try:
        got = await asyncio.wait_for(reader.read(1), seconds)
    except TimeoutError:
        return
    raise AssertionError(f"expected nothing yet, got {got!r} (b'' is EOF)")


def request(
    target: str = "/introspect",
    *,
    method: str = "GET",
    token: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    version: str = "1.1",
    body: bytes = b"",
) -> bytes:
    """One request's bytes; a body gets its Content-Length unless ``headers`` frame it."""
    lines = [f"{method} {target} HTTP/{version}", "Host: sidecar.test"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines.extend(f"{k}: {v}" for k, v in headers)
    framed = any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers)
    if body and not framed:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Client:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def ask(self, data: bytes, *, head: bool = False) -> Reply:
        await self.send(data)
        return await read_reply(self.reader, head=head)

    @property
    def port(self) -> int:
        return int(self.writer.get_extra_info("sockname")[1])


@dataclass
class Wire:
    """A running check listener, its services, and the connections a test opened."""

    listener: CheckListener
    services: Services
    clients: list[Client] = field(default_factory=list)
    path: Path | None = None  # the Unix socket it listens on, when not loopback TCP

    async def connect(self, *, rcvbuf: int | None = None) -> Client:
        if self.path is not None:
            reader, writer = await asyncio.open_unix_connection(str(self.path))
            self.clients.append(unix_client := Client(reader, writer))
            return unix_client
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.listener.port))
        except OSError:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock)
        client = Client(reader, writer)
        self.clients.append(client)
        return client

    def server_side(self, client: Client) -> CheckProtocol:
        """The listener's protocol object for ``client``'s connection."""
        for conn in self.listener.connections:
            if conn.transport is not None and conn.transport.get_extra_info("peername")[1] == client.port:
                return conn
        raise AssertionError(f"no server-side connection for port {client.port}")

    async def known(self, sub: str) -> tuple[str, str]:
        """A token of a new session of ``sub``, registered through the listener: (token,
        session id). Its next checks are decided at once, inside data_received."""
        token = mint(sub=sub)
        client = await self.connect()
        reply = await client.ask(request(token=token, headers=[("Connection", "close")]))
        assert reply.status == 200, reply
        await assert_closed(client.reader)
        session = reply.get("X-Auth-Session")
        assert session is not None
        return token, session


async def eventually(predicate: Callable[[], bool], what: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        await asyncio.sleep(0.005)


StartWire = Callable[..., Awaitable[Wire]]
_PARSERS: list[DeviceParser] = []


def _shared_device_parser() -> DeviceParser:
    """One DeviceParser for the whole file (building one compiles ua-parser's regexes, a
    fifth of a second; the class is meant to be shared)."""
    if not _PARSERS:
        _PARSERS.append(DeviceParser())
    return _PARSERS[0]


@pytest.fixture
async def start_wire(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StartWire]:
    """Factory: ``await start_wire(server={...})`` -> a started listener on its own services."""
    monkeypatch.setattr("sidecar.web.services.DeviceParser", _shared_device_parser)
    async with AsyncExitStack() as stack:
        started: list[Wire] = []

        async def start(*, sndbuf: int | None = None, unix: Path | None = None, **sections: Any) -> Wire:
            """``unix``: on that Unix socket path (``check.unix_socket``), bound as
            ``sidecar serve`` binds it; else on a loopback TCP port."""
            folder = tmp_path / f"wire{len(started)}"
            folder.mkdir()
            if unix is not None:
                sections["check"] = {"unix_socket": str(unix), **sections.get("check", {})}
            settings = settings_for(folder, **sections)
            services = await stack.enter_async_context(open_services(settings))
            listener = CheckListener(services.check, settings)
            if unix is not None:
                sock = bind_unix(str(unix), settings.check.unix_socket_mode)
            else:
                sock = socket.create_server(("127.0.0.1", 0))
            if sndbuf is not None:  # inherited by every accepted connection (Linux)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            await listener.start(sock)
            wire = Wire(listener, services, path=unix)
            started.append(wire)
            return wire

        try:
            yield start
        finally:
            for wire in started:
                for client in wire.clients:
                    client.writer.close()
                await wire.listener.shutdown(0)


@pytest.fixture
async def wire(start_wire: StartWire) -> tuple[CheckListener, Services]:
    """A check listener on the default test settings: (listener, services)."""
    w = await start_wire()
    return w.listener, w.services


@pytest.fixture
async def w(start_wire: StartWire) -> Wire:
    """The same, with the helpers to connect and register tokens."""
    return await start_wire()


class Gate:
    """Holds ``store.get_by_key`` until ``release``; counts the reads waiting."""

    def __init__(self, services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
        self.opened = asyncio.Event()
        self.waiting = 0
        original = services.store.get_by_key

        async def held(session_key: str) -> Session | None:
            self.waiting += 1
            try:
                await self.opened.wait()
            finally:
                self.waiting -= 1
            return await original(session_key)

        monkeypatch.setattr(services.store, "get_by_key", held)

    def release(self) -> None:
        self.opened.set()


def deny_body_ok(reply: Reply) -> None:
    assert reply.status == 401, reply
    assert reply.get("WWW-Authenticate") == BEARER_CHALLENGE
    assert reply.get("Cache-Control") == "no-store"
    assert reply.get("Content-Type") == "application/json; charset=utf-8"
    assert reply.get("X-Auth-User") is None
    assert json.loads(reply.body) == {"status": "error", "status_code": 401, "message": "Unauthorized", "data": {}}


def allow_ok(reply: Reply, sub: str) -> None:
    assert reply.status == 200, reply
    assert reply.get("X-Auth-User") == sub
    assert reply.get("X-Auth-Session")
    assert reply.get("Cache-Control") == "no-store"
    assert reply.get("Content-Length") == "0"
    assert reply.body == b""


# ---------------------------------------------------------------------- 1. answers


async def test_allow_carries_identity_no_store_and_date(wire: tuple[CheckListener, Services]) -> None:
    """A valid token of a new session: 200, X-Auth-User/X-Auth-Session naming the session
    it registered, Cache-Control: no-store, a current Date, empty body; the same token
    again (answered at once) names the same session."""
    listener, services = wire
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    client = Client(reader, writer)
    first = await client.ask(request(token=(token := mint(sub="alice"))))
    allow_ok(first, "alice")
    date = first.get("Date")
    assert date is not None
    assert abs(email.utils.parsedate_to_datetime(date).timestamp() - time.time()) < 5
    session_id = first.get("X-Auth-Session")
    assert session_id is not None
    row = await services.store.get(session_id)
    assert row is not None and row.user_id == "alice" and row.revoked_at is None
    again = await client.ask(request(token=token))
    allow_ok(again, "alice")
    assert again.get("X-Auth-Session") == session_id
    assert again.get("Date") is not None
    assert not first.closes and not again.closes
    writer.close()


@pytest.mark.parametrize(
    "token",
    [None, "garbage", mint(sub="mallory", key="another-secret-that-is-long-enough-0123456789")],
    ids=["no-token", "not-a-jwt", "wrong-key"],
)
async def test_deny_is_401_with_challenge_and_json_body(w: Wire, token: str | None) -> None:
    """No token, a malformed one or one signed by another key: 401 with WWW-Authenticate,
    no-store and the JSON error body, and nothing that looks like an identity."""
    client = await w.connect()
    reply = await client.ask(request(token=token))
    deny_body_ok(reply)
    assert reply.get("Date") is not None
    assert not reply.closes


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "PATCH", "PUT", "OPTIONS"])
@pytest.mark.parametrize("target", ["/introspect", "/introspect/", "/introspect/api/x?y=1", "/introspect?next=/a"])
async def test_any_method_and_sub_path_is_checked(w: Wire, method: str, target: str) -> None:
    """Every method on /introspect and any path under it is the same check: 401 without a
    token, 200 with the identity with one (a new one, then a known one)."""
    client = await w.connect()
    deny_body_ok(await client.ask(request(target, method=method)))
    token = mint(sub="bob")
    allow_ok(await client.ask(request(target, method=method, token=token)), "bob")
    allow_ok(await client.ask(request(target, method=method, token=token)), "bob")


async def test_head_answer_has_headers_only_and_the_connection_goes_on(w: Wire) -> None:
    """HEAD gets the check's status and headers (Content-Length of the GET's body) but no
    body bytes; the next request on the connection is read and answered normally."""
    token, _ = await w.known("carol")
    client = await w.connect()
    deny = await client.ask(request(method="HEAD"), head=True)
    assert deny.status == 401 and deny.get("WWW-Authenticate") == BEARER_CHALLENGE
    assert int(deny.get("Content-Length") or 0) > 0 and deny.body == b""
    allow = await client.ask(request(method="HEAD", token=token), head=True)  # decided at once
    assert allow.status == 200 and allow.get("X-Auth-User") == "carol"
    fresh = await client.ask(request(method="HEAD", token=mint(sub="dave")), head=True)  # via a task
    assert fresh.status == 200 and fresh.get("X-Auth-User") == "dave"
    # Had a body byte leaked after any HEAD answer, this status line would not parse.
    deny_body_ok(await client.ask(request()))
    allow_ok(await client.ask(request(token=token)), "carol")


@pytest.mark.parametrize("target", ["/", "/introspection", "/introspectx/y", "/api/v1/sessions/", "/INTROSPECT", "*"])
async def test_a_path_outside_introspect_is_404_and_not_checked(w: Wire, target: str) -> None:
    """Only /introspect and paths under it are checks: anything else is 404 (never 200,
    even with a valid token), counted as no decision, and the connection stays usable."""
    token, _ = await w.known("erin")
    stats = w.services.metrics.check
    before = (stats.allowed, sum(stats.denied.values()))
    client = await w.connect()
    reply = await client.ask(request(target, token=token))
    assert reply.status == 404, reply
    assert reply.get("X-Auth-User") is None and reply.get("Cache-Control") == "no-store"
    assert (stats.allowed, sum(stats.denied.values())) == before
    allow_ok(await client.ask(request(token=token)), "erin")


# ---------------------------------------------------------------------- 2. keep-alive


async def test_many_requests_on_one_keep_alive_connection(w: Wire) -> None:
    """HTTP/1.1 connections persist: ten requests one after another on one connection,
    each answered without Connection: close."""
    token, _ = await w.known("frank")
    client = await w.connect()
    for i in range(10):
        reply = await client.ask(request(token=token if i % 2 else None))
        assert reply.status == (200 if i % 2 else 401)
        assert not reply.closes
    assert len(w.listener.connections) == 1


@pytest.mark.parametrize("known_token", [True, False], ids=["decided-at-once", "via-task"])
async def test_http_1_0_is_answered_with_connection_close_then_eof(w: Wire, known_token: bool) -> None:
    """An HTTP/1.0 request (even asking for keep-alive) is answered with Connection: close
    and the connection ends; a request pipelined behind it is never answered."""
    token = (await w.known("gina"))[0] if known_token else mint(sub="gina")
    client = await w.connect()
    await client.send(
        request(token=token, version="1.0", headers=[("Connection", "keep-alive")]) + request(token=token)
    )
    reply = await read_reply(client.reader)
    allow_ok(reply, "gina")
    assert reply.closes
    await assert_closed(client.reader)


@pytest.mark.parametrize("token_kind", ["none", "known", "new"])
async def test_connection_close_on_http_1_1_ends_the_connection(w: Wire, token_kind: str) -> None:
    """``Connection: close`` on HTTP/1.1: the answer says Connection: close and EOF
    follows (whether the answer was decided at once or by a task)."""
    token = {"none": None, "known": (await w.known("hank"))[0], "new": mint(sub="hank")}[token_kind]
    client = await w.connect()
    reply = await client.ask(request(token=token, headers=[("Connection", "close")]))
    assert reply.status == (401 if token is None else 200)
    assert reply.closes
    await assert_closed(client.reader)
    await eventually(lambda: not w.listener.connections, "the server side to close")


# ---------------------------------------------------------------------- 3. pipelining


async def test_pipelined_answers_leave_in_request_order(w: Wire, monkeypatch: pytest.MonkeyPatch) -> None:
    """One write holding [deny, new token, known token, new token, deny]: five answers in
    exactly that order, although the known token is decided at once and the first new
    token's registration is held back until the later one has finished."""
    known_token, _ = await w.known("known")
    store = w.services.store
    insert = store.insert
    release = asyncio.Event()
    registered: list[str] = []

    async def slow_insert(session: Session, *, place: Place | None = None) -> tuple[Session, bool]:
        if session.user_id == "first":
            await release.wait()
        result = await insert(session, place=place)
        registered.append(session.user_id)
        return result

    monkeypatch.setattr(store, "insert", slow_insert)
    client = await w.connect()
    await client.send(
        request()
        + request(token=mint(sub="first"))
        + request(token=known_token)
        + request(token=mint(sub="second"))
        + request(token="garbage")
    )
    deny_body_ok(await read_reply(client.reader))  # the head of the line is ready: it leaves
    await eventually(lambda: registered == ["second"], "the later new token to be registered")
    await assert_silent(client.reader)  # everything behind the held-back check waits for it
    release.set()
    replies = [await read_reply(client.reader) for _ in range(4)]
    assert [(r.status, r.get("X-Auth-User")) for r in replies] == [
        (200, "first"), (200, "known"), (200, "second"), (401, None),
    ]
    deny_body_ok(replies[3])
    await assert_silent(client.reader)
    allow_ok(await client.ask(request(token=known_token)), "known")  # and the connection goes on


async def test_a_held_check_keeps_its_own_headers_while_later_requests_are_read(
    w: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new token's check waits on the store while known-token checks pipelined behind it
    are read and answered on the same connection (whose header buffer is reused between
    requests decided at once): the session it registers records its own request's device
    and address, not those of a later request."""
    known_token, _ = await w.known("known")
    store = w.services.store
    insert = store.insert
    release = asyncio.Event()
    inserted: list[Session] = []

    async def held_insert(session: Session, *, place: Place | None = None) -> tuple[Session, bool]:
        await release.wait()
        inserted.append(session)
        return await insert(session, place=place)

    monkeypatch.setattr(store, "insert", held_insert)
    firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
    curl = "curl/8.4.0"
    client = await w.connect()
    await client.send(
        request(token=mint(sub="held"), headers=[("User-Agent", firefox), ("X-Forwarded-For", "203.0.113.7")])
        + b"".join(
            request(token=known_token, headers=[("User-Agent", curl), ("X-Forwarded-For", "198.51.100.9")])
            for _ in range(3)
        )
    )
    await assert_silent(client.reader)  # the first answer is owed first
    release.set()
    replies = [await read_reply(client.reader) for _ in range(4)]
    assert [(r.status, r.get("X-Auth-User")) for r in replies] == [(200, "held")] + [(200, "known")] * 3
    [session] = inserted
    assert session.ip_address == "203.0.113.7"
    assert "Firefox" in session.device and "curl" not in session.device.lower()


# ---------------------------------------------------------------------- 4. bodies


async def test_content_length_body_is_consumed_and_never_parsed(w: Wire) -> None:
    """A body (Content-Length) holding a complete request with a valid token is thrown
    away: the POST is answered as itself (401, it has no token), the request after it on
    the connection is answered, and the bytes in the body never produce an answer."""
    inner_token, _ = await w.known("smuggled")
    after_token, _ = await w.known("after")
    client = await w.connect()
    inner = request(token=inner_token)
    await client.send(
        request(method="POST", body=inner) + request(token=after_token, headers=[("Connection", "close")])
    )
    deny_body_ok(await read_reply(client.reader))
    last = await read_reply(client.reader)
    allow_ok(last, "after")
    assert last.closes
    await assert_closed(client.reader)


async def test_chunked_body_with_trailers_is_consumed_and_never_parsed(w: Wire) -> None:
    """A chunked body (several chunks, a chunk extension, trailers) holding a complete
    request with a valid token is thrown away; the next request is answered normally."""
    inner_token, _ = await w.known("smuggled")
    after_token, _ = await w.known("after")
    client = await w.connect()
    inner = request(token=inner_token)
    half = len(inner) // 2
    chunked = (
        f"{half:x}\r\n".encode() + inner[:half] + b"\r\n"
        + f"{len(inner) - half:x};ext=1\r\n".encode() + inner[half:] + b"\r\n"
        + b"0\r\nX-Trailer: " + inner_token.encode() + b"\r\nX-Other: 1\r\n\r\n"
    )
    head = request(method="POST", headers=[("Transfer-Encoding", "chunked")])
    await client.send(head + chunked + request(token=after_token))
    deny_body_ok(await read_reply(client.reader))
    allow_ok(await read_reply(client.reader), "after")
    await assert_silent(client.reader)
    # The same, the body arriving in small pieces.
    await client.send(head)
    for i in range(0, len(chunked), 7):
        await client.send(chunked[i : i + 7])
    deny_body_ok(await read_reply(client.reader))
    allow_ok(await client.ask(request(token=after_token)), "after")
    await assert_silent(client.reader)


# ---------------------------------------------------------------------- 5. framing


async def _refused_400(w: Wire, data: bytes) -> None:
    """``data`` plus a valid pipelined request, in one write: exactly one 400 with
    Connection: close, then EOF; counted as malformed."""
    token, _ = await w.known(f"framing-{uuid.uuid4().hex[:6]}")
    before = w.listener.malformed
    client = await w.connect()
    await client.send(data + request(token=token))
    reply = await read_reply(client.reader)
    assert reply.status == 400, reply
    assert reply.closes
    assert reply.get("X-Auth-User") is None
    await assert_closed(client.reader)
    assert w.listener.malformed == before + 1


SMUGGLING = {
    "cl-then-te": [("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
    "te-then-cl": [("Transfer-Encoding", "chunked"), ("Content-Length", "5")],
    "te-not-chunked": [("Transfer-Encoding", "gzip")],
    "two-different-cl": [("Content-Length", "5"), ("Content-Length", "6")],
    "cl-list": [("Content-Length", "5, 6")],
    "cl-negative": [("Content-Length", "-5")],
}


@pytest.mark.parametrize("framing", SMUGGLING.values(), ids=SMUGGLING.keys())
@pytest.mark.parametrize("with_token", [False, True], ids=["no-token", "valid-token"])
async def test_ambiguous_body_framing_is_400_and_close(
    w: Wire, framing: list[tuple[str, str]], with_token: bool
) -> None:
    """Both Content-Length and Transfer-Encoding (either order), a Transfer-Encoding that
    is not chunked, or conflicting Content-Lengths: 400 and close, never 200 even with a
    valid token, and nothing after it on the connection is answered."""
    token = (await w.known("tess"))[0] if with_token else None
    await _refused_400(w, request(method="POST", token=token, headers=framing) + b"0\r\n\r\n")


async def test_invalid_chunk_size_is_400_and_close(w: Wire) -> None:
    """A chunk size that is not hex: 400 and close."""
    head = request(method="POST", headers=[("Transfer-Encoding", "chunked")])
    await _refused_400(w, head + b"zz\r\nhello\r\n0\r\n\r\n")


MALFORMED = {
    "garbage-line": b"HELLO WORLD\r\n\r\n",
    "tls-hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32 + b"\r\n\r\n",
    "space-in-target": b"GET /intro spect HTTP/1.1\r\nHost: x\r\n\r\n",
    "nul-in-header": b"GET /introspect HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "bare-lf-in-header": b"GET /introspect HTTP/1.1\r\nHost: x\r\nX-A: a\nX-B: b\r\n\r\n",
    "bare-lf-line-ends": b"GET /introspect HTTP/1.1\nHost: x\nX-A: a\n\n",
    "space-before-colon": b"GET /introspect HTTP/1.1\r\nHost: x\r\nAuthorization : Bearer x\r\n\r\n",
    "obs-fold": b"GET /introspect HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "header-without-colon": b"GET /introspect HTTP/1.1\r\nHost: x\r\nX-A\r\n\r\n",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_request_is_400_and_nothing_after_it_is_answered(w: Wire, data: bytes) -> None:
    """A request line or header llhttp cannot read strictly (garbage, TLS, HTTP/0.9, a NUL
    or a bare LF in a header, obs-fold, space before the colon): one 400, Connection:
    close, EOF; the valid request pipelined after it is never answered."""
    await _refused_400(w, data)


async def test_http_0_9_request_line_is_never_allowed_and_ends_the_connection(w: Wire) -> None:
    """An HTTP/0.9 request line (``GET /introspect``, no version, no headers), which llhttp
    reads: never a 200; at most one answer (a 400, or the check's 401 with Connection:
    close), then EOF; the valid request pipelined after it is never answered."""
    token, _ = await w.known("hugo")
    client = await w.connect()
    await client.send(b"GET /introspect\r\n\r\n" + request(token=token))
    reply = await read_reply(client.reader)
    assert reply.status in (400, 401), reply
    assert reply.closes
    await assert_closed(client.reader)


async def test_400_leaves_after_the_answers_owed_before_it(w: Wire) -> None:
    """A malformed request behind a check that waits for the store: the check's answer
    comes first, then the 400, then EOF."""
    client = await w.connect()
    await client.send(request(token=mint(sub="ivan")) + b"HELLO WORLD\r\n\r\n" + request())
    allow_ok(await read_reply(client.reader), "ivan")
    bad = await read_reply(client.reader)
    assert bad.status == 400 and bad.closes
    await assert_closed(client.reader)
    assert w.listener.malformed == 1


# ---------------------------------------------------------------------- 6. limits


async def _refused_with(w: Wire, client: Client, status: int) -> None:
    reply = await read_reply(client.reader)
    assert reply.status == status, reply
    assert reply.closes
    await assert_closed(client.reader)


async def test_request_target_over_16_kib_is_414_and_close(w: Wire) -> None:
    """A request line whose target exceeds 16 KiB: 414 and close (sent at once, and sent
    in pieces); a target just under the bound is an ordinary check."""
    token, _ = await w.known("judy")
    client = await w.connect()
    allow_ok(await client.ask(request("/introspect?" + "a" * (MAX_TARGET - 100), token=token)), "judy")
    long = request("/introspect?" + "a" * (MAX_TARGET + 1), token=token)
    await client.send(long)
    await _refused_with(w, client, 414)
    pieces = await w.connect()
    for i in range(0, len(long), 1024):
        pieces.writer.write(long[i : i + 1024])
        await pieces.writer.drain()
        await asyncio.sleep(0.001)
    await _refused_with(w, pieces, 414)
    assert w.listener.malformed == 2


@pytest.mark.parametrize("in_pieces", [False, True], ids=["one-write", "4-kib-pieces"])
async def test_one_header_over_64_kib_is_431_and_close(w: Wire, in_pieces: bool) -> None:
    """One header of 70 KiB (with a valid token in the request): 431 and close, never an
    answer as a check, whether the head arrives in one write or in pieces."""
    token, _ = await w.known("kate")
    client = await w.connect()
    data = request(token=token, headers=[("X-Big", "a" * (70 * 1024))])
    step = 4096 if in_pieces else len(data)
    for i in range(0, len(data), step):
        await client.send(data[i : i + step])
        if in_pieces:
            await asyncio.sleep(0.001)
    await _refused_with(w, client, 431)
    assert w.listener.malformed == 1


async def test_many_small_headers_over_64_kib_are_431(w: Wire) -> None:
    """2,000 small headers adding up to more than 64 KiB (each one ordinary): 431, close."""
    token, _ = await w.known("liam")
    client = await w.connect()
    many = [(f"X-H-{i}", "v" * 30) for i in range(2000)]
    await client.send(request(token=token, headers=many))
    await _refused_with(w, client, 431)


async def test_large_head_pipelined_behind_a_request_is_431(w: Wire) -> None:
    """A 100 KiB head right behind an ordinary request in the same write: the first is
    answered, the second gets 431 and the connection closes (the bound is per head, not
    per read)."""
    token, _ = await w.known("mia")
    client = await w.connect()
    await client.send(request(token=token) + request(token=token, headers=[("X-Big", "b" * (100 * 1024))]))
    allow_ok(await read_reply(client.reader), "mia")
    await _refused_with(w, client, 431)


async def test_head_trickled_past_64_kib_is_431_once_past_the_bound(w: Wire) -> None:
    """A head sent 1 KiB at a time that never ends: 431 and close as soon as it passes
    64 KiB, not after whatever the client goes on sending (the listener keeps no more than
    the bound of an unfinished head)."""
    client = await w.connect()
    await client.send(b"GET /introspect HTTP/1.1\r\nHost: x\r\n")
    sent = 0
    piece = b"X-Pad: " + b"p" * 1015 + b"\r\n"  # 1 KiB
    with contextlib.suppress(ConnectionError):
        while w.listener.malformed == 0 and sent < 4 * MAX_HEAD:
            client.writer.write(piece)
            await client.writer.drain()
            sent += len(piece)
            await asyncio.sleep(0.001)
    assert w.listener.malformed == 1
    assert sent <= MAX_HEAD + 4 * len(piece), f"refused only after {sent} bytes of head"
    reply = await read_reply(client.reader)
    assert reply.status == 431 and reply.closes
    await assert_closed(client.reader)


# ---------------------------------------------------------------------- 7. timeouts

TIMEOUTS = {"header_timeout_seconds": 0.3, "keepalive_timeout_seconds": 0.5}


async def _time_to_close(client: Client) -> float:
    started = time.monotonic()
    await assert_closed(client.reader, within=3.0)
    return time.monotonic() - started


async def test_silent_connection_is_closed_after_the_header_timeout(start_wire: StartWire) -> None:
    """A connection that sends nothing is closed about header_timeout_seconds after it
    opened (0.3 s here), without an answer, and counted in timed_out."""
    w = await start_wire(server=TIMEOUTS)
    client = await w.connect()
    elapsed = await _time_to_close(client)
    assert 0.15 <= elapsed <= 1.0, elapsed
    assert w.listener.timed_out == 1
    await eventually(lambda: not w.listener.connections, "the connection to be forgotten")


async def test_trickled_head_is_closed_after_the_header_timeout(start_wire: StartWire) -> None:
    """A head sent one byte every 0.1 s (each byte is progress, but the head is never
    done): closed about header_timeout_seconds after its first byte."""
    w = await start_wire(server=TIMEOUTS)
    client = await w.connect()
    head = request(token=mint(sub="nick"))
    closed = asyncio.get_running_loop().create_task(_time_to_close(client))
    sent = 0
    with contextlib.suppress(ConnectionError):
        while not closed.done() and sent < len(head) - 4:
            client.writer.write(head[sent : sent + 1])
            sent += 1
            await asyncio.sleep(0.1)
    elapsed = await closed
    assert 0.15 <= elapsed <= 1.0, elapsed
    assert sent < 15, f"{sent} bytes trickled before the close"
    assert w.listener.timed_out == 1


async def test_trickled_body_is_closed_after_the_header_timeout(start_wire: StartWire) -> None:
    """A complete head announcing a 1,000-byte body, the body then sent a byte every 0.1 s:
    closed about header_timeout_seconds after the request began, never answered."""
    w = await start_wire(server=TIMEOUTS)
    client = await w.connect()
    closed = asyncio.get_running_loop().create_task(_time_to_close(client))
    await client.send(request(method="POST", headers=[("Content-Length", "1000")]))
    sent = 0
    with contextlib.suppress(ConnectionError):
        while not closed.done() and sent < 100:
            client.writer.write(b"x")
            sent += 1
            await asyncio.sleep(0.1)
    elapsed = await closed
    assert 0.15 <= elapsed <= 1.0, elapsed
    assert w.listener.timed_out == 1


async def test_connection_waiting_for_its_answer_is_not_timed_out(
    start_wire: StartWire, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check held on the store for 0.8 s (past both timeouts): the connection is not
    closed while the answer is owed; the answer arrives, then the keep-alive timeout runs
    from it."""
    w = await start_wire(server=TIMEOUTS)
    gate = Gate(w.services, monkeypatch)
    client = await w.connect()
    await client.send(request(token=mint(sub="pia")))
    await eventually(lambda: gate.waiting == 1, "the check to wait on the store")
    await asyncio.sleep(0.8)
    assert w.listener.timed_out == 0 and len(w.listener.connections) == 1
    gate.release()
    allow_ok(await read_reply(client.reader), "pia")
    elapsed = await _time_to_close(client)
    assert 0.3 <= elapsed <= 1.3, elapsed
    assert w.listener.timed_out == 1


async def test_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(start_wire: StartWire) -> None:
    """After an answer (decided at once or by a task), a connection that sends nothing
    more is closed about keepalive_timeout_seconds later (0.5 s here)."""
    w = await start_wire(server=TIMEOUTS)
    token, _ = await w.known("olga")
    for t in (token, mint(sub="olga")):
        client = await w.connect()
        allow_ok(await client.ask(request(token=t)), "olga")
        elapsed = await _time_to_close(client)
        assert 0.3 <= elapsed <= 1.3, elapsed
    assert w.listener.timed_out == 2


async def test_connection_sending_requests_steadily_stays_open(start_wire: StartWire) -> None:
    """Requests every 0.1 s for 1.2 s (past both timeouts): every one is answered, the
    connection is never closed, nothing times out."""
    w = await start_wire(server=TIMEOUTS)
    token, _ = await w.known("pete")
    client = await w.connect()
    deadline = time.monotonic() + 1.2
    i = 0
    while time.monotonic() < deadline:
        t = mint(sub="pete") if i % 4 == 3 else token  # now and then one that reads the store
        allow_ok(await client.ask(request(token=t)), "pete")
        i += 1
        await asyncio.sleep(0.1)
    assert i >= 8
    assert w.listener.timed_out == 0
    assert len(w.listener.connections) == 1


# ---------------------------------------------------------------------- 8. connections


async def test_connections_past_max_connections_get_503_and_close(start_wire: StartWire) -> None:
    """max_connections=2: a third connection gets 503 and close while two are open (both
    still served); once one closes, a new connection is served."""
    w = await start_wire(server={"max_connections": 2})
    token, _ = await w.known("quinn")
    await eventually(lambda: not w.listener.connections, "the registering connection to end")
    first, second = await w.connect(), await w.connect()
    await eventually(lambda: len(w.listener.connections) == 2, "two connections")
    third = await w.connect()
    refused = await read_reply(third.reader)
    assert refused.status == 503 and refused.closes
    await assert_closed(third.reader)
    assert w.listener.refused_connections == 1
    allow_ok(await first.ask(request(token=token)), "quinn")
    allow_ok(await second.ask(request(token=token)), "quinn")
    first.writer.close()
    await eventually(lambda: len(w.listener.connections) == 1, "the closed connection to be forgotten")
    fourth = await w.connect()
    allow_ok(await fourth.ask(request(token=token)), "quinn")
    deny_body_ok(await fourth.ask(request()))
    assert w.listener.refused_connections == 1


# ---------------------------------------------------------------------- 9. backpressure


async def test_reading_pauses_while_answers_cannot_leave_and_all_arrive_in_order(start_wire: StartWire) -> None:
    """3,000 pipelined checks of known tokens (ten users in turn) on a client that does
    not read: the connection stops being read (read_paused_by non-empty, and it stays so);
    then the client reads exactly 3,000 answers, all 200, in request order.

    The kernel's buffers are kept small on both ends (the loopback send buffer otherwise
    grows to megabytes and takes every answer), so it is the listener's own buffer that
    fills, as behind a gateway that stopped reading."""
    w = await start_wire(sndbuf=8192)
    tokens = [(await w.known(f"user{i}"))[0] for i in range(10)]
    client = await w.connect(rcvbuf=4096)
    count = 3000
    client.writer.write(b"".join(request(token=tokens[i % 10]) for i in range(count)))
    conn = w.server_side(client)
    await eventually(lambda: bool(conn.read_paused_by), "reading to be paused")
    for _ in range(20):
        await asyncio.sleep(0.01)
        assert conn.read_paused_by, "reading resumed while the client reads nothing"
    users = []
    for _ in range(count):
        reply = await read_reply(client.reader)
        assert reply.status == 200, reply
        users.append(reply.get("X-Auth-User"))
    assert users == [f"user{i % 10}" for i in range(count)]
    await assert_silent(client.reader)
    assert not conn.read_paused_by
    allow_ok(await client.ask(request(token=tokens[0])), "user0")


async def test_reading_pauses_while_answers_wait_behind_a_slow_check(
    w: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new token's check held on the store, then 3,000 pipelined known-token checks
    (ready at once, but owed after it): the connection stops being read once answers
    wait in line, so what it holds stays far below what the client sent; released, all
    3,001 answers arrive in request order."""
    tokens = [(await w.known(f"user{i}"))[0] for i in range(10)]
    gate = Gate(w.services, monkeypatch)
    client = await w.connect()
    count = 3000
    client.writer.write(request(token=mint(sub="slow")) + b"".join(request(token=tokens[i % 10]) for i in range(count)))
    await eventually(lambda: gate.waiting == 1, "the first check to wait on the store")
    conn = w.server_side(client)
    await asyncio.sleep(0.1)  # let the listener read whatever it is going to read
    held = len(conn.waiting)
    assert "waiting" in conn.read_paused_by, f"still reading with {held} answers waiting in line"
    assert held < count // 2, f"{held} answers held in memory behind one slow check"
    gate.release()
    users = [(await read_reply(client.reader)).get("X-Auth-User") for _ in range(count + 1)]
    assert users == ["slow"] + [f"user{i % 10}" for i in range(count)]
    await assert_silent(client.reader)
    assert not conn.read_paused_by


# ---------------------------------------------------------------------- 10. overload


async def test_past_max_concurrent_checks_a_waiting_check_gets_503_but_a_known_token_200(
    start_wire: StartWire, monkeypatch: pytest.MonkeyPatch
) -> None:
    """max_concurrent_checks=1 with the store held: while one new token's check waits, a
    second new token (another connection) gets 503 with Retry-After: 1 and no-store; a
    known token meanwhile gets 200 at once (a check that waits for nothing is never
    refused). Released, the waiting check is answered 200."""
    w = await start_wire(server={"max_concurrent_checks": 1})
    known, _ = await w.known("rita")
    gate = Gate(w.services, monkeypatch)
    waiting = await w.connect()
    await waiting.send(request(token=mint(sub="sam")))
    await eventually(lambda: gate.waiting == 1, "the first check to wait on the store")
    other = await w.connect()
    refused = await other.ask(request(token=mint(sub="tom")))
    assert refused.status == 503, refused
    assert refused.get("Retry-After") == "1" and refused.get("Cache-Control") == "no-store"
    assert refused.get("X-Auth-User") is None
    assert not refused.closes  # overload is an answer, not a broken connection
    allow_ok(await other.ask(request(token=known)), "rita")
    third = await w.connect()
    allow_ok(await third.ask(request(token=known)), "rita")
    assert w.services.metrics.check.overloaded == 1
    await assert_silent(waiting.reader)
    gate.release()
    allow_ok(await read_reply(waiting.reader), "sam")
    allow_ok(await other.ask(request(token=mint(sub="tom"))), "tom")  # and with room again, served


# ---------------------------------------------------------------------- 11. fail closed


def _raise_runtime(*args: object) -> None:
    raise RuntimeError("boom")


@pytest.mark.parametrize("target", ["verifier.cached_bearer_bytes", "sessions.check_now"])
async def test_an_unexpected_error_in_the_check_is_a_401(
    w: Wire, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    """The token shortcut or the in-memory session check raising RuntimeError: a known
    token and a new one both get the plain 401 (never 200, never a 5xx), counted as
    internal_error; the connection keeps serving."""
    known, _ = await w.known("uma")
    owner, name = target.split(".")
    monkeypatch.setattr(getattr(w.services.check, owner), name, _raise_runtime)
    client = await w.connect()
    for token in (known, mint(sub="uma"), None):
        reply = await client.ask(request(token=token))
        deny_body_ok(reply)
    assert w.services.metrics.check.denied.get("internal_error", 0) >= 2


async def test_store_unavailable_for_a_new_token_is_a_401(w: Wire, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store raising StoreUnavailableError while a new token's session is read: 401,
    counted as store_unavailable; a known token is still answered from memory."""
    known, _ = await w.known("vera")

    async def down(session_key: str) -> Session | None:
        raise StoreUnavailableError("store down")

    monkeypatch.setattr(w.services.store, "get_by_key", down)
    client = await w.connect()
    deny_body_ok(await client.ask(request(token=mint(sub="walt"))))
    assert w.services.metrics.check.denied.get("store_unavailable") == 1
    allow_ok(await client.ask(request(token=known)), "vera")


# ---------------------------------------------------------------------- 12. drain


async def test_shutdown_closes_idle_connections_answers_the_waiting_check_then_refuses(
    w: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    """shutdown(grace=2): an idle connection is closed at once; a connection whose new
    token's check is waiting on the held store gets its answer when the store is released
    after shutdown began (with Connection: close), then EOF; new connections are refused
    from the moment shutdown starts."""
    known, _ = await w.known("xena")
    idle = await w.connect()
    allow_ok(await idle.ask(request(token=known)), "xena")
    gate = Gate(w.services, monkeypatch)
    busy = await w.connect()
    await busy.send(request(token=mint(sub="yuri")))
    await eventually(lambda: gate.waiting == 1, "the check to wait on the store")
    port = w.listener.port
    started = time.monotonic()
    shutdown = asyncio.get_running_loop().create_task(w.listener.shutdown(grace=2))
    await assert_closed(idle.reader, within=1.0)
    assert time.monotonic() - started < 0.5
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    await assert_silent(busy.reader)
    gate.release()
    reply = await read_reply(busy.reader)
    allow_ok(reply, "yuri")
    assert reply.closes, f"the answer owed at shutdown does not say Connection: close: {reply.headers}"
    await assert_closed(busy.reader, within=1.0)
    await asyncio.wait_for(shutdown, 3.0)
    assert time.monotonic() - started < 1.5  # it did not sit out the grace period
    assert not w.listener.connections


# ---------------------------------------------------------------------- 13. X-Request-Id


async def test_request_id_reaches_the_deny_log_record_and_is_not_left_set(
    w: Wire, caplog: pytest.LogCaptureFixture
) -> None:
    """A deny with X-Request-Id: abc-123 logs a "sidecar.web.introspect" record carrying
    request id abc-123, both for a deny by a task (no token) and one decided at once (a
    known token of a revoked session); the next deny without the header has no request id."""
    caplog.set_level(logging.INFO, logger="sidecar.web.introspect")
    caplog.handler.addFilter(_RequestIdFilter())
    token, session_id = await w.known("zoe")
    await w.services.sessions.revoke(session_id, "zoe")
    client = await w.connect()

    async def deny_records(token: str | None, headers: Sequence[tuple[str, str]]) -> list[logging.LogRecord]:
        caplog.clear()
        deny_body_ok(await client.ask(request(token=token, headers=headers)))
        records = [r for r in caplog.records if r.name == "sidecar.web.introspect"]
        assert records, "no check log record for the deny"
        return records

    tagged = [("X-Request-Id", "abc-123")]
    for t in (None, token):
        assert [getattr(r, "request_id", "unset") for r in await deny_records(t, tagged)] == ["abc-123"]
        assert [getattr(r, "request_id", "unset") for r in await deny_records(t, [])] == [None]
    unsafe = [("X-Request-Id", "abc 123 <script>")]
    assert [getattr(r, "request_id", "unset") for r in await deny_records(None, unsafe)] == ["invalid"]


# ---------------------------------------------------------------------- 14. Expect, Upgrade


async def test_expect_100_continue_gets_the_interim_answer_then_the_check(w: Wire) -> None:
    """``Expect: 100-continue`` with a body: "HTTP/1.1 100 Continue" arrives before the
    body is sent, then the final answer once it is; the connection goes on."""
    token, _ = await w.known("abe")
    client = await w.connect()
    for t, sub in ((token, "abe"), (mint(sub="ben"), "ben")):
        head = request(method="POST", token=t, headers=[("Expect", "100-continue"), ("Content-Length", "5")])
        await client.send(head)
        interim = await read_reply(client.reader)
        assert (interim.status, interim.reason, interim.headers) == (100, "Continue", [])
        await assert_silent(client.reader)  # nothing more until the body is there
        await client.send(b"hello")
        allow_ok(await read_reply(client.reader), sub)
    deny_body_ok(await client.ask(request()))


@pytest.mark.parametrize("token_kind", ["none", "known", "new"])
async def test_upgrade_request_is_answered_as_a_check_then_closed(w: Wire, token_kind: str) -> None:
    """``Upgrade: websocket`` + ``Connection: upgrade``: answered as a check (401 without
    a token, 200 with one) with Connection: close, then EOF; the request pipelined after
    it (which is not HTTP any more) is never answered."""
    token = {"none": None, "known": (await w.known("cleo"))[0], "new": mint(sub="cleo")}[token_kind]
    client = await w.connect()
    upgrade = request(
        token=token,
        headers=[("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
                 ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")],
    )
    await client.send(upgrade + request(token=token))
    reply = await read_reply(client.reader)
    if token is None:
        deny_body_ok(reply)
    else:
        allow_ok(reply, "cleo")
    assert reply.closes
    await assert_closed(client.reader)


# ---------------------------------------------------------------------- 15. metrics


async def test_check_metrics_count_the_listeners_allows_and_denies(w: Wire) -> None:
    """Allows (new token via a task, known token at once) and denies (no token, bad
    token, revoked session) through the listener are counted in metrics.check; a 404 and
    a 400 are not decisions and count in neither."""
    stats = w.services.metrics.check
    allowed, denied = stats.allowed, sum(stats.denied.values())
    client = await w.connect()
    token = mint(sub="dora")
    for t in (token, token, token):
        allow_ok(await client.ask(request(token=t)), "dora")
    deny_body_ok(await client.ask(request()))
    deny_body_ok(await client.ask(request(token="garbage")))
    assert (await client.ask(request("/elsewhere", token=token))).status == 404
    assert stats.allowed == allowed + 3
    assert sum(stats.denied.values()) == denied + 2
    assert stats.denied.get("missing_token") == 1
    bad = await client.ask(b"HELLO\r\n\r\n")
    assert bad.status == 400
    assert (stats.allowed, sum(stats.denied.values())) == (allowed + 3, denied + 2)
