"""Defects found by attacking a running `sidecar serve`, each shown fixed on a real process.

One process (DEBUG logging, umask 022) serves the tests that do not disturb each other;
the connection-flood and open-file-limit tests start their own, with lowered limits.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.web.envelope import rfc3339
from tests.support.configs import Listeners, sqlite_url, write_sidecar_config
from tests.support.processes import SIDECAR_READY, log_says, sidecar_argv
from tests.support.processes import start as start_process
from tests.support.tokens import ADMIN_KEY, mint

PYTHON = sys.executable
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@dataclass
class Served:
    """A `sidecar serve` process: its folder, ports and combined stdout/stderr log."""

    proc: subprocess.Popen[bytes]
    folder: Path
    port: int
    admin_port: int
    log: Path

    @property
    def public(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def start(folder: Path, *, server: dict[str, Any] | None = None, nofile: tuple[int, int] | None = None) -> Served:
    """Start `sidecar serve` in ``folder`` under umask 022 (and RLIMIT_NOFILE ``nofile``), wait until ready."""
    folder.mkdir(parents=True, exist_ok=True)
    listeners = Listeners.free()
    config = write_sidecar_config(
        folder / "sidecar.toml", listeners, sqlite_url(folder / "sessions.db"),
        server={"shutdown_timeout_seconds": 5, **(server or {})}, logging={"level": "DEBUG"},
    )

    def before_exec() -> None:
        os.umask(0o022)
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

    # preexec_fn: the limit and umask must hold from the first instruction of the child.
    service = start_process(
        "sidecar", sidecar_argv(config), cwd=folder, log=folder / "serve.log",
        ready=log_says(SIDECAR_READY, listeners.public), preexec_fn=before_exec,
    )
    return Served(service.proc, folder, listeners.public, listeners.admin, service.log)


def stop(served: Served) -> None:
    if served.proc.poll() is None:
        served.proc.terminate()
        try:
            served.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            served.proc.kill()
            served.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One `sidecar serve` for the tests that do not disturb each other."""
    s = start(tmp_path_factory.mktemp("hardening"))
    try:
        yield s
    finally:
        stop(s)


def raw_exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` on a new connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------- 1. parser errors and the log

MALFORMED: dict[str, Callable[[bytes], bytes]] = {
    "vt-in-authorization": lambda cred: b"Authorization: Bearer " + cred + b"\x0b\r\n",
    "nul-in-authorization": lambda cred: b"Authorization: Bearer " + cred + b"\x00\r\n",
    "del-in-authorization": lambda cred: b"Authorization: Bearer " + cred + b"\x7f\r\n",
    "vt-in-next-line": lambda cred: b"Authorization: Bearer " + cred + b"\r\nX-Bad: a\x0bb\r\n",
    "nul-in-next-line": lambda cred: b"Authorization: Bearer " + cred + b"\r\nX-Bad: a\x00b\r\n",
    "obs-fold-space": lambda cred: b"Authorization: Bearer " + cred + b"\r\n folded\r\n",
    "obs-fold-tab": lambda cred: b"Authorization: Bearer " + cred + b"\r\n\tfolded\r\n",
}


def malformed_requests(cred: str, path: str) -> Iterator[tuple[str, bytes]]:
    for name, line in MALFORMED.items():
        yield name, f"GET {path} HTTP/1.1\r\nHost: sidecar\r\n".encode() + line(cred.encode()) + b"\r\n"


def test_malformed_header_lines_never_put_a_token_or_the_admin_key_in_the_log(served: Served) -> None:
    """A control byte or obs-fold next to the Authorization line gets a 400 and one log line: no token, no admin key, no traceback."""
    token = mint()
    for port, cred, path in ((served.port, token, "/introspect"), (served.admin_port, ADMIN_KEY, "/metrics")):
        for name, request in malformed_requests(cred, path):
            answer = raw_exchange(port, request)
            assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400"), (name, answer[:200])
    time.sleep(0.2)  # the log lines are written before the answers; this only lets the file catch up
    log = served.log_text()
    assert token not in log
    assert ADMIN_KEY not in log
    assert "Traceback" not in log
    refused = [line for line in log.splitlines() if "malformed request" in line]
    assert len(refused) >= 2 * len(MALFORMED)
    assert all("BadHttpMessage" in line and "127.0.0.1" in line for line in refused)


def test_the_400_for_a_malformed_header_does_not_echo_it(served: Served) -> None:
    """The parser's 400 says "400 Bad Request" and never quotes the request line back (nor the token in it)."""
    token = mint()
    for port, cred in ((served.port, token), (served.admin_port, ADMIN_KEY)):
        for name, request in malformed_requests(cred, "/introspect"):
            answer = raw_exchange(port, request)
            _, _, body = answer.partition(b"\r\n\r\n")
            assert body == b"400 Bad Request\n", (name, body[:200])


# ----------------------------------------------------------------- 4. exp beyond year 9999


async def test_exp_1e308_is_refused_and_the_sessions_api_keeps_answering(served: Served) -> None:
    """A signed token with "exp": 1e308 gets 401 at the check and 422 at registration; listings keep answering 200."""
    user = f"u-{uuid.uuid4().hex[:8]}"
    huge = mint(user, exp=1e308)
    good = mint(user)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{served.public}/introspect", headers={"Authorization": f"Bearer {huge}"}) as resp:
            assert resp.status == 401
        async with http.post(f"{served.admin}/admin/v1/sessions", json={"token": huge}, headers=ADMIN) as resp:
            assert resp.status == 422, await resp.text()
        headers = {"Authorization": f"Bearer {good}"}
        async with http.get(f"{served.public}/introspect", headers=headers) as resp:
            assert resp.status == 200
            sid = resp.headers["X-Auth-Session"]
        async with http.get(f"{served.public}/api/v1/sessions/", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            assert [s["id"] for s in (await resp.json())["data"]] == [sid]
        async with http.get(f"{served.public}/api/v1/sessions/{sid}/", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
        async with http.get(f"{served.admin}/admin/v1/users/{user}/sessions", headers=ADMIN) as resp:
            assert resp.status == 200, await resp.text()


async def test_a_stored_row_with_an_unwritable_expiry_is_listed_not_a_500(served: Served) -> None:
    """A row stored with expires_at 1e308 (as before the fix) lists as 9999-12-31T23:59:59Z, not a 500."""
    user = f"old-{uuid.uuid4().hex[:8]}"
    now = time.time()
    with sqlite3.connect(served.folder / "sessions.db") as db:
        db.execute(
            "INSERT INTO sessions (id, session_key, user_id, created_at, last_seen, expires_at, revoked_at,"
            " ip_address, device, location) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, 'curl', 'Unknown')",
            (str(uuid.uuid4()), f"sid:{uuid.uuid4()}", user, now, now, 1e308),
        )
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{served.admin}/admin/v1/users/{user}/sessions", headers=ADMIN) as resp,
    ):
        assert resp.status == 200, await resp.text()
        [row] = (await resp.json())["data"]
    assert row["expires_at"] == "9999-12-31T23:59:59Z"


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (1740650400.7, "2025-02-27T10:00:00Z"),
        (253402300799, "9999-12-31T23:59:59Z"),
        (1e308, "9999-12-31T23:59:59Z"),
        (float("inf"), "9999-12-31T23:59:59Z"),
        (-1e308, "0001-01-01T00:00:00Z"),
        (float("nan"), "0001-01-01T00:00:00Z"),
    ],
)
def test_rfc3339_clamps_what_it_cannot_write(ts: float, text: str) -> None:
    """rfc3339 writes four-digit years and clamps any time beyond them (or NaN) instead of raising."""
    assert rfc3339(ts) == text


# ------------------------------------------------------------ 5. admin registration's inputs


async def register(served: Served, **fields: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        body = {"token": mint(f"r-{uuid.uuid4().hex[:8]}"), **fields}
        async with http.post(f"{served.admin}/admin/v1/sessions", json=body, headers=ADMIN) as resp:
            return resp.status, await resp.json()


@pytest.mark.parametrize(
    "ip",
    [
        "fe80::1%eth0\r\nX-Injected: 1",
        "fe80::1%" + "z" * 5000,
        "fe80::1%\ud800",
        "fe80::1%eth\x00",
        "10.0.0.1\n",
        "unknown",
        "example.com",
        "10.0.0.1, 10.0.0.2",
        "",
        42,
    ],
    ids=lambda v: repr(v)[:24],
)
async def test_registration_refuses_what_is_not_an_ip_address(served: Served, ip: Any) -> None:
    """ip_address is read by the check path's parser: CRLF, huge or non-ASCII zones and non-addresses are a 400."""
    status, body = await register(served, ip_address=ip)
    assert (status, body["message"]) == (400, "Field 'ip_address' must be an IP address")


@pytest.mark.parametrize(
    ("ip", "stored"),
    [("fe80::1%eth0", "fe80::1"), ("[2001:db8::1]:443", "2001:db8::1"), ("::ffff:10.0.0.7", "10.0.0.7"), (" 10.0.0.1 ", "10.0.0.1")],
)
async def test_registration_stores_the_address_as_the_check_would(served: Served, ip: str, stored: str) -> None:
    """Zone ids and ports are dropped and IPv4-mapped addresses become IPv4, as on the check path."""
    status, body = await register(served, ip_address=ip)
    assert status == 201, body
    assert body["data"]["ip_address"] == stored


@pytest.mark.parametrize(
    "ua", ["curl/8.0\r\nX-Injected: 1", "curl\x00", "curl\x1b[31m", "curl\x7f", "curl\x85", "x" * 4097, 7],
    ids=lambda v: repr(v)[:20],
)
async def test_registration_refuses_a_user_agent_no_header_could_carry(served: Served, ua: Any) -> None:
    """user_agent with a control character (HTAB aside), or longer than 4096 characters, is a 400."""
    status, body = await register(served, user_agent=ua)
    assert status == 400, body
    assert body["message"] == "Field 'user_agent' must be a string of at most 4096 characters without control characters"


async def test_registration_takes_an_ordinary_user_agent(served: Served) -> None:
    """A user agent with a tab, non-ASCII letters, 4096 characters long, registers (201)."""
    ua = ("Mozilla/5.0\t(X11; Linux x86_64) é " * 200)[:4096]
    status, body = await register(served, user_agent=ua)
    assert status == 201, body


# ------------------------------------------------------------------ 7. the SQLite files


async def test_sqlite_database_wal_and_shm_are_owner_only(served: Served) -> None:
    """Under umask 022, sessions.db, -wal and -shm are created 0600."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{served.public}/introspect", headers={"Authorization": f"Bearer {mint()}"}) as resp,
    ):
        assert resp.status == 200
    for name in ("sessions.db", "sessions.db-wal", "sessions.db-shm"):
        mode = stat.S_IMODE((served.folder / name).stat().st_mode)
        assert mode == 0o600, f"{name}: {mode:o}"


# ------------------------------------------------------ 3. silent connections and file limits


def open_silent(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        socks.append(s)
    return socks


def closed_by_server(s: socket.socket, deadline: float) -> bytes | None:
    """What the server sent before closing ``s`` (b"" for nothing), or None if still open at ``deadline``."""
    received = b""
    while True:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(4096)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


async def test_silent_connections_past_the_file_limit_do_not_lock_anyone_out(tmp_path: Path) -> None:
    """With RLIMIT_NOFILE 256/256, 300 silent connections per listener are refused or timed out, and then checks and admin calls answer."""
    s = start(
        tmp_path,
        server={"header_timeout_seconds": 1, "keepalive_timeout_seconds": 2, "max_connections": 100},
        nofile=(256, 256),
    )
    socks: list[socket.socket] = []
    try:
        socks = open_silent(s.port, 300) + open_silent(s.admin_port, 300)
        deadline = time.monotonic() + 15
        outcomes = [closed_by_server(sock, deadline) for sock in socks]
        assert None not in outcomes, f"{outcomes.count(None)} silent connections still open after 15 s"
        answers = [o for o in outcomes if o is not None]
        refused = [o for o in answers if o.startswith(b"HTTP/1.1 503")]
        timed_out = [o for o in answers if o == b""]
        assert refused, "no connection was refused past max_connections"
        assert timed_out, "no connection was closed by the header timeout"
        assert all(b"too many connections" in o for o in refused)

        token = mint()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{s.public}/introspect", headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 200
            async with http.get(f"{s.admin}/admin/v1/users/alice/sessions", headers=ADMIN) as resp:
                assert resp.status == 200

        # A trickling client is closed by the header timeout too, however busy it keeps the line.
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as trickle:
            trickle.sendall(b"GET /introspect HTTP/1.1\r\n")
            give_up = time.monotonic() + 10
            with pytest.raises(OSError):  # BrokenPipe or ConnectionReset once the server has closed it
                while time.monotonic() < give_up:
                    trickle.sendall(b"X")
                    await asyncio.sleep(0.1)
            assert time.monotonic() < give_up

        # A keep-alive connection idle after its answer is closed after keepalive_timeout_seconds.
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as idle:
            idle.sendall(f"GET /introspect HTTP/1.1\r\nHost: s\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
            answer = closed_by_server(idle, time.monotonic() + 10)
            assert answer is not None, "idle keep-alive connection still open after 10 s"
            assert answer.startswith(b"HTTP/1.1 200")
    finally:
        for sock in socks:
            sock.close()
        stop(s)
    assert "Traceback" not in s.log_text()


def test_soft_open_file_limit_is_raised_to_the_hard_one(tmp_path: Path) -> None:
    """Started with RLIMIT_NOFILE soft 512, hard 4096, the process runs with 4096 and logs it."""
    s = start(tmp_path, nofile=(512, 4096))
    try:
        limits = Path(f"/proc/{s.proc.pid}/limits").read_text()
        [line] = [line for line in limits.splitlines() if line.startswith("Max open files")]
        assert line.split()[3:5] == ["4096", "4096"]
        assert "open-file limit: 4096 (hard limit 4096)" in s.log_text()
    finally:
        stop(s)
