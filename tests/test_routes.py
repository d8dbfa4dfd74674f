"""Route policies: path normalisation and matching never turn a protected path public.

The tables follow the path-confusion advisories of Authelia and oauth2-proxy
(SECURITY_CASES E41): every spelling an app could read as a protected path gets that
path's policy or a stricter one; whatever is in doubt is ``required``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import from_mapping
from sidecar.errors import ConfigError
from sidecar.routes import Route, RouteTable, normalise_path, parse_route_path


def table(*entries: tuple[str, str] | tuple[str, str, list[str]]) -> RouteTable:
    routes = []
    for entry in entries:
        parsed = parse_route_path(entry[0])
        assert parsed is not None, entry[0]
        methods = frozenset(entry[2]) if len(entry) == 3 else None
        routes.append(Route(parsed[0], parsed[1], methods, entry[1]))  # type: ignore[arg-type]
    return RouteTable(routes)


APP = table(
    ("/api/v1/auth/*", "public"),
    ("/api/v1/posts", "optional", ["GET", "HEAD"]),
    ("/api/v1/posts/*", "optional", ["GET", "HEAD"]),
    ("/health", "public"),
)
# The shape that path confusion attacks: everything public except a protected prefix.
OPEN = table(("/admin/*", "required"), ("/*", "public"))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/b/", "/a/b/"),
        ("/a//b", "/a/b"),
        ("//a///b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/../../b", "/b"),
        ("/a/b/..", "/a/"),
        ("/a/%2e%2e/b", "/b"),
        ("/a/%2E%2E/b", "/b"),
        ("/a/.%2e/b", "/b"),
        ("/%61/b", "/a/b"),
        ("/a?x=/../admin", "/a"),
        ("/a#frag", "/a"),
        ("/caf%C3%A9", "/café"),
        ("/a;x=1/b", "/a;x=1/b"),
    ],
)
def test_normalise_path_reads_the_path_as_an_app_would(raw: str, expected: str) -> None:
    """Query and fragment dropped, one percent-decoding, // merged, dot segments removed."""
    assert normalise_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "*",
        "a/b",
        "http://evil/admin",
        "/a%2fb",
        "/a%2Fb",
        "/a%5cb",
        "/a\\b",
        "/a%252e%252e/b",  # double encoding: a second decoder would see ../
        "/a%25",
        "/a%00b",
        "/a%0ab",
        "/a\x7fb",
        "/a%ffb",  # not UTF-8
        "/a%C2%85b",  # a C1 control (NEL), a line break to some readers (found by tests/fuzz: routes)
        "/a\x85b",
        "/a\udcffb",  # an undecodable header byte as aiohttp spells it (tests/fuzz: routes; it raised)
        "/a%3fb",  # a decoded ? or # would be cut as a query by a second reading (tests/fuzz: routes)
        "/a%23b",
        "/" + "a" * 5000,
    ],
)
def test_normalise_path_is_in_doubt(raw: str) -> None:
    """Whatever an app could read in more than one way has no normal form: None."""
    assert normalise_path(raw) is None


@pytest.mark.parametrize(
    ("method", "raw", "expected"),
    [
        ("POST", "/api/v1/auth/login", "public"),
        ("POST", "/api/v1/auth", "public"),
        ("GET", "/api/v1/posts", "optional"),
        ("HEAD", "/api/v1/posts/7", "optional"),
        ("POST", "/api/v1/posts", "required"),
        ("DELETE", "/api/v1/posts/7", "required"),
        ("GET", "/api/v1/users/me", "required"),
        ("GET", "/api/v1/authx", "required"),  # a prefix covers "/a" and "/a/...", not "/ab"
        ("GET", "/health", "public"),
        ("GET", "/health/", "required"),  # exact means exact
        ("get", "/api/v1/posts", "required"),  # methods are case-sensitive; the odd one is stricter
        # Spellings that land somewhere protected are protected.
        ("POST", "/api/v1/auth/../users/me", "required"),
        ("POST", "/api/v1/auth/%2e%2e/users/me", "required"),
        ("POST", "/api/v1/auth/%2E%2e/users/me", "required"),
        ("POST", "/api/v1/auth%2f..%2fusers/me", "required"),
        ("POST", "/api/v1/auth/..%2fusers/me", "required"),
        ("POST", "/api/v1/auth;x/../../users/me", "required"),
        ("POST", "/api/v1/auth/%252e%252e/users/me", "required"),
        ("POST", "/api/v1/auth\\..\\users\\me", "required"),
        ("POST", "//api/v1/auth/../../v1/users/me", "required"),
        ("GET", "/API/V1/AUTH/login", "required"),  # case does not make a path public
        ("GET", "/api/v1/auth./login", "required"),
        ("GET", "/api/v1/posts;jsessionid=1", "required"),  # as written it matches nothing
        ("GET", "http://host/api/v1/auth/login", "required"),
    ],
)
def test_policy_of_an_app_with_public_routes(method: str, raw: str, expected: str) -> None:
    """Public login and refresh, optional public reads, everything else required."""
    assert APP.policy([method], [raw]) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", "public"),
        ("/shop/cart", "public"),
        ("/admin", "required"),
        ("/admin/users", "required"),
        ("/ADMIN/users", "required"),  # an app that ignores case serves /admin
        ("/Admin", "required"),
        ("/admin;x/users", "required"),  # Tomcat drops ;x
        ("/admin;", "required"),
        ("/admin./users", "required"),  # IIS drops trailing dots
        ("/admin../users", "required"),
        ("/shop/../admin", "required"),
        ("/shop/%2e%2e/admin", "required"),
        ("/shop%2f..%2fadmin", "required"),
        ("/%61dmin", "required"),
        ("//admin", "required"),
        ("/shop;/../admin", "required"),
        ("/shop/..;/admin", "required"),  # Tomcat: ..; is .. once ;params are dropped
        ("/shop/.;/admin", "public"),  # and .; is ., which leaves /shop/admin
        ("/admin%00", "required"),
        ("/admin%20", "public"),  # "/admin " is another path; no app trims it to /admin
        ("/adm\u0131n", "required"),  # dotless i upper-cases to I: equalsIgnoreCase reads /admin (tests/fuzz: routes)
        ("/adm%C4%B1n/users", "required"),
        ("/a\udcff", "required"),  # undecodable bytes in X-Original-URI: required, not an exception
        ("/shop%3f/..;x/admin", "required"),  # Tomcat: ;x dropped, %3f decoded, .. resolved: /admin (tests/fuzz: routes)
        ("/shop%23/..;x/admin", "required"),
    ],
)
def test_a_protected_prefix_inside_a_public_site_stays_protected(raw: str, expected: str) -> None:
    """Everything public but /admin: no spelling of /admin is public."""
    assert OPEN.policy(["GET"], [raw]) == expected


def test_the_strictest_description_of_the_request_wins() -> None:
    """Several descriptions (X-Original-URI, X-Forwarded-Uri, the Envoy path): the strictest applies."""
    assert APP.policy(["POST"], ["/api/v1/auth/login", "/api/v1/users/me"]) == "required"
    assert APP.policy(["POST", "GET"], ["/api/v1/posts"]) == "required"
    assert APP.policy(["GET", "HEAD"], ["/api/v1/posts", "/api/v1/posts/1"]) == "optional"
    assert APP.policy(["POST"], ["/api/v1/auth/login", "/api/v1/auth/refresh"]) == "public"


def test_no_description_of_the_request_is_required() -> None:
    """A check that does not say which request it is about gets the normal check."""
    assert APP.policy(["GET"], []) == "required"
    assert APP.policy([], ["/health"]) == "required"


def test_first_match_wins() -> None:
    """Entries are tried in order; the first that matches decides."""
    first_public = table(("/a/*", "public"), ("/a/b", "required"))
    first_required = table(("/a/b", "required"), ("/a/*", "public"))
    assert first_public.policy(["GET"], ["/a/b"]) == "public"
    assert first_required.policy(["GET"], ["/a/b"]) == "required"
    assert first_required.policy(["GET"], ["/a/c"]) == "public"


def test_the_cache_gives_the_verdicts_of_a_fresh_table() -> None:
    """Remembered verdicts equal fresh ones, past the cache bound too."""
    cached = table(("/admin/*", "required"), ("/*", "public"))
    paths = [f"/p{i}/../admin/{i}" if i % 2 else f"/p{i}" for i in range(5000)]
    for _ in range(2):
        for p in paths:
            fresh = table(("/admin/*", "required"), ("/*", "public"))
            assert cached.policy(["GET"], [p]) == fresh.policy(["GET"], [p])


def load_routes(routes: list[dict[str, object]]) -> tuple[Route, ...]:
    raw = {"jwt": {"algorithms": ["HS256"], "secret": "x" * 40}, "routes": routes}
    return from_mapping(raw, environ={}, base_dir=Path(".")).routes


def test_routes_load_from_the_config() -> None:
    """[[routes]] entries become Route values, in order."""
    routes = load_routes([
        {"path": "/api/v1/auth/*", "policy": "public"},
        {"path": "/api/v1/posts", "methods": ["GET", "HEAD"], "policy": "optional"},
    ])
    assert routes == (
        Route("/api/v1/auth", True, None, "public"),
        Route("/api/v1/posts", False, frozenset({"GET", "HEAD"}), "optional"),
    )
    assert routes[0].pattern == "/api/v1/auth/*"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"policy": "public"}, "routes[0].path: required"),
        ({"path": "/a"}, "routes[0].policy: required"),
        ({"path": "/a", "policy": "open"}, "routes[0].policy: must be one of public, optional, required"),
        ({"path": "a", "policy": "public"}, "routes[0].path: must be a normalised absolute path"),
        ({"path": "/a/../b", "policy": "public"}, "routes[0].path: must be a normalised"),
        ({"path": "/a//b", "policy": "public"}, "routes[0].path: must be a normalised"),
        ({"path": "/a/*/b", "policy": "public"}, "routes[0].path: must be a normalised"),
        ({"path": "/a%2e", "policy": "public"}, "routes[0].path: must be a normalised"),
        ({"path": "/a;b", "policy": "public"}, "routes[0].path: must be a normalised"),
        ({"path": "/a?b", "policy": "public"}, "routes[0].path: must be a normalised"),
        ({"path": "/a//*", "policy": "public"}, "routes[0].path: must be a normalised"),
        ({"path": "/a", "policy": "public", "methods": []}, "routes[0].methods: list at least one"),
        ({"path": "/a", "policy": "public", "methods": ["get"]}, "routes[0].methods: 'get' is not an upper-case"),
        ({"path": "/a", "policy": "public", "method": ["GET"]}, "routes[0].method: unknown key"),
        ({"path": 5, "policy": "public"}, "routes[0].path: must be a string"),
    ],
)
def test_bad_routes_stop_start_up_with_one_line(entry: dict[str, object], message: str) -> None:
    """Every mistake in a [[routes]] entry names the entry and the key."""
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("?", r"\?").replace("*", r"\*")):
        load_routes([entry])


def test_routes_must_be_an_array_of_tables() -> None:
    """A [routes] table instead of [[routes]] entries is refused."""
    raw = {"jwt": {"algorithms": ["HS256"], "secret": "x" * 40}, "routes": {"path": "/a"}}
    with pytest.raises(ConfigError, match="routes: must be an array of tables"):
        from_mapping(raw, environ={}, base_dir=Path("."))
