"""``python -m bench``: run the measurements, print the tables, write the JSON.

    python -m bench                                  # everything, ~6 minutes
    python -m bench --only cached,gateways --duration 5
    python -m bench --only cold --profile            # + py-spy hot spots of the sidecar

Results go to bench/results/<UTC timestamp>.json; a run of every scenario at the issue's
sizes also replaces bench/results/latest.json (a partial or resized run never does).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

from bench.procs import BenchError, Cpus, Processes
from bench.profiling import Profile
from bench.report import code_fingerprint, machine, render, targets
from bench.scenarios import SCENARIOS, Options, Run, rederive
from bench.tokens import ALGORITHMS
from tests.support import REPO

RESULTS = REPO / "bench" / "results"
ALIASES = {"gateways": ("nginx", "envoy"), "all": tuple(SCENARIOS)}


def _scenarios(text: str) -> list[str]:
    picked: list[str] = []
    for name in (n.strip() for n in text.split(",") if n.strip()):
        for one in ALIASES.get(name, (name,)):
            if one not in SCENARIOS:
                raise argparse.ArgumentTypeError(
                    f"unknown scenario {one!r}: choose from {', '.join([*SCENARIOS, *ALIASES])}"
                )
            if one not in picked:
                picked.append(one)
    return [n for n in SCENARIOS if n in picked]  # always in the order


def _algorithms(text: str) -> tuple[str, ...]:
    algs = tuple(a.strip() for a in text.split(",") if a.strip())
    for a in algs:
        if a not in ALGORITHMS:
            raise argparse.ArgumentTypeError(f"unsupported algorithm {a!r}: choose from {', '.join(ALGORITHMS)}")
    return algs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", type=_scenarios, default=list(SCENARIOS),
                   help=f"comma-separated subset of {', '.join(SCENARIOS)} (gateways = nginx,envoy)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each (default 2)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: wrk has one core)")
    p.add_argument("--repeat", type=int, default=1, help="interleaved runs per comparison; the median is kept")
    p.add_argument("--algorithms", type=_algorithms, default=ALGORITHMS, help="cold path algorithms")
    p.add_argument("--large-sessions", type=int, default=1_000_000, help="stored sessions, large case")
    p.add_argument("--small-sessions", type=int, default=10_000, help="stored sessions, small case")
    p.add_argument("--memory-sessions", type=int, default=100_000, help="sessions driven for the RSS measurement")
    p.add_argument("--patience", type=float, default=60.0,
                   help="seconds a measurement may wait for other processes to leave the CPUs idle (0: never wait)")
    p.add_argument("--retries", type=int, default=2,
                   help="times a measurement is run again when other processes used the CPUs meanwhile")
    p.add_argument("--gc", action="store_true",
                   help="run sidecars through bench.gcwrap and report their garbage collections per run")
    p.add_argument("--profile", action="store_true", help="after measuring, py-spy the sidecar (extra runs)")
    p.add_argument("--profile-seconds", type=float, default=8.0)
    p.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes (default bench/results)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs, databases)")
    p.add_argument("--render", type=Path, metavar="JSON",
                   help="measure nothing: print the tables of a results file (ratios recomputed from its runs)")
    return p.parse_args(argv)


def _stop_on_sigterm() -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds through every cleanup below

    signal.signal(signal.SIGTERM, handler)


def render_file(path: Path) -> int:
    document = json.loads(path.read_text())
    rederive(document["results"])
    profiles = [Profile.from_json(p) for p in document.get("profiles", [])]
    print(render(document["results"], document, profiles))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        return render_file(args.render)
    _stop_on_sigterm()
    options = Options(
        duration=args.duration, warmup=args.warmup, connections=args.connections, threads=args.threads,
        repeat=max(1, args.repeat), algorithms=args.algorithms, small_sessions=args.small_sessions,
        large_sessions=args.large_sessions, memory_sessions=args.memory_sessions,
        profile=args.profile, profile_seconds=args.profile_seconds, patience=args.patience,
        retries=max(0, args.retries), gc=args.gc,
    )
    cpus = Cpus.pick()
    if not cpus.pinned:
        print("bench: fewer than 2 CPUs: servers and wrk share them; ratios still hold, rates do not",
              file=sys.stderr)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    args.results.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    results: dict[str, Any] = {}
    profiles_dir = args.results / f"profiles-{stamp}" if options.profile else None
    if profiles_dir is not None:
        profiles_dir.mkdir()
    started = time.monotonic()
    meta: dict[str, Any] = {
        "timestamp": stamp,
        "machine": machine(cpus),
        "settings": {k: v for k, v in vars(options).items() if k != "profile_seconds"},
        "scenarios": args.only,
        "code": code_fingerprint(),
    }
    print(f"bench: {', '.join(args.only)}; work directory {workdir}", flush=True)
    failed: str | None = None
    with Processes(workdir, cpus) as procs:
        run = Run(options, workdir, cpus, procs, profile_dir=profiles_dir,
                  log=lambda text: print(text, flush=True))
        for name in args.only:
            print(f"[{name}]", flush=True)
            try:
                code = code_fingerprint()
                results[name] = {**SCENARIOS[name](run), "code": code}
            except BenchError as e:
                failed = f"{name}: {e}"
                print(f"bench: {failed}", file=sys.stderr)
                break
            except Exception as e:  # a bug in the harness: report it, keep what was measured
                traceback.print_exc()
                failed = f"{name}: {type(e).__name__}: {e}"
                break
            finally:
                procs.stop_all()
    meta["seconds"] = round(time.monotonic() - started, 1)
    document = {
        **meta,
        "results": results,
        "targets": [t.to_json() for t in targets(results)],
        "profiles": [p.to_json() for p in run.profiles],
        "failed": failed,
    }
    out = args.results / f"{stamp}.json"
    out.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print()
    print(render(results, meta, run.profiles))
    print(f"\nbench: wrote {out} ({meta['seconds']:.0f} s)")
    standard = (options.small_sessions, options.large_sessions, options.memory_sessions) == (10_000, 1_000_000, 100_000)
    if failed is None and set(args.only) == set(SCENARIOS) and standard:
        (args.results / "latest.json").write_text(out.read_text())
        print(f"bench: wrote {args.results / 'latest.json'}")
    if args.keep or failed:
        print(f"bench: logs, configs and databases kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
