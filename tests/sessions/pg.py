"""PostgreSQL for the tests: find a server or start one, and give each run its own database.

``database()`` yields the URL of a fresh database named ``sidecar_test_<random>``, created
through the ``postgres`` maintenance database and dropped (WITH FORCE) at the end, so runs
never see each other's rows. The server is, in order:

1. the one ``SIDECAR_TEST_POSTGRES_URL`` names (a URL of its maintenance database);
2. the one at 127.0.0.1:5432, user ``postgres``, trust auth (this machine and CI);
3. a throwaway server: ``initdb`` into a temporary folder and ``pg_ctl start`` on a free
   loopback port, from the binaries on PATH or in /usr/lib/postgresql/*/bin, run as an
   unprivileged user when the tests run as root (PostgreSQL refuses to run as root).

When none of these works the test fails, saying what to install. It never skips: a
missing service is a failure (DESIGN: under ``CI=true`` above all).

Also here: ``TcpProxy``, a loopback forwarder a test can cut or freeze to see the store
meet a server that went away or hung, without touching the shared server.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

import pytest

from tests.support.binaries import postgres_bindir
from tests.support.ports import free_port

URL_ENV = "SIDECAR_TEST_POSTGRES_URL"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
INSTALL_HINT = (
    "install the PostgreSQL server (Debian/Ubuntu: apt-get install postgresql), or run one on "
    f"127.0.0.1:5432 with trust auth for user postgres, or set {URL_ENV} to a maintenance-database URL"
)

T = TypeVar("T")


def asyncpg() -> Any:
    """The asyncpg module, or a failure that says how to install it."""
    try:
        return importlib.import_module("asyncpg")  # untyped: loaded as Any
    except ModuleNotFoundError:
        pytest.fail("the PostgreSQL tests need asyncpg: pip install -e '.[test,postgres]'")


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from synchronous code (a session fixture).

    In its own thread and loop, so it never disturbs the event loop pytest-asyncio manages.
    """

    async def main() -> T:
        return await make()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(main())).result()


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def with_address(url: str, host: str, port: int) -> str:
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"))


def with_params(url: str, **params: str) -> str:
    """``url`` with query parameters added; asyncpg sends unknown ones as server settings."""
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit(parts._replace(query=query))


async def execute(url: str, *statements: str) -> None:
    conn = await asyncpg().connect(url, timeout=10)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def fetchval(url: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg().connect(url, timeout=10)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def _problem(url: str) -> str | None:
    """Why ``url`` cannot be used, or None when a trivial query answers."""
    try:
        await fetchval(url, "SELECT 1")
    except (OSError, TimeoutError, asyncpg().PostgresError, asyncpg().InterfaceError) as e:
        return f"{type(e).__name__}: {e}"
    return None


@dataclass(frozen=True)
class Server:
    maintenance_url: str  # the "postgres" database, for CREATE/DROP DATABASE


@contextlib.contextmanager
def server() -> Iterator[Server]:
    """A PostgreSQL server that answers: the configured, the local, or a throwaway one."""
    configured = os.environ.get(URL_ENV)
    url = configured or DEFAULT_URL
    problem = run_sync(lambda: _problem(url))
    if problem is None:
        yield Server(url)
        return
    if configured:
        pytest.fail(f"{URL_ENV} names a PostgreSQL server that does not answer ({problem}); fix it or unset it")
    with _throwaway(f"nothing usable answers at 127.0.0.1:5432 ({problem})") as started:
        yield started


@contextlib.contextmanager
def database(prefix: str = "sidecar_test") -> Iterator[str]:
    """The URL of a new, empty database, dropped when the block ends."""
    with server() as srv:
        name = f"{prefix}_{secrets.token_hex(6)}"
        if not re.fullmatch(r"[a-z0-9_]+", name):  # it is spliced into SQL as an identifier
            raise ValueError(f"bad database name {name!r}")
        run_sync(lambda: execute(srv.maintenance_url, f'CREATE DATABASE "{name}"'))
        try:
            yield with_database(srv.maintenance_url, name)
        finally:
            # FORCE (PostgreSQL 13+) ends connections a failed test may have left open.
            run_sync(lambda: execute(srv.maintenance_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# ---------------------------------------------------------------- a throwaway server


def _run(cmd: list[str], *, user: pwd.struct_passwd | None, what: str, log: Path | None = None) -> None:
    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kwargs)
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log is not None and log.is_file() else ""
        pytest.fail(f"could not {what} a throwaway PostgreSQL: {result.stderr.strip()}\n{tail}\n({INSTALL_HINT})")


@contextlib.contextmanager
def _throwaway(why: str) -> Iterator[Server]:
    bindir = postgres_bindir()
    if bindir is None:
        pytest.fail(f"the PostgreSQL tests need a server: {why}, and no initdb/pg_ctl was found "
                    f"on PATH or in /usr/lib/postgresql/*/bin; {INSTALL_HINT}")
    user = None
    root = Path(tempfile.mkdtemp(prefix="sidecar-pg-"))
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root: hand the folder to an unprivileged account.
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                user = pwd.getpwnam(name)
                break
        if user is None:
            pytest.fail(f"the PostgreSQL tests run as root and no 'postgres' or 'nobody' account exists; {INSTALL_HINT}")
        os.chown(root, user.pw_uid, user.pw_gid)
    data, log, port = root / "data", root / "server.log", free_port()
    try:
        _run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
              "--no-locale", "--no-sync"], user=user, what="initialise")
        # fsync off: this server holds nothing worth keeping past the run.
        options = f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root} -c fsync=off"
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"],
             user=user, what="start", log=log)
        try:
            yield Server(f"postgresql://postgres@127.0.0.1:{port}/postgres")
        finally:
            _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], user=user, what="stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- a server that fails on cue


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a real server until told to cut or freeze.

    ``cut()`` closes the listener and every connection (the server went away); ``freeze()``
    keeps connections open but forwards nothing (a hung server or a black-holed network);
    ``thaw()`` and ``start()`` undo them, on the same port.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    async def close(self) -> None:
        self.thaw()
        await self.cut()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            self._tasks.discard(task)
            return
        self._writers.add(up_writer)
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                w.transport.abort()
                self._writers.discard(w)
            self._tasks.discard(task)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            await self._flowing.wait()
            dst.write(data)
            await dst.drain()
        dst.transport.abort()
