"""The gateway check, free of any framework: request facts in, one of three answers out.

``CheckCore`` is the one copy of the rules (route policy -> credentials -> token ->
session -> answer) that every way in calls: ``/introspect`` on the aiohttp listener
(``sidecar.web.introspect``) and the check listener (``sidecar.wire``). A request either
is decided at once (``decide_now``: a known token of a known session, a public route,
a malformed request; no waiting, no task) or needs the store or the keys (``decide``).

Nothing but 200 and 401 (and 503 on overload) ever leaves it (SECURITY_CASES B17, B18):
nginx turns any other status into a 500 and an operator could configure Envoy to let
errors through. Every failure, expected or not, is a deny; the reason is logged, never sent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from time import perf_counter
from typing import Final

from sidecar.config import Settings
from sidecar.enrich.client_ip import ClientInfo
from sidecar.errors import InvalidTokenError, StoreUnavailableError
from sidecar.facts import RequestFacts
from sidecar.logs import REQUEST_ID
from sidecar.lru import LRU
from sidecar.metrics import CheckStats
from sidecar.routes import Policy, RouteTable
from sidecar.sessions.service import SessionService
from sidecar.tokens.bearer import BEARER_CHALLENGE
from sidecar.tokens.claims import Claims
from sidecar.tokens.credentials import cookie_token, has_credentials
from sidecar.tokens.verifier import TokenVerifier

log = logging.getLogger("sidecar.web.introspect")  # the logger name operators filter on

CHECK_PREFIX: Final = "/introspect"
_CHECK_TAIL: Final = CHECK_PREFIX + "/"
_NONE: list[str] = []
_MAX_ALLOWS: Final = 100_000


class Answer:
    """One answer: status, headers, body. The fixed ones (deny, overload, anonymous) are
    built once; each way in may keep its own encoding of them in ``wire``."""

    __slots__ = ("body", "claims", "headers", "status", "wire", "wire_now")

    def __init__(self, status: int, headers: tuple[tuple[str, str], ...], body: bytes = b"") -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.claims: Claims | None = None  # an allow: the claims it was made for
        # The check listener's encodings, by (close, HEAD): the bytes before and after Date.
        self.wire: dict[tuple[bool, bool], tuple[bytes, bytes]] = {}
        # Its commonest encoding whole, with the Date line it was made with.
        self.wire_now: tuple[bytes, bytes] | None = None


def _error_body(status: int, message: str) -> bytes:
    return json.dumps({"status": "error", "status_code": status, "message": message, "data": {}}).encode()


_JSON: Final = ("Content-Type", "application/json; charset=utf-8")
_NO_STORE: Final = ("Cache-Control", "no-store")
DENY: Final = Answer(401, (_JSON, ("WWW-Authenticate", BEARER_CHALLENGE), _NO_STORE), _error_body(401, "Unauthorized"))
OVERLOADED: Final = Answer(503, (_JSON, ("Retry-After", "1"), _NO_STORE), _error_body(503, "Overloaded, try again"))
# An anonymous allow says so: a client of the check (sidecar.client's middleware) can tell
# it from a 200 of something that is not the sidecar, which must never count as an allow.
PUBLIC: Final = Answer(200, (("X-Auth-Anonymous", "public"), _NO_STORE))
ANONYMOUS: Final = Answer(200, (("X-Auth-Anonymous", "optional"), _NO_STORE))


def allow(claims: Claims, session_id: str) -> Answer:
    headers: tuple[tuple[str, str], ...] = (
        ("X-Auth-User", claims.user_id),
        ("X-Auth-Session", session_id),
        _NO_STORE,
    )
    if claims.extra_headers:
        headers = headers + claims.extra_headers
    return Answer(200, headers)


def original_request(facts: RequestFacts) -> tuple[list[str], list[str]]:
    """(methods, paths): every description the gateway gave of the request being checked.

    nginx sends ``X-Original-Method``/``X-Original-URI`` (its subrequest is a GET to
    ``/introspect``); Caddy and Traefik ``X-Forwarded-Method``/``X-Forwarded-Uri``; Envoy
    sends the client's method, and its path under ``/introspect``. All that are present
    count (``RouteTable.policy`` takes the strictest), so a header a client adds can only
    make the answer stricter; the check request's own method counts only when no header
    names one (nginx's subrequest is always a GET).
    """
    getall = facts.headers.getall
    methods: list[str] = getall("x-original-method", _NONE)
    forwarded = getall("x-forwarded-method", _NONE)
    if forwarded:
        methods = [*methods, *forwarded]
    if not methods:
        methods = [facts.method]
    paths: list[str] = getall("x-original-uri", _NONE)
    forwarded = getall("x-forwarded-uri", _NONE)
    if forwarded:
        paths = [*paths, *forwarded]
    if facts.target.startswith(_CHECK_TAIL):
        paths = [*paths, facts.target[len(CHECK_PREFIX) :]]
    return methods, paths


def is_check_target(target: str) -> bool:
    """Whether a request target (as sent, query included) is ``/introspect`` or under it."""
    return target.startswith(CHECK_PREFIX) and (
        len(target) == len(CHECK_PREFIX) or target[len(CHECK_PREFIX)] in "/?"
    )


class InFlight:
    """Counts checks in flight; ``try_enter`` refuses past ``limit`` (0 = unbounded)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def try_enter(self) -> bool:
        if self.limit and self.count >= self.limit:
            return False
        self.count += 1
        return True

    def leave(self) -> None:
        self.count -= 1


class CheckCore:
    """The check, bound once to what it needs.

    ``max_concurrent_checks`` bounds the checks that wait (``decide``): one decided at
    once holds nothing, so it is never refused as overload.
    """

    def __init__(
        self,
        settings: Settings,
        verifier: TokenVerifier,
        sessions: SessionService,
        stats: CheckStats,
        *,
        in_flight: InFlight | None = None,
        routes: RouteTable | None = None,
    ) -> None:
        self.settings = settings
        self.verifier = verifier
        self.sessions = sessions
        self.stats = stats
        self.in_flight = in_flight or InFlight(settings.server.max_concurrent_checks)
        self.routes = routes if routes else None  # an empty table: every request is "required"
        self._cookie = settings.jwt.cookie_name
        self._max_token = settings.jwt.max_token_bytes
        self._trusted = settings.server.trusted_proxies
        # The allow of each session's latest token, kept while that token keeps coming (its
        # encodings with it): a known token's answer is made once, not on every request.
        self._allows: LRU[str, Answer] = LRU(min(settings.jwt.verified_cache_size, _MAX_ALLOWS))

    # ------------------------------------------------------------------ decided at once

    def decide_now(self, facts: RequestFacts) -> Answer | None:
        """The answer when it can be given without waiting, else None: call ``decide``."""
        started = perf_counter()
        try:
            if self.routes is not None:
                policy = self._policy(facts)
                if policy != "required":
                    anonymous = self._anonymous(policy, facts)
                    if anonymous is not None:
                        self.stats.observe(perf_counter() - started)
                        return anonymous
            raw = facts.authorization
            if raw is not None and self._cookie is None:
                claims = self.verifier.cached_bearer_bytes(raw)  # the gateway's every request
            else:
                claims = self._cached_claims(facts)
            if claims is None:
                return None
            session_id = self.sessions.check_now(claims)
            if session_id is None:
                return None
            self.stats.allowed += 1
            answer = self._allows.get(session_id)
            if answer is None or answer.claims is not claims:
                answer = allow(claims, session_id)
                answer.claims = claims
                self._allows.put(session_id, answer)
        except InvalidTokenError as e:
            answer = self._deny(e.reason, facts)
        except Exception:
            answer = self._failed(facts)
        self.stats.observe(perf_counter() - started)
        return answer

    def _cached_claims(self, facts: RequestFacts) -> Claims | None:
        """The claims of the request's token when it was verified before (cookie first,
        when one is configured and sent), else None."""
        headers = facts.headers
        if self._cookie is not None:
            token = cookie_token(headers, self._cookie, self._max_token)
            if token is not None:
                return self.verifier.cached(token)
        return self.verifier.cached_bearer(headers.getall("authorization", _NONE))

    # ------------------------------------------------------------------ with waiting

    async def decide(self, facts: RequestFacts) -> Answer:
        """The answer, reading the store or fetching keys as needed (never raises)."""
        in_flight = self.in_flight
        if not in_flight.try_enter():
            # Too much at once: a fast, clear refusal (the gateway treats it as an error, never
            # an allow) rather than an ever-growing queue (SECURITY_CASES D38).
            self.stats.overloaded += 1
            return OVERLOADED
        started = perf_counter()
        try:
            policy = "required" if self.routes is None else self._policy(facts)
            if policy != "required":
                anonymous = self._anonymous(policy, facts)
                if anonymous is not None:
                    return anonymous
            claims = await self._claims(facts)
            session_id = await self.sessions.check(claims, self._client_of(facts))
        except InvalidTokenError as e:
            return self._deny(e.reason, facts)
        except StoreUnavailableError as e:
            self._log(facts, logging.ERROR, "check: deny, session state unknown (%s): %s", e, facts.describe())
            self.stats.deny("store_unavailable")
            return DENY
        except Exception:
            return self._failed(facts)
        finally:
            in_flight.leave()
            self.stats.observe(perf_counter() - started)
        self.stats.allowed += 1
        return allow(claims, session_id)

    async def answer(self, facts: RequestFacts) -> Answer:
        """``decide_now``, else ``decide``."""
        answer = self.decide_now(facts)
        return answer if answer is not None else await self.decide(facts)

    async def _claims(self, facts: RequestFacts) -> Claims:
        headers = facts.headers
        if self._cookie is not None:
            token = cookie_token(headers, self._cookie, self._max_token)
            if token is not None:
                return await self.verifier.verify(token)
        return await self.verifier.verify_bearer(headers.getall("authorization", _NONE))

    def _client_of(self, facts: RequestFacts) -> Callable[[], ClientInfo]:
        trusted = self._trusted
        return lambda: facts.client_info(trusted)

    # ------------------------------------------------------------------ pieces

    def _policy(self, facts: RequestFacts) -> Policy:
        routes = self.routes
        if routes is None:
            return "required"
        try:
            methods, paths = original_request(facts)
            return routes.policy(methods, paths)
        except Exception:
            # Fail closed: a description of the request that cannot be read is no public route.
            log.exception("check: route policy failed, the normal check applies: %s", facts.describe())
            return "required"

    def _anonymous(self, policy: Policy, facts: RequestFacts) -> Answer | None:
        """The anonymous allow of a public route, or of an optional one without credentials."""
        if policy == "public":
            self.stats.public += 1
            return PUBLIC
        if not has_credentials(facts.headers, self._cookie):
            self.stats.anonymous += 1
            return ANONYMOUS
        return None

    def _deny(self, reason: str, facts: RequestFacts) -> Answer:
        self.stats.deny(reason)
        if log.isEnabledFor(logging.INFO):
            self._log(facts, logging.INFO, "check: deny %s: %s", reason, facts.describe())
        return DENY

    def _failed(self, facts: RequestFacts) -> Answer:
        # Fail closed: an error is never an allow and never a 5xx the gateway could misread.
        self._log(facts, logging.ERROR, "check: deny after an unexpected error: %s", facts.describe(), exc_info=True)
        self.stats.deny("internal_error")
        return DENY

    @staticmethod
    def _log(facts: RequestFacts, level: int, message: str, *args: object, exc_info: bool = False) -> None:
        """Log with the request's X-Request-Id in the record (set for this call only: a
        decision made at once runs in the listener's context, not in a task of its own)."""
        request_id = facts.headers.get("x-request-id")
        token = REQUEST_ID.set(request_id) if request_id is not None else None
        try:
            log.log(level, message, *args, exc_info=exc_info)
        finally:
            if token is not None:
                REQUEST_ID.reset(token)
