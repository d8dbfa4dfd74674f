"""What a listener does before a request reaches the app: the connection cap, the header
timeout, and what a malformed request leaves in the log and in its 400.

``GuardedSockSite`` is an aiohttp site (``web.BaseSite``, the documented way to say how a
runner accepts connections) whose protocol factory

- refuses a connection past ``server.max_connections`` open on that listener with an
  immediate ``503`` and close, instead of holding it until file descriptors run out;
- closes a connection that has not sent a complete request head within
  ``server.header_timeout_seconds`` of opening (a client that connects and never speaks,
  or trickles). After its first request, a connection is aiohttp's: idle or part-sent, it
  is closed ``server.keepalive_timeout_seconds`` after its last response;
- builds each connection's ``RequestHandler`` with the runner's own kwargs, so that the
  handler, the router and ``checks_first`` are exactly those of ``AppRunner``.

aiohttp's HTTP parser quotes the offending header line in the exception it raises, an
``Authorization: Bearer <token>`` line included, and logs it at ERROR with a traceback and
sends it back as the 400 body. ``server_logger`` (passed to every handler as ``logger``, a
documented ``RequestHandler`` kwarg) turns that record into one INFO line naming the error
class and the peer; the handler here answers a plain ``400 Bad Request``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import weakref
from collections.abc import MutableMapping
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger(__name__)

# The end of a request head: CRLF CRLF, or bare LF LF where a lenient parser takes it.
_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 21\r\n"
    b"Retry-After: 1\r\n"
    b"Cache-Control: no-store\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"too many connections\n"
)
_REFUSAL_LOG_INTERVAL = 10.0


class _ServerLogger(logging.LoggerAdapter[logging.Logger]):
    """``aiohttp.server``, except that a request the HTTP parser refused is one INFO line
    (error class and peer), never the exception text (it quotes the request's bytes) nor
    a traceback."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        exc = sys.exc_info()[1] if exc_info is True else exc_info
        if isinstance(exc_info, tuple):
            exc = exc_info[1]
        if isinstance(exc, HttpProcessingError):
            # aiohttp's message here is "Error handling request from %s" % request.remote.
            peer = args[0] if args and msg == "Error handling request from %s" else "an unknown peer"
            if self.logger.isEnabledFor(logging.INFO):
                self.logger.info("http: malformed request from %s refused (%s)", peer, type(exc).__name__)
            return
        super().log(level, msg, *args, **kwargs)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return msg, kwargs


def server_logger() -> logging.LoggerAdapter[logging.Logger]:
    """The ``logger`` for every RequestHandler of the sidecar."""
    return _ServerLogger(logging.getLogger("aiohttp.server"))


class _Listener:
    """Per listener: the open connections and the limits that apply to them."""

    def __init__(
        self, server: web.Server, name: str, *, max_connections: int, header_timeout: float,
        handler_kwargs: dict[str, Any],
    ) -> None:
        self.server = server
        self.name = name
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.handler_kwargs = handler_kwargs
        # Weak, so that a handler whose connection never got made (setup failed) cannot
        # hold a place forever; an open connection's handler is held by its transport.
        self.open: weakref.WeakSet[_Handler] = weakref.WeakSet()
        self.refused = 0
        self._refusal_logged_at = -_REFUSAL_LOG_INTERVAL

    def __call__(self) -> asyncio.Protocol:
        loop = asyncio.get_running_loop()
        if len(self.open) >= self.max_connections:
            self.refused += 1
            now = loop.time()
            if now - self._refusal_logged_at >= _REFUSAL_LOG_INTERVAL:
                self._refusal_logged_at = now
                log.warning(
                    "%s listener: %d connections open (server.max_connections); refusing new ones "
                    "with 503 (%d refused so far)", self.name, len(self.open), self.refused,
                )
            return _Refuse()
        handler = _Handler(self, self.server, loop=loop, **self.handler_kwargs)
        self.open.add(handler)
        return handler


class _Refuse(asyncio.Protocol):
    """Answer 503 and close at once: the clearest refusal that costs no file descriptor."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp = cast(asyncio.Transport, transport)
        tcp.write(_REFUSAL)
        tcp.close()


class _Handler(RequestHandler):
    """aiohttp's RequestHandler, plus the header timeout and the plain 400."""

    __slots__ = ("__weakref__", "_head_seen", "_head_tail", "_head_timer", "_listener")

    def __init__(self, listener: _Listener, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._listener = listener
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_seen = False
        self._head_tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._head_timer = asyncio.get_running_loop().call_later(self._listener.header_timeout, self._head_late)

    def data_received(self, data: bytes) -> None:
        if not self._head_seen:
            seen = self._head_tail + data
            if any(end in seen for end in _HEAD_ENDS):
                self._head_seen = True
                self._stop_head_timer()
            else:
                self._head_tail = seen[-3:]
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        self._listener.open.discard(self)
        super().connection_lost(exc)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if not self._head_seen:
            log.debug("%s listener: no complete request head in %gs; closing", self._listener.name,
                      self._listener.header_timeout)
            self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError):
            # The parser's message quotes the bad line, which may hold a token: never echo it.
            message = f"{status} {HTTPStatus(status).phrase}\n"
        return super().handle_error(request, status, exc, message)


class GuardedSockSite(web.BaseSite):
    """``web.SockSite`` with the connection cap and the header timeout of ``_Listener``."""

    __slots__ = ("_listener", "_name", "_sock")

    def __init__(
        self, runner: web.BaseRunner, sock: Any, *, name: str, max_connections: int, header_timeout: float,
        handler_kwargs: dict[str, Any], backlog: int = 1024,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        server = runner.server
        if server is None:
            raise RuntimeError("GuardedSockSite: the runner is not set up")
        self._sock = sock
        host, port = sock.getsockname()[:2]
        self._name = f"http://{host}:{port}"
        self._listener = _Listener(
            server, name, max_connections=max_connections, header_timeout=header_timeout,
            handler_kwargs=handler_kwargs,
        )

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._listener, sock=self._sock, backlog=self._backlog)
