"""The gateway check as a client sees it, without I/O (sans-IO): what to ask, what the answer means.

Both middlewares (ASGI and aiohttp) build their check request with :func:`check_headers`
and read the answer with :func:`interpret`, so what counts as an allow is decided here only.
Anything but the sidecar's own 200 (identity, or an explicit anonymous allow) or 401 is
"unavailable": the middlewares answer 503, never let the request through (fail closed).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from sidecar.client.errors import SidecarUnavailableError, TokenRejectedError

USER_HEADER = "x-auth-user"
SESSION_HEADER = "x-auth-session"
ANONYMOUS_HEADER = "x-auth-anonymous"  # the sidecar's anonymous allow: "public" or "optional"
_ANONYMOUS_VALUES = frozenset({"public", "optional"})
_IDENTITY_HEADERS = frozenset({USER_HEADER, SESSION_HEADER, ANONYMOUS_HEADER})
_MAX_VALUE = 8192  # a longer identity header is not the sidecar's

Headers = list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the sidecar says made the request: the user, the session, and the configured claim
    headers (``jwt.claim_headers``) under their lower-case names, e.g. ``"x-auth-email"``."""

    user_id: str
    session_id: str
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Reply:
    """A response a middleware sends instead of calling the app."""

    status: int
    headers: Mapping[str, str]
    body: bytes = field(repr=False)


def _envelope(status: int, message: str) -> bytes:
    # The sidecar's own JSON envelope, so clients see one error shape.
    body = {"status": "error", "status_code": status, "message": message, "data": {}}
    return json.dumps(body, separators=(",", ":")).encode()


DENY = Reply(
    401,
    {
        "Content-Type": "application/json",
        "WWW-Authenticate": 'Bearer error="invalid_token"',
        "Cache-Control": "no-store",
    },
    _envelope(401, "Unauthorized"),
)
UNAVAILABLE = Reply(
    503,
    {"Content-Type": "application/json", "Retry-After": "1", "Cache-Control": "no-store"},
    _envelope(503, "Authentication is unavailable, try again"),
)


class PublicPaths:
    """The paths a middleware lets through without asking the sidecar.

    Each pattern is an exact path (``/health``) or a prefix ending in ``/*`` (``/static/*``,
    which matches ``/static`` and everything under it). A path that could be read in more
    than one way (``.`` or ``..`` segments, ``//``, a backslash, a NUL) never matches: it is
    checked like any other, so a spelling can only make a request stricter.
    """

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        if isinstance(patterns, str):
            raise TypeError("public must be a sequence of paths, not one string")
        exact: set[str] = set()
        prefixes: list[str] = []
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern.startswith("/"):
                raise ValueError(f"public paths must start with '/' (got {pattern!r})")
            if pattern.endswith("/*"):
                base = pattern[:-2]
                if "*" in base:
                    raise ValueError(f"'*' may only end a public path, as '/*' (got {pattern!r})")
                exact.add(base or "/")
                prefixes.append(base + "/")
            elif "*" in pattern:
                raise ValueError(f"'*' may only end a public path, as '/*' (got {pattern!r})")
            else:
                exact.add(pattern)
        self._exact = frozenset(exact)
        self._prefixes = tuple(prefixes)

    def __bool__(self) -> bool:
        return bool(self._exact)

    def __repr__(self) -> str:
        return f"PublicPaths({sorted(self._exact)!r}, prefixes={list(self._prefixes)!r})"

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, str) or not _plain(path):
            return False
        return path in self._exact or path.startswith(self._prefixes)


def _plain(path: str) -> bool:
    """Whether a (decoded) path has one reading only."""
    if not path.startswith("/") or "//" in path or "\\" in path or "\x00" in path:
        return False
    return all(segment not in (".", "..") for segment in path.split("/"))


def _value(value: str) -> bool:
    """Whether a header value can be sent as it is (a server never parses CR, LF or NUL into one)."""
    return not any(c in value for c in "\r\n\x00")


def target_of(raw_path: bytes, query: bytes) -> str:
    """The request target for ``X-Original-URI``: the raw path and query, visible ASCII
    (a byte outside it is percent-encoded, as a client should have sent it)."""
    target = raw_path + (b"?" + query if query else b"")
    return "".join(chr(b) if 0x21 <= b <= 0x7E else f"%{b:02X}" for b in target)


def check_headers(
    method: str,
    target: str,
    *,
    authorization: Sequence[str] = (),
    cookies: Sequence[str] = (),
    user_agent: str | None = None,
    client_ip: str | None = None,
) -> Headers:
    """The headers of the check request (``GET /introspect``) for one request of the app.

    Every Authorization and Cookie header goes as received (the sidecar refuses what is
    ambiguous); the client address only when it is an IP address.
    """
    headers: Headers = [("X-Original-Method", method), ("X-Original-URI", target)]
    headers.extend(("Authorization", v) for v in authorization if _value(v))
    headers.extend(("Cookie", v) for v in cookies if _value(v))
    if user_agent is not None and _value(user_agent):
        headers.append(("User-Agent", user_agent))
    if client_ip is not None:
        # Not an address (a unix socket, a test client): the sidecar sees its TCP peer instead.
        with contextlib.suppress(ValueError):
            headers.append(("X-Forwarded-For", str(ipaddress.ip_address(client_ip))))
    return headers


def interpret(status: int, headers: Iterable[tuple[str, str]]) -> Identity | None:
    """The check's answer: the Identity, or None for the sidecar's anonymous allow.

    Raises :class:`TokenRejectedError` for 401 (no valid token of an active session), and
    :class:`SidecarUnavailableError` for anything else: another status (302, 404, 5xx) or a 200
    that is not the sidecar's (no identity, a duplicated or empty identity header).
    """
    if status == 401:
        raise TokenRejectedError("No valid token of an active session", status=status)
    if status != 200:
        raise SidecarUnavailableError("Unexpected answer from the sidecar's check", status=status)
    found: dict[str, list[str]] = {}
    claims: dict[str, str] = {}
    for name, value in headers:
        lowered = name.lower()
        if lowered in _IDENTITY_HEADERS:
            found.setdefault(lowered, []).append(value)
        elif lowered.startswith("x-auth-"):
            claims[lowered] = value
    users, sessions = found.get(USER_HEADER, []), found.get(SESSION_HEADER, [])
    anonymous = found.get(ANONYMOUS_HEADER, [])
    if not users and not sessions and len(anonymous) == 1 and anonymous[0] in _ANONYMOUS_VALUES:
        return None
    if anonymous or len(users) != 1 or len(sessions) != 1:
        raise SidecarUnavailableError("Malformed answer from the sidecar's check: no identity", status=status)
    user, session = users[0], sessions[0]
    if not 0 < len(user) <= _MAX_VALUE or not 0 < len(session) <= _MAX_VALUE:
        raise SidecarUnavailableError("Malformed answer from the sidecar's check: empty identity", status=status)
    return Identity(user, session, MappingProxyType(claims))
