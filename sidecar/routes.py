"""Route policies: which requests the check lets through without credentials.

An app behind the gateway has public routes (login, register, refresh, public pages).
``[[routes]]`` entries say so: ``path`` (exact, or a prefix ending in ``/*``), optional
``methods``, and ``policy``: ``public`` (200 without looking at credentials), ``optional``
(no credential: 200 anonymous; a credential present must be valid) or ``required`` (the
default for anything no entry matches). The first matching entry wins.

The request the policy is about is the gateway's original request, described by headers
(nginx ``X-Original-Method``/``X-Original-URI``, Caddy and Traefik
``X-Forwarded-Method``/``X-Forwarded-Uri``) or, for Envoy, by the check request itself
(its method, and its path after ``/introspect``). Matching never lets a spelling turn a
protected path into a public one (the path-confusion advisories of Authelia and
oauth2-proxy; SECURITY_CASES E41):

- the path is percent-decoded once, dot segments are removed and ``//`` merged, as the app
  behind the gateway would; an encoded ``/`` or ``\\``, a ``%`` left after decoding (double
  encoding), a backslash, control characters, invalid UTF-8 or a path that is not
  origin-form make the path doubtful, and a doubtful path is ``required``;
- servers differ on ``;parameters`` in segments (Tomcat drops them), trailing dots (IIS
  drops them) and case (Windows, some frameworks): the policy is worked out for every such
  reading of the path and the strictest one applies;
- when the gateway describes the request more than once (a client can add an
  ``X-Forwarded-Uri`` that nginx passes on beside the ``X-Original-URI`` it sets), the
  strictest policy among the descriptions applies, so an added header can only make the
  answer stricter.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import unquote_to_bytes

Policy = Literal["public", "optional", "required"]
POLICIES: Final[tuple[Policy, ...]] = ("public", "optional", "required")
# Strictness order: the strictest of several readings wins.
_RANK: Final[dict[Policy, int]] = {"public": 0, "optional": 1, "required": 2}
_MAX_PATH: Final = 4096
_CACHE_MAX: Final = 4096


@dataclass(frozen=True, slots=True)
class Route:
    """One ``[[routes]]`` entry."""

    path: str  # normalised; a prefix entry without its "/*"
    prefix: bool
    methods: frozenset[str] | None  # None: every method
    policy: Policy

    @property
    def pattern(self) -> str:
        """The path as written in the configuration."""
        if not self.prefix:
            return self.path
        return "/*" if self.path == "/" else self.path + "/*"

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if not self.prefix:
            return path == self.path
        # "/a/*" covers "/a" itself and everything under "/a/".
        return self.path in ("/", path) or path.startswith(self.path + "/")


def normalise_path(raw: str) -> str | None:
    """The path an app would serve for the request target ``raw``, or None when in doubt.

    Query and fragment are dropped, the path is percent-decoded once, ``//`` merged and
    dot segments removed (RFC 3986 section 5.2.4). None for anything an app could read in
    more than one way: see the module docstring.
    """
    if not raw.startswith("/") or len(raw) > _MAX_PATH:
        return None  # absolute-form, "*", empty or absurd: no reading to trust
    end = len(raw)
    for stop in ("?", "#"):
        at = raw.find(stop)
        if at != -1:
            end = min(end, at)
    target = raw[:end]
    lowered = target.lower()
    if "%2f" in lowered or "%5c" in lowered or "\\" in target:
        return None
    try:
        path = unquote_to_bytes(target).decode("utf-8")
    except UnicodeError:  # invalid UTF-8 once decoded, or lone surrogates (aiohttp: undecodable header bytes)
        return None
    # Control characters: C0, DEL and C1 (U+0085, "%C2%85", is a line break to some readers).
    # A decoded "?" or "#" (%3f, %23) is doubtful too: reading such a path again (as the
    # ;params and trailing-dot readings do) would cut it there as if a query began.
    if any(c in path for c in "%\\?#") or any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in path):
        return None
    out: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    trailing = path.endswith("/") or path.endswith("/.") or path.endswith("/..")
    text = "/" + "/".join(out)
    return text + "/" if trailing and out else text


def _without_parameters(path: str) -> str:
    """``/a;x/b;y`` -> ``/a/b`` (segment parameters dropped, as Tomcat and Spring do)."""
    return "/".join(segment.split(";", 1)[0] for segment in path.split("/"))


def _without_trailing_dots(path: str) -> str:
    """``/admin./x..`` -> ``/admin/x`` (as IIS and Windows file names read them)."""
    return "/".join(segment if segment in (".", "..") else segment.rstrip(".") for segment in path.split("/"))


def _readings(path: str) -> set[str] | None:
    """Every path an app could take ``path`` (already normalised) to mean; None when one
    of them is doubtful."""
    found = {path}
    if ";" in path:
        found.add(_without_parameters(path))
    if "." in path:
        found |= {_without_trailing_dots(p) for p in found}
    if len(found) == 1:
        return found
    # A transform can leave "." / ".." or "//" behind ("/a;x/.." -> "/a/.."): normalise again.
    readings = set()
    for p in found:
        again = normalise_path(p) if p != path else p
        if again is None:
            return None
        readings.add(again)
    return readings


def _target(raw: str) -> str:
    """``raw`` without its query and fragment (they never change a policy)."""
    for stop in ("?", "#"):
        at = raw.find(stop)
        if at != -1:
            raw = raw[:at]
    return raw


class RouteTable:
    """The configured routes; ``policy`` for a request as its gateway described it."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)
        # The same routes, compared case-insensitively (a protected path must not become
        # public by its case on an app that ignores case).
        self._folded = tuple(
            Route(r.path.lower(), r.prefix, r.methods, r.policy) for r in self.routes
        )
        self._cased = any(r.path != r.path.lower() for r in self.routes)
        self._cache: dict[tuple[tuple[str, ...], tuple[str, ...]], Policy] = {}

    def __bool__(self) -> bool:
        return bool(self.routes)

    def _first(self, routes: Iterable[Route], method: str, path: str) -> Policy:
        for route in routes:
            if route.matches(method, path):
                return route.policy
        return "required"

    def _one(self, method: str, raw_path: str) -> Policy:
        path = normalise_path(raw_path)
        if path is None:
            return "required"
        readings = _readings(path)
        if readings is None:
            return "required"
        worst: Policy = "public"
        for reading in readings:
            folded = reading.lower()
            for policy in (
                self._first(self.routes, method, reading),
                # The same test again only where case could matter, folding through upper case
                # too: the dotless i (U+0131) upper-cases to "I", so an app comparing
                # case-insensitively (Java's equalsIgnoreCase) reads "/adm\u0131n" as "/admin".
                self._first(self._folded, method, folded) if folded != reading or self._cased else "public",
                self._first(self._folded, method, upper) if (upper := reading.upper().lower()) != folded else "public",
            ):
                if _RANK[policy] > _RANK[worst]:
                    worst = policy
            if worst == "required":
                return worst
        return worst

    def policy(self, methods: Sequence[str], paths: Sequence[str]) -> Policy:
        """The strictest policy over every (method, path) description of the request.

        No path at all (the gateway did not say which request this is) is ``required``.
        """
        if not paths or not methods:
            return "required"
        # Remembered by the descriptions as sent, and by their paths without query (which
        # never changes a policy), so that new query strings cost no new normalisation.
        raw = (tuple(methods), tuple(paths))
        found = self._cache.get(raw)
        if found is None:
            key = (raw[0], tuple(_target(p) for p in paths))
            found = self._cache.get(key)
            if found is None:
                found = self._cache_put(key, self._strictest(key))
            self._cache_put(raw, found)
        return found

    def _strictest(self, key: tuple[tuple[str, ...], tuple[str, ...]]) -> Policy:
        worst: Policy = "public"
        for method, path in itertools.product(*key):
            for m in {method, method.upper()}:
                policy = self._one(m, path)
                if _RANK[policy] > _RANK[worst]:
                    worst = policy
        return worst

    def _cache_put(self, key: tuple[tuple[str, ...], tuple[str, ...]], policy: Policy) -> Policy:
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[key] = policy
        return policy


def parse_route_path(text: str) -> tuple[str, bool] | None:
    """(path, is prefix) of a configured ``path``, or None when it is not in normal form."""
    prefix = text.endswith("/*")
    base = (text[:-2] or "/") if prefix else text
    if not base.startswith("/") or "*" in base or "?" in base or "#" in base or "%" in base or ";" in base:
        return None
    if normalise_path(base) != base or (base != "/" and base.endswith("/") and prefix):
        return None
    return base, prefix
