"""Real processes: start one with its output in a log file, wait until it is ready, stop it.

Every process is waited on until ``ready(service)`` holds (or ``HarnessError`` carries
the tail of its log) and is always stopped: SIGTERM, then SIGKILL after STOP_TIMEOUT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support import REPO, HarnessError
from tests.support.binaries import find_binary
from tests.support.ports import port_open

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
SIDECAR_READY = "sidecar: ready"


@dataclass
class Service:
    """A started process whose output goes to ``log``."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def says(self, text: str) -> bool:
        """Whether the log holds ``text``."""
        try:
            return text in self.log.read_text(errors="replace")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)


Ready = Callable[[Service], bool]


def start(
    name: str,
    argv: Sequence[str],
    *,
    cwd: Path,
    log: Path,
    ready: Ready,
    timeout: float = STARTUP_TIMEOUT,
    env: Mapping[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> Service:
    """Start ``argv`` in ``cwd``, its output in ``log``, and wait until ``ready(service)``.

    ``env`` adds to (or overrides) this process's environment for the child. A process
    that exits or is not ready within ``timeout`` is stopped and ``HarnessError`` raised.
    """
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
            env=None if env is None else {**os.environ, **env},
            preexec_fn=preexec_fn,  # noqa: PLW1509 (bench's CPU pinning; the harness starts no threads)
        )
    service = Service(name, proc, log)
    deadline = time.monotonic() + timeout
    try:
        while not ready(service):
            if proc.poll() is not None:
                raise HarnessError(f"{name} exited with {proc.returncode} before it was ready:\n{service.log_tail()}")
            if time.monotonic() > deadline:
                raise HarnessError(f"{name} not ready after {timeout:.0f}s:\n{service.log_tail()}")
            time.sleep(0.05)
    except BaseException:
        service.stop()
        raise
    return service


@contextmanager
def running(
    name: str,
    argv: Sequence[str],
    workdir: Path,
    ready: Ready,
    timeout: float = STARTUP_TIMEOUT,
    *,
    env: Mapping[str, str] | None = None,
) -> Iterator[Service]:
    """Start ``argv`` in ``workdir`` (log: ``workdir/<name>.log``), wait until ready, yield it, always stop it."""
    service = start(name, argv, cwd=workdir, log=workdir / f"{name}.log", ready=ready, timeout=timeout, env=env)
    try:
        yield service
    finally:
        service.stop()


def log_says(text: str, port: int) -> Ready:
    """Ready when the log holds ``text`` and the port accepts connections."""
    return lambda service: service.says(text) and port_open(port)


def listens(port: int) -> Ready:
    """Ready when the port accepts connections."""
    return lambda _service: port_open(port)


# ---------------------------------------------------------------------------- the usual ones


def sidecar_argv(config: Path, command: str = "serve") -> list[str]:
    """``sidecar serve --config FILE`` as this Python runs it (``python -m sidecar``)."""
    return [sys.executable, "-m", "sidecar", command, "--config", str(config)]


# Processes run in their own folder: PYTHONPATH makes this checkout's packages importable there.
REPO_ON_PATH = {"PYTHONPATH": str(REPO)}


@contextmanager
def run_sidecar_file(
    workdir: Path, config: Path, port: int, *, name: str = "sidecar", env: Mapping[str, str] | None = None
) -> Iterator[Service]:
    """``sidecar serve`` with the file ``config``, ready once it says so and ``port`` listens."""
    ready = log_says(SIDECAR_READY, port)
    with running(name, sidecar_argv(config), workdir, ready, env={**REPO_ON_PATH, **(env or {})}) as service:
        yield service


def redis_server_argv(port: int) -> list[str]:
    """A redis-server on loopback ``port`` that keeps nothing on disk."""
    binary = find_binary("redis-server")
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


REDIS_READY = "Ready to accept connections"


@contextmanager
def redis_server(workdir: Path, port: int) -> Iterator[Service]:
    """A throwaway redis-server on ``port`` that keeps nothing on disk."""
    with running(f"redis-{port}", redis_server_argv(port), workdir, log_says(REDIS_READY, port)) as service:
        yield service


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise HarnessError(f"no VmRSS for pid {pid}")
