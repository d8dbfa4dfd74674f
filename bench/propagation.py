"""Revocation propagation between two sidecar processes sharing one store.

N revocations are made through process A (admin API); after each one returns, process B
is asked in a tight loop until it refuses the token. The delay from "A's revoke
returned" to "B's first refusal" is recorded; p50/p99/max are printed with Redis push
and without it (store catch-up only).

    python -m bench.propagation [--count 200] [--store sqlite|postgresql://...]

Loopback only; bounded in count and time. Needs redis-server (tests/support finds it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.configs import sqlite_url
from tests.support.ports import free_port
from tests.support.processes import redis_server
from tests.support.sidecar import run_sidecar
from tests.support.tokens import ADMIN_KEY, mint

CATCHUP_SECONDS = 1.0


def token(n: int) -> str:
    return mint(f"user{n}", now=time.time() - 1, ttl=600)


async def measure(port_a_admin: int, port_b: int, count: int) -> list[float]:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    delays: list[float] = []
    async with aiohttp.ClientSession() as http:
        for n in range(count):
            t = token(n)
            auth = {"Authorization": f"Bearer {t}"}
            async with http.get(f"http://127.0.0.1:{port_b}/introspect", headers=auth) as resp:
                assert resp.status == 200, resp.status
                sid = resp.headers["X-Auth-Session"]
            async with http.delete(f"http://127.0.0.1:{port_a_admin}/admin/v1/sessions/{sid}", headers=admin) as resp:
                assert resp.status == 204, resp.status
            returned = time.perf_counter()
            while True:
                async with http.get(f"http://127.0.0.1:{port_b}/introspect", headers=auth) as resp:
                    if resp.status == 401:
                        delays.append(time.perf_counter() - returned)
                        break
                if time.perf_counter() - returned > 10 * CATCHUP_SECONDS:
                    raise RuntimeError(f"revocation {n} never reached B")
    return delays


def summary(delays: list[float]) -> dict[str, float]:
    ordered = sorted(delays)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "count": len(ordered),
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": p99 * 1000,
        "max_ms": ordered[-1] * 1000,
    }


def run(count: int, store: str | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as tmp:
        work = Path(tmp)
        for mode in ("redis", "no-redis"):
            store_url = store or sqlite_url(work / (mode + ".db"))
            with ExitStack() as stack:
                # The sidecar's own leeway and last_seen flush: only the catch-up interval is set.
                sections: dict[str, Any] = {
                    "jwt": {"leeway_seconds": None},
                    "sessions": {"catchup_interval_seconds": CATCHUP_SECONDS, "last_seen_flush_seconds": None},
                }
                if mode == "redis":
                    redis_port = free_port()
                    stack.enter_context(redis_server(work, redis_port))
                    sections["redis"] = {"url": f"redis://127.0.0.1:{redis_port}/0", "channel": f"bench:{uuid.uuid4()}"}
                a, b = (
                    stack.enter_context(run_sidecar(work, store_url, name=f"{mode}-{name}", **sections))
                    for name in ("a", "b")
                )
                n = count if mode == "redis" else max(10, count // 10)
                delays = asyncio.run(measure(a.admin_port, b.port, n))
                results[mode] = summary(delays)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="revocations with Redis (a tenth without)")
    parser.add_argument("--store", help="storage.url shared by both processes (default: a SQLite file)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = run(args.count, args.store)
    print(f"revocation propagation A -> B (catch-up interval {CATCHUP_SECONDS:g} s)")
    print(f"{'mode':<10} {'n':>5} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for mode, r in results.items():
        print(f"{mode:<10} {r['count']:>5} {r['p50_ms']:>9.1f} {r['p99_ms']:>9.1f} {r['max_ms']:>9.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
