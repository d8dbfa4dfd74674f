"""Strict parsing of a compact JWS before any key is touched.

PyJWT accepts some inputs we must refuse (duplicate JSON keys keep the last value;
SECURITY_CASES A13), so the sidecar reads the header and payload itself and hands only
the signature check to PyJWT's algorithm objects.
"""

from __future__ import annotations

import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from sidecar.errors import InvalidTokenError

_SEGMENT = re.compile(rb"[A-Za-z0-9_-]*={0,2}")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
# Real claim sets nest a few levels (resource_access.client.roles). A fixed bound makes
# the verdict independent of the interpreter's stack depth (SECURITY_CASES A11).
MAX_JSON_DEPTH = 32


@dataclass(frozen=True, slots=True)
class ParsedToken:
    header: dict[str, Any]  # shared between tokens with the same header: read, never change
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise InvalidTokenError("duplicate_json_key", k[:40])
            seen.add(k)
    return out


def _reject_constant(name: str) -> Any:
    # NaN, Infinity, -Infinity are not JSON (RFC 8259 section 6).
    raise InvalidTokenError("non_json_number", name)


def _finite_float(text: str) -> float:
    # 1e400 parses to inf in Python: not a number any JSON peer agrees on (RFC 8259 section 6).
    value = float(text)
    if not math.isfinite(value):
        raise InvalidTokenError("non_json_number", text[:40])
    return value


def _too_deep(value: Any) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > MAX_JSON_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _b64decode(segment: bytes, what: str) -> bytes:
    if not _SEGMENT.fullmatch(segment):
        raise InvalidTokenError("malformed", f"{what} is not base64url")
    stripped = segment.rstrip(b"=")
    if len(stripped) % 4 == 1:
        raise InvalidTokenError("malformed", f"{what} has an impossible length")
    # The alphabet was checked above, so binascii sees standard base64 and nothing else.
    standard = stripped.translate(_FROM_URLSAFE)
    try:
        data = binascii.a2b_base64(standard + b"=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError) as e:
        raise InvalidTokenError("malformed", f"{what} is not base64url") from e
    # Canonical encoding only: trailing bits must be zero (no two spellings of one value
    # beyond the optional padding).
    if binascii.b2a_base64(data, newline=False).rstrip(b"=") != standard:
        raise InvalidTokenError("malformed", f"{what} is not canonical base64url")
    return data


# One decoder for every token (json.loads with hooks builds a new one per call).
_DECODER = json.JSONDecoder(
    object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant, parse_float=_finite_float
)


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
        value = _DECODER.decode(text)
    except InvalidTokenError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InvalidTokenError("malformed", f"{what} is not JSON") from e
    if not isinstance(value, dict):
        raise InvalidTokenError("malformed", f"{what} is not a JSON object")
    # Nesting deeper than MAX_JSON_DEPTH needs more opening brackets than that: most
    # documents are cleared by counting, without walking them.
    if text.count("{") + text.count("[") > MAX_JSON_DEPTH and _too_deep(value):
        raise InvalidTokenError("malformed", f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
    return value


# Decoded headers by their base64url text (a verifier keeps one such map). An issuer writes
# the same few headers (alg, typ, kid) on every token, so a new token's header is usually
# known: the same bytes always decode to the same object, which callers only read.
HeaderCache = dict[bytes, dict[str, Any]]
HEADER_CACHE_MAX = 256


def _header(segment: bytes, cache: HeaderCache | None) -> dict[str, Any]:
    header = cache.get(segment) if cache is not None else None
    if header is None:
        header = _json_object(_b64decode(segment, "header"), "header")
        if cache is not None:
            if len(cache) >= HEADER_CACHE_MAX:
                cache.clear()  # bounded; emptied when full (issuers have a handful of headers)
            cache[segment] = header
    return header


def parse_compact(token: str, header_cache: HeaderCache | None = None) -> ParsedToken:
    """Split ``header.payload.signature``, decode each part strictly, return them.

    ``header_cache`` (the caller's, e.g. a verifier's) remembers decoded headers; only
    headers that decoded are stored, so a refused one is decoded, and refused, again.
    """
    try:
        raw = token.encode("ascii")
    except UnicodeEncodeError as e:
        raise InvalidTokenError("malformed", "token is not ASCII") from e
    parts = raw.split(b".")
    if len(parts) != 3:
        # Five parts is a JWE (RFC 7516); we verify signed tokens only.
        raise InvalidTokenError("malformed", f"{len(parts)} segments")
    header_b64, payload_b64, signature_b64 = parts
    header = _header(header_b64, header_cache)
    payload = _json_object(_b64decode(payload_b64, "payload"), "payload")
    signature = _b64decode(signature_b64, "signature")
    return ParsedToken(header, payload, header_b64 + b"." + payload_b64, signature)
