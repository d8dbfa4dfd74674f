"""What an aiohttp request says about its caller, for the routed handlers (the sessions
API, capture): the request's facts (``sidecar.facts``) read by the same core functions
the check uses (``sidecar.tokens.credentials``, ``sidecar.check``)."""

from __future__ import annotations

from aiohttp import web

from sidecar.config import Settings
from sidecar.enrich.client_ip import ClientInfo
from sidecar.facts import RequestFacts
from sidecar.tokens import credentials
from sidecar.tokens.claims import Claims
from sidecar.web.keys import SERVICES
from sidecar.web.services import Services


def facts_of(request: web.BaseRequest) -> RequestFacts:
    peer = None
    if request.transport is not None:
        peername = request.transport.get_extra_info("peername")
        if isinstance(peername, tuple) and peername:
            peer = str(peername[0])
    return RequestFacts(request.method, request.raw_path, request.headers, peer)


def client_of(request: web.BaseRequest, settings: Settings) -> ClientInfo:
    return facts_of(request).client_info(settings.server.trusted_proxies)


def presented_token(request: web.BaseRequest, settings: Settings) -> str | None:
    """The token a request presents, unverified (``credentials.presented_token``)."""
    return credentials.presented_token(request.headers, settings.jwt.cookie_name, settings.jwt.max_token_bytes)


def uses_cookie(request: web.BaseRequest, settings: Settings) -> bool:
    return credentials.uses_cookie(request.headers, settings.jwt.cookie_name)


async def request_claims(request: web.BaseRequest, services: Services) -> Claims:
    """The verified claims of the request's token, or ``InvalidTokenError``: the Authorization
    header's bearer token; without a header, the ``jwt.cookie_name`` cookie when set."""
    jwt = services.settings.jwt
    if jwt.cookie_name is not None:
        token = credentials.cookie_token(request.headers, jwt.cookie_name, jwt.max_token_bytes)
        if token is not None:
            return await services.verifier.verify(token)
    return await services.verifier.verify_bearer(request.headers.getall("Authorization", []))


async def authenticate_with(request: web.BaseRequest, services: Services) -> tuple[Claims, str]:
    """Verify the request's token (``request_claims``) and its session: (claims, session id).

    The sessions API decides as the check does; raises InvalidTokenError / StoreUnavailableError.
    """
    claims = await request_claims(request, services)
    facts = facts_of(request)
    trusted = services.settings.server.trusted_proxies
    session_id = await services.sessions.check(claims, lambda: facts.client_info(trusted))
    return claims, session_id


async def authenticate(request: web.Request) -> tuple[Claims, str]:
    """``authenticate_with`` the services of the request's app (the routed API handlers)."""
    return await authenticate_with(request, request.app[SERVICES])
