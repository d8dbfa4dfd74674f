"""Revocation propagation between two sidecar processes sharing one store.

N revocations are made through process A (admin API); after each one returns, process B
is asked in a tight loop until it refuses the token. The delay from "A's revoke
returned" to "B's first refusal" is recorded; p50/p99/max are printed with Redis push
and without it (store catch-up only).

    python -m bench.propagation [--count 200] [--store sqlite|postgresql://...]

Loopback only; bounded in count and time. Needs redis-server on PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import jwt

SECRET = "bench-secret-0123456789-0123456789-0123456789"
ADMIN_KEY = "bench-admin-key-0123456789"
CATCHUP_SECONDS = 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


@contextmanager
def process(argv: list[str], log: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def sidecar_config(
    path: Path, *, port: int, admin_port: int, store: str, redis_port: int | None, channel: str
) -> Path:
    redis = f'[redis]\nurl = "redis://127.0.0.1:{redis_port}/0"\nchannel = "{channel}"\n' if redis_port else ""
    path.write_text(
        f"""
[server]
port = {port}
[jwt]
algorithms = ["HS256"]
secret = "{SECRET}"
leeway_seconds = 0
[sessions]
catchup_interval_seconds = {CATCHUP_SECONDS}
[storage]
url = "{store}"
[admin]
port = {admin_port}
api_keys = ["{ADMIN_KEY}"]
{redis}"""
    )
    return path


def token(n: int) -> str:
    now = int(time.time()) - 1
    return jwt.encode({"sub": f"user{n}", "sid": str(uuid.uuid4()), "iat": now, "exp": now + 600}, SECRET)


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
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        sys.exit("redis-server is not on PATH (apt-get install redis-server)")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as tmp:
        work = Path(tmp)
        for mode in ("redis", "no-redis"):
            store_url = store or f"sqlite:///{work / (mode + '.db')}"
            with ExitStack() as stack:
                redis_port = None
                if mode == "redis":
                    redis_port = free_port()
                    stack.enter_context(process(
                        [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""],
                        work / "redis.log", redis_port,
                    ))
                ports = {name: free_port() for name in ("a", "a_admin", "b", "b_admin")}
                channel = f"bench:{uuid.uuid4()}"
                for name in ("a", "b"):
                    cfg = sidecar_config(
                        work / f"{mode}-{name}.toml",
                        port=ports[name],
                        admin_port=ports[f"{name}_admin"],
                        store=store_url,
                        redis_port=redis_port,
                        channel=channel,
                    )
                    stack.enter_context(process(
                        [sys.executable, "-m", "sidecar", "serve", "--config", str(cfg)],
                        work / f"{mode}-{name}.log", ports[name],
                    ))
                n = count if mode == "redis" else max(10, count // 10)
                delays = asyncio.run(measure(ports["a_admin"], ports["b"], n))
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
