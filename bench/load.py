"""The load generator: ``wrk`` with a Lua script that rotates bearer tokens.

Every request carries ``Authorization: Bearer <token>`` taken in turn from a pool (one
token a line in a file) and a browser User-Agent, for every target alike (the bare
handler ignores them). Request strings are built once in ``init``, so the script costs wrk
the same per request whatever the pool size. Two modes:

- ``cycle``: go round the pool again and again (cached tokens);
- ``once``: send each token at most once, then repeat the last one (cold tokens, and
  driving N distinct sessions through the check); ``fresh`` counts the distinct tokens
  sent, so a run that ran out of pool is seen, not silently re-using tokens.

The script prints one ``BENCH_JSON`` line from ``done()``; nothing is parsed out of wrk's
human output. Any socket error, timeout or non-2xx answer fails the measurement: a 401
is much cheaper than a 200 and would flatter the number.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from bench.cpu import Snapshot, Usage, wait_quiet
from bench.procs import BenchError, pinned_child
from tests.support.binaries import find_binary

Mode = Literal["cycle", "once"]

USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
WRK_HINT = "apt-get install -y wrk (Debian's wrk 4.x, with LuaJIT)"

LUA = r"""
-- Written by bench/load.py. args: [1] token file, [2] "cycle" | "once", [3] offset,
-- [4] number of threads, [5] User-Agent. Thread k takes tokens offset+k, offset+k+T, ...
local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local file, mode = args[1], args[2]
  local offset, nthreads, ua = tonumber(args[3]), tonumber(args[4]), args[5]
  reqs, n, i, wraps = {}, 0, 0, 0
  once = (mode == "once")
  local k = 0
  for line in io.lines(file) do
    if k >= offset and (k - offset) % nthreads == tid then
      n = n + 1
      reqs[n] = wrk.format("GET", wrk.path, {["Authorization"] = "Bearer " .. line, ["User-Agent"] = ua})
    end
    k = k + 1
  end
  if n == 0 then error("no tokens for thread " .. tid) end
end

function request()
  i = i + 1
  if i > n then
    if once then i = n + 1; return reqs[n] end
    i = 1
    wraps = wraps + 1
  end
  return reqs[i]
end

function done(summary, latency, requests)
  local pool, fresh, wrapped, exhausted = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    local tn, ti, tw = t:get("n"), t:get("i"), t:get("wraps")
    pool = pool + tn
    wrapped = wrapped + tw
    if tw > 0 or ti > tn then fresh = fresh + tn else fresh = fresh + ti end
    if ti > tn then exhausted = exhausted + 1 end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.1f, "stdev": %.1f, "max": %d, "p50": %d, "p90": %d, "p99": %d, "p999": %d}, ' ..
    '"pool": %d, "fresh": %d, "wraps": %d, "exhausted": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    pool, fresh, wrapped, exhausted))
end
"""


@dataclass(frozen=True)
class LoadResult:
    """One wrk run. Latencies in milliseconds."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float
    pool: int
    fresh: int  # distinct tokens sent
    wraps: int  # times the pool was started over (cycle mode)
    exhausted: int  # threads that ran out of tokens (once mode): later requests repeated one
    server_cpu_busy: float | None  # % of the server core in use (not idle) during the run
    load_cpu_busy: float | None  # % of wrk's core in use
    steal: float  # % of the cores' time the hypervisor gave to someone else
    foreign_cpu: float  # CPU other processes used meanwhile, % of one core
    gc: dict[str, Any] | None = None  # the sidecar's garbage collections during the run (--gc)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Load:
    """How wrk is run: from which core, with how many connections and threads; and how
    long a measurement may wait for other processes to leave the machine alone."""

    cpu: int | None
    server_cpu: int | None
    connections: int
    threads: int
    timeout_s: float = 2.0
    patience: float = 0.0
    log: Callable[[str], None] = print

    def write_script(self, workdir: Path) -> Path:
        path = workdir / "rotate.lua"
        if not path.exists():
            path.write_text(LUA)
        return path

    def run(
        self,
        url: str,
        tokens: Path,
        seconds: float,
        *,
        mode: Mode = "cycle",
        offset: int = 0,
        gate: bool = True,
    ) -> LoadResult:
        """Load ``url`` for ``seconds`` with the tokens in ``tokens``; fail on any error.

        With ``gate``, first wait (up to ``patience``) for the machine to be quiet."""
        wrk = find_binary("wrk", WRK_HINT)
        script = self.write_script(tokens.parent)
        argv: Sequence[str] = [
            wrk,
            f"-t{self.threads}",
            f"-c{self.connections}",
            f"-d{max(1, round(seconds))}s",
            f"--timeout={self.timeout_s:g}s",
            "-s", str(script),
            url, "--", str(tokens), mode, str(offset), str(self.threads), USER_AGENT,
        ]
        if gate and self.patience > 0:
            wait_quiet(self.log, patience=self.patience)
        before = Snapshot.take()
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=seconds + 60,
                check=False,
                preexec_fn=pinned_child(self.cpu),
            )
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"wrk did not finish within {seconds + 60:.0f}s on {url}") from e
        usage = Usage.between(before, Snapshot.take(), self.server_cpu, self.cpu)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
        if done.returncode != 0 or line is None:
            raise BenchError(f"wrk failed on {url} (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
        raw = json.loads(line.removeprefix("BENCH_JSON "))
        errors = {k: v for k, v in raw["errors"].items() if v}
        if errors:
            raise BenchError(
                f"wrk on {url}: {errors} (status = non-2xx answers; read/timeout = dropped or slow "
                f"connections): the measurement is not valid"
            )
        lat = raw["latency_us"]
        secs = raw["duration_us"] / 1e6
        return LoadResult(
            requests=raw["requests"],
            seconds=round(secs, 3),
            rps=round(raw["requests"] / secs, 1),
            p50_ms=lat["p50"] / 1000,
            p90_ms=lat["p90"] / 1000,
            p99_ms=lat["p99"] / 1000,
            p999_ms=lat["p999"] / 1000,
            max_ms=lat["max"] / 1000,
            mean_ms=round(lat["mean"] / 1000, 3),
            pool=raw["pool"],
            fresh=raw["fresh"],
            wraps=raw["wraps"],
            exhausted=raw["exhausted"],
            server_cpu_busy=usage.server_busy,
            load_cpu_busy=usage.load_busy,
            steal=usage.steal,
            foreign_cpu=usage.foreign,
        )


def wrk_version() -> str:
    wrk = find_binary("wrk", WRK_HINT)
    out = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False, timeout=10)
    first = (out.stdout + out.stderr).splitlines()
    return first[0].split(" [")[0] if first else "wrk (unknown version)"
