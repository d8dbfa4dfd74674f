"""An aiohttp app behind ``setup_sidecar``, with no gateway: what tests/test_middleware.py runs.

    SIDECAR_URL=http://127.0.0.1:8080 APP_PORT=9000 [SIDECAR_TIMEOUT=1.0] python tests/apps/middleware_aiohttp.py

The same paths and answers as tests/apps/middleware_fastapi.py. Prints ``app: ready`` once
it listens.
"""

from __future__ import annotations

import asyncio
import os
import signal

from aiohttp import web

from sidecar.client.aiohttp_middleware import SIDECAR_IDENTITY, setup_sidecar
from tests.apps.middleware_common import Calls, seen

CALLS = web.AppKey("calls", Calls)


def create_app(sidecar_url: str, timeout: float) -> web.Application:
    app = web.Application()
    setup_sidecar(app, sidecar_url, timeout=timeout, public=["/health", "/calls"])
    app[CALLS] = Calls()

    async def count(request: web.Request) -> web.Response:
        return web.json_response({"calls": request.app[CALLS].count})

    async def anything(request: web.Request) -> web.Response:
        request.app[CALLS].count += 1
        return web.json_response(seen(request[SIDECAR_IDENTITY]))

    app.router.add_get("/calls", count)
    app.router.add_route("*", "/{path:.*}", anything)
    return app


async def main() -> None:
    app = create_app(os.environ["SIDECAR_URL"], float(os.environ.get("SIDECAR_TIMEOUT", "1.0")))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(os.environ["APP_PORT"])).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)  # cleanup_ctx runs at SIGTERM
    print("app: ready", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
