"""Reading what a request says about its caller: the bearer token and the client."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from sidecar.config import Settings
from sidecar.enrich.client_ip import client_ip
from sidecar.sessions.service import ClientInfo
from sidecar.tokens.bearer import extract_bearer
from sidecar.tokens.claims import Claims
from sidecar.web.keys import SERVICES
from sidecar.web.services import Services


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


async def bearer_claims(authorization: Sequence[str], services: Services) -> Claims:
    """The verified claims of the bearer token in ``authorization`` (every Authorization
    header received), or ``InvalidToken``.

    A header that is exactly ``Bearer <token>`` with a token verified before costs one
    hash and one lookup; anything else (a new token, two headers, odd spacing) is read in
    full by extract_bearer, which gives the same token wherever the shortcut applies.
    """
    # "=." is padding inside the token: the verifier accepts it (the admin API and capture
    # verify tokens directly), extract_bearer does not (RFC 6750: "=" only at the end).
    if len(authorization) == 1 and authorization[0].startswith("Bearer ") and "=." not in authorization[0]:
        claims = services.verifier.cached(authorization[0][7:])
        if claims is not None:
            return claims
    token = extract_bearer(authorization, services.settings.jwt.max_token_bytes)
    return await services.verifier.verify(token)


async def authenticate_with(request: web.BaseRequest, services: Services) -> tuple[Claims, str]:
    """Verify the request's bearer token and its session: (claims, session id).

    What the gateway check and the sessions API both decide; raises InvalidToken /
    StoreUnavailable.
    """
    claims = await bearer_claims(request.headers.getall("Authorization", ()), services)
    session_id = await services.sessions.check(claims, lambda: client_of(request, services.settings))
    return claims, session_id


async def authenticate(request: web.Request) -> tuple[Claims, str]:
    """``authenticate_with`` the services of the request's app (the routed API handlers)."""
    return await authenticate_with(request, request.app[SERVICES])
