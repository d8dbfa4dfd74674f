"""Tokens in a cookie (``jwt.cookie_name``) for the check and the sessions API (SECURITY_CASES E45)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from sidecar.config import from_mapping
from sidecar.errors import ConfigError
from tests.conftest import SECRET, Sidecar, bearer, mint, settings_for

COOKIE = "access_token"
APP = "https://app.example.com"
CROSS_SITE = {"status": "error", "status_code": 403, "message": "Cross-site request refused", "data": {}}
ROUTES: list[dict[str, Any]] = [
    {"path": "/api/v1/auth/*", "policy": "public"},
    {"path": "/api/v1/posts/*", "methods": ["GET", "HEAD"], "policy": "optional"},
]


def cookie(token: str, name: str = COOKIE) -> dict[str, str]:
    return {"Cookie": f"{name}={token}"}


@pytest.fixture
async def cookied(start_sidecar: Callable[..., Any], tmp_path: Path) -> Sidecar:
    """A sidecar reading tokens from the access_token cookie, trusting the app's origin."""
    settings = settings_for(
        tmp_path, jwt={"cookie_name": COOKIE}, server={"allowed_origins": [APP]}, routes=ROUTES
    )
    result: Sidecar = await start_sidecar(settings)
    return result


async def check(sidecar: Sidecar, headers: Any) -> Any:
    async with sidecar.public.get("/introspect", headers=headers) as resp:
        await resp.read()
        return resp


async def api_get(sidecar: Sidecar, headers: Any) -> int:
    async with sidecar.public.get("/api/v1/sessions/", headers=headers) as resp:
        return resp.status


async def test_the_cookie_is_a_credential_for_the_check_and_the_api(cookied: Sidecar) -> None:
    """Without an Authorization header the check and the sessions API take the token from the cookie."""
    token = mint("alice")
    resp = await check(cookied, cookie(token))
    assert resp.status == 200 and resp.headers["X-Auth-User"] == "alice"
    assert await api_get(cookied, {"Cookie": f"theme=dark; {COOKIE}={token}; lang=en"}) == 200
    assert (await check(cookied, {"Cookie": f'{COOKIE}="{token}"'})).status == 200  # a quoted value


async def test_without_cookie_name_a_cookie_is_no_credential(sidecar: Sidecar) -> None:
    """With jwt.cookie_name unset (the default) the cookie is ignored: 401."""
    token = mint("alice")
    assert (await check(sidecar, cookie(token))).status == 401
    assert await api_get(sidecar, cookie(token)) == 401


async def test_other_cookie_names_are_no_credential(cookied: Sidecar) -> None:
    """Only the configured name counts, compared exactly (RFC 6265 names are case-sensitive)."""
    token = mint("alice")
    for headers in (cookie(token, "Access_Token"), cookie(token, "access_token_x"), {"Cookie": token}):
        assert (await check(cookied, headers)).status == 401, headers


async def test_a_header_wins_and_must_agree_with_the_cookie(cookied: Sidecar) -> None:
    """A header and the same token as cookie pass; a header with a different cookie is refused; an invalid header is not rescued by a valid cookie."""
    token, other = mint("alice"), mint("bob")
    assert (await check(cookied, {**bearer(token), **cookie(token)})).status == 200
    assert await api_get(cookied, {**bearer(token), **cookie(token)}) == 200
    for headers in (
        {**bearer(token), **cookie(other)},
        {**bearer(token), **cookie("garbage")},
        {**bearer("not.a.token"), **cookie(token)},
        {"Authorization": "Basic YWxpY2U6c2VjcmV0", **cookie(token)},
    ):
        resp = await check(cookied, headers)
        assert resp.status == 401, headers
        assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        assert await api_get(cookied, headers) == 401, headers


@pytest.mark.parametrize(
    "pairs",
    [
        [("Cookie", "{n}={a}; {n}={b}")],
        [("Cookie", "{n}={a}"), ("Cookie", "{n}={b}")],
        [("Cookie", "x=1; {n}={a}"), ("Cookie", "y=2"), ("Cookie", "{n}={b}; z=3")],
    ],
    ids=["one-header", "two-headers", "spread"],
)
async def test_two_cookies_of_the_name_with_different_values_are_refused(
    cookied: Sidecar, pairs: list[tuple[str, str]]
) -> None:
    """Two values of the cookie that differ, in one Cookie header or several, are a 401; the same value twice passes."""
    a, b = mint("alice"), mint("mallory")
    differing = CIMultiDict((k, v.format(n=COOKIE, a=a, b=b)) for k, v in pairs)
    assert (await check(cookied, differing)).status == 401
    assert await api_get(cookied, differing) == 401
    same = CIMultiDict((k, v.format(n=COOKIE, a=a, b=a)) for k, v in pairs)
    assert (await check(cookied, same)).status == 200


async def test_an_oversized_cookie_gets_the_same_401_as_an_oversized_header(cookied: Sidecar) -> None:
    """A cookie past jwt.max_token_bytes is refused exactly like an Authorization header of that size."""
    huge = "a" * 9000
    by_header = await check(cookied, bearer(huge))
    by_cookie = await check(cookied, cookie(huge))
    assert by_header.status == by_cookie.status == 401
    assert by_header.headers["WWW-Authenticate"] == by_cookie.headers["WWW-Authenticate"]
    async with cookied.public.get("/introspect", headers=bearer(huge)) as a, cookied.public.get(
        "/introspect", headers=cookie(huge)
    ) as b:
        assert await a.read() == await b.read()
    assert await api_get(cookied, cookie(huge)) == 401


async def test_a_revoked_sessions_cookie_is_refused(cookied: Sidecar) -> None:
    """A cookie token whose session was revoked is refused by the check and the API."""
    token = mint("alice")
    [session] = await cookied.sessions(token)
    async with cookied.public.delete(f"/api/v1/sessions/{session['id']}/", headers=bearer(token)) as resp:
        assert resp.status == 204
    assert (await check(cookied, cookie(token))).status == 401
    assert await api_get(cookied, cookie(token)) == 401


async def test_optional_routes_count_the_cookie_as_a_credential(cookied: Sidecar) -> None:
    """On an optional route a cookie is a credential: valid -> identity, invalid -> 401; other cookies stay anonymous; public routes ignore it."""
    route = {"X-Original-Method": "GET", "X-Original-URI": "/api/v1/posts/7"}
    known = await check(cookied, {**route, **cookie(mint("alice"))})
    assert known.status == 200 and known.headers["X-Auth-User"] == "alice"
    assert (await check(cookied, {**route, **cookie("not.a.token")})).status == 401
    assert (await check(cookied, {**route, **cookie(mint("alice", ttl=-10))})).status == 401
    anonymous = await check(cookied, {**route, "Cookie": "theme=dark"})
    assert anonymous.status == 200 and "X-Auth-User" not in anonymous.headers
    login = {"X-Original-Method": "POST", "X-Original-URI": "/api/v1/auth/login"}
    public = await check(cookied, {**login, **cookie("not.a.token")})
    assert public.status == 200 and "X-Auth-User" not in public.headers


async def _delete(sidecar: Sidecar, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    async with sidecar.public.delete(path, headers=headers) as resp:
        return resp.status, (await resp.json() if resp.status != 204 else None)


@pytest.mark.parametrize("target", ["one", "others"])
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": APP + "/"},
        {"Origin": "http://app.example.com"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "none", "Origin": "https://evil.example"},
    ],
    ids=["no-origin", "other-origin", "null-origin", "trailing-slash", "other-scheme", "cross-site", "same-site", "none"],
)
async def test_a_cross_site_delete_with_the_cookie_is_refused(
    cookied: Sidecar, target: str, extra: dict[str, str]
) -> None:
    """A DELETE authenticated by the cookie without a same-origin sign is 403 and logs nothing out (CSRF)."""
    token, other = mint("alice"), mint("alice")
    [mine] = await cookied.sessions(token)
    await cookied.sessions(other)
    path = f"/api/v1/sessions/{mine['id']}/" if target == "one" else "/api/v1/sessions/"
    assert await _delete(cookied, path, {**cookie(token), **extra}) == (403, CROSS_SITE)
    assert await cookied.check(token) == 200 and await cookied.check(other) == 200


@pytest.mark.parametrize("target", ["one", "others"])
@pytest.mark.parametrize(
    "extra",
    [{"Origin": APP}, {"Origin": "HTTPS://APP.EXAMPLE.COM"}, {"Sec-Fetch-Site": "same-origin"},
     {"Sec-Fetch-Site": "same-origin", "Origin": "https://elsewhere.example"}],
    ids=["allowed-origin", "origin-case", "same-origin", "same-origin-other-origin-listed"],
)
async def test_a_same_origin_delete_with_the_cookie_is_allowed(
    cookied: Sidecar, target: str, extra: dict[str, str]
) -> None:
    """A DELETE with the cookie from an allowed Origin, or with Sec-Fetch-Site: same-origin, is a 204."""
    token, other = mint("alice"), mint("alice")
    [mine] = await cookied.sessions(token)
    await cookied.sessions(other)
    path = f"/api/v1/sessions/{mine['id']}/" if target == "one" else "/api/v1/sessions/"
    assert await _delete(cookied, path, {**cookie(token), **extra}) == (204, None)
    if target == "one":
        assert await cookied.check(token) == 401
    else:
        assert await cookied.check(other) == 401 and await cookied.check(token) == 200


async def test_a_delete_with_an_authorization_header_needs_no_origin(cookied: Sidecar) -> None:
    """A DELETE whose credential is the header is not subject to the origin rule, a cookie beside it or not."""
    token = mint("alice")
    [mine] = await cookied.sessions(token)
    assert await _delete(cookied, "/api/v1/sessions/", {**bearer(token), **cookie(token)}) == (204, None)
    assert await _delete(cookied, f"/api/v1/sessions/{mine['id']}/", bearer(token)) == (204, None)


async def test_reads_with_the_cookie_need_no_origin(cookied: Sidecar) -> None:
    """GET is safe: listing and reading one session with the cookie work cross-site."""
    token = mint("alice")
    [mine] = await cookied.sessions(token)
    headers = {**cookie(token), "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    assert await api_get(cookied, headers) == 200
    async with cookied.public.get(f"/api/v1/sessions/{mine['id']}/", headers=headers) as resp:
        assert resp.status == 200


def _settings(tmp_path: Path, jwt: dict[str, Any] | None = None, server: dict[str, Any] | None = None) -> Any:
    raw = {"jwt": {"algorithms": ["HS256"], "secret": SECRET, **(jwt or {})}, "server": server or {}}
    return from_mapping(raw, environ={}, base_dir=tmp_path)


@pytest.mark.parametrize("name", ["access token", "a;b", "a=b", "tok\u00e9n", 'a"b', "a,b", "x" * 300, 7])
def test_a_cookie_name_must_be_an_rfc_6265_token(tmp_path: Path, name: Any) -> None:
    """jwt.cookie_name outside RFC 6265's token characters (or not a string) stops start-up naming the key."""
    with pytest.raises(ConfigError, match=r"^jwt\.cookie_name: "):
        _settings(tmp_path, jwt={"cookie_name": name})


def test_cookie_name_and_origins_are_read(tmp_path: Path) -> None:
    """A token cookie name and origins are accepted; origins are kept in lower case."""
    s = _settings(
        tmp_path, jwt={"cookie_name": "__Host-at"}, server={"allowed_origins": ["https://App.Example.com", "http://localhost:3000"]}
    )
    assert s.jwt.cookie_name == "__Host-at"
    assert s.server.allowed_origins == frozenset({"https://app.example.com", "http://localhost:3000"})
    assert _settings(tmp_path).jwt.cookie_name is None


@pytest.mark.parametrize(
    "origin",
    ["https://app.example.com/", "app.example.com", "ftp://app.example.com", "https://app.example.com/x",
     "https://app.example.com?x", "https://u@app.example.com", "https://app.example.com:99999", " https://a.example", "*"],
)
def test_an_allowed_origin_must_be_a_serialised_origin(tmp_path: Path, origin: str) -> None:
    """server.allowed_origins entries with a path, a query, user info, another scheme or a bad port stop start-up."""
    with pytest.raises(ConfigError, match=r"^server\.allowed_origins: "):
        _settings(tmp_path, server={"allowed_origins": [origin]})


def test_cookie_values_reads_every_cookie_header_in_order() -> None:
    """The reader finds every value of the name across several Cookie headers, trimmed and unquoted."""
    from sidecar.facts import HeaderLists
    from sidecar.tokens.credentials import cookie_values

    headers = HeaderLists()
    for value in ["a=1; access_token=x", 'theme=dark;access_token="y"', " access_token = z ;b=2", "access_tokenx=w"]:
        headers.add("cookie", value)
    assert cookie_values(headers, COOKIE) == ["x", "y", "z"]
    assert cookie_values(HeaderLists(), COOKIE) == []
