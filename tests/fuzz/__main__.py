"""``python -m tests.fuzz TARGET [--seconds N | --runs N]``: run fuzz targets, each in its own process.

TARGET is one of ``TARGETS`` or ``all`` (one after another). Seeds come from
``tests/fuzz/corpus/<target>/`` and are only read; the inputs libFuzzer adds go to a work
directory (``--work``, default a fresh temporary one), as do crash reproducers
(``crash-*``). Anything after ``--`` goes to libFuzzer as it is (e.g. ``-- -jobs=1``).
Exit status: 0 when every target ran clean, else the first failing target's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = (
    "tokens", "bearer", "client_ip", "device_geo", "admin_json", "config", "routes", "cookies", "redis_message",
)


def command(target: str, work: Path, *, seconds: float | None, runs: int | None, extra: list[str]) -> list[str]:
    """The command line that fuzzes ``target`` (its module, libFuzzer flags, work then seed corpus)."""
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    flags = [f"-artifact_prefix={work}/", "-print_final_stats=1", "-timeout=30"]
    if seconds is not None:
        flags.append(f"-max_total_time={max(1, round(seconds))}")
    if runs is not None:
        flags.append(f"-runs={runs}")
    return [sys.executable, "-m", f"tests.fuzz.fuzz_{target}", *flags, *extra, str(corpus), str(HERE / "corpus" / target)]


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in args_in:
        at = args_in.index("--")
        args_in, extra = args_in[:at], args_in[at + 1 :]
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n", 1)[0])
    parser.add_argument("target", choices=[*TARGETS, "all"])
    bound = parser.add_mutually_exclusive_group()
    bound.add_argument("--seconds", type=float, help="stop after this long (libFuzzer -max_total_time)")
    bound.add_argument("--runs", type=int, help="stop after this many inputs (libFuzzer -runs)")
    parser.add_argument("--work", type=Path, help="where new inputs and crash reproducers go (default: a temporary dir)")
    args = parser.parse_args(args_in)
    if args.seconds is None and args.runs is None:
        args.seconds = 60.0
    targets = TARGETS if args.target == "all" else (args.target,)
    work_root = args.work or Path(tempfile.mkdtemp(prefix="sidecar-fuzz-"))
    status = 0
    for target in targets:
        work = work_root / target if len(targets) > 1 or args.work is None else work_root
        cmd = command(target, work, seconds=args.seconds, runs=args.runs, extra=extra)
        print(f"== {target}: {' '.join(cmd)}", flush=True)
        rc = subprocess.run(cmd, check=False).returncode
        print(f"== {target}: exit {rc}; work directory {work}", flush=True)
        status = status or rc
    return status


if __name__ == "__main__":
    sys.exit(main())
