"""The gateway check over HTTP: one ``aiohttp.ClientSession`` asking ``GET /introspect``.

Shared by both middlewares; what the answer means is :mod:`sidecar.client._check`'s.
"""

from __future__ import annotations

import asyncio

import aiohttp
from yarl import URL

from sidecar.client._check import Headers, Identity, interpret
from sidecar.client._protocol import Endpoint
from sidecar.client.errors import SidecarUnavailableError

_MAX_BODY = 64 * 1024  # the check's bodies are a few bytes; a larger one is not read (no reuse)


class Checker:
    """Asks the sidecar's public listener about requests, on reused connections.

    The session is opened lazily on the running loop (a middleware is built before any loop
    runs) and closed by :meth:`aclose`. ``timeout`` (seconds) bounds the whole check.
    """

    def __init__(self, sidecar_url: str, *, timeout: float = 1.0) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        endpoint = Endpoint.parse(sidecar_url)
        self.base = endpoint.url
        self.url = URL(endpoint.url + "/introspect", encoded=True)
        self.timeout = timeout
        self._client_timeout = aiohttp.ClientTimeout(total=timeout)
        self._http: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"Checker({self.base!r}, timeout={self.timeout!r})"

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._http is None or self._http.closed or self._loop is not loop:
            # A session belongs to its loop; a new loop (a test's, a reloaded server's) gets its own.
            self._http = aiohttp.ClientSession(timeout=self._client_timeout)
            self._loop = loop
        return self._http

    @property
    def connected(self) -> bool:
        """Whether a session to the sidecar is open (from the first check until ``aclose``)."""
        return self._http is not None and not self._http.closed

    async def aclose(self) -> None:
        """Close the connections. Idempotent; the next check opens a new session."""
        http, self._http = self._http, None
        if http is not None and not http.closed and self._loop is asyncio.get_running_loop():
            await http.close()

    async def check(self, headers: Headers) -> Identity | None:
        """The identity, None for an anonymous allow; raises TokenRejectedError / SidecarUnavailableError."""
        http = self._session()
        try:
            async with http.get(
                self.url,
                headers=headers,
                allow_redirects=False,
                # The device is the app's client's, never aiohttp's own User-Agent.
                skip_auto_headers=("User-Agent",),
            ) as resp:
                if resp.content_length is not None and resp.content_length <= _MAX_BODY:
                    await resp.read()  # read to the end, so the connection is reused
                return interpret(resp.status, resp.headers.items())
        except TimeoutError as e:  # aiohttp's timeouts are TimeoutErrors
            raise SidecarUnavailableError(f"No answer from the sidecar at {self.base} within {self.timeout} s") from e
        except aiohttp.ClientError as e:
            raise SidecarUnavailableError(f"Cannot reach the sidecar at {self.base}: {type(e).__name__}") from e
