"""Registered-claim rules (RFC 7519 section 4.1) and the identity a token carries."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sidecar.errors import InvalidTokenError

if TYPE_CHECKING:  # the settings type only: sidecar.config itself imports token policy
    from sidecar.config import JwtSettings

# Identifiers end up in HTTP headers, SQL rows and Redis messages. OpenID Connect Core
# section 2 limits "sub" to 255 ASCII characters; we hold every identifier to visible
# ASCII so none of those layers can be surprised (SECURITY_CASES A12).
_IDENTIFIER = re.compile(r"[\x21-\x7e]{1,255}")
_MAX_INT_ID = 2**63
# The largest NumericDate we accept, for exp, nbf and iat alike, int or float:
# 9999-12-31T23:59:59Z. The sessions API writes these times in RFC 3339, whose years have
# four digits, and time.gmtime overflows not far beyond; I-JSON's 2**53 (RFC 7493 2.2) would
# still let a year-285,000,000 exp in (and 1e308 past it as a float). A bound on the value,
# not on its JSON type, so 1e308 and 10**20 are refused by the same rule.
MAX_NUMERIC_DATE = 253_402_300_799
# Forwarded claim values: visible ASCII and inner spaces, at most 1 KiB.
_HEADER_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,1022}[\x21-\x7e])?")


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says, reduced to what the sidecar decides with."""

    user_id: str
    session_key: str  # "sid:<v>", "jti:<v>" or "sha256:<hex of the canonical claims>"
    expires_at: float
    issued_at: float | None
    not_before: float | None
    extra_headers: tuple[tuple[str, str], ...] = ()
    # exp - jwt.token_lifetime_seconds, for a token without iat when that key is set.
    issued_by_lifetime: float | None = None

    @property
    def issue_time(self) -> float | None:
        """When the token was issued, as far as can be told: ``iat``, else ``exp`` minus
        the issuer's fixed lifetime (``jwt.token_lifetime_seconds``), else None (unknown:
        a per-user cut-off then cannot tell whether the token is older)."""
        return self.issued_at if self.issued_at is not None else self.issued_by_lifetime

    def time_error(self, now: float, leeway: float) -> str | None:
        """The reason this token is not valid at ``now``, or None when it is."""
        # RFC 7519 4.1.4: the current time MUST be before exp (plus a small leeway).
        if now >= self.expires_at + leeway:
            return "expired"
        # RFC 7519 4.1.5: not accepted before nbf (minus the leeway).
        if self.not_before is not None and now + leeway < self.not_before:
            return "not_yet_valid"
        # RFC 7519 4.1.6 does not forbid a future iat; we do, since an iat in the future
        # would let a token slip past a per-user cut-off.
        if self.issued_at is not None and self.issued_at > now + leeway:
            return "issued_in_future"
        return None


def _number(payload: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    if name not in payload:
        if required:
            raise InvalidTokenError(f"missing_{name}")
        return None
    v = payload[name]
    # NumericDate is a JSON number (RFC 7519 section 2); bool is not one, nor is 1e400.
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise InvalidTokenError(f"bad_{name}", type(v).__name__)
    # Compare before converting: a huge int must not become a float (or raise) first.
    if isinstance(v, float) and not math.isfinite(v):
        raise InvalidTokenError(f"bad_{name}", "not finite")
    if not -MAX_NUMERIC_DATE <= v <= MAX_NUMERIC_DATE:
        raise InvalidTokenError(f"bad_{name}", "beyond year 9999")
    return float(v)


def _identifier(value: Any, what: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < _MAX_INT_ID:
        return str(value)
    if isinstance(value, str) and _IDENTIFIER.fullmatch(value):
        return value
    raise InvalidTokenError(f"bad_{what}", "must be visible ASCII, 1-255 characters")


def _audiences(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(a, str) for a in value):
        return value
    raise InvalidTokenError("bad_aud")


def canonical_hash(payload: Mapping[str, Any]) -> str:
    """SHA-256 of the claims in canonical JSON (sorted keys, no spaces, ASCII)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def read_claims(payload: Mapping[str, Any], settings: JwtSettings) -> Claims:
    """Check the time-independent rules and extract the identity, or raise InvalidTokenError.

    Time rules (exp/nbf/iat against the clock) are checked by ``Claims.time_error`` on
    every use, so a cached ``Claims`` is re-checked each time it is served.
    """
    expires_at = _number(payload, "exp", required=True)  # RFC 8725 3.10: always require exp
    if expires_at is None:  # unreachable (required=True raises), but not an assert: -O drops those
        raise InvalidTokenError("missing_exp")
    not_before = _number(payload, "nbf", required=False)
    issued_at = _number(payload, "iat", required=False)

    if settings.issuer is not None:
        # RFC 7519 4.1.1: exact, case-sensitive string comparison; no partial match.
        iss = payload.get("iss")
        if not isinstance(iss, str) or iss != settings.issuer:
            raise InvalidTokenError("wrong_issuer")
    if "aud" in payload or settings.audience:
        # RFC 7519 4.1.3: a token naming audiences must name us, and when we expect an
        # audience, a token without one is refused.
        if "aud" not in payload:
            raise InvalidTokenError("missing_aud")
        token_aud = _audiences(payload["aud"])
        if not settings.audience:
            raise InvalidTokenError("unexpected_aud", "set jwt.audience to accept tokens that carry aud")
        if not any(a in settings.audience for a in token_aud):
            raise InvalidTokenError("wrong_audience")
    # Only access tokens open the gate; a refresh token never does (RFC 8725 3.11).
    if settings.token_type_claim is not None and payload.get(settings.token_type_claim) != settings.access_token_type:
        raise InvalidTokenError("wrong_token_type")

    if settings.user_claim not in payload:
        raise InvalidTokenError("missing_user")
    user_id = _identifier(payload[settings.user_claim], "user")

    if settings.session_claim in payload:
        session_key = "sid:" + _identifier(payload[settings.session_claim], "session_claim")
    elif "jti" in payload:
        session_key = "jti:" + _identifier(payload["jti"], "jti")
    else:
        session_key = "sha256:" + canonical_hash(payload)

    extra: list[tuple[str, str]] = []
    for claim, header in settings.claim_headers.items():
        if claim in payload:
            value = payload[claim]
            # A value that could not travel safely in a header is left out, not fatal:
            # the identity itself is sound.
            if isinstance(value, int) and not isinstance(value, bool):
                extra.append((header, str(value)))
            elif isinstance(value, str) and _HEADER_VALUE.fullmatch(value):
                extra.append((header, value))
    issued_by_lifetime = None
    if issued_at is None and settings.token_lifetime_seconds is not None:
        issued_by_lifetime = expires_at - settings.token_lifetime_seconds
    return Claims(user_id, session_key, expires_at, issued_at, not_before, tuple(extra), issued_by_lifetime)
