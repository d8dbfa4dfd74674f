"""The check listener: the gateway check on HTTP/1.1 as gateways speak it, without a framework.

Each connection is an ``asyncio.Protocol`` feeding llhttp (``httptools``). A complete
request becomes ``RequestFacts``; ``CheckCore.decide_now`` answers a known token inside
``data_received`` (no task, no request or response object: an answer is a few byte
strings joined), and only what needs the store or the keys goes to a task. Answers leave
in request order whichever way they were decided (pipelining, RFC 9112 section 9.3.2).

What an attacker may send is bounded: llhttp's strict parsing (a request with both
``Content-Length`` and ``Transfer-Encoding``, a bad chunk, a bad header) -> 400 and close;
a request line over ``MAX_TARGET`` -> 414, a head over ``MAX_HEAD`` -> 431, both closing;
a head (and body) not complete within ``server.header_timeout_seconds`` of its first byte
or of the connection opening -> closed; an idle keep-alive connection closed after
``server.keepalive_timeout_seconds``; at most ``server.max_connections`` open (past it: 503
and close); no reading while the transport's write buffer is full or too many answers
wait in line. Bodies are read and thrown away. Nothing here ever answers 200 except
``CheckCore``'s allow.

The socket is TCP or, with ``check.unix_socket``, a Unix domain socket (bound by
``sidecar.server.bind_unix``); on the latter a connection has no address and its peer is
``UNIX_PEER``, a trusted proxy for the client address; all the bounds above are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import socket
import time
from collections import deque
from typing import Final, cast

import httptools

from sidecar.check import CHECK_PREFIX, Answer, CheckCore, is_check_target
from sidecar.config import Settings
from sidecar.enrich.client_ip import UNIX_PEER
from sidecar.facts import RequestFacts

log = logging.getLogger(__name__)
access_log = logging.getLogger("sidecar.access")

# The request line's target; nginx and Envoy send the client's path, which browsers keep
# far below this. Same bound as the aiohttp listener's line size.
MAX_TARGET: Final = 16 * 1024
# Every header of one request together (aiohttp bounds each field to 16 KiB; a gateway's
# check request carries a token, a few forwarded headers and the client's cookies).
MAX_HEAD: Final = 64 * 1024
# Answers waiting in line on one connection (pipelined requests behind one that reads the
# store) before the connection stops being read; reading resumes when the line is short.
MAX_WAITING: Final = 32
RESUME_WAITING: Final = 8

_REASONS: Final = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 408: "Request Timeout",
    414: "URI Too Long", 431: "Request Header Fields Too Large", 503: "Service Unavailable",
}


def _plain(status: int, message: str) -> Answer:
    return Answer(status, (("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")),
                  message.encode() + b"\n")


BAD_REQUEST: Final = _plain(400, "Bad request")
NOT_FOUND: Final = _plain(404, "Not found: the check listener answers /introspect and the paths under it")
TARGET_TOO_LONG: Final = _plain(414, "Request target too long")
HEAD_TOO_LARGE: Final = _plain(431, "Request header fields too large")
TOO_MANY: Final = _plain(503, "Too many connections")


class _RawHeaders:
    """A request's headers as llhttp gave them (lower-case name bytes -> value bytes),
    decoded only when the check asks for one: most are never read."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[bytes, list[bytes]] = {}

    def getall(self, key: str, default: list[str], /) -> list[str]:
        found = self.values.get(_NAMES.get(key) or key.encode("latin-1"))
        if found is None:
            return default
        return [v.decode("utf-8", "surrogateescape") for v in found]

    def get(self, key: str, /) -> str | None:
        found = self.values.get(_NAMES.get(key) or key.encode("latin-1"))
        return found[0].decode("utf-8", "surrogateescape") if found else None


# The names the check reads, encoded once.
_NAMES: Final = {
    name: name.encode()
    for name in (
        "authorization", "cookie", "user-agent", "x-forwarded-for", "x-real-ip", "x-request-id",
        "x-original-method", "x-original-uri", "x-forwarded-method", "x-forwarded-uri", "expect",
    )
}
_METHODS: Final = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
_TARGETS: Final = {CHECK_PREFIX.encode(): CHECK_PREFIX}  # what nginx sends, decoded once


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing with this answer, then close."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer


def _encode(answer: Answer, close: bool, head: bool, date: bytes) -> bytes:
    """The answer on the wire; the parts around the Date line are kept on the answer, and
    the whole keep-alive answer to a GET for as long as the Date line stays the same."""
    if not close and not head:
        now = answer.wire_now
        if now is not None and now[0] is date:
            return now[1]
        parts = answer.wire.get((False, False)) or _parts(answer, False, False)
        encoded = parts[0] + date + parts[1]
        answer.wire_now = (date, encoded)
        return encoded
    parts = answer.wire.get((close, head)) or _parts(answer, close, head)
    return parts[0] + date + parts[1]


def _parts(answer: Answer, close: bool, head: bool) -> tuple[bytes, bytes]:
    """One variant's bytes before and after the Date line, made once and kept on the answer."""
    variant = (close, head)
    lines = [f"HTTP/1.1 {answer.status} {_REASONS[answer.status]}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in answer.headers)
    lines.append(f"Content-Length: {len(answer.body)}\r\n")
    if close:
        lines.append("Connection: close\r\n")
    parts = answer.wire[variant] = ("".join(lines).encode(), b"\r\n" + (b"" if head else answer.body))
    return parts


class _Clock:
    """The listener's coarse clock and Date header, moved on by its ticker (a deadline
    needs no more than the tick's precision, and no connection pays for a time call)."""

    __slots__ = ("date", "now")

    def __init__(self) -> None:
        self.now = 0.0
        self.date = b""
        self.tick()

    def tick(self) -> None:
        self.now = time.monotonic()
        self.date = b"Date: " + email.utils.formatdate(usegmt=True).encode() + b"\r\n"


class _Slot:
    """One answer owed, in request order (encoded when it leaves: by then the listener may
    be draining, and the last answer must say that the connection closes)."""

    __slots__ = ("answer", "close", "head")

    def __init__(self, close: bool, head: bool, answer: Answer | None = None) -> None:
        self.close = close
        self.head = head
        self.answer = answer


class CheckProtocol(asyncio.Protocol):
    """One connection of the check listener."""

    def __init__(self, listener: CheckListener) -> None:
        self.listener = listener
        self.core = listener.core
        self.clock = listener.clock
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self.deadline = 0.0  # 0: none (an answer is being worked out)
        self.waiting: deque[_Slot] = deque()
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False  # no more requests are read: answer what is owed, then close
        self.in_message = False
        self.in_head = True  # reading a request head (unparsed bytes are counted)
        self.unparsed = 0  # bytes received while a head is being read (partial heads)
        self.head_bytes = 0  # the current request's line and headers, as parsed
        self.read_paused_by: set[str] = set()
        # The request being read.
        self.target = b""
        self.headers = _RawHeaders()
        self.headers_kept = False

    # ------------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not a subclass of asyncio.Transport, but is one).
        self.transport = transport = cast(asyncio.Transport, transport)
        listener = self.listener
        if len(listener.connections) >= listener.max_connections:
            listener.refused_connections += 1
            transport.write(_encode(TOO_MANY, True, False, self.clock.date))
            transport.close()
            self.closing = True
            return
        listener.connections.add(self)
        if listener.unix:
            # No address, no Nagle: who connects here could open the socket file.
            self.peer = UNIX_PEER
        else:
            peername = transport.get_extra_info("peername")
            if isinstance(peername, tuple) and peername:
                self.peer = str(peername[0])
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.deadline = self.clock.now + listener.header_timeout

    def eof_received(self) -> bool:
        """The client sent everything it will send: answer what is owed, then close."""
        self.closing = True
        self.deadline = 0.0
        return bool(self.waiting)  # True keeps the transport open for those answers

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.connections.discard(self)
        self.closing = True
        for task in self.tasks:
            task.cancel()
        self.waiting.clear()

    def pause_writing(self) -> None:
        self._pause("writing")

    def resume_writing(self) -> None:
        self._resume("writing")

    def _pause(self, why: str) -> None:
        if not self.read_paused_by and self.transport is not None:
            self.transport.pause_reading()
        self.read_paused_by.add(why)

    def _resume(self, why: str) -> None:
        self.read_paused_by.discard(why)
        if not self.read_paused_by and self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.in_head:
            self.unparsed += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            cause = e.__cause__ or e.__context__
            self._refuse(cause.answer if isinstance(cause, _Refused) else BAD_REQUEST)
            return
        except httptools.HttpParserUpgrade:
            # An Upgrade or CONNECT request: answered as a check (on_message_complete ran);
            # nothing after it can be read as HTTP/1.1, so the connection ends with it.
            self._finish()
            return
        except httptools.HttpParserError:
            self._refuse(BAD_REQUEST)
            return
        if self.in_head and self.unparsed > MAX_HEAD:
            self._refuse(HEAD_TOO_LARGE)

    def _refuse(self, answer: Answer) -> None:
        """Answer a request that cannot be read (after what is owed), then close: nothing
        after it on this connection can be trusted to be framed as the client meant."""
        if self.closing:
            return
        self.listener.malformed += 1
        self._owe(answer, close=True, head=False)
        self._finish()

    def _finish(self) -> None:
        """Read nothing more; close once every answer owed has left."""
        self.closing = True
        self.deadline = 0.0
        if not self.waiting and self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        self.in_message = True
        self.target = b""
        self.head_bytes = 0
        if self.headers_kept:  # the last request's headers went to a task: they stay its own
            self.headers = _RawHeaders()
            self.headers_kept = False
        else:
            self.headers.values.clear()
        self.deadline = self.clock.now + self.listener.header_timeout

    def on_url(self, url: bytes) -> None:
        self.target += url
        if len(self.target) > MAX_TARGET:
            raise _Refused(TARGET_TOO_LONG)
        self.head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Every head is bounded however its bytes arrive (in one read, in many, behind
        # another request): counted as parsed here, and while partial in data_received.
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > MAX_HEAD:
            raise _Refused(HEAD_TOO_LARGE)
        self.headers.values.setdefault(name.lower(), []).append(value)

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.unparsed = 0
        expect = self.headers.values.get(b"expect")
        if (
            expect is not None
            and expect[0].lower() == b"100-continue"
            and not self.waiting
            and not self.closing
            and self.transport is not None
        ):
            # The client waits before sending its body; the answer does not depend on it.
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_message_complete(self) -> None:
        self.in_message = False
        self.in_head = True
        if self.closing:
            return  # pipelined after a request that ends the connection: never answered
        parser = self.parser
        headers = self.headers
        close = (
            not parser.should_keep_alive()
            # HTTP/1.0 closes even when it asks for keep-alive (without a Connection header
            # llhttp already says "close" for any version but 1.1; the version string is
            # built only when there is one).
            or (b"connection" in headers.values and parser.get_http_version() != "1.1")
            or parser.should_upgrade()
            or self.listener.draining
        )
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("ascii", "replace")
        target = _TARGETS.get(self.target) or self.target.decode("utf-8", "surrogateescape")
        head = method == "HEAD"
        answer = NOT_FOUND
        if target is CHECK_PREFIX or is_check_target(target):
            found = headers.values.get(b"authorization")
            raw = found[0] if found is not None and len(found) == 1 else None
            facts = RequestFacts(method, target, headers, self.peer, raw)
            now = self.core.decide_now(facts)
            if now is not None:
                answer = now
            else:
                slot = _Slot(close, head)
                self.waiting.append(slot)
                self.headers_kept = True
                task = asyncio.get_running_loop().create_task(self._decide(slot, facts))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
                self._check_line()
                self._after_message(close)
                return
        if self.listener.access_log:
            access_log.info("%s %s %d", method, target[:200], answer.status)
        if not self.waiting and not close and self.transport is not None:
            # The gateway's every request: the answer leaves now, the connection stays open.
            self.transport.write(_encode(answer, False, head, self.clock.date))
            self.deadline = self.clock.now + self.listener.keepalive_timeout
            return
        self._owe(answer, close, head)
        self._after_message(close)

    def _after_message(self, close: bool) -> None:
        if close:
            self._finish()
        elif self.waiting:
            self.deadline = 0.0
        else:
            self.deadline = self.clock.now + self.listener.keepalive_timeout

    # ------------------------------------------------------------------ answering

    def _owe(self, answer: Answer, close: bool, head: bool) -> None:
        if not self.waiting and self.transport is not None:
            self.transport.write(_encode(answer, close, head, self.clock.date))
            return
        self.waiting.append(_Slot(close, head, answer))
        self._check_line()

    def _check_line(self) -> None:
        if len(self.waiting) >= MAX_WAITING:
            self._pause("waiting")

    async def _decide(self, slot: _Slot, facts: RequestFacts) -> None:
        answer = await self.core.decide(facts)
        if self.listener.access_log:
            access_log.info("%s %s %d", facts.method, facts.target[:200], answer.status)
        slot.answer = answer
        self._flush()

    def _flush(self) -> None:
        transport = self.transport
        waiting = self.waiting
        if transport is None:
            return
        while waiting and (answer := waiting[0].answer) is not None:
            slot = waiting.popleft()
            # The last answer of a connection that closes after it says so.
            close = slot.close or (self.closing and not waiting) or (
                self.listener.draining and not waiting and not self.in_message
            )
            transport.write(_encode(answer, close, slot.head, self.clock.date))
            if close:
                waiting.clear()
                self.closing = True
                transport.close()
                return
        if len(waiting) <= RESUME_WAITING and "waiting" in self.read_paused_by:
            self._resume("waiting")
        if not waiting:
            if self.closing:
                transport.close()
            elif not self.in_message:
                self.deadline = self.clock.now + self.listener.keepalive_timeout

    # ------------------------------------------------------------------ the listener's calls

    def expire(self, now: float) -> None:
        """Close the connection when its deadline passed (a trickling or idle client)."""
        if self.deadline and now > self.deadline and self.transport is not None:
            self.listener.timed_out += 1
            self.closing = True
            self.transport.close()

    def drain(self) -> None:
        """Shutting down: close at once when idle, else after the answers owed."""
        if not self.in_message and not self.waiting:
            self.closing = True
            if self.transport is not None:
                self.transport.close()


class CheckListener:
    """The check listener of one process: its connections, ticker and shutdown."""

    def __init__(self, core: CheckCore, settings: Settings) -> None:
        self.core = core
        self.clock = _Clock()
        server = settings.server
        self.max_connections = server.max_connections
        self.header_timeout = server.header_timeout_seconds
        self.keepalive_timeout = server.keepalive_timeout_seconds
        self.access_log = server.access_log
        self.connections: set[CheckProtocol] = set()
        self.draining = False
        self.refused_connections = 0
        self.timed_out = 0
        self.malformed = 0
        self.unix = False  # on a Unix domain socket (set by start)
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        # The deadlines' precision: a quarter of the shortest timeout, at most 1 s.
        self._tick = max(0.01, min(1.0, self.header_timeout / 4, self.keepalive_timeout / 4))

    async def start(self, sock: socket.socket) -> None:
        """Serve on ``sock``, a bound TCP or Unix domain stream socket."""
        loop = asyncio.get_running_loop()
        self.unix = sock.family == socket.AF_UNIX
        if self.unix:
            self._server = await loop.create_unix_server(lambda: CheckProtocol(self), sock=sock, backlog=1024)
        else:
            self._server = await loop.create_server(lambda: CheckProtocol(self), sock=sock, backlog=1024)
        self._ticker = loop.create_task(self._run_ticker())

    async def _run_ticker(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            self.clock.tick()
            now = self.clock.now
            for conn in list(self.connections):
                conn.expire(now)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting; answer what is in flight (for up to ``grace`` seconds), closing
        idle connections at once; then close whatever is left."""
        if self._server is not None:
            self._server.close()
        self.draining = True
        for conn in list(self.connections):
            conn.drain()
        deadline = time.monotonic() + grace
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            for conn in list(self.connections):
                conn.drain()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the check listener is not started")
        if self.unix:
            raise RuntimeError("the check listener is on a Unix domain socket: it has no port")
        return int(self._server.sockets[0].getsockname()[1])
