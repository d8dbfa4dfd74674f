"""A real HTTP webhook receiver for the tests: verifies every request with the
``standardwebhooks`` library, as a receiver would, and records what it accepted.

Run in-process (``Receiver``, an aiohttp server on loopback) or as its own process
(``python -m tests.events.receiver PORT SECRET LOG``, one JSON line per request in LOG),
so that a test can take it down and bring it back on the same port.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    """One request: its webhook-id, the verified body (None: the signature did not verify)."""

    webhook_id: str
    body: dict[str, Any] | None
    status: int


@dataclass
class Receiver:
    """Answers ``status`` (a list: one per request, the last repeated), verifying signatures."""

    secret: str
    statuses: list[int] = field(default_factory=lambda: [204])
    received: list[Received] = field(default_factory=list)
    delay: float = 0.0
    log: Path | None = None  # one JSON line per request, written as it arrives (before the delay)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        headers = {k: v for k, v in request.headers.items()}
        try:
            body = Webhook(self.secret).verify(raw, headers)
        except WebhookVerificationError:
            body = None
        index = min(len(self.received), len(self.statuses) - 1)
        status = self.statuses[index] if body is not None else 401
        record = Received(request.headers.get("webhook-id", ""), body, status)
        self.received.append(record)
        if self.log is not None:
            with self.log.open("a", encoding="utf-8") as f:  # one line per request, written whole
                f.write(json.dumps({"id": record.webhook_id, "body": record.body, "status": record.status}) + "\n")
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=status)

    @property
    def accepted(self) -> list[Received]:
        return [r for r in self.received if r.body is not None and 200 <= r.status < 300]


async def _serve(port: int, secret: str, log: Path, delay: float, status: int) -> None:
    receiver = Receiver(secret, statuses=[status], delay=delay, log=log)
    runner = web.AppRunner(receiver.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("receiver ready", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str]) -> None:
    """PORT SECRET LOG [DELAY seconds before answering] [STATUS to answer a verified request]."""
    delay = float(argv[3]) if len(argv) > 3 else 0.0
    status = int(argv[4]) if len(argv) > 4 else 204
    asyncio.run(_serve(int(argv[0]), argv[1], Path(argv[2]), delay, status))


if __name__ == "__main__":
    main(sys.argv[1:])
