"""The asyncio client of the admin listener, on a reused ``aiohttp.ClientSession``."""

from __future__ import annotations

import ipaddress
import uuid
from types import TracebackType
from typing import TypeVar, cast

import aiohttp
from yarl import URL

from sidecar.client._protocol import (
    MAX_ANSWER_BYTES,
    AdminProtocol,
    Answer,
    Exchange,
    Registration,
    Request,
    SessionInfo,
)
from sidecar.client.errors import SidecarUnavailableError

T = TypeVar("T")


class AsyncSidecarAdmin:
    """Register, list and revoke sessions from an asyncio auth service.

    Use ``async with AsyncSidecarAdmin(...) as admin`` or call :meth:`aclose` at shutdown.
    ``timeout`` (seconds) bounds connecting and each wait for the answer. Pass ``session``
    to share an existing ``aiohttp.ClientSession`` (it is then not closed by ``aclose``).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 2.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._protocol = AdminProtocol(base_url, api_key)
        self._base = self._protocol.endpoint.url
        self.timeout = timeout
        self._client_timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_connect=timeout, sock_read=timeout
        )
        self._http = session
        self._owns_http = session is None
        self._closed = False

    def __repr__(self) -> str:
        return f"AsyncSidecarAdmin({self._base!r}, timeout={self.timeout!r})"

    async def __aenter__(self) -> AsyncSidecarAdmin:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections (when the client opened its own session). Idempotent."""
        self._closed = True
        if self._http is not None and self._owns_http:
            await self._http.close()
        self._http = None

    # ------------------------------------------------------------------ the API

    async def register(
        self,
        token: str,
        *,
        ip_address: str | ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
        user_agent: str | None = None,
    ) -> Registration:
        """Register the token's session at login, with the user's IP and User-Agent.

        Returns ``(session, created)``; raises :class:`TokenRejectedError` for an invalid token and
        :class:`SessionRevokedError` for a revoked session or a token older than the user's cut-off.
        """
        return await self._run(self._protocol.register(token, ip_address, user_agent))

    async def revoke_session(self, session_id: str | uuid.UUID) -> bool:
        """Revoke one session (logout). True once revoked (also if it already was); False when
        the sidecar has no such session (never registered, or expired and cleaned up)."""
        return await self._run(self._protocol.revoke_session(session_id))

    async def revoke_user(self, user_id: str | int) -> None:
        """Revoke every session of the user and refuse every token issued before now."""
        await self._run(self._protocol.revoke_user(user_id))

    async def list_user_sessions(self, user_id: str | int) -> list[SessionInfo]:
        """The user's active sessions, newest login first (every page)."""
        return await self._run(self._protocol.list_user_sessions(user_id))

    # ------------------------------------------------------------------ the wire

    async def _run(self, exchange: Exchange[T]) -> T:
        request = next(exchange)  # argument errors raise here, before any I/O
        while True:
            answer = await self._send(request)
            try:
                request = exchange.send(answer)
            except StopIteration as done:
                return cast(T, done.value)

    def _session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("AsyncSidecarAdmin is closed")
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._client_timeout)
        return self._http

    async def _send(self, request: Request) -> Answer:
        http = self._session()
        url = URL(self._protocol.endpoint.origin + request.target, encoded=True)  # as built: no re-quoting
        # aiohttp itself retries GET and DELETE once when a kept-alive connection turns out
        # closed; registration is idempotent on the sidecar (200 "already registered"), so
        # the POST gets the same single retry here.
        attempts = 2 if request.method == "POST" else 1
        for attempt in range(1, attempts + 1):
            try:
                async with http.request(
                    request.method,
                    url,
                    headers=request.headers,
                    data=request.body,
                    allow_redirects=False,
                    timeout=self._client_timeout,
                ) as resp:
                    return Answer(resp.status, await _read(resp))
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
                if attempt < attempts and not isinstance(e, aiohttp.ClientConnectorError):
                    continue
                raise SidecarUnavailableError(f"Cannot reach the sidecar at {self._base}: {_describe(e)}") from e
            except TimeoutError as e:  # aiohttp's connect and read timeouts are TimeoutErrors
                message = f"No answer from the sidecar at {self._base} within {self.timeout} s"
                raise SidecarUnavailableError(message) from e
            except aiohttp.ClientError as e:
                raise SidecarUnavailableError(f"Cannot reach the sidecar at {self._base}: {_describe(e)}") from e
        raise AssertionError("unreachable")  # pragma: no cover


async def _read(resp: aiohttp.ClientResponse) -> bytes:
    too_large = SidecarUnavailableError("The sidecar's answer is too large", status=resp.status)
    if resp.content_length is not None and resp.content_length > MAX_ANSWER_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _describe(e: BaseException) -> str:
    """The kind of failure, without anything of the request (no headers, no body)."""
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"connection failed ({e.os_error.strerror or type(e.os_error).__name__})"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    return type(e).__name__
