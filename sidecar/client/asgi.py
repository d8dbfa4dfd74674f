"""Session control for an ASGI app with no gateway in front (FastAPI, Starlette, any ASGI).

::

    from sidecar.client.asgi import SidecarAuthMiddleware

    app = FastAPI()
    app.add_middleware(SidecarAuthMiddleware, sidecar_url="http://127.0.0.1:8080", public=["/health", "/docs/*"])

    @app.get("/me")
    async def me(request: Request) -> dict[str, str]:
        identity = request.state.sidecar          # Identity(user_id, session_id, headers), or None
        ...

Each HTTP request is first checked with the sidecar (``GET /introspect``, the gateway
check) with its Authorization, Cookie and User-Agent headers, its method and raw target as
``X-Original-Method``/``X-Original-URI``, and the client address as ``X-Forwarded-For``:
list the app's address in the sidecar's ``server.trusted_proxies``, or every session gets
the app's address. A 401 is answered here (the app never runs); the sidecar down, slow, or
answering anything but its own 200/401 is a 503 with ``Retry-After: 1``, never an allow.
A 200 of a ``public``/``optional`` route of the sidecar reaches the app with
``request.state.sidecar = None``; so do the paths in ``public`` (not asked at all).

WebSocket connections are **not** checked: they pass through like lifespan events; check
them in the endpoint. The connections to the sidecar are closed at lifespan shutdown (or
call ``await middleware.aclose()`` when the server does not run the lifespan protocol).
Identity never comes from request headers: ignore any ``X-Auth-*`` a client sends.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import quote

from sidecar.client._check import DENY, UNAVAILABLE, Identity, PublicPaths, Reply, check_headers, target_of
from sidecar.client._checker import Checker
from sidecar.client.errors import SidecarUnavailableError, TokenRejectedError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STATE_KEY = "sidecar"  # scope["state"]["sidecar"], read as request.state.sidecar

log = logging.getLogger(__name__)


class SidecarAuthMiddleware:
    """A pure ASGI middleware: check each HTTP request with the sidecar before the app sees it."""

    def __init__(
        self,
        app: ASGIApp,
        sidecar_url: str,
        *,
        timeout: float = 1.0,
        public: Iterable[str] = (),
        forward_client: bool = True,
    ) -> None:
        self.app = app
        self.public = PublicPaths(public)
        self.forward_client = forward_client
        self.checker = Checker(sidecar_url, timeout=timeout)

    def __repr__(self) -> str:
        return f"SidecarAuthMiddleware({self.checker.base!r}, timeout={self.checker.timeout!r})"

    async def aclose(self) -> None:
        """Close the connections to the sidecar (done at lifespan shutdown). Idempotent."""
        await self.checker.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, self._closing_on_shutdown(receive), send)
            return
        if kind != "http":  # websocket: not checked (see the module's docstring)
            await self.app(scope, receive, send)
            return
        identity: Identity | None = None
        if scope.get("path", "") not in self.public:
            try:
                identity = await self.checker.check(self._check_headers(scope))
            except TokenRejectedError:
                await _reply(send, DENY)
                return
            except SidecarUnavailableError as e:
                log.warning("sidecar check unavailable: %s", e)
                await _reply(send, UNAVAILABLE)
                return
            except Exception:
                # Fail closed: whatever went wrong, the request is not let through.
                log.exception("sidecar check failed")
                await _reply(send, UNAVAILABLE)
                return
        state = dict(scope.get("state") or {})
        state[STATE_KEY] = identity
        await self.app({**scope, "state": state}, receive, send)

    def _check_headers(self, scope: Scope) -> list[tuple[str, str]]:
        authorization: list[str] = []
        cookies: list[str] = []
        user_agent: str | None = None
        for raw_name, raw_value in scope.get("headers", ()):
            name = bytes(raw_name).lower()
            if name == b"authorization":
                authorization.append(bytes(raw_value).decode("latin-1"))
            elif name == b"cookie":
                cookies.append(bytes(raw_value).decode("latin-1"))
            elif name == b"user-agent" and user_agent is None:
                user_agent = bytes(raw_value).decode("latin-1")
        raw_path = scope.get("raw_path") or quote(scope.get("path", "/")).encode("ascii")
        client = scope.get("client") if self.forward_client else None
        return check_headers(
            scope.get("method", "GET"),
            target_of(bytes(raw_path), bytes(scope.get("query_string", b""))),
            authorization=authorization,
            cookies=cookies,
            user_agent=user_agent,
            client_ip=str(client[0]) if client else None,
        )

    def _closing_on_shutdown(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message.get("type") == "lifespan.shutdown":
                await self.aclose()
            return message

        return wrapped


async def _reply(send: Send, reply: Reply) -> None:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()]
    headers.append((b"content-length", str(len(reply.body)).encode("ascii")))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})
