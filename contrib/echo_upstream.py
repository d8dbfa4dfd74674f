"""A demo upstream app: answers every method on every path with what it received.

    python contrib/echo_upstream.py                    # listens on 127.0.0.1:8001
    python contrib/echo_upstream.py --port 9001 --record /tmp/seen.jsonl

The JSON reply (and, with ``--record``, one JSON line per request appended to a file
*before* answering) holds the method, path, query, every header as ``[name, value]``
pairs (so a duplicated header shows twice) and the body size. Put it behind the nginx or
Envoy configuration in this folder to see exactly which ``X-Auth-*`` and forwarding
headers the gateway lets through. ``--status 503`` answers every request with that
status instead, which is how you fake a broken sidecar; ``?pad=N`` on a request makes
its reply N bytes longer.

Needs only aiohttp (a dependency of sidecar). Prints ``echo_upstream: ready`` on stderr
once it listens; stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

MAX_PAD = 64 * 1024 * 1024


def create_app(record: Path | None = None, status: int = 200) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        seen: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "headers": [[name, value] for name, value in request.headers.items()],
            "body_bytes": len(body),
        }
        if record is not None:
            # One write per line, appended: a reader never sees half a record of a request
            # that was answered.
            with record.open("a", encoding="utf-8") as f:
                f.write(json.dumps(seen) + "\n")
        if request.method == "HEAD":
            return web.Response(status=status)
        pad = request.query.get("pad", "")
        if pad.isdigit():  # ?pad=N: a reply N bytes longer, to try large responses
            seen["pad"] = "x" * min(int(pad), MAX_PAD)
        return web.json_response(seen, status=status)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def serve(host: str, port: int, record: Path | None, status: int) -> None:
    runner = web.AppRunner(create_app(record, status), access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, host, port).start()
        print(f"echo_upstream: ready on http://{host}:{port}", file=sys.stderr, flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--record", type=Path, help="append one JSON line per request to this file")
    parser.add_argument("--status", type=int, default=200, help="answer every request with this status")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.record, args.status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
