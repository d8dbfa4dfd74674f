"""Real processes for the harness: free ports, CPU pinning, start/ready/stop, RSS.

Every process is started with its output in a log file, pinned to its CPU (the same
``sched_setaffinity`` call ``taskset -c N`` makes), and marked to die with the harness
(``PR_SET_PDEATHSIG``) so that even a harness killed with SIGKILL leaves nothing behind.
``Processes`` stops everything it started, newest first, on exit or error.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
_PR_SET_PDEATHSIG = 1


class BenchError(Exception):
    """A measurement could not be made; the message says why (and what to install)."""


@dataclass(frozen=True)
class Cpus:
    """Where things run: the servers on one core, the load generator on another."""

    server: int | None
    load: int | None

    @classmethod
    def pick(cls) -> Cpus:
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) < 2:
            return cls(None, None)  # one core: nothing to separate; the report says so
        return cls(allowed[0], allowed[1])

    @property
    def pinned(self) -> bool:
        return self.server is not None


def find_binary(name: str, hint: str) -> str:
    """``name`` on PATH, beside this Python (.venv/bin) or in /usr/sbin; else BenchError."""
    for candidate in (
        shutil.which(name),
        str(Path(sys.executable).parent / name),
        str(REPO / ".venv" / "bin" / name),
        f"/usr/sbin/{name}",
    ):
        if candidate and os.access(candidate, os.X_OK) and Path(candidate).is_file():
            return candidate
    raise BenchError(f"{name} not found (PATH, .venv/bin, /usr/sbin): {hint}")


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports nothing listens on right now."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def pinned_child(cpu: int | None) -> Callable[[], None]:
    def setup() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        # Die with the harness, whatever kills it.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return setup


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def says(self, text: str) -> bool:
        try:
            return text in self.log.read_text(errors="replace")
        except OSError:
            return False

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=STOP_TIMEOUT)


@dataclass
class Processes:
    """Starts pinned processes in ``workdir`` and stops every one of them on exit."""

    workdir: Path
    cpus: Cpus
    started: list[Proc] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        ready: Callable[[Proc], bool],
        *,
        cpu: int | None = None,
        timeout: float = STARTUP_TIMEOUT,
        env: Mapping[str, str] | None = None,
    ) -> Proc:
        """Start ``argv`` on ``cpu`` (default: the server core) and wait until ``ready``."""
        log = self.fresh(name, ".log")
        with log.open("wb") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=None if env is None else {**os.environ, **env},
                preexec_fn=pinned_child(self.cpus.server if cpu is None else cpu),  # noqa: PLW1509 (no threads)
            )
        proc = Proc(name, popen, log)
        self.started.append(proc)
        deadline = time.monotonic() + timeout
        while not ready(proc):
            if not proc.alive():
                raise BenchError(f"{name} exited with {popen.returncode} before it was ready:\n{proc.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{name} not ready after {timeout:.0f}s:\n{proc.tail()}")
            time.sleep(0.05)
        return proc

    def fresh(self, name: str, suffix: str = "") -> Path:
        """A path in the work directory that no earlier scenario used: name, name-2, ..."""
        path, n = self.workdir / f"{name}{suffix}", 1
        while path.exists():
            n += 1
            path = self.workdir / f"{name}-{n}{suffix}"
        return path

    def stop(self, proc: Proc) -> None:
        proc.stop()
        with contextlib.suppress(ValueError):
            self.started.remove(proc)

    def stop_all(self) -> None:
        while self.started:
            self.started.pop().stop()

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()


def says_and_listens(text: str, port: int) -> Callable[[Proc], bool]:
    """Ready when the log holds ``text`` and ``port`` accepts connections."""
    return lambda proc: proc.says(text) and port_open(port)


def listens(port: int) -> Callable[[Proc], bool]:
    return lambda _proc: port_open(port)
