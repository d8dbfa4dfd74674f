"""Reading what a request says about its caller: the token (an ``Authorization`` header, or
the ``jwt.cookie_name`` cookie) and the client.

The one place both the gateway check and the sessions API take credentials from.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from sidecar.config import Settings
from sidecar.cookies import request_cookie_values
from sidecar.enrich.client_ip import client_ip
from sidecar.errors import InvalidTokenError
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


def cookie_values(cookie_headers: Sequence[str], name: str) -> list[str]:
    """Every value of the cookie ``name`` in ``cookie_headers`` (every Cookie header
    received), in order (``sidecar.cookies``: RFC 6265 section 5.4)."""
    return request_cookie_values(cookie_headers).get(name, [])


def presented_token(request: web.BaseRequest, settings: Settings) -> str | None:
    """The token a request presents, unverified: its bearer token, else (with
    ``jwt.cookie_name``) the cookie's; None when there is none or it is ambiguous."""
    try:
        if request.headers.getall("Authorization", ()):
            return extract_bearer(request.headers.getall("Authorization"), settings.jwt.max_token_bytes)
        if settings.jwt.cookie_name is None:
            return None
        _, token = _cookie_token(request, settings.jwt.cookie_name, settings.jwt.max_token_bytes)
    except InvalidTokenError:
        return None
    return token


def has_credentials(request: web.BaseRequest, settings: Settings) -> bool:
    """Whether the request offers a token at all: an Authorization header, or the cookie."""
    if request.headers.getall("Authorization", ()):
        return True
    name = settings.jwt.cookie_name
    return name is not None and bool(cookie_values(request.headers.getall("Cookie", ()), name))


def uses_cookie(request: web.BaseRequest, settings: Settings) -> bool:
    """Whether the request's credential is the cookie (no Authorization header, the cookie
    sent): what makes an unsafe request need to be same-origin."""
    name = settings.jwt.cookie_name
    return (
        name is not None
        and not request.headers.getall("Authorization", ())
        and bool(cookie_values(request.headers.getall("Cookie", ()), name))
    )


def _cookie_token(request: web.BaseRequest, name: str, max_bytes: int) -> tuple[list[str], str | None]:
    """(the Authorization headers, the cookie's token or None), refusing what is ambiguous:
    two different values of the cookie, or a cookie that is not the header's token
    (SECURITY_CASES E45); an oversized cookie is refused like an oversized header (A14)."""
    authorization = request.headers.getall("Authorization", [])
    values = cookie_values(request.headers.getall("Cookie", ()), name)
    if not values:
        return authorization, None
    token = values[0]
    if any(v != token for v in values):
        raise InvalidTokenError("duplicate_cookie")
    if len(token) > max_bytes + 16:
        raise InvalidTokenError("oversized_token", f"{len(token)} bytes")
    if authorization and extract_bearer(authorization, max_bytes) != token:
        raise InvalidTokenError("cookie_header_mismatch")
    return authorization, token


async def request_claims(request: web.BaseRequest, services: Services) -> Claims:
    """The verified claims of the request's token, or ``InvalidTokenError``: the Authorization
    header's bearer token; without a header, the ``jwt.cookie_name`` cookie when set."""
    name = services.settings.jwt.cookie_name
    if name is None:
        return await services.verifier.verify_bearer(request.headers.getall("Authorization", ()))
    authorization, token = _cookie_token(request, name, services.settings.jwt.max_token_bytes)
    if token is None or authorization:
        return await services.verifier.verify_bearer(authorization)
    return await services.verifier.verify(token)


async def authenticate_with(request: web.BaseRequest, services: Services) -> tuple[Claims, str]:
    """Verify the request's token (``request_claims``) and its session: (claims, session id).

    What the gateway check and the sessions API both decide; raises InvalidTokenError /
    StoreUnavailableError.
    """
    if services.settings.jwt.cookie_name is None:
        # The check's hot path: no extra coroutine when no cookie is configured.
        claims = await services.verifier.verify_bearer(request.headers.getall("Authorization", ()))
    else:
        claims = await request_claims(request, services)
    session_id = await services.sessions.check(claims, lambda: client_of(request, services.settings))
    return claims, session_id


async def authenticate(request: web.Request) -> tuple[Claims, str]:
    """``authenticate_with`` the services of the request's app (the routed API handlers)."""
    return await authenticate_with(request, request.app[SERVICES])
