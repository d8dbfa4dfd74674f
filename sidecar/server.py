"""Serving: bind the listeners, run one process or supervise N pre-forked workers.

With ``server.workers = N`` the parent binds the sockets, forks N workers that accept on
them (the kernel hands each connection to one of them), restarts a worker that dies,
and on SIGTERM/SIGINT passes the signal on and waits for every worker to drain. Each
worker has its own memory; they agree through the store's revision feed and, when
configured, Redis push. The parent starts no threads and no event loop before forking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import stat
import sys
import time
from types import FrameType

from sidecar.config import Settings
from sidecar.errors import StoreUnavailableError

log = logging.getLogger("sidecar")

RESTART_DELAY_SECONDS = 1.0


def bind(settings: Settings) -> dict[str, socket.socket]:
    """The listening sockets: "public", "check" unless ``check.enabled = false`` (on
    ``check.unix_socket`` when set, see ``bind_unix``), and "admin" when admin keys are
    configured."""
    wanted = {"public": (settings.server.host, settings.server.port)}
    if settings.check.enabled and settings.check.unix_socket is None:
        wanted["check"] = (settings.check.host, settings.check.port)
    if settings.admin.enabled:
        wanted["admin"] = (settings.admin.host, settings.admin.port)
    else:
        log.warning("admin listener disabled: no admin.api_keys configured")
    sockets: dict[str, socket.socket] = {}
    try:
        for name, address in wanted.items():
            sockets[name] = socket.create_server(address, backlog=1024)
        if settings.check.enabled and settings.check.unix_socket is not None:
            sockets["check"] = bind_unix(settings.check.unix_socket, settings.check.unix_socket_mode)
    except OSError:
        for s in sockets.values():
            s.close()
        raise
    return sockets


class UnixSocketError(OSError):
    """The check listener's Unix socket path cannot be used (the message says why)."""


def bind_unix(path: str, mode: int) -> socket.socket:
    """A listening Unix domain stream socket at ``path`` with permission bits ``mode``.

    A socket file nobody listens on (left by a process that died) is replaced; a live one
    (connecting succeeds) or anything that is not a socket is refused and left as it is.
    The file is created under a umask that leaves exactly ``mode``, so it is never more
    open than that, not even between bind and chmod; listening starts only after that.
    Call before forking and before any thread starts (the umask is the process's).
    """
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise UnixSocketError(f"check.unix_socket: the directory {parent} does not exist (create it first)")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise UnixSocketError(f"check.unix_socket: {path} exists and is not a socket (left as it is)")
        if _unix_socket_alive(path):
            raise UnixSocketError(f"check.unix_socket: {path} is in use: another process listens on it")
        log.info("check.unix_socket: removing the stale socket %s (nobody listens on it)", path)
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = False
    try:
        old_umask = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
            bound = True
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)  # exactly mode (bind's 0o777 minus the umask is already that)
        sock.listen(1024)
    except OSError as e:
        sock.close()
        if bound:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise UnixSocketError(f"check.unix_socket: cannot listen on {path}: {e.strerror or e}") from e
    return sock


def _unix_socket_alive(path: str) -> bool:
    """Whether a process accepts connections on the socket file at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return False  # a socket file with no listener: stale
    except OSError as e:
        # EACCES, a full backlog (EAGAIN/timeout)...: someone may be there; never remove it.
        raise UnixSocketError(f"check.unix_socket: cannot tell whether {path} is in use: {e.strerror or e}") from e
    finally:
        probe.close()
    return True


def _unix_socket_identity(sock: socket.socket) -> tuple[str, int, int] | None:
    """(path, device, inode) of a bound Unix socket's file, to remove it at exit only if it
    is still the one this process created."""
    if sock.family != socket.AF_UNIX:
        return None
    path = sock.getsockname()
    if not isinstance(path, str) or not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return path, st.st_dev, st.st_ino


def _remove_unix_socket(identity: tuple[str, int, int] | None) -> None:
    if identity is None:
        return
    path, dev, ino = identity
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == (dev, ino):
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("check.unix_socket: cannot remove %s: %s", path, e.strerror or e)


async def _serve(settings: Settings, sockets: dict[str, socket.socket], label: str) -> None:
    from aiohttp import web

    from sidecar.web import create_admin_app, create_app, open_services
    from sidecar.web.app import checks_first, handler_kwargs, runner_kwargs
    from sidecar.web.listener import GuardedSockSite
    from sidecar.wire import CheckListener

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async with open_services(settings) as services:
        runners: list[web.AppRunner] = []
        check: CheckListener | None = None
        apps = {"public": create_app(settings, services)}
        if "admin" in sockets:
            apps["admin"] = create_admin_app(settings, services)
        try:
            for name, app in apps.items():
                runner = web.AppRunner(app, **runner_kwargs(settings))
                await runner.setup()
                runners.append(runner)
                if name == "public":
                    checks_first(runner)
                await GuardedSockSite(
                    runner, sockets[name], name=name,
                    max_connections=settings.server.max_connections,
                    header_timeout=settings.server.header_timeout_seconds,
                    handler_kwargs=handler_kwargs(settings),
                ).start()
                host, port = sockets[name].getsockname()[:2]
                log.info("%s listener on http://%s:%d%s", name, host, port, label)
            if "check" in sockets:
                check = CheckListener(services.check, settings)
                await check.start(sockets["check"])
                if check.unix:
                    log.info("check listener on unix:%s (/introspect)%s", sockets["check"].getsockname(), label)
                else:
                    host, port = sockets["check"].getsockname()[:2]
                    log.info("check listener on http://%s:%d/introspect%s", host, port, label)
            print(f"sidecar: ready{label}", file=sys.stderr, flush=True)
            await stop.wait()
            log.info("shutting down%s: no new connections, draining requests in flight", label)
        finally:
            # Stop accepting first, then drain in-flight requests (shutdown_timeout), then
            # close the services (which flushes batched last_seen writes).
            drains = [runner.cleanup() for runner in reversed(runners)]
            if check is not None:
                drains.append(check.shutdown(settings.server.shutdown_timeout_seconds))
            await asyncio.gather(*drains)


def _run_worker(settings: Settings, sockets: dict[str, socket.socket], label: str) -> int:
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(_serve(settings, sockets, label))
    except StoreUnavailableError as e:
        print(f"sidecar: error: storage: {e}", file=sys.stderr)
        return 1
    return 0


def raise_open_file_limit(settings: Settings) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force.

    Every connection is a file descriptor, and the usual soft limit (1,024) is far below
    what a gateway's connections need; the hard limit is what the operator allows.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard not in (resource.RLIM_INFINITY, soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warning("open-file limit: cannot raise %d to the hard limit %d: %s", soft, hard, e)
    log.info("open-file limit: %d (hard limit %s)", soft, "unlimited" if hard == resource.RLIM_INFINITY else hard)
    listeners = 1 + int(settings.admin.enabled) + int(settings.check.enabled)
    if soft != resource.RLIM_INFINITY and settings.server.max_connections * listeners >= soft:
        log.warning(
            "server.max_connections (%d per listener, %d listeners) reaches the open-file limit %d: "
            "past it connections fail for lack of descriptors rather than get a clear 503",
            settings.server.max_connections, listeners, soft,
        )
    return soft


def run(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT; the exit code for the command line."""
    raise_open_file_limit(settings)  # before forking: the workers inherit it
    try:
        sockets = bind(settings)
    except UnixSocketError as e:
        print(f"sidecar: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"sidecar: error: cannot listen: {e}", file=sys.stderr)
        return 1
    # Only this process (never a worker: they leave through os._exit) removes the file.
    unix_socket = _unix_socket_identity(sockets["check"]) if "check" in sockets else None
    try:
        if settings.server.workers == 1:
            return _run_worker(settings, sockets, "")
        return _supervise(settings, sockets)
    finally:
        for s in sockets.values():
            s.close()
        _remove_unix_socket(unix_socket)


def _supervise(settings: Settings, sockets: dict[str, socket.socket]) -> int:
    workers = settings.server.workers
    children: dict[int, int] = {}  # pid -> worker number
    stopping = False

    def spawn(number: int) -> None:
        pid = os.fork()
        if pid == 0:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            code = 1
            try:
                code = _run_worker(settings, sockets, f" (worker {number}/{workers}, pid {os.getpid()})")
            finally:
                os._exit(code)  # never fall back into the supervisor's loop
        children[pid] = number

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        # Our copies of the listening sockets would keep the kernel completing handshakes
        # while the workers drain: close them, so new connections are refused at once.
        for sock in sockets.values():
            sock.close()
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for number in range(1, workers + 1):
        spawn(number)
    log.info("supervising %d workers", workers)

    exit_code = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid not in children:
            continue
        number = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            if code != 0:
                exit_code = 1
            continue
        log.error("worker %d (pid %d) exited with %s; restarting it", number, pid, code)
        time.sleep(RESTART_DELAY_SECONDS)
        if not stopping:
            spawn(number)
    return exit_code
