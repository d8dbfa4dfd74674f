"""Verify a JWT and return its ``Claims``: the one entry point of ``sidecar.tokens``."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sidecar.clock import Clock
from sidecar.errors import InvalidTokenError
from sidecar.lru import LRU
from sidecar.tokens.bearer import extract_bearer
from sidecar.tokens.claims import Claims, read_claims
from sidecar.tokens.jwks import JwksKeys
from sidecar.tokens.keys import VerificationKey, static_keys
from sidecar.tokens.parse import HeaderCache, parse_compact

if TYPE_CHECKING:  # the settings type only: sidecar.config itself imports token policy
    from sidecar.config import JwtSettings

log = logging.getLogger(__name__)

MAX_KID_LENGTH = 256


class TokenVerifier:
    """Checks signature, header and claims; caches the verified claims of each token.

    The cache only spares the signature check. It is keyed by a SHA-256 of the token and
    holds no access decision: session state is looked up on every request, and the time
    rules are re-checked on every hit, so a cached entry never outlives its token.
    """

    def __init__(self, settings: JwtSettings, clock: Clock, jwks: JwksKeys | None = None) -> None:
        self.settings = settings
        self._clock = clock
        self._jwks = jwks
        self._jwks_generation = jwks.generation if jwks else 0
        self._static: dict[str, list[VerificationKey]] = {}
        for key in static_keys(settings.algorithms, settings.secret, settings.public_keys):
            self._static.setdefault(key.algorithm, []).append(key)
        self._cache: LRU[bytes, Claims] = LRU(settings.verified_cache_size)
        self._leeway = settings.leeway_seconds
        self._headers: HeaderCache = {}  # decoded JWS headers by their text (parse_compact)
        # Plain counters, read by the metrics collector at scrape time.
        self.cache_hits = 0
        self.cache_misses = 0
        self._told_unkeyed = False

    @property
    def cached_tokens(self) -> int:
        return len(self._cache)

    def _check_time(self, claims: Claims) -> Claims:
        reason = claims.time_error(self._clock.wall(), self._leeway)
        if reason is not None:
            raise InvalidTokenError(reason)
        return claims

    def _hit(self, digest: bytes) -> Claims | None:
        if self._jwks is not None:
            # Cache hits must not keep a stale JWKS (and a withdrawn key) alive forever.
            self._jwks.refresh_if_stale()
            if self._jwks.generation != self._jwks_generation:
                # A key was withdrawn from the JWKS: what it verified must be verified again.
                self._cache.clear()
                self._jwks_generation = self._jwks.generation
        claims = self._cache.get(digest)
        if claims is None:
            return None
        self.cache_hits += 1
        self._cache.move_to_end(digest)
        return self._check_time(claims)

    def cached(self, token: str) -> Claims | None:
        """The claims of ``token`` when it was verified before (the time rules checked
        again: raises ``InvalidTokenError`` once it has expired), else None: call ``verify``.

        ``verify_bearer`` calls this first with the text after ``Bearer `` so that a known
        token costs one hash and one dict lookup; whatever it does not know goes the full
        way (and is hashed again by ``verify``).
        """
        if not token.isascii():
            return None
        return self._hit(hashlib.sha256(token.encode("ascii")).digest())

    async def verify_bearer(self, authorization: Sequence[str]) -> Claims:
        """The verified claims of the bearer token in ``authorization`` (every Authorization
        header received), or ``InvalidTokenError``.

        A header that is exactly ``Bearer <token>`` with a token verified before costs one
        hash and one lookup; anything else (a new token, two headers, odd spacing) is read in
        full by ``extract_bearer``, which gives the same token wherever the shortcut applies.
        """
        claims = self.cached_bearer(authorization)
        if claims is not None:
            return claims
        return await self.verify(extract_bearer(authorization, self.settings.max_token_bytes))

    def cached_bearer_bytes(self, authorization: bytes) -> Claims | None:
        """``cached_bearer`` of one Authorization header as received, undecoded (the check
        listener's shortcut: no str round trip). A token that is not ASCII never matches a
        cached digest (those are of ASCII tokens), so it goes the full way like any miss."""
        if authorization.startswith(b"Bearer ") and b"=." not in authorization:
            return self._hit(hashlib.sha256(authorization[7:]).digest())
        return None

    def cached_bearer(self, authorization: Sequence[str]) -> Claims | None:
        """``verify_bearer``'s shortcut, without waiting: the claims when ``authorization``
        is exactly ``Bearer <token>`` of a token verified before, else None (raises
        ``InvalidTokenError`` when that token has expired since)."""
        # "=." is padding inside the token: the verifier accepts it (the admin API and capture
        # verify tokens directly), extract_bearer does not (RFC 6750: "=" only at the end).
        if len(authorization) == 1 and authorization[0].startswith("Bearer ") and "=." not in authorization[0]:
            return self.cached(authorization[0][7:])
        return None

    async def verify(self, token: str) -> Claims:
        """Return the claims of a valid token or raise ``InvalidTokenError`` (never anything else)."""
        if len(token) > self.settings.max_token_bytes:
            raise InvalidTokenError("oversized_token", f"{len(token)} bytes")
        if not token.isascii():
            raise InvalidTokenError("malformed", "token is not ASCII")
        digest = hashlib.sha256(token.encode("ascii")).digest()
        claims = self._hit(digest)
        if claims is not None:
            return claims
        self.cache_misses += 1

        parsed = parse_compact(token, self._headers)
        header = parsed.header
        alg = header.get("alg")
        # RFC 8725 3.1: the algorithm must be one we pinned, spelled exactly; "none" never is.
        if not isinstance(alg, str) or alg not in self.settings.algorithms:
            raise InvalidTokenError("alg_not_allowed", repr(alg)[:40])
        # RFC 7515 4.1.11: a critical extension we do not understand makes the token invalid;
        # we understand none.
        if "crit" in header:
            raise InvalidTokenError("unsupported_crit")
        if "b64" in header:
            raise InvalidTokenError("unsupported_b64")  # RFC 7797 unencoded payloads are not JWTs
        kid = header.get("kid")
        # RFC 7515 4.1.4: kid is a string; a present but null kid is refused, not ignored.
        if "kid" in header and (not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_LENGTH):
            raise InvalidTokenError("bad_kid")
        # jku, x5u, jwk and x5c are deliberately never read: keys come from configuration.

        keys = list(self._static.get(alg, ()))
        if self._jwks is not None:
            keys.extend(await self._jwks.keys_for(alg, kid))
        if not keys:
            raise InvalidTokenError("no_key", f"alg={alg}")
        if not any(k.verify(parsed.signing_input, parsed.signature) for k in keys):
            raise InvalidTokenError("bad_signature")

        claims = self._check_time(read_claims(parsed.payload, self.settings))
        if not self._told_unkeyed and claims.session_key.startswith("sha256:"):
            # Once per process: what keying by the claims hash means for revocation.
            self._told_unkeyed = True
            log.warning(
                "tokens: a token without %r or 'jti' was seen: each such token is its own session, so "
                "revoking one does not reach the tokens its refresh mints (carry a session id from "
                "login into every refreshed token; README: Integrating your auth service)",
                self.settings.session_claim,
            )
        return self._cache.put(digest, claims)
