"""The ceiling: a raw httptools responder answering a fixed 200 on uvloop.

    python -m bench.raw --port 9000

What the check listener would answer at if its check cost nothing: the same parser
(httptools), the same event loop (uvloop), keep-alive and pipelining in order, one
pre-encoded answer with the three identity headers an allow carries. No timeouts, limits
or checks: it is a measuring stick, never a server to deploy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

import httptools

ANSWER = (
    b"HTTP/1.1 200 OK\r\n"
    b"X-Auth-User: user-1\r\n"
    b"X-Auth-Session: 3ae66be2-eafb-4bf5-821a-509941138406\r\n"
    b"Cache-Control: no-store\r\n"
    b"Content-Length: 0\r\n\r\n"
)


class Responder(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        if self.transport is not None:
            self.transport.write(ANSWER)


async def serve(host: str, port: int | None, unix: str | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if unix is not None:
        server = await loop.create_unix_server(Responder, unix, backlog=1024)
        os.chmod(unix, 0o660)  # nginx's workers reach it through the folder's group (gateway_socket_dir)
    else:
        server = await loop.create_server(Responder, host, port, backlog=1024)
    print("raw: ready", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.raw", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int)
    where.add_argument("--unix", help="listen on this Unix domain socket path instead")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port, args.unix))
    else:
        uvloop.run(serve(args.host, args.port, args.unix))


if __name__ == "__main__":
    main()
