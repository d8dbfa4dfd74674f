"""Faults with real processes: locked SQLite, PostgreSQL and Redis gone, SIGTERM, overload, kill -9,
and a wall clock that jumps (SECURITY_CASES D31-D39).

Every sidecar here is ``python -m sidecar serve --config FILE`` in a subprocess on free loopback
ports; the faults are real too: a second SQLite writer holding the lock, a TCP proxy in front of
PostgreSQL that the test cuts (``tests.sessions.pg.TcpProxy``), a throwaway ``redis-server`` that
is stopped and started again, signals. Every process is stopped at teardown and every wait is
bounded. Bounds are functional (a configured timeout plus a margin), never performance targets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import pytest

from sidecar.clock import ManualClock
from sidecar.enrich.client_ip import ClientInfo
from sidecar.errors import InvalidTokenError, SessionRejectedError
from sidecar.sessions.service import SessionService
from sidecar.sessions.sqlite import SqliteStore
from sidecar.tokens import JwksKeys, TokenVerifier
from sidecar.tokens.claims import Claims
from sidecar.web.limits import RateLimiter
from tests.conftest import Sidecar
from tests.sessions import pg
from tests.support.configs import settings_for, sqlite_url
from tests.support.ports import free_ports, port_open
from tests.support.processes import redis_server, rss_kib
from tests.support.sessions import CHROME_WINDOWS, session_service
from tests.support.sidecar import SidecarProcess, run_sidecar
from tests.support.tokens import ADMIN, bearer, mint
from tests.tokens.keys import pair

T = TypeVar("T")

# Every HTTP call of these tests gives up after this long: a hang fails the test, it never stalls it.
TIMEOUT = aiohttp.ClientTimeout(total=10)
# The check timeout of the shipped gateways (contrib/envoy/envoy.yaml `timeout: 1s`,
# contrib/nginx/sidecar.conf `proxy_read_timeout 1s`): a deny later than this never reaches
# the client, the gateway has refused on its own by then (SECURITY_CASES D34).
GATEWAY_TIMEOUT = aiohttp.ClientTimeout(total=1.0)
# server.shutdown_timeout_seconds of every sidecar here unless a test sets its own.
SHUTDOWN_TIMEOUT = 5.0
STORE_UNAVAILABLE = {"status": "error", "status_code": 503, "message": "Session store unavailable, try again", "data": {}}


# ---------------------------------------------------------------------------- processes

Node = SidecarProcess  # one running ``sidecar serve`` process



@contextmanager
def serve(workdir: Path, name: str, storage_url: str, **sections: Mapping[str, Any]) -> Iterator[Node]:
    """``python -m sidecar serve`` on free ports until it says ready; SIGTERM (then SIGKILL) at the end.

    The test config with a catch-up every 0.5 s; ``sections`` add or override keys.
    """
    defaults: dict[str, Any] = {
        "server": {"shutdown_timeout_seconds": SHUTDOWN_TIMEOUT},
        "sessions": {"catchup_interval_seconds": 0.5, "max_staleness_seconds": 3.0, "last_seen_flush_seconds": 0.5},
    }
    for section, values in sections.items():
        defaults[section] = {**defaults.get(section, {}), **values}
    with run_sidecar(workdir, storage_url, name=name, **defaults) as node:
        yield node


@contextmanager
def locked(db: Path) -> Iterator[sqlite3.Connection]:
    """Another writer holding the SQLite write lock (BEGIN IMMEDIATE) until the block ends."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=10)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield conn
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        conn.close()


def rss_bytes(pid: int) -> int:
    """Resident memory of a process."""
    return rss_kib(pid) * 1024


def unread_bytes(server_port: int, client_port: int) -> int | None:
    """Bytes of the connection from ``client_port`` that the server has not read yet (/proc/net/tcp).

    None while the kernel lists no such connection. 0 means the server process took the whole
    request off the socket.
    """
    local, remote = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return int(fields[4].split(":")[1], 16)
    return None


class ProxyThread:
    """``pg.TcpProxy`` on an event loop of its own thread.

    The sidecar process connects through it while the test blocks (waiting for the process to
    be ready, or to exit), so the proxy must not share the test's loop.
    """

    def __init__(self, host: str, port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pg-proxy", daemon=True)
        self._thread.start()
        self._proxy = self._run(self._make(host, port))

    @staticmethod
    async def _make(host: str, port: int) -> pg.TcpProxy:
        return pg.TcpProxy(host, port)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def start(self) -> int:
        return self._run(self._proxy.start())

    def cut(self) -> None:
        self._run(self._proxy.cut())

    def freeze(self) -> None:
        self._loop.call_soon_threadsafe(self._proxy.freeze)

    def thaw(self) -> None:
        self._loop.call_soon_threadsafe(self._proxy.thaw)

    def close(self) -> None:
        try:
            self._run(self._proxy.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()


@contextmanager
def proxied_postgres() -> Iterator[tuple[str, ProxyThread]]:
    """A fresh PostgreSQL database and a proxy in front of it: (URL through the proxy, proxy)."""
    with pg.database("sidecar_faults") as url:
        parts = urlsplit(url)
        proxy = ProxyThread(parts.hostname or "127.0.0.1", parts.port or 5432)
        try:
            port = proxy.start()
            yield pg.with_address(url, "127.0.0.1", port), proxy
        finally:
            proxy.close()


# ---------------------------------------------------------------------------- HTTP


async def check(http: aiohttp.ClientSession, node: Node, token: str, within: aiohttp.ClientTimeout = TIMEOUT) -> int:
    """The status of one check; the request gives up (and the test fails) after ``within``."""
    async with http.get(f"{node.url}/introspect", headers=bearer(token), timeout=within) as resp:
        await resp.read()
        return resp.status


async def session_of(http: aiohttp.ClientSession, node: Node, token: str) -> str:
    """The session id of an allowed token (the check registers it when new)."""
    async with http.get(f"{node.url}/introspect", headers=bearer(token)) as resp:
        assert resp.status == 200, await resp.text()
        return resp.headers["X-Auth-Session"]


async def call(
    http: aiohttp.ClientSession, method: str, url: str, headers: Mapping[str, str], **kwargs: Any
) -> tuple[int, Any, Mapping[str, str]]:
    """(status, JSON body or None, headers)."""
    async with http.request(method, url, headers=headers, **kwargs) as resp:
        body = await resp.read()
        return resp.status, json.loads(body) if body else None, resp.headers


async def readyz(http: aiohttp.ClientSession, node: Node) -> tuple[int, dict[str, str]]:
    async with http.get(f"{node.url}/readyz") as resp:
        checks: dict[str, str] = (await resp.json())["checks"]
        return resp.status, checks


async def eventually(probe: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    """Poll ``probe`` until it is true; fail the test after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not await probe():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds:g} s: {what}")
        await asyncio.sleep(0.05)


async def metric(http: aiohttp.ClientSession, node: Node, name: str) -> float:
    async with http.get(f"{node.admin_url}/metrics", headers=ADMIN) as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield session


def revoked_at(db: Path, session_id: str) -> float | None:
    """A session's revoked_at as committed in the file, read by a connection of our own."""
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        row = conn.execute("SELECT revoked_at FROM sessions WHERE id = ?", (session_id,)).fetchone()
    assert row is not None, f"no row for session {session_id}"
    value: float | None = row[0]
    return value


# ---------------------------------------------------------------------------- D33: SQLite locked


async def test_sqlite_locked_past_busy_timeout_fails_revokes_with_503_and_denies_unknown_sessions(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Another writer holding the SQLite lock past busy_timeout: every revoke answers 503 and commits nothing,
    an unknown session is denied, known sessions keep their answer; released, the same revokes answer 204 (D33)."""
    db = tmp_path / "locked.db"
    with serve(tmp_path, "sidecar", sqlite_url(db), storage={"busy_timeout_ms": 200}) as node:
        caller, victim, other = mint("alice"), mint("alice"), mint("alice")
        victim_id = await session_of(http, node, victim)
        other_id = await session_of(http, node, other)
        await session_of(http, node, caller)
        revokes = [
            ("DELETE", f"{node.url}/api/v1/sessions/{victim_id}/", bearer(caller)),
            ("DELETE", f"{node.url}/api/v1/sessions/", bearer(caller)),
            ("DELETE", f"{node.admin_url}/admin/v1/sessions/{other_id}", ADMIN),
            ("DELETE", f"{node.admin_url}/admin/v1/users/alice/sessions", ADMIN),
        ]
        newcomer = mint("bob")
        with locked(db):
            for method, url, headers in revokes:
                status, body, resp_headers = await call(http, method, url, headers)
                assert (status, body) == (503, STORE_UNAVAILABLE), url
                assert resp_headers["Retry-After"] == "1"
            # The auth service cannot register a login either: 503, not 201.
            status, body, _ = await call(
                http, "POST", f"{node.admin_url}/admin/v1/sessions", ADMIN, json={"token": mint("carol")}
            )
            assert (status, body) == (503, STORE_UNAVAILABLE)
            # Nothing was committed: the sessions are active in the file and in memory.
            assert revoked_at(db, victim_id) is None
            assert revoked_at(db, other_id) is None
            for token in (victim, other, caller):
                assert await check(http, node, token) == 200
            # A session the process has never seen cannot be registered: its state is unknown, so deny.
            assert await check(http, node, newcomer) == 401
        with contextlib.closing(sqlite3.connect(db)) as conn:
            assert conn.execute("SELECT count(*) FROM user_cutoffs").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM sessions WHERE user_id = 'bob'").fetchone() == (0,)

        # Lock released: the same calls succeed, and each takes effect on the very next check.
        status, _, _ = await call(http, *revokes[0])
        assert status == 204
        assert await check(http, node, victim) == 401
        status, _, _ = await call(http, *revokes[2])
        assert status == 204
        assert await check(http, node, other) == 401
        assert revoked_at(db, victim_id) is not None and revoked_at(db, other_id) is not None
        assert await check(http, node, newcomer) == 200
        assert await check(http, node, caller) == 200


# ---------------------------------------------------------------------------- D34: PostgreSQL down


async def test_postgres_down_denies_unknown_sessions_and_fails_readiness_then_recovers(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """PostgreSQL cut off: unknown sessions are denied within the gateway timeout, /readyz and a revoke answer 503,
    known sessions are denied once memory is stale, all recovers when it returns, and a hung server is denied too (D34)."""
    with proxied_postgres() as (url, proxy), serve(
        tmp_path,
        "sidecar",
        url,
        storage={"statement_timeout_ms": 200, "connect_timeout_seconds": 0.5, "pool_max_size": 4},
        sessions={"catchup_interval_seconds": 0.2, "max_staleness_seconds": 1.0},
    ) as node:
        known = mint("alice")
        known_id = await session_of(http, node, known)
        assert await readyz(http, node) == (200, {"store": "ok"})

        proxy.cut()
        for _ in range(5):
            # A deny the gateway still receives: within its own check timeout.
            assert await check(http, node, mint("alice"), within=GATEWAY_TIMEOUT) == 401
        status, checks = await readyz(http, node)
        assert status == 503 and checks["store"] == "unavailable"
        status, body, _ = await call(http, "DELETE", f"{node.admin_url}/admin/v1/sessions/{known_id}", ADMIN)
        assert (status, body) == (503, STORE_UNAVAILABLE)

        async def known_denied() -> bool:
            return await check(http, node, known) == 401

        # Memory cannot be confirmed current any more (catch-up fails): after max_staleness
        # (1 s) the check trusts only the store, which cannot answer: deny.
        await eventually(known_denied, 1.0 + 3.0, "the known session denied once memory is stale")

        proxy.start()  # same port: the server is back

        async def ready() -> bool:
            return (await readyz(http, node))[0] == 200

        await eventually(ready, 10.0, "/readyz to answer 200 again")
        assert await check(http, node, known) == 200
        assert await check(http, node, mint("alice")) == 200

        # A server that hangs rather than refuses: denied once the storage timeouts pass, never allowed.
        proxy.freeze()
        try:
            # Far above what the storage settings allow a call (connect 0.5 s, a statement 0.2 s + 0.5 s).
            hung = aiohttp.ClientTimeout(total=5.0)
            assert await check(http, node, mint("alice"), within=hung) == 401
            status, checks = await readyz(http, node)
            assert status == 503 and checks["store"] == "unavailable"
        finally:
            proxy.thaw()
        await eventually(ready, 10.0, "/readyz to answer 200 after the hang")
        assert await check(http, node, mint("alice")) == 200

        # Stopped while the database is unreachable: it still drains and exits 0.
        proxy.cut()
        assert await check(http, node, mint("alice")) == 401
        node.service.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(node.service.proc.wait, SHUTDOWN_TIMEOUT + 5) == 0, node.service.log_tail()


# ---------------------------------------------------------------------------- D31 / D32: Redis


def redis_section(port: int, workdir: Path) -> dict[str, str]:
    return {"url": f"redis://127.0.0.1:{port}/0", "channel": f"test-faults:{workdir.name}"}


async def test_redis_down_at_start_serves_and_revocations_reach_the_other_process_by_catch_up(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Redis unreachable from the start: both processes start and serve, revokes answer 204, /readyz says redis
    unavailable, and the other process refuses the revoked token within the catch-up interval (D31)."""
    [redis_port] = free_ports(1)  # nothing listens there
    db = sqlite_url(tmp_path / "shared.db")
    redis = redis_section(redis_port, tmp_path)
    with serve(tmp_path, "a", db, redis=redis) as a, serve(tmp_path, "b", db, redis=redis) as b:
        for node in (a, b):
            assert await readyz(http, node) == (503, {"store": "ok", "redis": "unavailable"})
        for _ in range(3):
            token = mint("carol")
            session_id = await session_of(http, b, token)
            assert await check(http, a, token) == 200
            status, _, _ = await call(http, "DELETE", f"{a.admin_url}/admin/v1/sessions/{session_id}", ADMIN)
            assert status == 204  # Redis down never fails a revoke
            assert await check(http, a, token) == 401

            async def b_refuses(t: str = token) -> bool:
                return await check(http, b, t) == 401

            await eventually(b_refuses, 0.5 + 1.5, "B to learn the revocation by catch-up (interval 0.5 s)")
        # A process that never reached Redis still stops cleanly.
        b.service.stop()
        assert b.service.proc.returncode == 0, b.service.log_tail()

        # Redis appears later: the other process subscribes and reports ready.
        with redis_server(tmp_path, redis_port):

            async def ready() -> bool:
                return await readyz(http, a) == (200, {"store": "ok", "redis": "ok"})

            await eventually(ready, 10.0, "A to subscribe once Redis answers")


async def test_revocations_made_while_pubsub_was_down_are_caught_up_on_reconnect(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A revocation made while Redis was down reaches the other process as soon as it resubscribes, long
    before its periodic catch-up (60 s): the reconnect reads the store before trusting the channel (D32)."""
    [redis_port] = free_ports(1)
    db = sqlite_url(tmp_path / "shared.db")
    slow_catch_up = {"catchup_interval_seconds": 60.0, "max_staleness_seconds": 600.0}
    redis = redis_section(redis_port, tmp_path)
    with ExitStack() as stack:
        server = stack.enter_context(redis_server(tmp_path, redis_port))
        a = stack.enter_context(serve(tmp_path, "a", db, redis=redis, sessions=slow_catch_up))
        b = stack.enter_context(serve(tmp_path, "b", db, redis=redis, sessions=slow_catch_up))

        async def b_redis(state: str) -> bool:
            return (await readyz(http, b))[1].get("redis") == state

        await eventually(lambda: b_redis("ok"), 10.0, "B subscribed")
        token = mint("dave")
        session_id = await session_of(http, b, token)

        server.stop()
        await eventually(lambda: b_redis("unavailable"), 10.0, "B to notice that Redis went away")
        status, _, _ = await call(http, "DELETE", f"{a.admin_url}/admin/v1/sessions/{session_id}", ADMIN)
        assert status == 204
        # Neither path has reached B yet: the push is down and the next periodic catch-up is a minute away.
        assert await check(http, b, token) == 200

        stack.enter_context(redis_server(tmp_path, redis_port))

        async def b_refuses() -> bool:
            return await check(http, b, token) == 401

        await eventually(b_refuses, 10.0, "B to catch up from the store on resubscribing")
        assert (await readyz(http, b))[0] == 200


# ---------------------------------------------------------------------------- D36: kill -9


async def test_revocations_survive_kill_9_and_a_restart(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """SIGKILL right after a revoke and a log-out-others answered 204: the restarted process refuses the revoked
    session and a never-seen older token, and keeps the caller's session (D36)."""
    db = sqlite_url(tmp_path / "durable.db")
    earlier = time.time() - 5
    caller, other, revoked = mint("erin", now=earlier), mint("erin", now=earlier), mint("frank", now=earlier)
    never_seen = mint("erin", now=earlier)
    with serve(tmp_path, "first", db) as first:
        revoked_id = await session_of(http, first, revoked)
        await session_of(http, first, other)
        await session_of(http, first, caller)
        status, _, _ = await call(http, "DELETE", f"{first.admin_url}/admin/v1/sessions/{revoked_id}", ADMIN)
        assert status == 204
        status, _, _ = await call(http, "DELETE", f"{first.url}/api/v1/sessions/", bearer(caller))
        assert status == 204
        first.service.proc.send_signal(signal.SIGKILL)
        assert first.service.proc.wait(timeout=10) == -signal.SIGKILL
    with serve(tmp_path, "restarted", db) as restarted:
        assert await check(http, restarted, revoked) == 401
        assert await check(http, restarted, other) == 401
        assert await check(http, restarted, never_seen) == 401
        assert await check(http, restarted, caller) == 200


# ---------------------------------------------------------------------------- D37: SIGTERM under load


@dataclass
class LoadLog:
    """What the load clients saw: (start, end, status) per answer, (start, end, error) per failure."""

    answers: list[tuple[float, float, int]] = field(default_factory=list)
    failures: list[tuple[float, float, BaseException]] = field(default_factory=list)


async def keep_checking(url: str, work: list[tuple[str, int]], stop: asyncio.Event, log: LoadLog) -> None:
    """One client on one keep-alive connection, checking in a loop until stopped or the server goes away."""
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as client:
        n = 0
        while not stop.is_set():
            token, expected = work[n % len(work)]
            n += 1
            started = time.monotonic()
            try:
                async with client.get(url, headers=bearer(token)) as resp:
                    await resp.read()
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                log.failures.append((started, time.monotonic(), e))
                return
            log.answers.append((started, time.monotonic(), resp.status))
            assert resp.status == expected, (token, resp.status)


def send_raw_check(port: int, token: str) -> socket.socket:
    """A complete check request written on a connection of its own; the answer is read later."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET /introspect HTTP/1.1\r\nHost: sidecar\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    return sock


def read_status(sock: socket.socket) -> int:
    """The status of the answer on ``sock`` (fails on a reset or a close without an answer)."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            pytest.fail(f"connection closed without an answer: {data!r}")
        data += chunk
    return int(data.split(b" ", 2)[1])


class StillAccepting(AssertionError):
    """A listener still accepted connections after SIGTERM."""


async def wait_until_refused(node: Node, seconds: float) -> None:
    """Wait until both listeners refuse connections; raise StillAccepting after ``seconds``."""
    deadline = time.monotonic() + seconds
    while port_open(node.port) or port_open(node.admin_port):
        if time.monotonic() > deadline:
            raise StillAccepting(f"{node.name} still accepts connections {seconds:g} s after SIGTERM")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    "workers",
    [1, 2],
    ids=["one-process", "two-workers"],
)
async def test_sigterm_under_load_drains_accepted_requests_refuses_new_connections_and_exits_zero(
    tmp_path: Path, http: aiohttp.ClientSession, workers: int
) -> None:
    """SIGTERM while 50 clients check and 5 checks are held mid-request: the held ones still get 200, every
    answer is 200 or 401, new connections are refused, and the process exits 0 within shutdown_timeout + 5 s (D37)."""
    db = tmp_path / "drain.db"
    shutdown_timeout = SHUTDOWN_TIMEOUT
    with serve(
        tmp_path,
        "sidecar",
        sqlite_url(db),
        server={"shutdown_timeout_seconds": shutdown_timeout, "workers": workers},
        storage={"busy_timeout_ms": 30_000},  # held requests wait for the lock rather than fail
    ) as node:
        work: list[list[tuple[str, int]]] = []
        for i in range(50):
            token = mint(f"load-{i}")
            await session_of(http, node, token)
            work.append([(token, 200), ("not-a-token", 401)])
        stop = asyncio.Event()
        log = LoadLog()
        clients = [asyncio.create_task(keep_checking(f"{node.url}/introspect", w, stop, log)) for w in work]
        try:

            async def loaded() -> bool:
                return len(log.answers) >= 500

            await eventually(loaded, 20.0, "the load to get going")

            # Requests provably in flight: new sessions, whose registration waits for the SQLite lock.
            with locked(db) as blocker:
                held = [send_raw_check(node.port, mint(f"held-{i}")) for i in range(5)]
                try:

                    async def all_read() -> bool:
                        return all(unread_bytes(node.port, s.getsockname()[1]) == 0 for s in held)

                    await eventually(all_read, 10.0, "the sidecar to read the held requests")
                    await asyncio.sleep(0.2)  # parsed and handed to their handlers
                    for s in held:
                        s.settimeout(0)
                        with pytest.raises(BlockingIOError):
                            s.recv(1)  # accepted, not answered yet
                        s.settimeout(10)

                    sent_at = time.monotonic()
                    node.service.proc.send_signal(signal.SIGTERM)
                    await wait_until_refused(node, 5.0)
                    assert node.service.proc.poll() is None  # still draining the held requests
                    blocker.execute("ROLLBACK")
                    for s in held:
                        assert await asyncio.to_thread(read_status, s) == 200
                finally:
                    for s in held:
                        s.close()

            code = await asyncio.to_thread(node.service.proc.wait, shutdown_timeout + 5)
            assert code == 0, node.service.log_tail()
            assert time.monotonic() - sent_at <= shutdown_timeout + 5
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*clients, return_exceptions=True), 30)
        for c in clients:
            assert c.exception() is None, c.exception()
        assert {status for _, _, status in log.answers} == {200, 401}
        # Only connections the server closed or refused after SIGTERM failed, and none timed out.
        for _, ended, error in log.failures:
            assert ended >= sent_at, error
            assert isinstance(error, aiohttp.ClientConnectionError), repr(error)
            assert not isinstance(error, TimeoutError), repr(error)
        with contextlib.closing(sqlite3.connect(db)) as conn:
            held_users = sorted(r[0] for r in conn.execute("SELECT user_id FROM sessions WHERE user_id LIKE 'held-%'"))
        assert held_users == [f"held-{i}" for i in range(5)]
        assert "Traceback" not in node.service.log.read_text()


# ---------------------------------------------------------------------------- D38: overload


async def test_burst_far_above_the_concurrency_bound_gets_clear_answers_and_bounded_memory(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """5,000 checks from 500 connections against max_concurrent_checks = 20: every answer is 200, 401 or a
    503 with Retry-After, none hangs, the process stays up and serves, and its RSS stays within 2x + 50 MB (D38)."""
    with serve(tmp_path, "sidecar", sqlite_url(tmp_path / "burst.db"), server={"max_concurrent_checks": 20}) as node:
        known = [mint(f"known-{i}") for i in range(20)]
        for token in known:
            await session_of(http, node, token)
        for i in range(200):  # warm every code path the burst takes before measuring
            assert await check(http, node, mint(f"warm-{i}") if i % 2 else "not-a-token") in (200, 401)
        rss_before = rss_bytes(node.pid)

        # A third new sessions (each registration waits on the store: these pile up in flight),
        # a third known sessions, a third garbage. (token, answers it may get)
        plan: list[tuple[str, set[int]]] = []
        for i in range(5000):
            kind = i % 3
            if kind == 0:
                plan.append((mint(f"burst-{i}"), {200, 503}))
            elif kind == 1:
                plan.append((known[i % len(known)], {200, 503}))
            else:
                plan.append(("not-a-token", {401, 503}))
        answers: list[tuple[int, set[int], str | None]] = []

        async def client(client_http: aiohttp.ClientSession, items: list[tuple[str, set[int]]]) -> None:
            for token, allowed in items:
                async with client_http.get(f"{node.url}/introspect", headers=bearer(token)) as resp:
                    await resp.read()
                    answers.append((resp.status, allowed, resp.headers.get("Retry-After")))

        connector = aiohttp.TCPConnector(limit=500)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as burst:
            await asyncio.wait_for(asyncio.gather(*(client(burst, plan[i::500]) for i in range(500))), 60)

        assert len(answers) == 5000
        wrong = [(status, allowed) for status, allowed, _ in answers if status not in allowed]
        assert wrong == []
        overloaded = [retry for status, _, retry in answers if status == 503]
        assert overloaded, "the burst never exceeded max_concurrent_checks: it proves nothing"
        assert set(overloaded) == {"1"}
        assert await metric(http, node, "sidecar_check_overload_rejections_total") == len(overloaded)

        assert node.service.proc.poll() is None
        # The in-flight count went back down: new sessions register again, one after another.
        for i in range(30):
            assert await check(http, node, mint(f"after-{i}")) == 200
        rss_after = rss_bytes(node.pid)
        # What the burst may legitimately keep: ~1,700 session states and verified tokens (a few
        # KB each, < 10 MB), buffers of 500 connections, and arenas the allocator does not give
        # back. A queue of 5,000 requests or a per-request leak would not fit.
        assert rss_after < 2 * rss_before + 50 * 2**20, (rss_before, rss_after)
        assert "Traceback" not in node.service.log.read_text()


# ---------------------------------------------------------------------------- D39: the wall clock jumps

NOW = 1_700_000_000.0


def CLIENT() -> ClientInfo:  # upper case: it stands in for a constant, the request's client
    return ClientInfo(ip=None, user_agent=CHROME_WINDOWS)


async def test_wall_clock_jumps_do_not_stretch_or_shorten_the_jwks_lifetime_or_cooldown() -> None:
    """The JWKS cache expires and the unknown-kid cool-down ends after monotonic time, whatever the wall clock does (D39)."""
    clock = ManualClock(wall=NOW)
    fetched: list[str] = []

    async def fetch(url: str) -> bytes:
        fetched.append(url)
        return json.dumps({"keys": [pair("ec-p256-1").jwk(kid="k1")]}).encode()

    jwks = JwksKeys("https://idp.example/jwks", fetch, ["ES256"], clock, cache_seconds=300, refresh_cooldown_seconds=30)
    try:
        await jwks.refresh()

        async def fetches_after_a_moment() -> int:
            for _ in range(20):
                await asyncio.sleep(0)
            return len(fetched)

        clock.set_wall(NOW - 3600)  # NTP steps the clock back an hour
        clock.advance(299)
        assert await jwks.keys_for("ES256", "k1")
        assert await fetches_after_a_moment() == 1
        clock.advance(1)  # 300 s since the fetch on the monotonic clock: stale, however the wall moved
        assert await jwks.keys_for("ES256", "k1")
        assert await fetches_after_a_moment() == 2

        # The cool-down between fetches for unknown kids: neither stretched nor cut short.
        clock.set_wall(NOW + 86400)
        assert await jwks.keys_for("ES256", "k-unknown") == []
        assert len(fetched) == 2
        clock.set_wall(NOW - 86400)
        clock.advance(30)
        assert await jwks.keys_for("ES256", "k-unknown") == []
        assert len(fetched) == 3
    finally:
        await jwks.close()


def test_wall_clock_jumps_neither_refill_nor_drain_a_rate_limit_bucket() -> None:
    """The sessions API's token buckets refill with monotonic time: a wall jump either way neither refills nor drains them (D39)."""
    clock = ManualClock(wall=NOW)
    limiter = RateLimiter(60, clock)
    assert [limiter.allow("exhausted")[0] for _ in range(61)] == [True] * 60 + [False]
    assert [limiter.allow("half")[0] for _ in range(30)] == [True] * 30
    clock.set_wall(NOW - 3600)
    clock.set_wall(NOW + 3600)
    assert limiter.allow("exhausted") == (False, 1)
    assert [limiter.allow("half")[0] for _ in range(31)] == [True] * 30 + [False]
    clock.advance(1)
    assert limiter.allow("exhausted") == (True, 0)


async def test_wall_clock_jumping_back_does_not_make_stale_memory_look_fresh(tmp_path: Path) -> None:
    """Memory last confirmed current more than max_staleness ago on the monotonic clock is not trusted,
    even after the wall clock stepped back an hour (D39)."""
    store = SqliteStore(tmp_path / "stale.db")
    await store.open()
    try:

        def service() -> SessionService:
            return session_service(store, clock, max_staleness=5.0)

        clock = ManualClock(wall=NOW)
        here, elsewhere = service(), service()
        claims = Claims(user_id="alice", session_key="sid:one", expires_at=NOW + 7200, issued_at=NOW, not_before=None)
        session_id = await here.check(claims, CLIENT)
        await here.catch_up()
        await elsewhere.revoke(session_id, None)  # another process; "here" has not heard yet
        assert await here.check(claims, CLIENT) == session_id  # memory is fresh: trusted

        clock.set_wall(NOW - 3600)
        clock.advance(5.5)  # past max_staleness on the monotonic clock; the wall shows an hour earlier
        assert not here.fresh
        with pytest.raises(SessionRejectedError, match="revoked"):
            await here.check(claims, CLIENT)
    finally:
        await store.close()


async def test_token_expiry_follows_the_wall_clock_but_revocation_does_not(
    tmp_path: Path, start_sidecar: Callable[..., Any]
) -> None:
    """exp is compared with the wall clock (RFC 7519 4.1.4): a wall clock stepped back makes an expired token valid
    again, while a revoked session stays refused whatever the wall clock says (D39)."""
    clock = ManualClock(wall=NOW)
    sidecar: Sidecar = await start_sidecar(settings_for(tmp_path, jwt={"leeway_seconds": 0}), clock)
    short = mint("alice", now=NOW - 600, ttl=660)  # exp = NOW + 60
    revoked = mint("alice", now=NOW - 7200, ttl=86400)
    assert await sidecar.check(short) == 200
    session_id = None
    async with sidecar.public.get("/introspect", headers=bearer(revoked)) as resp:
        assert resp.status == 200
        session_id = resp.headers["X-Auth-Session"]
    async with sidecar.admin.delete(f"/admin/v1/sessions/{session_id}", headers=ADMIN) as resp:
        assert resp.status == 204

    clock.advance(120)
    assert await sidecar.check(short) == 401
    assert await sidecar.check(revoked) == 401
    clock.set_wall(NOW + 30)  # stepped back 90 s: before both tokens' exp, after both iat
    assert await sidecar.check(short) == 200
    assert await sidecar.check(revoked) == 401

    verifier = TokenVerifier(settings_for(tmp_path, jwt={"leeway_seconds": 0}).jwt, clock)
    clock.set_wall(NOW + 61)
    with pytest.raises(InvalidTokenError, match="expired"):
        await verifier.verify(short)
    clock.set_wall(NOW + 59)
    assert (await verifier.verify(short)).user_id == "alice"

