"""Reading what a request says about its caller: the bearer token and the client."""

from __future__ import annotations

from aiohttp import web

from sidecar.config import Settings
from sidecar.enrich.client_ip import client_ip
from sidecar.sessions.service import ClientInfo
from sidecar.tokens.bearer import extract_bearer
from sidecar.tokens.claims import Claims
from sidecar.web.keys import SERVICES


def client_of(request: web.BaseRequest, settings: Settings) -> ClientInfo:
    peer = None
    if request.transport is not None:
        peername = request.transport.get_extra_info("peername")
        if isinstance(peername, tuple) and peername:
            peer = str(peername[0])
    ip = client_ip(
        peer,
        request.headers.getall("X-Forwarded-For", []),
        request.headers.get("X-Real-IP"),
        settings.server.trusted_proxies,
    )
    return ClientInfo(ip=ip, user_agent=request.headers.get("User-Agent"))


async def authenticate(request: web.Request) -> tuple[Claims, str]:
    """Verify the request's bearer token and its session: (claims, session id).

    The same rules as the gateway check; raises InvalidToken / StoreUnavailable.
    """
    services = request.app[SERVICES]
    token = extract_bearer(request.headers.getall("Authorization", []), services.settings.jwt.max_token_bytes)
    claims = await services.verifier.verify(token)
    session_id = await services.sessions.check(claims, lambda: client_of(request, services.settings))
    return claims, session_id
