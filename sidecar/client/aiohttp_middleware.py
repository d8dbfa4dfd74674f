"""Session control for an aiohttp app with no gateway in front.

::

    from sidecar.client.aiohttp_middleware import SIDECAR_IDENTITY, setup_sidecar

    app = web.Application()
    setup_sidecar(app, "http://127.0.0.1:8080", public=["/health"])

    async def me(request: web.Request) -> web.Response:
        identity = request[SIDECAR_IDENTITY]      # Identity(user_id, session_id, headers), or None

The same check and the same answers as :mod:`sidecar.client.asgi` (401 answered here, 503
with ``Retry-After: 1`` when the sidecar cannot say, never an allow); the client address
goes as ``X-Forwarded-For`` (``request.remote``), so list the app's address in the
sidecar's ``server.trusted_proxies``. WebSocket handshakes are HTTP requests here, so they
are checked like any other.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable

from aiohttp import web
from aiohttp.typedefs import Handler

from sidecar.client._check import DENY, UNAVAILABLE, Identity, PublicPaths, Reply, check_headers, target_of
from sidecar.client._checker import Checker
from sidecar.client.errors import SidecarUnavailableError, TokenRejectedError

# Where handlers read the identity: an Identity, or None (a public path, an anonymous allow).
SIDECAR_IDENTITY: web.RequestKey[Identity | None] = web.RequestKey("sidecar_identity")

log = logging.getLogger(__name__)


class SidecarMiddleware:
    """A new-style aiohttp middleware (what ``@web.middleware`` marks) holding its Checker."""

    __middleware_version__ = 1

    def __init__(
        self, sidecar_url: str, *, timeout: float = 1.0, public: Iterable[str] = (), forward_client: bool = True
    ) -> None:
        self.public = PublicPaths(public)
        self.forward_client = forward_client
        self.checker = Checker(sidecar_url, timeout=timeout)

    def __repr__(self) -> str:
        return f"SidecarMiddleware({self.checker.base!r}, timeout={self.checker.timeout!r})"

    async def aclose(self) -> None:
        """Close the connections to the sidecar (``setup_sidecar`` does it at cleanup). Idempotent."""
        await self.checker.aclose()

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        identity: Identity | None = None
        if request.path not in self.public:
            headers = request.headers
            try:
                identity = await self.checker.check(
                    check_headers(
                        request.method,
                        target_of(request.raw_path.encode("utf-8", "surrogateescape"), b""),
                        authorization=headers.getall("Authorization", []),
                        cookies=headers.getall("Cookie", []),
                        user_agent=headers.get("User-Agent"),
                        client_ip=request.remote if self.forward_client else None,
                    )
                )
            except TokenRejectedError:
                return _response(DENY)
            except SidecarUnavailableError as e:
                log.warning("sidecar check unavailable: %s", e)
                return _response(UNAVAILABLE)
            except Exception:
                # Fail closed: whatever went wrong, the request is not let through.
                log.exception("sidecar check failed")
                return _response(UNAVAILABLE)
        request[SIDECAR_IDENTITY] = identity
        return await handler(request)


def sidecar_middleware(
    sidecar_url: str, *, timeout: float = 1.0, public: Iterable[str] = (), forward_client: bool = True
) -> SidecarMiddleware:
    """The middleware; handlers read ``request[SIDECAR_IDENTITY]``. Close it with ``aclose``
    at cleanup, or use :func:`setup_sidecar`, which does both."""
    return SidecarMiddleware(sidecar_url, timeout=timeout, public=public, forward_client=forward_client)


def setup_sidecar(
    app: web.Application,
    sidecar_url: str,
    *,
    timeout: float = 1.0,
    public: Iterable[str] = (),
    forward_client: bool = True,
) -> SidecarMiddleware:
    """Add the middleware to ``app`` and close its connections in the app's cleanup_ctx."""
    middleware = sidecar_middleware(sidecar_url, timeout=timeout, public=public, forward_client=forward_client)
    app.middlewares.append(middleware)

    async def close_sidecar(_app: web.Application) -> AsyncIterator[None]:
        yield
        await middleware.aclose()

    app.cleanup_ctx.append(close_sidecar)
    return middleware


def _response(reply: Reply) -> web.Response:
    headers = dict(reply.headers)
    content_type = headers.pop("Content-Type")
    return web.Response(status=reply.status, body=reply.body, content_type=content_type, headers=headers)
