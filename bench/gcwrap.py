"""``sidecar`` with its garbage-collector pauses counted (``python -m bench --gc``).

    python -m bench.gcwrap STATS.json serve --config sidecar.toml

Runs ``sidecar.cli.main`` unchanged in this process after adding a ``gc.callbacks`` entry
that counts collections and their time per generation. On SIGUSR1 (and at exit) the
totals are written to STATS.json, so the harness can take the difference around a run.
A diagnostic: the callback costs a few microseconds per collection.
"""

from __future__ import annotations

import atexit
import gc
import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any


class GcStats:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = 0.0
        self._started = 0.0

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        generation = int(info["generation"])
        self.collections[generation] += 1
        self.seconds[generation] += took
        self.longest = max(self.longest, took)

    def dump(self, _signum: int = 0, _frame: FrameType | None = None) -> None:
        data = {
            "collections": self.collections,
            "seconds": self.seconds,
            "longest_seconds": self.longest,
            "tracked_objects": len(gc.get_objects()),
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.path)


def main() -> int:
    if len(sys.argv) < 3:
        print("usage: python -m bench.gcwrap STATS.json serve --config FILE", file=sys.stderr)
        return 2
    stats = GcStats(Path(sys.argv[1]))
    gc.callbacks.append(stats.callback)
    signal.signal(signal.SIGUSR1, stats.dump)
    atexit.register(stats.dump)
    from sidecar.cli import main as sidecar_main

    return sidecar_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
