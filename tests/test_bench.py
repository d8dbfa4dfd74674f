"""The benchmark harness's wiring (nothing is measured here: timing lives in bench/)."""

from __future__ import annotations

from typing import Any

from bench.__main__ import parse_args
from bench.report import render
from bench.scenarios import SCENARIOS, rederive


def _run(rps: float, p99_ms: float) -> dict[str, Any]:
    return {"rps": rps, "p50_ms": 1.0, "p99_ms": p99_ms, "server_cpu_busy": 99.0, "load_cpu_busy": 50.0,
            "foreign_cpu": 0.0}


def _figure(*runs: dict[str, Any]) -> dict[str, Any]:
    return {**runs[0], "runs": list(runs)}


def test_middleware_is_selectable_alone() -> None:
    """`--only middleware` runs the FastAPI row and nothing else."""
    assert "middleware" in SCENARIOS
    assert parse_args(["--only", "middleware"]).only == ["middleware"]


def test_middleware_ratios_are_rederived_and_rendered() -> None:
    """The three ratios (middleware and PyJWT over no auth, middleware over PyJWT) come from
    runs made side by side, and row 7 shows all three variants."""
    results: dict[str, Any] = {"middleware": {
        "uvicorn": {"loop": "uvloop", "http": "h11"},
        "none": _figure(_run(4000, 2.0), _run(5000, 2.0)),
        "sidecar": _figure(_run(2000, 4.0), _run(2000, 3.0)),
        "pyjwt": _figure(_run(3000, 3.0), _run(2500, 3.0)),
    }}
    rederive(results)
    mw = results["middleware"]
    assert mw["sidecar_rps_ratio"] == 0.45  # median of 2000/4000 and 2000/5000
    assert mw["pyjwt_rps_ratio"] == 0.625  # median of 3000/4000 and 2500/5000
    assert mw["sidecar_vs_pyjwt_rps_ratio"] == 0.733  # median of 2000/3000 and 2000/2500
    assert mw["sidecar_p99_ratio"] == 1.75
    machine = {"nproc": 2, "cpu_model": "x", "python": "3", "kernel": "6", "wrk": "wrk 4", "nginx": "1",
               "envoy": "1", "versions": {"aiohttp": "3", "PyJWT": "2", "cryptography": "4", "uvloop": "0",
                                          "fastapi": "0.1", "uvicorn": "0.2"},
               "commit": "abc", "dirty": False, "server_cpu": 0, "load_cpu": 1}
    settings = {"threads": 1, "connections": 64, "duration": 1.0, "warmup": 0.0, "repeat": 2}
    text = render(results, {"machine": machine, "settings": settings, "code": "f"}, [])
    rows = [line for line in text.splitlines() if line.startswith("| 7 ")]
    assert len(rows) == 3
    assert "0.45x req/s" in rows[1] and "0.73x req/s of PyJWT" in rows[1]
    assert "0.62x req/s" in rows[2]  # 0.625 printed to two places (half to even)
    assert "fastapi 0.1, uvicorn 0.2" in text
