"""The blocking client of the admin listener, for sync frameworks (Django, Flask), on ``http.client``."""

from __future__ import annotations

import http.client
import ipaddress
import os
import threading
import uuid
from types import TracebackType
from typing import TypeVar, cast

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

# A kept-alive connection the server has closed in the meantime fails like this on reuse.
_STALE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, http.client.RemoteDisconnected)


class SidecarAdmin:
    """Register, list and revoke sessions from a blocking auth service; safe to share between threads.

    Connections are kept alive and reused: each call takes an idle one (or opens one) and
    puts it back afterwards, so concurrent threads never share a connection; one that the
    server closed is re-opened once, transparently. ``timeout`` (seconds) bounds connecting
    and each wait for data. Use ``with SidecarAdmin(...) as admin`` or call :meth:`close`.
    """

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 2.0, max_idle_connections: int = 8) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._protocol = AdminProtocol(base_url, api_key)
        self._endpoint = self._protocol.endpoint
        self.timeout = timeout
        self._max_idle = max_idle_connections
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []
        self._pid = os.getpid()
        self._closed = False

    def __repr__(self) -> str:
        return f"SidecarAdmin({self._endpoint.url!r}, timeout={self.timeout!r})"

    def __enter__(self) -> SidecarAdmin:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the idle connections; the ones in use close when their call ends. Idempotent."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # ------------------------------------------------------------------ the API

    def register(
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
        return self._run(self._protocol.register(token, ip_address, user_agent))

    def revoke_session(self, session_id: str | uuid.UUID) -> bool:
        """Revoke one session (logout). True once revoked (also if it already was); False when
        the sidecar has no such session (never registered, or expired and cleaned up)."""
        return self._run(self._protocol.revoke_session(session_id))

    def revoke_user(self, user_id: str | int) -> None:
        """Revoke every session of the user and refuse every token issued before now."""
        self._run(self._protocol.revoke_user(user_id))

    def list_user_sessions(self, user_id: str | int) -> list[SessionInfo]:
        """The user's active sessions, newest login first (every page)."""
        return self._run(self._protocol.list_user_sessions(user_id))

    # ------------------------------------------------------------------ the wire

    def _run(self, exchange: Exchange[T]) -> T:
        request = next(exchange)  # argument errors raise here, before any I/O
        while True:
            answer = self._send(request)
            try:
                request = exchange.send(answer)
            except StopIteration as done:
                return cast(T, done.value)

    def _new_connection(self) -> http.client.HTTPConnection:
        e = self._endpoint
        if e.scheme == "https":
            return http.client.HTTPSConnection(e.host, e.port, timeout=self.timeout)
        return http.client.HTTPConnection(e.host, e.port, timeout=self.timeout)

    def _acquire(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection (reused=True) or a new one."""
        with self._lock:
            if self._closed:
                raise RuntimeError("SidecarAdmin is closed")
            if self._pid != os.getpid():
                # Forked (a pre-forking server imported us): the parent's sockets are not ours to share.
                self._pid, inherited, self._idle = os.getpid(), self._idle, []
                for conn in inherited:
                    conn.close()  # closes this process's copy only; the parent's connection lives on
            if self._idle:
                return self._idle.pop(), True
        return self._new_connection(), False

    def _release(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def _send(self, request: Request) -> Answer:
        conn, reused = self._acquire()
        while True:
            try:
                answer = _exchange(conn, request)
            except _STALE as e:
                conn.close()
                if reused:  # every admin call is idempotent: send it again, once, on a fresh connection
                    conn, reused = self._new_connection(), False
                    continue
                raise SidecarUnavailableError(_unreachable(self._endpoint.url, e)) from e
            except TimeoutError as e:
                conn.close()
                raise SidecarUnavailableError(
                    f"No answer from the sidecar at {self._endpoint.url} within {self.timeout} s"
                ) from e
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise SidecarUnavailableError(_unreachable(self._endpoint.url, e)) from e
            except BaseException:
                conn.close()
                raise
            self._release(conn)
            return answer


def _exchange(conn: http.client.HTTPConnection, request: Request) -> Answer:
    conn.request(request.method, request.target, body=request.body, headers=dict(request.headers))
    resp = conn.getresponse()
    body = resp.read(MAX_ANSWER_BYTES + 1)
    if len(body) > MAX_ANSWER_BYTES or not resp.isclosed():
        conn.close()  # the rest is unread: this connection cannot carry another request
        raise SidecarUnavailableError("The sidecar's answer is too large", status=resp.status)
    return Answer(resp.status, body)


def _describe(e: BaseException) -> str:
    """The kind of failure, without anything of the request (no headers, no body)."""
    if isinstance(e, http.client.RemoteDisconnected):
        return "the server closed the connection"
    if isinstance(e, OSError) and e.strerror:
        return f"connection failed ({e.strerror})"
    return type(e).__name__


def _unreachable(url: str, e: BaseException) -> str:
    return f"Cannot reach the sidecar at {url}: {_describe(e)}"
