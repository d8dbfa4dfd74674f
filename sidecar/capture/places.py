"""Where tokens travel in requests and answers, and the ``[[capture]]`` entries.

Framework-free and free of the session rules, so that the configuration can load it.
"""


from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from sidecar.cookies import request_cookie_values, set_cookie_values

Event = Literal["login", "refresh", "logout"]
EVENTS: Final[tuple[Event, ...]] = ("login", "refresh", "logout")
PlaceKind = Literal["body", "header", "cookie"]
_PLACE = re.compile(r"(body|header|cookie):([!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128})")
MAX_TOKEN_CHARS: Final = 16 * 1024


@dataclass(frozen=True, slots=True)
class TokenPlace:
    """Where a token travels: a top-level JSON key of the body, a header, or a cookie."""

    kind: PlaceKind
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


def parse_place(text: str) -> TokenPlace | None:
    m = _PLACE.fullmatch(text)
    if m is None:
        return None
    kind: PlaceKind = m.group(1)  # type: ignore[assignment]  # the regex admits only these
    return TokenPlace(kind, m.group(2))


@dataclass(frozen=True, slots=True)
class CaptureRoute:
    """One ``[[capture]]`` entry."""

    path: str
    event: Event
    upstream: str  # scheme://host[:port], no path
    access_token: TokenPlace | None
    refresh_token: TokenPlace | None
    timeout_seconds: float = 10.0
    max_body_bytes: int = 1024 * 1024


class AmbiguousTokenError(ValueError):
    """The same place holds two different tokens (two cookies of one name, say)."""


def _one(values: Sequence[str]) -> str | None:
    distinct = {v for v in values if v}
    if len(distinct) > 1:
        raise AmbiguousTokenError("two different values")
    token = next(iter(distinct), None)
    if token is not None and (len(token) > MAX_TOKEN_CHARS or not token.isascii()):
        return None
    return token


def _from_json(body: bytes, key: str) -> str | None:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    value = doc.get(key) if isinstance(doc, dict) else None
    return value if isinstance(value, str) else None


def _strip_bearer(value: str) -> str:
    scheme, _, rest = value.strip().partition(" ")
    return rest.strip() if scheme.lower() == "bearer" and rest.strip() else value.strip()


def token_in_answer(place: TokenPlace, headers: Mapping[str, Sequence[str]], body: bytes | None) -> str | None:
    """The token ``place`` names in an answer; ``headers`` by lower-case name, all values.

    ``body`` is None when it cannot be read (compressed, too large). Raises
    ``AmbiguousTokenError`` when the place holds two different tokens.
    """
    if place.kind == "body":
        return _one([t] if body is not None and (t := _from_json(body, place.name)) else [])
    if place.kind == "header":
        return _one([_strip_bearer(v) for v in headers.get(place.name.lower(), ())])
    return _one(set_cookie_values(headers.get("set-cookie", ())).get(place.name, []))


def token_in_request(place: TokenPlace, headers: Mapping[str, Sequence[str]], body: bytes) -> str | None:
    """The token ``place`` names in a request (what a refresh or logout presents)."""
    if place.kind == "body":
        return _one([t] if (t := _from_json(body, place.name)) else [])
    if place.kind == "header":
        return _one([_strip_bearer(v) for v in headers.get(place.name.lower(), ())])
    return _one(request_cookie_values(headers.get("cookie", ())).get(place.name, []))
