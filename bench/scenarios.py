"""The six measurements of issue 6 and issue 17's middleware row, each on its own fresh processes.

1. ``cached``   bare aiohttp 200 handler vs ``/introspect`` with 1,000 cached tokens
2. ``cold``     per algorithm: the same sidecar with cached tokens, then a new token on
                every request, against PyJWT's own ``jwt.decode`` measured in-process
3. ``nginx``    nginx auth_request to the bare responder vs to the sidecar
4. ``envoy``    Envoy ext_authz, the same
5. ``sessions`` cached-token throughput with 10,000 and with 1,000,000 stored sessions
6. ``memory``   RSS growth while 100,000 distinct sessions go through the check
7. ``middleware`` a FastAPI app under uvicorn: no auth vs sidecar.client's ASGI middleware
                asking the sidecar (cached tokens) vs the app decoding the JWT with PyJWT

Cold tokens ("every request a new token") belong to the 1,000 sessions that are already
registered: each is new to the verifier (its own ``jti`` and bytes, so the verified-claims
cache misses and the signature is checked) while its session is known. That isolates
what the target is about, verification, from registering a session, which is an INSERT
committed with ``synchronous=FULL`` (an fsync) and is reported on its own row for HS256.
"""

from __future__ import annotations

import base64
import contextlib
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import profiling as py_spy
from bench.cpu import FOREIGN_LIMIT, Snapshot, Usage, wait_quiet
from bench.load import Load, LoadResult, Mode
from bench.procs import BenchError, Cpus, Processes
from bench.servers import (
    Server,
    SessionSpace,
    Sidecar,
    expect_allowed,
    expect_refused,
    gc_delta,
    introspect_each,
    populate,
    start_app,
    start_bare,
    start_envoy,
    start_fastapi,
    start_nginx,
    start_raw,
    start_sidecar,
    uvicorn_implementations,
)
from bench.tokens import (
    SigningKey,
    identities,
    mint,
    on_cpu,
    pyjwt_decode_us,
    sidecar_verify_us,
    signature_only_us,
    write_pool,
)
from tests.support.ports import gateway_socket_dir
from tests.support.processes import rss_kib

POOL = 1_000  # cached tokens, one per session
SAMPLE = 2_000  # tokens for the in-process timings
# sidecar's default: last_seen updates are batched and written this often.
FLUSH_SECONDS = 5.0


@dataclass(frozen=True)
class Options:
    duration: float = 10.0
    warmup: float = 2.0
    connections: int = 64
    threads: int = 1
    repeat: int = 1
    algorithms: tuple[str, ...] = ("HS256", "RS256", "ES256")
    small_sessions: int = 10_000
    large_sessions: int = 1_000_000
    memory_sessions: int = 100_000
    profile: bool = False
    profile_seconds: float = 8.0
    patience: float = 60.0  # seconds a measurement may wait for other processes to go quiet
    retries: int = 2  # measurements run again when other processes disturbed them
    gc: bool = False  # start sidecars through bench.gcwrap and count their collections


@dataclass
class Run:
    """What every scenario shares: options, processes, the load generator, the results."""

    options: Options
    workdir: Path
    cpus: Cpus
    procs: Processes
    profiles: list[py_spy.Profile] = field(default_factory=list)
    profile_dir: Path | None = None
    log: Callable[[str], None] = print

    @property
    def load(self) -> Load:
        o = self.options
        return Load(self.cpus.load, self.cpus.server, o.connections, o.threads, patience=o.patience, log=self.log)

    def clean(self, label: str, attempt: Callable[[], LoadResult]) -> LoadResult:
        """Run ``attempt``; while other processes took more than FOREIGN_LIMIT% of a core
        during it, run it again (``retries`` times at most) and keep the least disturbed."""
        best: LoadResult | None = None
        for n in range(1 + self.options.retries):
            result = attempt()
            self.log(f"    {label:<18} {_line(result)}")
            if best is None or result.foreign_cpu < best.foreign_cpu:
                best = result
            if result.foreign_cpu <= FOREIGN_LIMIT:
                break
            if n < self.options.retries:
                self.log(f"    (other processes used {result.foreign_cpu}% of a core during that run: again)")
        assert best is not None
        return best

    def measure(self, server: Server, path: str, pool: Path) -> LoadResult:
        """Warm up, then one measured run cycling over ``pool`` (again if disturbed)."""
        url = server.url(path)
        warm = self.options.warmup > 0

        def attempt() -> LoadResult:
            if warm:
                self.load.run(url, pool, self.options.warmup)
            return self.traced(server, lambda: self.load.run(url, pool, self.options.duration, gate=not warm))

        return self.clean(server.name, attempt)

    def traced(self, server: Server, run: Callable[[], LoadResult]) -> LoadResult:
        """``run()``, with the sidecar's garbage collections during it when --gc."""
        if not (isinstance(server, Sidecar) and server.gc_stats is not None):
            return run()
        before = server.gc_snapshot()
        result = run()
        return replace(result, gc=gc_delta(before, server.gc_snapshot(), result.requests))

    def sidecar(
        self,
        name: str,
        key: SigningKey,
        database: Path | None = None,
        *,
        sessions: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Sidecar:
        return start_sidecar(self.procs, name, key, database, gc=self.options.gc, sessions=sessions, extra=extra)

    def quietly(self, label: str, timing: Callable[[], float]) -> float:
        """An in-process timing on the server core, again if other processes disturbed it."""
        best: tuple[float, float] | None = None
        for _ in range(1 + self.options.retries):
            if self.options.patience > 0:
                wait_quiet(self.log, patience=self.options.patience)
            before = Snapshot.take()
            with on_cpu(self.cpus.server):  # the core the servers run on, idle meanwhile
                value = timing()
            foreign = Usage.between(before, Snapshot.take(), None, None).foreign
            if best is None or foreign < best[1]:
                best = (value, foreign)
            if foreign <= FOREIGN_LIMIT:
                break
            self.log(f"    ({label}: other processes used {foreign}% of a core meanwhile: again)")
        assert best is not None
        return best[0]

    def compare(self, pairs: list[tuple[Server, str, Path]]) -> list[dict[str, Any]]:
        """Measure each target ``repeat`` times, interleaved; keep the median run by req/s."""
        runs: list[list[LoadResult]] = [[] for _ in pairs]
        for _ in range(self.options.repeat):
            for i, (server, path, pool) in enumerate(pairs):
                runs[i].append(self.measure(server, path, pool))
        return [_median(results) for results in runs]

    def profile(
        self, name: str, sampled: Server, path: str, pool: Path, *, through: Server | None = None, mode: Mode = "cycle"
    ) -> None:
        """py-spy on ``sampled`` while wrk loads it (or ``through``, a gateway in front of
        it) in an extra, unmeasured run. Only with --profile."""
        if not self.options.profile or self.profile_dir is None:
            return
        raw = self.profile_dir / f"{name}.txt"
        seconds = self.options.profile_seconds
        sampler = py_spy.record(sampled.proc.pid, seconds, raw, self.cpus.load)
        time.sleep(0.5)  # let py-spy attach before the load starts
        self.load.run((through or sampled).url(path), pool, seconds, mode=mode, gate=False)
        sampler.wait(timeout=seconds + 60)
        if not raw.exists():
            self.log(f"    py-spy wrote no profile for {name}: see {raw.with_suffix('.log')}")
            return
        self.profiles.append(py_spy.summarise(name, raw))
        self.log(f"    profile {name}: {raw}")


def _line(r: LoadResult) -> str:
    cpu = f"cpu: server {r.server_cpu_busy}%, wrk {r.load_cpu_busy}%, others {r.foreign_cpu}%, steal {r.steal}%"
    gc = ""
    if r.gc is not None:
        gc = (f"  gc: {'/'.join(map(str, r.gc['collections']))} collections, {'/'.join(map(str, r.gc['ms']))} ms "
              f"= {r.gc['us_per_request']} µs/req, {r.gc['tracked_objects']:,} objects")
    return f"{r.rps:>9,.0f} req/s  p50 {r.p50_ms:.2f} ms  p99 {r.p99_ms:.2f} ms  ({cpu}){gc}"


def _median(results: Sequence[LoadResult]) -> dict[str, Any]:
    """One run's figures, or with --repeat the median of each figure over the runs (a
    VM's occasional stall shows in one run's p99, not in the median). Runs that other
    processes disturbed are left out of the median when at least one run was not."""
    if len(results) == 1:
        return results[0].to_json()
    undisturbed = [r for r in results if r.foreign_cpu <= FOREIGN_LIMIT]
    kept = undisturbed or list(results)
    out: dict[str, Any] = {
        key: statistics.median(getattr(r, key) for r in kept)
        for key in ("rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "mean_ms")
    }
    out["max_ms"] = max(r.max_ms for r in kept)
    out["disturbed_runs_left_out"] = len(results) - len(kept)
    out["disturbed"] = not undisturbed  # every run was disturbed: treat the figure with care
    return {**out, "runs": [r.to_json() for r in results]}


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else math.nan


def _pairs(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The runs of ``a`` and ``b`` made side by side (run i of each, one after the other),
    leaving out pairs that other processes disturbed when an undisturbed pair exists."""
    ra, rb = a.get("runs"), b.get("runs")
    if not ra or not rb or len(ra) != len(rb):
        return []
    pairs = list(zip(ra, rb, strict=True))
    quiet = [(x, y) for x, y in pairs if max(x["foreign_cpu"], y["foreign_cpu"]) <= FOREIGN_LIMIT]
    return quiet or pairs


def paired_ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float:
    """``b[key] / a[key]``. With --repeat, the median of the ratios of runs made side by
    side, so that a machine drifting over the runs (it happens on shared VMs) cancels
    out; else the ratio of the two figures."""
    pairs = _pairs(a, b)
    if not pairs:
        return _ratio(b[key], a[key])
    return round(float(statistics.median(y[key] / x[key] for x, y in pairs)), 3)


def _cpu_us(r: dict[str, Any]) -> float:
    """Server-core CPU time per request: busy share / rate. A cold run leaves the server
    core partly idle (it waits on the load generator: py-spy --idle shows the event loop
    in epoll, no thread blocked), and idle time is not what a token costs."""
    busy = r.get("server_cpu_busy")
    return float((busy / 100 if busy else 1.0) / r["rps"] * 1e6)


def cold_cost_us(cached: dict[str, Any], cold: dict[str, Any], *, wall: bool = False) -> float:
    """What a new token adds to a request in server CPU time (with ``wall``: by request
    rate alone, 1/cold_rps - 1/cached_rps), per pair of runs made side by side (median)
    when there are several."""
    pairs = _pairs(cached, cold) or [(cached, cold)]
    if wall:
        return float(statistics.median((1 / y["rps"] - 1 / x["rps"]) * 1e6 for x, y in pairs))
    return float(statistics.median(_cpu_us(y) - _cpu_us(x) for x, y in pairs))


def _registered_pool(run: Run, server: Server, key: SigningKey, name: str) -> tuple[list[str], Path]:
    """1,000 tokens over 1,000 new sessions, each registered through the check."""
    tokens = mint(key, identities(POOL))
    introspect_each(server, tokens)
    return tokens, write_pool(run.workdir / f"{name}.tokens", tokens)


# ---------------------------------------------------------------------------- 1. cached


def cached(run: Run) -> dict[str, Any]:
    """Bare aiohttp vs the sidecar's check listener (where gateways point), its /introspect
    on the aiohttp listener (the same core), and the raw httptools responder (the ceiling)."""
    key = SigningKey.generate("HS256")
    bare = start_bare(run.procs, "bare")
    headers = start_bare(run.procs, "bare-identity", identity_headers=True)
    raw = start_raw(run.procs)
    sidecar = run.sidecar("sidecar-cached", key)
    _, pool = _registered_pool(run, sidecar, key, "cached")
    bare_result, headers_result, check_result, aiohttp_result, raw_result = run.compare([
        (bare, "/introspect", pool),
        (headers, "/introspect", pool),
        (sidecar, "/introspect", pool),
        (sidecar.aiohttp, "/introspect", pool),
        (raw, "/introspect", pool),
    ])
    run.profile("cached-sidecar", sidecar, "/introspect", pool)
    run.profile("cached-bare", bare, "/introspect", pool)
    run.procs.stop_all()
    return {
        "tokens": POOL,
        "sessions": POOL,
        "bare": bare_result,
        "bare_identity_headers": headers_result,
        "sidecar": check_result,
        "sidecar_aiohttp": aiohttp_result,
        "raw": raw_result,
        "rps_ratio": paired_ratio(bare_result, check_result, "rps"),
        "p99_ratio": paired_ratio(bare_result, check_result, "p99_ms"),
        "aiohttp_rps_ratio": paired_ratio(bare_result, aiohttp_result, "rps"),
        "raw_rps_ratio": paired_ratio(raw_result, check_result, "rps"),
        # Server-core CPU per request, µs (busy share ÷ rate).
        "cpu_us": {name: round(_cpu_us(r), 1) for name, r in (
            ("bare", bare_result), ("sidecar", check_result), ("sidecar_aiohttp", aiohttp_result), ("raw", raw_result))},
    }


# ---------------------------------------------------------------------------- 2. cold


def _cold_pool_size(cached_rps: float, floor_us: float, seconds: float, in_flight: int) -> int:
    """Tokens enough that a cold run cannot run out: the cold rate is at most the cached
    rate slowed by the bare signature check (the floor under any verification)."""
    bound = 1 / (1 / cached_rps + floor_us / 1e6)
    return math.ceil(bound * (seconds + 1) * 1.15) + 2 * in_flight


def cold(run: Run) -> dict[str, Any]:
    out: dict[str, Any] = {"sessions": POOL, "algorithms": {}}
    for algorithm in run.options.algorithms:
        run.log(f"  {algorithm}")
        out["algorithms"][algorithm] = _cold_one(run, algorithm)
        run.procs.stop_all()
    return out


def _cold_one(run: Run, algorithm: str) -> dict[str, Any]:
    opts = run.options
    key = SigningKey.generate(algorithm)
    sidecar = run.sidecar(f"sidecar-{algorithm.lower()}", key)
    sessions = identities(POOL)
    tokens = mint(key, sessions)
    introspect_each(sidecar, tokens)
    cached_pool = write_pool(run.workdir / f"{algorithm}-cached.tokens", tokens)

    sample = mint(key, [sessions[i % POOL] for i in range(SAMPLE)])
    pyjwt_us = run.quietly("PyJWT", lambda: pyjwt_decode_us(key, sample))
    floor_us = run.quietly("signature", lambda: signature_only_us(key, sample))
    try:
        verifier_us: float | None = run.quietly("TokenVerifier", lambda: sidecar_verify_us(sidecar.config, sample))
    except Exception as e:  # a diagnostic only: the sidecar's internals may have moved
        run.log(f"    (sidecar TokenVerifier not timed in-process: {type(e).__name__}: {e})")
        verifier_us = None
    run.log(f"    in-process: PyJWT decode {pyjwt_us} µs, signature only {floor_us} µs, "
            f"sidecar TokenVerifier {verifier_us} µs")

    def cold_pool(size: int) -> Path:
        # Every cold token is new to the verifier; its session is one of the registered ones.
        return write_pool(run.workdir / f"{algorithm}-cold.tokens", mint(key, [sessions[i % POOL] for i in range(size)]))

    # PyJWT in the same conditions: an aiohttp handler that jwt.decode()s every token,
    # against the same handler answering without verifying.
    bare = start_bare(run.procs, f"bare-{algorithm.lower()}", identity_headers=True)
    with_pyjwt = start_bare(run.procs, f"pyjwt-{algorithm.lower()}", pyjwt=key)

    def cold_run(server: Server, pool: Path, size: int) -> LoadResult:
        def attempt() -> LoadResult:
            result = run.traced(server, lambda: run.load.run(server.url("/introspect"), pool, opts.duration, mode="once"))
            if result.exhausted:
                raise BenchError(f"{algorithm}: the cold pool of {size} tokens ran out; the run re-used tokens")
            return result

        return run.clean(f"{server.name} cold", attempt)

    cached_runs: list[LoadResult] = []
    cold_runs: list[LoadResult] = []
    bare_runs: list[LoadResult] = []
    pyjwt_runs: list[LoadResult] = []
    size = 0
    for _ in range(opts.repeat):
        cached_runs.append(run.measure(sidecar, "/introspect", cached_pool))
        size = _cold_pool_size(cached_runs[-1].rps, floor_us, opts.duration, opts.connections * opts.threads)
        pool = cold_pool(size)
        cold_runs.append(cold_run(sidecar, pool, size))
        bare_runs.append(run.measure(bare, "/introspect", cached_pool))
        # The same new tokens: PyJWT keeps no cache, each is verified in full.
        pyjwt_runs.append(cold_run(with_pyjwt, pool, size))
    cached_result, cold_result = _median(cached_runs), _median(cold_runs)
    bare_result, pyjwt_result = _median(bare_runs), _median(pyjwt_runs)
    cost_us = cold_cost_us(cached_result, cold_result)
    pyjwt_server_us = cold_cost_us(bare_result, pyjwt_result)
    entry: dict[str, Any] = {
        "pyjwt_decode_us": pyjwt_us,
        "signature_only_us": floor_us,
        "sidecar_verifier_us": verifier_us,
        "cached": cached_result,
        "cold": cold_result,
        "cold_pool": size,
        "cold_cost_us": round(cost_us, 1),
        "cold_cost_vs_pyjwt": _ratio(cost_us, pyjwt_us),
        "cold_cost_by_rate_us": round(cold_cost_us(cached_result, cold_result, wall=True), 1),
        "bare_identity": bare_result,
        "pyjwt_handler": pyjwt_result,
        "pyjwt_in_server_us": round(pyjwt_server_us, 1),
        "cold_cost_vs_pyjwt_in_server": _ratio(cost_us, pyjwt_server_us),
    }
    if opts.profile:
        run.profile(f"cold-{algorithm.lower()}", sidecar, "/introspect", cold_pool(size), mode="once")
    if algorithm == "HS256":
        entry["new_session"] = _new_sessions(run, sidecar, key, cold_result["rps"])
    return entry


def _new_sessions(run: Run, sidecar: Sidecar, key: SigningKey, cold_rps: float) -> dict[str, Any]:
    """Every request a token of a session never seen: auto registration (an INSERT
    committed before the answer). Informative; no target."""
    seconds = run.options.duration
    size = math.ceil(cold_rps * (seconds + 1) * 1.15)

    def attempt() -> LoadResult:
        pool = write_pool(run.workdir / "new-sessions.tokens", mint(key, identities(size, prefix="new-")))
        result = run.traced(sidecar, lambda: run.load.run(sidecar.url("/introspect"), pool, seconds, mode="once"))
        if result.exhausted:
            raise BenchError(f"new-session pool of {size} tokens ran out")
        return result

    return run.clean("new session each", attempt).to_json()


# ---------------------------------------------------------------------------- 3, 4. gateways


def gateway(run: Run, kind: str) -> dict[str, Any]:
    start = {"nginx": start_nginx, "envoy": start_envoy}[kind]
    key = SigningKey.generate("HS256")
    app = start_app(run.procs)
    bare = start_bare(run.procs, "bare-check")
    sidecar = run.sidecar(f"sidecar-{kind}", key)
    tokens, pool = _registered_pool(run, sidecar, key, kind)
    via_bare = start(run.procs, f"{kind}-bare", app.port, bare.port)
    via_sidecar = start(run.procs, f"{kind}-sidecar", app.port, sidecar.port)
    for server in (via_bare, via_sidecar):
        expect_allowed(server, tokens[0])
    pairs = [(via_bare, "/bench", pool), (via_sidecar, "/bench", pool)]
    with contextlib.ExitStack() as stack:  # the Unix sockets' folder, removed at the end
        if kind == "nginx":
            # nginx alone (the shipped file without its auth_request line), and nginx asking the
            # raw responder (a fixed 200, no check at all): what auth_request itself costs.
            pairs.append((start_nginx(run.procs, "nginx-alone", app.port, sidecar.port, without_check=True), "/bench", pool))
            pairs.append((start_nginx(run.procs, "nginx-raw", app.port, start_raw(run.procs).port), "/bench", pool))
            # The same two over the check listener's Unix socket ([check] unix_socket) instead of TCP.
            folder = stack.enter_context(gateway_socket_dir())
            uds = run.sidecar(f"sidecar-{kind}-unix", key, extra={"check": {"unix_socket": str(folder / "check.sock")}})
            introspect_each(uds.aiohttp, tokens)  # the same sessions, registered in its own store
            start_raw(run.procs, "raw-unix", unix=folder / "raw.sock")
            for name, sock in (("nginx-sidecar-unix", "check.sock"), ("nginx-raw-unix", "raw.sock")):
                # (The TCP check port is unused; the sessions API upstream gets the public one.)
                via_unix = start_nginx(run.procs, name, app.port, uds.public_port, check_socket=folder / sock)
                expect_allowed(via_unix, tokens[0])
                pairs.append((via_unix, "/bench", pool))
        results = run.compare(pairs)
        bare_result, sidecar_result = results[0], results[1]
        run.profile(f"{kind}-sidecar", sidecar, "/bench", pool, through=via_sidecar)
        run.procs.stop_all()
    out = {
        "app": "nginx return 200",
        "check_listener": True,
        "bare": bare_result,
        "sidecar": sidecar_result,
        "rps_ratio": paired_ratio(bare_result, sidecar_result, "rps"),
        "p99_ratio": paired_ratio(bare_result, sidecar_result, "p99_ms"),
        # Server-core CPU per request (everything on that core: gateway, app, sidecar).
        "sidecar_cpu_us": round(_cpu_us(sidecar_result), 1),
        "bare_cpu_us": round(_cpu_us(bare_result), 1),
    }
    if len(results) == 6:
        alone, raw, unix, raw_unix = results[2], results[3], results[4], results[5]
        out["alone"] = alone
        out["alone_cpu_us"] = round(_cpu_us(alone), 1)
        # What the check adds per allowed request over nginx alone (issue 14: <= 20 µs), and
        # what a responder that checks nothing adds: the floor under any auth_request answer.
        out["check_adds_cpu_us"] = round(cold_cost_us(alone, sidecar_result), 1)
        out["raw"] = raw
        out["raw_adds_cpu_us"] = round(cold_cost_us(alone, raw), 1)
        out["unix"] = unix
        out["unix_adds_cpu_us"] = round(cold_cost_us(alone, unix), 1)
        out["raw_unix"] = raw_unix
        out["raw_unix_adds_cpu_us"] = round(cold_cost_us(alone, raw_unix), 1)
    return out


def nginx(run: Run) -> dict[str, Any]:
    return gateway(run, "nginx")


def envoy(run: Run) -> dict[str, Any]:
    return gateway(run, "envoy")


# ---------------------------------------------------------------------------- 5. stored sessions


def sessions(run: Run) -> dict[str, Any]:
    """Both sidecars run side by side (one store each) so that their runs interleave and
    the ratio is taken pair by pair, like the others: measured one after the other, a
    machine drifting for a minute decided the ratio."""
    key = SigningKey.generate("HS256")
    out: dict[str, Any] = {}
    started_ones: list[tuple[int, Sidecar, Path, dict[str, Any]]] = []
    for count in (run.options.small_sessions, run.options.large_sessions):
        space = SessionSpace.new(count)
        database = run.workdir / f"sessions-{count}.db"
        filled = populate(database, space)
        started = time.monotonic()
        sidecar = run.sidecar(f"sidecar-{count}", key, database)
        startup = time.monotonic() - started
        tokens = mint(key, space.sample(POOL))
        introspect_each(sidecar, tokens)  # each session's state is read from the store once
        pool = write_pool(run.workdir / f"sessions-{count}.tokens", tokens)
        facts = {
            "stored_sessions": count,
            "populate_seconds": round(filled, 1),
            "database_mib": round(database.stat().st_size / 2**20, 1),
            "startup_seconds": round(startup, 2),
        }
        run.log(f"    ({count:,} stored: populated in {filled:.1f} s, {facts['database_mib']} MiB, "
                f"sidecar ready in {startup:.2f} s)")
        started_ones.append((count, sidecar, pool, facts))
    results = run.compare([(sidecar, "/introspect", pool) for _, sidecar, pool, _ in started_ones])
    for (count, sidecar, _, facts), result in zip(started_ones, results, strict=True):
        out[str(count)] = {**facts, "rss_mib": round(rss_kib(sidecar.proc.pid) / 1024, 1), **result}
    run.procs.stop_all()
    small, large = out[str(run.options.small_sessions)], out[str(run.options.large_sessions)]
    out["rps_ratio"] = paired_ratio(small, large, "rps")
    out["p99_ratio"] = paired_ratio(small, large, "p99_ms")
    return out


# ---------------------------------------------------------------------------- 6. memory


def memory(run: Run) -> dict[str, Any]:
    count = run.options.memory_sessions
    key = SigningKey.generate("HS256")
    space = SessionSpace.new(POOL + count)
    database = run.workdir / "memory.db"
    populate(database, space)
    sidecar = run.sidecar("sidecar-memory", key, database)
    warm_tokens = mint(key, space.range(0, POOL))
    introspect_each(sidecar, warm_tokens)
    warm_pool = write_pool(run.workdir / "memory-warm.tokens", warm_tokens)
    run.load.run(sidecar.url("/introspect"), warm_pool, max(run.options.warmup, 1), gate=False)
    time.sleep(FLUSH_SECONDS + 1)  # let the batched last_seen writes of the warm-up go out
    before = rss_kib(sidecar.proc.pid)

    pool = write_pool(run.workdir / "memory.tokens", mint(key, space.range(POOL, POOL + count)))
    # One wrk thread, so that "fresh" is exactly where the next run resumes.
    driver = replace(run.load, threads=1)
    sent, rates = 0, []
    while sent < count:
        result = driver.run(sidecar.url("/introspect"), pool, run.options.duration, mode="once", offset=sent, gate=False)
        sent += result.fresh
        rates.append(result.rps)
    time.sleep(FLUSH_SECONDS + 1)  # the batched last_seen writes of the drive, then measure
    after = rss_kib(sidecar.proc.pid)
    run.procs.stop_all()
    per_100k = (after - before) * 100_000 / count / 1024
    run.log(f"    RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB after {count:,} sessions: "
            f"{per_100k:.1f} MiB per 100,000")
    return {
        "sessions": count,
        "rss_before_mib": round(before / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "mib_per_100k_sessions": round(per_100k, 1),
        "drive_rps": round(statistics.mean(rates), 1),
        "note": "state read from SQLite on first sight; includes the verified-token cache entries",
    }


# ---------------------------------------------------------------------------- 7. middleware


def middleware(run: Run) -> dict[str, Any]:
    """The same FastAPI app three ways, side by side: no auth; sidecar.client's ASGI
    middleware asking a real sidecar (the cached pool of the other rows); the app verifying
    the HS256 token itself with PyJWT (signature and exp, no session check). The app, its
    sidecar and nothing else run on the server core, as in the gateway rows."""
    key = SigningKey.generate("HS256")
    sidecar = run.sidecar("sidecar-middleware", key)
    tokens, pool = _registered_pool(run, sidecar, key, "middleware")
    plain = start_fastapi(run.procs, "fastapi-none", "none")
    with_sidecar = start_fastapi(run.procs, "fastapi-sidecar", "sidecar", sidecar=sidecar)
    with_pyjwt = start_fastapi(run.procs, "fastapi-pyjwt", "pyjwt", key=key)
    for server in (plain, with_sidecar, with_pyjwt):
        expect_allowed(server, tokens[0])
    for server in (with_sidecar, with_pyjwt):
        expect_refused(server)
    plain_result, sidecar_result, pyjwt_result = run.compare(
        [(plain, "/bench", pool), (with_sidecar, "/bench", pool), (with_pyjwt, "/bench", pool)]
    )
    # Where the middleware's time goes: the app's process (the check's client side).
    run.profile("middleware-app", with_sidecar, "/bench", pool)
    run.procs.stop_all()
    return {
        "app": "FastAPI under uvicorn, one worker, no access log",
        "uvicorn": uvicorn_implementations(),
        "tokens": POOL,
        "sessions": POOL,
        "none": plain_result,
        "sidecar": sidecar_result,
        "pyjwt": pyjwt_result,
        **_middleware_ratios(plain_result, sidecar_result, pyjwt_result),
    }


def _middleware_ratios(plain: dict[str, Any], sidecar: dict[str, Any], pyjwt: dict[str, Any]) -> dict[str, float]:
    return {
        "sidecar_rps_ratio": paired_ratio(plain, sidecar, "rps"),
        "pyjwt_rps_ratio": paired_ratio(plain, pyjwt, "rps"),
        "sidecar_vs_pyjwt_rps_ratio": paired_ratio(pyjwt, sidecar, "rps"),
        "sidecar_p99_ratio": paired_ratio(plain, sidecar, "p99_ms"),
        "pyjwt_p99_ratio": paired_ratio(plain, pyjwt, "p99_ms"),
        "sidecar_vs_pyjwt_p99_ratio": paired_ratio(pyjwt, sidecar, "p99_ms"),
    }


def rederive(results: dict[str, Any]) -> None:
    """Recompute every ratio of stored ``results`` from their figures and runs with the
    estimators above (for ``python -m bench --render`` of an older file)."""
    for name in ("cached", "nginx", "envoy"):
        if name in results:
            r = results[name]
            r["rps_ratio"] = paired_ratio(r["bare"], r["sidecar"], "rps")
            r["p99_ratio"] = paired_ratio(r["bare"], r["sidecar"], "p99_ms")
    if "cached" in results and "raw" in results["cached"]:
        r = results["cached"]
        r["aiohttp_rps_ratio"] = paired_ratio(r["bare"], r["sidecar_aiohttp"], "rps")
        r["raw_rps_ratio"] = paired_ratio(r["raw"], r["sidecar"], "rps")
    if "sessions" in results:
        r = results["sessions"]
        small, large = sorted((k for k in r if k.isdigit()), key=int)
        r["rps_ratio"] = paired_ratio(r[small], r[large], "rps")
        r["p99_ratio"] = paired_ratio(r[small], r[large], "p99_ms")
    if "middleware" in results:
        r = results["middleware"]
        r.update(_middleware_ratios(r["none"], r["sidecar"], r["pyjwt"]))
    for a in results.get("cold", {}).get("algorithms", {}).values():
        a["cold_cost_us"] = round(cold_cost_us(a["cached"], a["cold"]), 1)
        a["cold_cost_by_rate_us"] = round(cold_cost_us(a["cached"], a["cold"], wall=True), 1)
        if "pyjwt_handler" in a:
            a["pyjwt_in_server_us"] = round(cold_cost_us(a["bare_identity"], a["pyjwt_handler"]), 1)
            a["cold_cost_vs_pyjwt_in_server"] = _ratio(a["cold_cost_us"], a["pyjwt_in_server_us"])
        a["cold_cost_vs_pyjwt"] = _ratio(a["cold_cost_us"], a["pyjwt_decode_us"])


# ---------------------------------------------------------------------------- 7. session policies

# All three on, with bounds no request of the run reaches (so every check is the cached
# allow, paying only for the policies' comparisons), and the limit above the pool's one
# session per user.
POLICIES_ON = {
    "idle_timeout_seconds": 1800,
    "max_lifetime_seconds": 86400,
    "max_sessions_per_user": 10,
    "on_session_limit": "revoke_oldest",
}


def policies(run: Run) -> dict[str, Any]:
    """The cached check with the idle timeout, the lifetime and the session limit on, against
    the same check with them off: two sidecars side by side, interleaved runs."""
    key = SigningKey.generate("HS256")
    off = run.sidecar("sidecar-policies-off", key)
    on = run.sidecar("sidecar-policies-on", key, sessions=POLICIES_ON)
    _, pool_off = _registered_pool(run, off, key, "policies-off")
    _, pool_on = _registered_pool(run, on, key, "policies-on")
    return _on_off(run, (off, pool_off), (on, pool_on))


def _on_off(run: Run, off: tuple[Server, Path], on: tuple[Server, Path]) -> dict[str, Any]:
    """A feature off vs on: the two sidecars' cached checks, interleaved, and their ratios."""
    off_result, on_result = run.compare([(off[0], "/introspect", off[1]), (on[0], "/introspect", on[1])])
    run.procs.stop_all()
    return {
        "tokens": POOL,
        "off": off_result,
        "on": on_result,
        "rps_ratio": paired_ratio(off_result, on_result, "rps"),
        "p99_ratio": paired_ratio(off_result, on_result, "p99_ms"),
    }


# ---------------------------------------------------------------------------- 8. events and webhooks

# A receiver nobody listens on: the sidecar never calls it (the Celery worker would), so the
# run measures what configured webhooks cost the sidecar itself.
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"bench-webhook-secret-32-bytes-ok").decode()


def webhooks(run: Run) -> dict[str, Any]:
    """The cached check with events on and a [[webhooks]] entry, against events off: two
    sidecars side by side, interleaved runs; and each one's registration path (1,000 new
    sessions through the check, 8 at a time), whose cost with events on is an insert of the
    event and its outbox row in the registration's transaction."""
    key = SigningKey.generate("HS256")
    secret = run.workdir / "webhook.secret"
    secret.write_text(WEBHOOK_SECRET)
    off = run.sidecar("sidecar-events-off", key, extra={"events": {"enabled": False}})
    on = run.sidecar(
        "sidecar-webhooks", key, extra={"webhooks": [{"url": "http://127.0.0.1:9/", "secret_file": str(secret)}]}
    )
    started = time.perf_counter()
    _, pool_off = _registered_pool(run, off, key, "events-off")
    register_off = (time.perf_counter() - started) / POOL * 1e6
    started = time.perf_counter()
    _, pool_on = _registered_pool(run, on, key, "webhooks")
    register_on = (time.perf_counter() - started) / POOL * 1e6
    return {
        **_on_off(run, (off, pool_off), (on, pool_on)),
        "register_us_off": round(register_off, 1),
        "register_us_on": round(register_on, 1),
    }


SCENARIOS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "cached": cached,
    "cold": cold,
    "nginx": nginx,
    "envoy": envoy,
    "sessions": sessions,
    "memory": memory,
    "middleware": middleware,
    "policies": policies,
    "webhooks": webhooks,
}
