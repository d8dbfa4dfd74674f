"""Reading the bearer token out of ``Authorization`` headers (RFC 6750 section 2.1)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from sidecar.errors import InvalidTokenError

# RFC 6750: credentials = "Bearer" 1*SP b64token. The scheme is case-insensitive
# (RFC 9110 section 11.1); we also accept several spaces, and nothing else.
# The challenge of every 401 for a missing or refused token (RFC 6750 section 3).
BEARER_CHALLENGE = 'Bearer error="invalid_token"'

_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)")


def extract_bearer(values: Sequence[str], max_bytes: int) -> str:
    """The one bearer token in ``values`` (every Authorization header received).

    No header, two headers, another scheme, or an oversized value are all refused, so
    that every odd spelling has exactly one defined result (SECURITY_CASES A14, B21).
    """
    if not values:
        raise InvalidTokenError("missing_token")
    if len(values) > 1:
        raise InvalidTokenError("duplicate_authorization")
    value = values[0].strip(" \t")
    if len(value) > max_bytes + 16:
        raise InvalidTokenError("oversized_token", f"{len(value)} bytes")
    m = _BEARER.fullmatch(value)
    if m is None:
        raise InvalidTokenError("not_bearer")
    return m.group(1)
