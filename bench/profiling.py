"""Where the time goes: ``py-spy record`` on a server process while wrk loads it.

Profiles are taken in an extra run after the measured one, never during it (the sampler
costs a little CPU). The raw collapsed stacks are kept beside the results; the report
shows the hottest lines (self time: the innermost frame of each sample) and the functions
with the most inclusive time (every frame of a sample counts once).
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.procs import BenchError, pinned_child
from tests.support import REPO
from tests.support.binaries import find_binary

PY_SPY_HINT = ".venv/bin/pip install py-spy"
# Frames that hold the event loop (or start the process): in most samples, saying nothing.
_ROOTS = frozenset({
    "<module>", "_run_code", "_run_module_as_main", "main", "cmd_serve", "run", "_run_worker",
    "Runner.run", "run_until_complete", "run_forever", "_run_once", "serve", "_serve",
})
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True)
class Hotspot:
    where: str  # "function (file:line)" or "function (file)"
    samples: int
    percent: float
    code: str | None = None  # the line's source, for sidecar/ lines (read when summarised)


@dataclass(frozen=True)
class Profile:
    name: str
    raw: str  # path of the collapsed stacks
    samples: int
    self_lines: list[Hotspot]
    inclusive_functions: list[Hotspot]
    sidecar_lines: list[Hotspot]  # lines of sidecar/ code, with everything they call

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Profile:
        lists = {k: [Hotspot(**h) for h in data[k]] for k in ("self_lines", "inclusive_functions", "sidecar_lines")}
        return cls(name=data["name"], raw=data["raw"], samples=data["samples"], **lists)


def _shorten(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3" and "/" in tail else tail
    return path


def _frame_parts(frame: str) -> tuple[str, str, str | None]:
    m = _FRAME.match(frame)
    if m is None:
        return frame, "?", None
    return m["func"], _shorten(m["file"]), m["line"]


def _source(where: str) -> str | None:
    """The text of a ``sidecar/`` line named in ``where`` (``func (sidecar/x.py:12)``)."""
    m = re.search(r"\((sidecar/[^():]+):(\d+)\)$", where)
    if m is None:
        return None
    try:
        lines = (REPO / m[1]).read_text().splitlines()
    except OSError:
        return None
    n = int(m[2])
    return lines[n - 1].strip() if 0 < n <= len(lines) else None


def summarise(name: str, raw: Path, top: int = 15) -> Profile:
    """Read py-spy's ``--format raw`` output (``frame;frame;... count`` a line)."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_parts(f) for f in stack.split(";")]
        func, file, lineno = frames[-1]
        self_time[f"{func} ({file}:{lineno})" if lineno else f"{func} ({file})"] += count
        for key in {f"{f} ({p})" for f, p, _ in frames if f not in _ROOTS}:
            inclusive[key] += count
        for key in {f"{f} ({p}:{n})" for f, p, n in frames if p.startswith("sidecar/") and f not in _ROOTS}:
            ours[key] += count
    if total == 0:
        raise BenchError(f"py-spy recorded no samples for {name} ({raw})")

    def hotspots(counter: Counter[str]) -> list[Hotspot]:
        return [Hotspot(k, v, round(100 * v / total, 1), _source(k)) for k, v in counter.most_common(top)]

    return Profile(
        name=name,
        raw=str(raw),
        samples=total,
        self_lines=hotspots(self_time),
        inclusive_functions=hotspots(inclusive),
        sidecar_lines=hotspots(ours),
    )


def record(pid: int, seconds: float, out: Path, cpu: int | None) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` for ``seconds`` into ``out``; the caller waits on it."""
    py_spy = find_binary("py-spy", PY_SPY_HINT)
    argv = [
        py_spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
        # Blocking sampling (py-spy pauses the process for each sample): slower, but never
        # a torn stack; this run is not a measured one. --gil keeps only samples of the
        # thread holding the GIL: what costs the event loop CPU, not threads that wait.
        "--rate", "250", "--gil", "--format", "raw", "--output", str(out),
    ]
    with out.with_suffix(".log").open("wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pinned_child(cpu))  # noqa: PLW1509 (no threads)
