"""The machine, the tables (Markdown, so they paste into the README) and the targets."""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cpu import FOREIGN_LIMIT
from bench.load import wrk_version
from bench.procs import BenchError, Cpus
from bench.profiling import Profile
from tests.support import REPO
from tests.support.binaries import find_binary


def _first_line(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=30)
    except OSError:
        return "?"
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "?"


def _binary_version(name: str, argv_tail: Sequence[str]) -> str:
    try:
        return _first_line([find_binary(name, ""), *argv_tail])
    except BenchError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _git(*args: str) -> str:
    # Read-only git queries: which commit was measured, and whether the tree had changes.
    out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False, timeout=30)
    return out.stdout.strip()


def code_fingerprint() -> str:
    """A short hash of every sidecar/ source file: which code a scenario measured, even
    when the working tree changes during a run (others may be editing it)."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "sidecar").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def machine(cpus: Cpus) -> dict[str, Any]:
    versions = {}
    for dist in ("aiohttp", "PyJWT", "cryptography", "uvloop", "aiosqlite", "fastapi", "uvicorn", "httptools"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    envoy = _binary_version("envoy", ["--version"])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "server_cpu": cpus.server,
        "load_cpu": cpus.load,
        "wrk": wrk_version(),
        "nginx": _binary_version("nginx", ["-v"]).removeprefix("nginx version: "),
        "envoy": envoy.split("version: ")[-1].split("/")[1] if "/" in envoy else envoy,
        "versions": versions,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


# ---------------------------------------------------------------------------- tables


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _ms(value: float) -> str:
    return f"{value:.2f}"


def _x(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}x"


@dataclass(frozen=True)
class Target:
    what: str
    measured: float
    goal: str  # ">= 0.90" / "<= 1.2"
    text: str  # how the measured value is shown

    @property
    def met(self) -> bool:
        op, bound = self.goal.split()
        return self.measured >= float(bound) if op == ">=" else self.measured <= float(bound)

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "measured": self.measured, "goal": self.goal, "met": self.met}


def targets(results: dict[str, Any]) -> list[Target]:
    out: list[Target] = []
    if "cached" in results:
        c = results["cached"]
        if "raw" in c:  # the check listener (issue 14's targets)
            out.append(Target("cached check (check listener) req/s ÷ bare aiohttp req/s", c["rps_ratio"], ">= 2.0",
                              _x(c["rps_ratio"])))
            out.append(Target("cached check (check listener) p99 ÷ bare aiohttp p99", c["p99_ratio"], "<= 1.0",
                              _x(c["p99_ratio"])))
        else:  # results from before the check listener: /introspect on aiohttp
            out.append(Target("cached check req/s ÷ bare aiohttp req/s", c["rps_ratio"], ">= 0.90",
                              _x(c["rps_ratio"])))
            out.append(Target("cached check p99 ÷ bare aiohttp p99", c["p99_ratio"], "<= 1.2", _x(c["p99_ratio"])))
    if "cold" in results:
        for alg, a in results["cold"]["algorithms"].items():
            if "cold_cost_vs_pyjwt_in_server" in a:
                # Both sides measured the same way: what a new token adds to a request of
                # an aiohttp server, in server CPU time.
                out.append(Target(
                    f"{alg} new token: sidecar ÷ PyJWT handler, both in a server "
                    f"({a['cold_cost_us']:.0f} µs vs {a['pyjwt_in_server_us']:.0f} µs)",
                    a["cold_cost_vs_pyjwt_in_server"], "<= 1.3", _x(a["cold_cost_vs_pyjwt_in_server"]),
                ))
            else:  # results from before the PyJWT handler was measured
                out.append(Target(
                    f"{alg} new token in a server ÷ PyJWT jwt.decode in a loop "
                    f"({a['cold_cost_us']:.0f} µs vs {a['pyjwt_decode_us']:.0f} µs)",
                    a["cold_cost_vs_pyjwt"], "<= 1.3", _x(a["cold_cost_vs_pyjwt"]),
                ))
    for kind in ("nginx", "envoy"):
        if kind in results:
            g = results[kind]
            what = f"{kind}→sidecar req/s ÷ {kind}→bare req/s"
            out.append(Target(what, g["rps_ratio"], ">= 1.0" if "check_listener" in g else ">= 0.95",
                              _x(g["rps_ratio"])))
            if "check_adds_cpu_us" in g:
                added = g["check_adds_cpu_us"]
                floor = f"; a fixed 200 adds {g['raw_adds_cpu_us']:.1f}" if "raw_adds_cpu_us" in g else ""
                if "unix_adds_cpu_us" in g:
                    floor += f"; on the Unix socket {g['unix_adds_cpu_us']:.1f}, a fixed 200 {g['raw_unix_adds_cpu_us']:.1f}"
                out.append(Target(f"server CPU the check adds per request over {kind} alone (µs{floor})", added,
                                  "<= 20", f"{added:.1f} µs"))
    if "sessions" in results:
        s = results["sessions"]
        small, large = sorted(int(k) for k in s if k.isdigit())
        what = f"req/s with {large:,} stored sessions ÷ with {small:,}"
        out.append(Target(what, s["rps_ratio"], ">= 0.90", _x(s["rps_ratio"])))
    if "policies" in results:
        p = results["policies"]
        what = "cached check req/s, idle + lifetime + limit on ÷ off (issue 15)"
        out.append(Target(what, p["rps_ratio"], ">= 0.95", _x(p["rps_ratio"])))
    if "webhooks" in results:
        w = results["webhooks"]
        what = "cached check req/s, events on with [[webhooks]] ÷ events off (issue 16)"
        out.append(Target(what, w["rps_ratio"], ">= 0.95", _x(w["rps_ratio"])))
    return out


def _div(a: float, b: float) -> float:
    return a / b if b else math.nan


def _goal(goal: str) -> str:
    return goal.replace(">=", "≥").replace("<=", "≤")


def render(results: dict[str, Any], meta: dict[str, Any], profiles: Sequence[Profile]) -> str:
    m = meta["machine"]
    s = meta["settings"]
    codes = {r.get("code") for r in results.values() if isinstance(r, dict)}
    app_versions = ""
    if "middleware" in results:  # the app stack of row 7 (older files did not record it)
        app_versions = "".join(f", {dist} {m['versions'][dist]}" for dist in ("fastapi", "uvicorn", "httptools")
                               if dist in m["versions"])
    parts = [
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}, Linux {m['kernel']}; "
        f"{m['wrk']}, nginx {m['nginx']}, Envoy {m['envoy']}; aiohttp {m['versions']['aiohttp']}, "
        f"PyJWT {m['versions']['PyJWT']}, cryptography {m['versions']['cryptography']}, "
        f"uvloop {m['versions']['uvloop']}{app_versions}; commit {m['commit']}{' (+ local changes)' if m['dirty'] else ''}, "
        f"sidecar/ fingerprint {meta['code']}.",
        f"Servers on CPU {m['server_cpu']}, wrk on CPU {m['load_cpu']}; wrk -t{s['threads']} -c{s['connections']}, "
        f"{s['duration']:g} s per measurement after a {s['warmup']:g} s warm-up"
        + (f", median of {s['repeat']} interleaved runs" if s["repeat"] > 1 else "") + ".",
    ]
    if len(codes) > 1:
        parts.append(f"**Warning: sidecar/ changed during the run** (source fingerprints {', '.join(sorted(map(str, codes)))}): "
                     "scenarios measured different code.")
    rows: list[list[str]] = []

    def row(n: str, what: str, r: dict[str, Any], ratio: str = "") -> None:
        runs = r.get("runs") or [r]
        if r.get("disturbed_runs_left_out"):
            runs = [x for x in runs if x["foreign_cpu"] <= FOREIGN_LIMIT]  # what the median used
        cpu = f"{max(x['server_cpu_busy'] or 0 for x in runs):.0f} / {max(x['load_cpu_busy'] or 0 for x in runs):.0f}"
        others = f"{max(x['foreign_cpu'] for x in runs):.0f}" + (" (!)" if r.get("disturbed") else "")
        rows.append([n, what, _n(r["rps"]), _ms(r["p50_ms"]), _ms(r["p99_ms"]), ratio, cpu, others])

    if "cached" in results:
        c = results["cached"]
        row("1", "bare aiohttp handler (200)", c["bare"])
        if "bare_identity_headers" in c:
            h = c["bare_identity_headers"]
            row("1", "bare handler + the 3 identity headers (no check)", h,
                f"{_x(_div(h['rps'], c['bare']['rps']))} req/s")
        if "raw" in c:
            row("1", "sidecar check listener, 1,000 cached tokens", c["sidecar"],
                f"{_x(c['rps_ratio'])} req/s, {_x(c['p99_ratio'])} p99; {_x(c['raw_rps_ratio'])} of raw httptools")
            row("1", "sidecar /introspect on the aiohttp listener (same core)", c["sidecar_aiohttp"],
                f"{_x(c['aiohttp_rps_ratio'])} req/s")
            row("1", "raw httptools responder, fixed 200 (the ceiling)", c["raw"],
                f"{_x(_div(c['raw']['rps'], c['bare']['rps']))} req/s")
        else:
            row("1", "sidecar /introspect, 1,000 cached tokens", c["sidecar"],
                f"{_x(c['rps_ratio'])} req/s, {_x(c['p99_ratio'])} p99")
    if "cold" in results:
        for alg, a in results["cold"]["algorithms"].items():
            row("2", f"sidecar {alg}, cached tokens", a["cached"])
            row("2", f"sidecar {alg}, new token every request", a["cold"],
                f"+{a['cold_cost_us']:.0f} µs CPU/req = {_x(a['cold_cost_vs_pyjwt'])} PyJWT")
            if "new_session" in a:
                row("2", f"sidecar {alg}, new session every request (registers)", a["new_session"])
    for kind, label in (("nginx", "nginx auth_request"), ("envoy", "Envoy ext_authz")):
        if kind in results:
            g = results[kind]
            row("3" if kind == "nginx" else "4", f"{label} → bare 200 responder", g["bare"])
            row("3" if kind == "nginx" else "4", f"{label} → sidecar", g["sidecar"], f"{_x(g['rps_ratio'])} req/s")
            if "alone" in g:
                row("3", "nginx alone (the same file without auth_request)", g["alone"],
                    f"the check adds {g['check_adds_cpu_us']:.1f} µs server CPU per request")
            if "raw" in g:
                row("3", "nginx auth_request → raw httptools responder (checks nothing)", g["raw"],
                    f"auth_request itself adds {g['raw_adds_cpu_us']:.1f} µs")
            if "unix" in g:
                row("3", "nginx auth_request → sidecar on its Unix socket", g["unix"],
                    f"the check adds {g['unix_adds_cpu_us']:.1f} µs")
                row("3", "nginx auth_request → raw responder on a Unix socket", g["raw_unix"],
                    f"auth_request itself adds {g['raw_unix_adds_cpu_us']:.1f} µs")
    if "sessions" in results:
        ss = results["sessions"]
        keys = [k for k in ss if k.isdigit()]
        for k in keys:
            row("5", f"sidecar, {int(k):,} stored sessions (1,000 cached tokens)", ss[k],
                f"{_x(ss['rps_ratio'])} req/s" if k == keys[-1] else "")
    if "middleware" in results:
        mw = results["middleware"]
        served = mw.get("uvicorn", {})
        under = f"FastAPI (uvicorn, {served.get('loop', '?')} + {served.get('http', '?')})"
        row("7", f"{under}, no auth", mw["none"])
        row("7", f"{under} + sidecar.client ASGI middleware → sidecar, 1,000 cached tokens", mw["sidecar"],
            f"{_x(mw['sidecar_rps_ratio'])} req/s, {_x(mw['sidecar_p99_ratio'])} p99; "
            f"{_x(mw['sidecar_vs_pyjwt_rps_ratio'])} req/s of PyJWT in the app")
        row("7", f"{under} + PyJWT jwt.decode in the app (HS256, exp; no session check)", mw["pyjwt"],
            f"{_x(mw['pyjwt_rps_ratio'])} req/s, {_x(mw['pyjwt_p99_ratio'])} p99")
    if "policies" in results:
        p = results["policies"]
        row("8", "sidecar, 1,000 cached tokens, session policies off", p["off"])
        row("8", "the same, idle + lifetime + limit on", p["on"], f"{_x(p['rps_ratio'])} req/s")
    if "webhooks" in results:
        w = results["webhooks"]
        row("9", "sidecar, 1,000 cached tokens, events off", w["off"],
            f"registration {w['register_us_off']:.0f} µs per session")
        row("9", "the same, events on with a [[webhooks]] entry", w["on"],
            f"{_x(w['rps_ratio'])} req/s; registration {w['register_us_on']:.0f} µs per session")
    parts.append(table(
        ["#", "measurement", "req/s", "p50 ms", "p99 ms", "ratio", "busy % server / wrk core", "other procs %"], rows
    ))

    if "cold" in results:
        cold_rows = [
            [alg, f"{a['pyjwt_decode_us']:.1f}", f"{a['signature_only_us']:.1f}",
             "n/a" if a["sidecar_verifier_us"] is None else f"{a['sidecar_verifier_us']:.1f}",
             f"{a['cold_cost_us']:.1f}", f"{a.get('cold_cost_by_rate_us', float('nan')):.1f}",
             "n/a" if "pyjwt_in_server_us" not in a else f"{a['pyjwt_in_server_us']:.1f}",
             _x(a.get("cold_cost_vs_pyjwt_in_server", float("nan"))), _x(a["cold_cost_vs_pyjwt"])]
            for alg, a in results["cold"]["algorithms"].items()
        ]
        parts.append("Cold path, µs per token. In-process (a loop on the server core): PyJWT, the bare "
                     "signature, the sidecar's verifier. Over HTTP, server CPU per request: the sidecar's "
                     "new token minus its cached one, and an aiohttp handler calling jwt.decode minus the same "
                     "handler not verifying:")
        parts.append(table(
            ["alg", "PyJWT jwt.decode (loop)", "signature only (loop)", "sidecar TokenVerifier miss (loop)",
             "sidecar new token (server)", "same, by req/s", "PyJWT handler (server)",
             "÷ PyJWT (server)", "÷ PyJWT (loop)"],
            cold_rows,
        ))
    if "memory" in results:
        mem = results["memory"]
        parts.append(
            f"6. Memory: RSS {mem['rss_before_mib']} MiB → {mem['rss_after_mib']} MiB after {mem['sessions']:,} "
            f"distinct sessions went through /introspect = **{mem['mib_per_100k_sessions']} MiB per 100,000 "
            f"active sessions** (session state + verified-token cache; drive at {_n(mem['drive_rps'])} req/s, "
            f"state read from SQLite on first sight)."
        )
    goals = targets(results)
    if goals:
        parts.append(table(
            ["target", "measured", "goal", "met"],
            [[t.what, t.text, _goal(t.goal), "yes" if t.met else "**no**"] for t in goals],
        ))
    for p in profiles:
        parts.append(f"Profile {p.name} ({p.samples:,} samples, {p.raw}); hottest lines (self time):")
        parts.append(table(["%", "where"], [[f"{h.percent:.1f}", h.where] for h in p.self_lines]))
        parts.append("most inclusive time (a function and everything it calls):")
        parts.append(table(["%", "function"], [[f"{h.percent:.1f}", h.where] for h in p.inclusive_functions]))
        if p.sidecar_lines:
            parts.append("sidecar/ lines, inclusive:")
            parts.append(table(
                ["%", "line", "code"],
                [[f"{h.percent:.1f}", h.where, f"`{h.code}`" if h.code else ""] for h in p.sidecar_lines],
            ))
    return "\n\n".join(parts)
