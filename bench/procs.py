"""Real processes for the benchmarks: CPU pinning, and every started process stopped together.

Starting a process with its output in a log file, waiting until it is ready, stopping
it, free ports, binaries and RSS are the test harness's own (``tests/support``); here
every process is also pinned to its CPU (the same ``sched_setaffinity`` call ``taskset
-c N`` makes) and marked to die with the harness (``PR_SET_PDEATHSIG``), so that even a
harness killed with SIGKILL leaves nothing behind. ``Processes`` stops everything it
started, newest first, on exit or error.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tests.support import HarnessError
from tests.support.processes import Ready, Service, start

STARTUP_TIMEOUT = 60.0
_PR_SET_PDEATHSIG = 1

# A measurement could not be made; the message says why (and what to install). The
# harness's own helpers (tests/support) raise it too.
BenchError = HarnessError


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


def pinned_child(cpu: int | None) -> Callable[[], None]:
    def setup() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        # Die with the harness, whatever kills it.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return setup


@dataclass
class Processes:
    """Starts pinned processes in ``workdir`` and stops every one of them on exit."""

    workdir: Path
    cpus: Cpus
    started: list[Service] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        ready: Ready,
        *,
        cpu: int | None = None,
        timeout: float = STARTUP_TIMEOUT,
        env: Mapping[str, str] | None = None,
    ) -> Service:
        """Start ``argv`` on ``cpu`` (default: the server core) and wait until ``ready``."""
        proc = start(
            name, argv, cwd=self.workdir, log=self.fresh(name, ".log"), ready=ready, timeout=timeout, env=env,
            preexec_fn=pinned_child(self.cpus.server if cpu is None else cpu),
        )
        self.started.append(proc)
        return proc

    def fresh(self, name: str, suffix: str = "") -> Path:
        """A path in the work directory that no earlier scenario used: name, name-2, ..."""
        path, n = self.workdir / f"{name}{suffix}", 1
        while path.exists():
            n += 1
            path = self.workdir / f"{name}-{n}{suffix}"
        return path

    def stop(self, proc: Service) -> None:
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
