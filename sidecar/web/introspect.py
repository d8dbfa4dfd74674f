"""``ANY /introspect[/{tail}]`` on the aiohttp listener: the check core (``sidecar.check``)
behind an aiohttp handler.

Gateways should point at the check listener (``[check]``, ``sidecar.wire``), which answers
the same core without a framework's request and response objects; this route stays for
what already points here and for clients of the public listener (the middleware can use
either). The answers are the same, byte for byte in status and headers.
"""

from __future__ import annotations

from aiohttp import web

from sidecar.check import Answer, CheckCore
from sidecar.web.requests import facts_of


def response(answer: Answer) -> web.Response:
    return web.Response(status=answer.status, headers=answer.headers, body=answer.body or None)


class Check:
    """The handler of ``/introspect``; ``checks_first`` in sidecar.web.app hands requests
    here before aiohttp's router and middleware."""

    def __init__(self, core: CheckCore) -> None:
        self.core = core

    async def handle(self, request: web.BaseRequest) -> web.Response:
        facts = facts_of(request)
        answer = self.core.decide_now(facts)
        if answer is None:
            answer = await self.core.decide(facts)
        return response(answer)


# The app's check, for ``checks_first`` (here, not in sidecar.web.keys: that would import in a circle).
CHECK = web.AppKey("check", Check)
