"""Which token a request presents: its ``Authorization: Bearer`` header, or (with
``jwt.cookie_name``) the cookie of that name; refusing what is ambiguous.

The one reader of credentials for every way in: the gateway check on either listener and
the sessions API. It reads plain headers (``sidecar.facts.Headers``), never a framework's
request.
"""

from __future__ import annotations

from sidecar.cookies import request_cookie_values
from sidecar.errors import InvalidTokenError
from sidecar.facts import Headers
from sidecar.tokens.bearer import extract_bearer

_NONE: list[str] = []


def cookie_values(headers: Headers, name: str) -> list[str]:
    """Every value of the cookie ``name`` in the request's Cookie headers, in order
    (``sidecar.cookies``: RFC 6265 section 5.4)."""
    cookies = headers.getall("cookie", _NONE)
    if not cookies:
        return _NONE
    return request_cookie_values(cookies).get(name, _NONE)


def has_credentials(headers: Headers, cookie_name: str | None) -> bool:
    """Whether the request offers a token at all: an Authorization header, or the cookie."""
    if headers.getall("authorization", _NONE):
        return True
    return cookie_name is not None and bool(cookie_values(headers, cookie_name))


def uses_cookie(headers: Headers, cookie_name: str | None) -> bool:
    """Whether the request's credential is the cookie (no Authorization header, the cookie
    sent): what makes an unsafe request need to be same-origin."""
    return (
        cookie_name is not None
        and not headers.getall("authorization", _NONE)
        and bool(cookie_values(headers, cookie_name))
    )


def cookie_token(headers: Headers, name: str, max_bytes: int) -> str | None:
    """The cookie's token when the request's credential is the cookie, None when the
    Authorization header is (or nothing is); refuses what is ambiguous: two different
    values of the cookie, or a cookie that is not the header's token (SECURITY_CASES E45);
    an oversized cookie is refused like an oversized header (A14)."""
    authorization = headers.getall("authorization", _NONE)
    values = cookie_values(headers, name)
    if not values:
        return None
    token = values[0]
    if any(v != token for v in values):
        raise InvalidTokenError("duplicate_cookie")
    if len(token) > max_bytes + 16:
        raise InvalidTokenError("oversized_token", f"{len(token)} bytes")
    if authorization:
        if extract_bearer(authorization, max_bytes) != token:
            raise InvalidTokenError("cookie_header_mismatch")
        return None  # the same token either way: the header's reading applies
    return token


def presented_token(headers: Headers, cookie_name: str | None, max_bytes: int) -> str | None:
    """The token a request presents, unverified: its bearer token, else (with
    ``cookie_name``) the cookie's; None when there is none or it is ambiguous."""
    try:
        authorization = headers.getall("authorization", _NONE)
        if authorization:
            return extract_bearer(authorization, max_bytes)
        if cookie_name is None:
            return None
        return cookie_token(headers, cookie_name, max_bytes)
    except InvalidTokenError:
        return None
