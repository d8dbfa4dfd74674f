"""Capture routes over HTTP: forward to the auth service, hand the answer back unchanged.

Forwarding carries passwords, so it is done the way a careful proxy does it: hop-by-hop
headers are dropped both ways (RFC 9110 section 7.6.1), every other header (``Set-Cookie``
included, each one) passes, the client's address goes on as the gateway gave it
(``X-Forwarded-For``/``X-Real-IP`` untouched), bodies are bounded (413), the auth service
gets a timeout (504) and a connection failure is a 502, both with the API envelope. An
error answer of the auth service is passed back untouched and binds nothing. No body, no
token and no cookie is ever logged. What is learned on the way is decided in
``sidecar.capture.learn``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from sidecar.capture.learn import Capture
from sidecar.capture.places import AmbiguousTokenError, CaptureRoute, token_in_answer, token_in_request
from sidecar.enrich.client_ip import ClientInfo
from sidecar.errors import StoreUnavailableError
from sidecar.sessions.models import LOGOUT, Session
from sidecar.web import audit
from sidecar.web.envelope import error
from sidecar.web.keys import SERVICES
from sidecar.web.requests import client_of, presented_token
from sidecar.web.services import Services

log = logging.getLogger(__name__)

# RFC 9110 section 7.6.1 (and the fields it names as hop-by-hop in practice).
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
MAX_ANSWER_BYTES = 4 * 1024 * 1024

CAPTURE_HTTP = web.AppKey("capture_http", aiohttp.ClientSession)


def _forwardable(headers: Any) -> CIMultiDict[str]:
    """``headers`` without hop-by-hop fields (also those ``Connection`` names) and framing."""
    named = {
        token.strip().lower()
        for value in headers.getall("Connection", ())
        for token in value.split(",")
    }
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        low = name.lower()
        if low in _HOP_BY_HOP or low in named or low == "content-length":
            continue
        out.add(name, value)
    return out


def _by_name(headers: Any) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in headers.items():
        found.setdefault(name.lower(), []).append(value)
    return found


async def http_session(app: web.Application) -> AsyncIterator[None]:
    """The client the capture routes forward with (cleanup_ctx): no cookie jar, no
    decompression (answers pass back byte for byte), one connection pool."""
    async with aiohttp.ClientSession(
        auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("User-Agent",)
    ) as session:
        app[CAPTURE_HTTP] = session
        yield


def handler(route: CaptureRoute, learn: Capture) -> Callable[[web.Request], Coroutine[Any, Any, web.StreamResponse]]:
    """The aiohttp handler of one ``[[capture]]`` entry."""

    async def capture(request: web.Request) -> web.StreamResponse:
        services = request.app[SERVICES]
        if request.content_length is not None and request.content_length > route.max_body_bytes:
            return error(413, "Request body too large")
        body = await request.content.read(route.max_body_bytes + 1)
        if len(body) > route.max_body_bytes:
            return error(413, "Request body too large")
        request_headers = _by_name(request.headers)
        client = client_of(request, services.settings)

        presented_refresh: str | None = None
        try:
            if route.refresh_token is not None and route.event in ("refresh", "logout"):
                presented_refresh = token_in_request(route.refresh_token, request_headers, body)
        except AmbiguousTokenError:
            log.info("capture: %s %s refused: two different refresh tokens presented", request.method, route.path)
            return error(400, "Two different refresh tokens presented")

        session = None
        if route.event == "refresh" and presented_refresh is not None:
            try:
                session = await learn.session_of_refresh(presented_refresh)
                why = await learn.refused(session) if session is not None else None
            except StoreUnavailableError as e:
                log.error("capture: refresh refused, session state unknown: %s", e)
                return error(503, "Session store unavailable, try again", {"Retry-After": "1"})
            if session is not None and why is not None:
                log.info("capture: refresh refused (%s): session %s of user %s", why, session.id, session.user_id)
                return error(401, "Session revoked", {"WWW-Authenticate": 'Bearer error="invalid_token"'})

        headers = _forwardable(request.headers)
        # Answers come back readable (the sidecar looks for the token in them) and unchanged.
        headers.popall("Accept-Encoding", None)
        try:
            async with request.app[CAPTURE_HTTP].request(
                request.method,
                route.upstream + request.raw_path,
                headers=headers,
                data=body if body else None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=route.timeout_seconds),
            ) as answer:
                answer_body = await answer.content.read(MAX_ANSWER_BYTES + 1)
                status, answer_headers = answer.status, answer.headers
        except TimeoutError:
            log.error("capture: %s %s: the auth service did not answer within %gs", request.method, route.path,
                      route.timeout_seconds)
            return error(504, "Auth service timed out")
        except (aiohttp.ClientError, OSError) as e:
            log.error("capture: %s %s: the auth service is unreachable (%s)", request.method, route.path,
                      type(e).__name__)
            return error(502, "Auth service unavailable")
        if len(answer_body) > MAX_ANSWER_BYTES:
            log.error("capture: %s %s: the auth service's answer is larger than %d bytes", request.method,
                      route.path, MAX_ANSWER_BYTES)
            return error(502, "Auth service answer too large")

        response = web.Response(status=status, body=answer_body, headers=_forwardable(answer_headers))
        if not 200 <= status < 300:
            return response  # the auth service said no: pass it back, learn nothing
        try:
            await _learn(
                learn, route, request, answer_headers=answer_headers, answer_body=answer_body,
                presented_refresh=presented_refresh, session=session, client=client,
            )
        except StoreUnavailableError as e:
            # The auth service already answered yes: the client gets its answer; the token
            # will be judged (and, in auto mode, registered) when it is first used.
            log.error("capture: %s %s answered, but nothing could be recorded: %s", request.method, route.path, e)
        return response

    return capture


async def _learn(
    learn: Capture,
    route: CaptureRoute,
    request: web.Request,
    *,
    answer_headers: Any,
    answer_body: bytes,
    presented_refresh: str | None,
    session: Session | None,
    client: ClientInfo,
) -> None:
    readable = answer_headers.get("Content-Encoding", "identity").lower() == "identity"
    by_name = _by_name(answer_headers)
    body = answer_body if readable else None
    try:
        access = token_in_answer(route.access_token, by_name, body) if route.access_token else None
        refresh = token_in_answer(route.refresh_token, by_name, body) if route.refresh_token else None
    except AmbiguousTokenError:
        log.warning("capture: %s answer carries two different tokens in one place: nothing bound", route.path)
        return
    services = request.app[SERVICES]
    if route.event == "login":
        if access is None:
            log.warning("capture: login answer without a token at %s: nothing bound", route.access_token)
            return
        await learn.login(access, refresh, client)
    elif route.event == "refresh":
        if access is None:
            log.warning("capture: refresh answer without a token at %s: nothing bound", route.access_token)
            return
        await learn.refreshed(session, access, refresh or presented_refresh, client)
    else:
        bearer = presented_token(request, services.settings)
        ended = await learn.session_to_end(bearer, presented_refresh)
        if ended is None or ended.revoked_at is not None:
            return  # unknown or already revoked: forwarded, nothing more to revoke
        revoked = await services.sessions.revoke(ended.id, None, reason=LOGOUT, actor="capture")
        if revoked is not None:
            services.metrics.revocations.labels("capture", "logout").inc()
            log.info("capture: logout revoked session %s of user %s", revoked.id, revoked.user_id)
            audit.record("session.revoked", api="capture", reason=LOGOUT, user=revoked.user_id,
                         session=revoked.id)


def add_routes(app: web.Application, routes: tuple[CaptureRoute, ...], services: Services) -> None:
    if not routes:
        return
    app.cleanup_ctx.append(http_session)
    # One for the app: what it says once (identical logins), it says once per process.
    learn = Capture(services.verifier, services.sessions, services.settings.jwt.session_claim)
    for route in routes:
        app.router.add_route("*", route.path, handler(route, learn))
