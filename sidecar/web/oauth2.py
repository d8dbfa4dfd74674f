"""OAuth 2.0 token introspection (RFC 7662) and revocation (RFC 7009) on the admin listener.

For resource servers and libraries that speak OAuth rather than the gateway protocol. Both
take a form body (``token``, optional ``token_type_hint``) and answer in OAuth's shapes, not
the JSON envelope: ``{"active": ...}`` and ``{"error": "invalid_request"}``.

The introspection verdict is the check's: a token is active only when it verifies and its
session is active (``SessionService.check``), so in ``auto`` registration mode a valid token
never seen before registers its session here, as its first request through the gateway
would, with no client address or device (this request comes from a resource server, not
from the user). Everything else, including a session whose state cannot be read, is
exactly ``{"active": false}`` (SECURITY_CASES E46): the answer never says why.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from sidecar.enrich.client_ip import ClientInfo
from sidecar.errors import InvalidTokenError, SessionRejectedError, StoreUnavailableError
from sidecar.sessions.models import OAUTH2
from sidecar.tokens.parse import parse_compact
from sidecar.web import audit
from sidecar.web.keys import ADMIN_ACTOR, SERVICES

log = logging.getLogger(__name__)

INTROSPECT_PATH = "/oauth2/introspect"
REVOKE_PATH = "/oauth2/revoke"
PATHS = frozenset({INTROSPECT_PATH, REVOKE_PATH})
# A token is at most jwt.max_token_bytes (64 KiB at the most); the rest is the hint and
# the form's own bytes.
MAX_FORM = 72 * 1024
# RFC 7662 section 2.2 (the token is a credential) and RFC 6749 section 5.1.
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_INACTIVE = json.dumps({"active": False}).encode()
_NO_CLIENT = ClientInfo(ip=None, user_agent=None)
# Claims copied from the token when present (RFC 7662 section 2.2). "sub" and "sid" are the
# sidecar's own reading: the user id (whatever jwt.user_claim names) and the session's UUID.
_COPIED = ("exp", "iat", "nbf", "iss", "aud", "jti", "client_id", "scope")


def oauth_error(status: int, code: str, headers: dict[str, str] | None = None) -> web.Response:
    """An RFC 6749 section 5.2 error body."""
    return web.Response(
        status=status,
        body=json.dumps({"error": code}).encode(),
        content_type="application/json",
        headers={**_NO_STORE, **(headers or {})},
    )


class _BadRequestError(Exception):
    def __init__(self, status: int = 400) -> None:
        self.status = status


async def _form(request: web.Request) -> dict[str, str]:
    """The form parameters; a parameter given twice, another media type, a body over
    MAX_FORM or one that is not UTF-8 is a ``_BadRequestError`` (RFC 6749 section 3.1: parameters
    MUST NOT be included more than once)."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise _BadRequestError()
    if request.content_length is not None and request.content_length > MAX_FORM:
        raise _BadRequestError(413)
    raw = await request.content.read(MAX_FORM + 1)
    if len(raw) > MAX_FORM:
        raise _BadRequestError(413)
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, errors="strict", max_num_fields=16)
    except (UnicodeDecodeError, ValueError) as e:
        raise _BadRequestError() from e
    form = dict(pairs)
    if len(form) != len(pairs):
        raise _BadRequestError()
    return form


async def _token(request: web.Request) -> str | web.Response:
    try:
        form = await _form(request)
    except _BadRequestError as e:
        return oauth_error(e.status, "invalid_request")
    token = form.get("token")
    if token is None:
        return oauth_error(400, "invalid_request")
    return token


def _inactive() -> web.Response:
    return web.Response(body=_INACTIVE, content_type="application/json", headers=_NO_STORE)


async def introspect(request: web.Request) -> web.Response:
    """RFC 7662 section 2: ``{"active": true, ...}`` for an active session's valid access
    token, else exactly ``{"active": false}``. ``token_type_hint`` is accepted and ignored:
    only access tokens are ever active here (section 2.1 lets the server ignore it)."""
    token = await _token(request)
    if isinstance(token, web.Response):
        return token
    services = request.app[SERVICES]
    try:
        claims = await services.verifier.verify(token)
        session_id = await services.sessions.check(claims, lambda: _NO_CLIENT)
    except InvalidTokenError as e:
        log.info("oauth2: introspection inactive (%s)", e.reason)
        return _inactive()
    except StoreUnavailableError as e:
        # The check denies when the state is unknown; so does introspection (fail closed).
        log.error("oauth2: introspection inactive, session state unknown (%s)", e)
        return _inactive()
    payload = parse_compact(token).payload  # verified above, so this parse cannot fail
    answer: dict[str, Any] = {"active": True, "sub": claims.user_id, "sid": session_id}
    answer.update((k, payload[k]) for k in _COPIED if k in payload)
    answer["token_type"] = "access"  # noqa: S105  # RFC 7662 token_type, not a secret
    return web.json_response(answer, headers=_NO_STORE)


async def revoke(request: web.Request) -> web.Response:
    """RFC 7009 section 2: revoke the session of the token; ``200`` for any well-formed
    request, an invalid or unknown token included (section 2.2: the client cannot act on
    the difference). A valid token whose session was never seen gets a revoked session
    (a tombstone), so that it stays refused until it expires. ``503`` + ``Retry-After``
    when the store cannot commit (section 2.2.1)."""
    token = await _token(request)
    if isinstance(token, web.Response):
        return token
    services = request.app[SERVICES]
    try:
        claims = await services.verifier.verify(token)
    except InvalidTokenError as e:
        log.info("oauth2: revocation of an invalid token (%s): nothing to do", e.reason)
        return web.Response(status=200, headers=_NO_STORE)
    try:
        # find resolves a key bound to a session (capture routes) to that session.
        session = await services.sessions.find(claims.session_key)
        if session is None:
            try:
                session, _ = await services.sessions.register(claims, _NO_CLIENT)
            except SessionRejectedError as e:  # already revoked, or cut off: refused either way
                log.info("oauth2: revocation of a refused token (%s): nothing to do", e.reason)
                return web.Response(status=200, headers=_NO_STORE)
        if session.revoked_at is not None:
            return web.Response(status=200, headers=_NO_STORE)  # revoked before: nothing new to record
        actor = f"oauth2:{request[ADMIN_ACTOR]}"
        revoked = await services.sessions.revoke(session.id, None, reason=OAUTH2, actor=actor)
    except StoreUnavailableError as e:
        log.error("oauth2: revocation not committed, store unavailable: %s", e)
        return oauth_error(503, "temporarily_unavailable", {"Retry-After": "1"})
    if revoked is not None:
        services.metrics.revocations.labels("oauth2", "session").inc()
        log.info("oauth2: revoked session %s of user %s", revoked.id, revoked.user_id)
        audit.record(
            "session.revoked", api="oauth2", reason=OAUTH2, actor_key=request[ADMIN_ACTOR], user=revoked.user_id,
            session=revoked.id,
        )
    return web.Response(status=200, headers=_NO_STORE)


def add_routes(app: web.Application) -> None:
    app.router.add_post(INTROSPECT_PATH, introspect)
    app.router.add_post(REVOKE_PATH, revoke)
