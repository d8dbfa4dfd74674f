"""The baseline: an aiohttp app that answers 200 to every method on every path.

    python -m bench.bare --port 9000 [--identity-headers]

It stands in for the sidecar twice: as "the bare aiohttp handler" the check is compared
with, and as "the bare 200 responder" a gateway calls instead of the sidecar. It runs the
way ``sidecar serve`` runs (uvloop when installed, no access log, the same AppRunner/TCPSite
pair), so that the difference between the two is the check itself. With
``--identity-headers`` it also answers the three headers an allow carries (constant
values): what answering like the sidecar costs before any checking.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from aiohttp import web

IDENTITY = {
    "X-Auth-User": "user-1",
    "X-Auth-Session": "3ae66be2-eafb-4bf5-821a-509941138406",
    "Cache-Control": "no-store",
}


async def ok(_request: web.Request) -> web.Response:
    return web.Response(status=200)


async def ok_with_identity(_request: web.Request) -> web.Response:
    return web.Response(status=200, headers=IDENTITY)


def create_app(identity_headers: bool = False) -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok_with_identity if identity_headers else ok)
    return app


async def serve(host: str, port: int, identity_headers: bool = False) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(create_app(identity_headers), access_log=None)
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
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port, args.identity_headers))
    else:
        uvloop.run(serve(args.host, args.port, args.identity_headers))


if __name__ == "__main__":
    main()
