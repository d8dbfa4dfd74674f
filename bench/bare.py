"""The baseline: an aiohttp app that answers 200 to every method on every path.

    python -m bench.bare --port 9000 [--identity-headers] [--pyjwt ALG --key FILE]

It stands in for the sidecar twice: as "the bare aiohttp handler" the check is compared
with, and as "the bare 200 responder" a gateway calls instead of the sidecar. It runs the
way ``sidecar serve`` runs (uvloop when installed, no access log, the same AppRunner/TCPSite
pair), so that the difference between the two is the check itself. With
``--identity-headers`` it also answers the three headers an allow carries (constant
values): what answering like the sidecar costs before any checking. With ``--pyjwt``
it verifies every request's bearer token with PyJWT's ``jwt.decode`` (the key read once)
and answers 200 with the identity headers or 401: the handler issue 6 sizes the cold path
against, measured in the same server conditions as the sidecar.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.serialization import load_pem_public_key

IDENTITY = {
    "X-Auth-User": "user-1",
    "X-Auth-Session": "3ae66be2-eafb-4bf5-821a-509941138406",
    "Cache-Control": "no-store",
}


async def ok(_request: web.Request) -> web.Response:
    return web.Response(status=200)


async def ok_with_identity(_request: web.Request) -> web.Response:
    return web.Response(status=200, headers=IDENTITY)


def pyjwt_handler(algorithm: str, key_file: Path) -> Callable[[web.Request], Awaitable[web.Response]]:
    raw = key_file.read_bytes()
    key: Any = raw if algorithm.startswith("HS") else load_pem_public_key(raw)
    algorithms = [algorithm]

    async def verify(request: web.Request) -> web.Response:
        value = request.headers.get("Authorization", "")
        try:
            claims = jwt.decode(value[7:], key, algorithms=algorithms)
        except jwt.InvalidTokenError:
            return web.Response(status=401)
        return web.Response(status=200, headers={
            "X-Auth-User": str(claims["sub"]), "X-Auth-Session": str(claims.get("sid")), "Cache-Control": "no-store",
        })

    return verify


def create_app(identity_headers: bool = False, pyjwt: tuple[str, Path] | None = None) -> web.Application:
    app = web.Application()
    handler = pyjwt_handler(*pyjwt) if pyjwt else ok_with_identity if identity_headers else ok
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def serve(host: str, port: int, identity_headers: bool = False, pyjwt: tuple[str, Path] | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(create_app(identity_headers, pyjwt), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        print("bare: ready", file=sys.stderr, flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--identity-headers", action="store_true")
    parser.add_argument("--pyjwt", metavar="ALG", help="verify each bearer token with jwt.decode")
    parser.add_argument("--key", type=Path, help="with --pyjwt: the HMAC secret or PEM public key")
    args = parser.parse_args()
    if args.pyjwt and args.key is None:
        parser.error("--pyjwt needs --key")
    pyjwt = (args.pyjwt, args.key) if args.pyjwt else None
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port, args.identity_headers, pyjwt))
    else:
        uvloop.run(serve(args.host, args.port, args.identity_headers, pyjwt))


if __name__ == "__main__":
    main()
