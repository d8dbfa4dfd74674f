"""Measure how long the sidecar's check takes, to choose the gateway's check timeout.

    python contrib/check_latency.py --config sidecar.toml            # 2,000 requests each
    python contrib/check_latency.py --config sidecar.toml --url http://10.0.0.5:8080 -n 5000

Runs three bounded, sequential loops from one aiohttp client against a running sidecar
and prints p50/p99/max for each:

- ``known``: the same valid token again and again (the hot path: a verified-token cache
  hit and a session state held in memory);
- ``new session``: a new session id on every request (auto registration: verify, then
  an INSERT committed to the store before the answer);
- ``deny``: a token with a bad signature (verify fails, 401).

Tokens are signed with the config's HS* secret (``sidecar mint-token`` rules), so the
config must be an HS* development config. Sessions created here are real: use a
throw-away database. This is a sizing aid, not a benchmark: one client, no concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence

import aiohttp
import jwt

from sidecar.config import Settings, load


def token_factory(settings: Settings) -> Callable[[str | None], str]:
    j = settings.jwt
    if not j.development_hmac_only or j.secret is None:
        raise SystemExit("check_latency: needs an HS* development config with jwt.secret")

    def mint(sid: str | None) -> str:
        now = int(time.time())
        claims: dict[str, object] = {j.user_claim: "latency-probe", "iat": now, "exp": now + 3600}
        claims[j.session_claim] = sid or str(uuid.uuid4())
        if j.token_type_claim and j.access_token_type:
            claims[j.token_type_claim] = j.access_token_type
        if j.issuer:
            claims["iss"] = j.issuer
        if j.audience:
            claims["aud"] = j.audience[0]
        return jwt.encode(claims, j.secret, algorithm=j.algorithms[0])

    return mint


async def timed_loop(
    session: aiohttp.ClientSession, url: str, n: int, token: Callable[[], str], expect: int
) -> list[float]:
    samples: list[float] = []
    for _ in range(n):
        headers = {"Authorization": f"Bearer {token()}", "User-Agent": "check_latency"}
        start = time.perf_counter()
        async with session.get(url, headers=headers) as resp:
            await resp.read()
        samples.append(time.perf_counter() - start)
        if resp.status != expect:
            raise SystemExit(f"check_latency: expected {expect}, got {resp.status}")
    return samples


def summary(name: str, samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p99 = statistics.quantiles(ms, n=100)[98]
    return (f"{name:<12} n={len(ms):<6} p50={statistics.median(ms):.2f} ms  "
            f"p99={p99:.2f} ms  max={ms[-1]:.2f} ms")


async def run(settings: Settings, base_url: str, n: int) -> None:
    mint = token_factory(settings)
    url = base_url.rstrip("/") + "/introspect"
    known = mint(None)
    bad = known[:-4] + ("AAAA" if not known.endswith("AAAA") else "BBBB")
    async with aiohttp.ClientSession() as session:
        await timed_loop(session, url, 50, lambda: known, 200)  # warm up connection and caches
        loops = [
            ("known", lambda: known, 200),
            ("new session", lambda: mint(None), 200),
            ("deny", lambda: bad, 401),
        ]
        for name, token, expect in loops:
            print(summary(name, await timed_loop(session, url, n, token, expect)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", required=True, help="the sidecar's TOML config (for the secret)")
    parser.add_argument("--url", help="the sidecar's public listener (default: from the config)")
    parser.add_argument("-n", type=int, default=2000, help="requests per loop (default 2000)")
    args = parser.parse_args(argv)
    settings = load(args.config)
    url = args.url or f"http://{settings.server.host}:{settings.server.port}"
    asyncio.run(run(settings, url, args.n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
