"""Token rules through the running gateway check, ``/introspect`` on loopback (A1-A16, B17, B21, B22).

A deny is exactly: 401, ``WWW-Authenticate: Bearer error="invalid_token"``,
``Cache-Control: no-store``, no identity headers, and one fixed body that never says why.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sidecar.clock import ManualClock
from tests.conftest import OMIT, SECRET, Sidecar, bearer, mint, settings_for
from tests.tokens.keys import b64url, malleate_ecdsa, pair, sign, sign_with

NOW = 1_700_000_000
ISSUER = "https://auth.example.com"
CHALLENGE = 'Bearer error="invalid_token"'
DENY_BODY = {"status": "error", "status_code": 401, "message": "Unauthorized", "data": {}}
# Words a body that "says why" would contain.
REASON_WORDS = (
    "alg", "kid", "exp", "expired", "signature", "malformed", "duplicate", "issuer", "audience",
    "type", "crit", "nbf", "iat", "bearer", "json", "base64", "segment", "key", "reason", "traceback",
)


async def check(sidecar: Sidecar, headers: Any) -> tuple[int, Any, bytes]:
    async with sidecar.public.get("/introspect", headers=headers) as resp:
        return resp.status, resp.headers, await resp.read()


async def assert_denied(sidecar: Sidecar, headers: Any) -> None:
    """The check answers exactly the RFC 6750 deny, with a body that says nothing."""
    status, h, body = await check(sidecar, headers)
    assert status == 401, body
    assert h["WWW-Authenticate"] == CHALLENGE
    assert h["Cache-Control"] == "no-store"
    assert not any(name.lower().startswith("x-auth-") for name in h)
    assert json.loads(body) == DENY_BODY
    text = body.decode().lower()
    assert not [w for w in REASON_WORDS if w in text.replace("unauthorized", "")]


async def assert_allowed(sidecar: Sidecar, headers: Any, user: str = "alice") -> str:
    """The check answers exactly 200 with identity headers; returns the session id."""
    status, h, body = await check(sidecar, headers)
    assert (status, body) == (200, b""), body
    assert h["X-Auth-User"] == user
    assert h["Cache-Control"] == "no-store"
    session: str = h["X-Auth-Session"]
    return session


# --------------------------------------------------------------------- one strict sidecar, many bad tokens


@pytest.fixture
async def strict(tmp_path: Path, start_sidecar: Callable[..., Any]) -> Sidecar:
    """HS256 + RS256 with issuer, audience and access-token type required, on a ManualClock at NOW."""
    settings = settings_for(
        tmp_path,
        jwt={
            "algorithms": ["HS256", "RS256"],
            "public_key_file": pair("rsa-1").write_pem(tmp_path),
            "issuer": ISSUER,
            "audience": ["api"],
            "token_type_claim": "type",
            "access_token_type": "access",
            "max_token_bytes": 15000,
        },
    )
    sidecar: Sidecar = await start_sidecar(settings, ManualClock(wall=float(NOW)))
    return sidecar


def good_claims(**over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "sub": "alice", "sid": "s-1", "iat": NOW, "exp": NOW + 3600, "iss": ISSUER, "aud": "api", "type": "access",
    }
    out.update(over)
    return {k: v for k, v in out.items() if v is not OMIT}


def raw(**literals: str) -> bytes:
    members = {k: json.dumps(v) for k, v in good_claims().items()}
    members.update(literals)
    return ("{" + ",".join(f'"{k}":{v}' for k, v in members.items() if v is not OMIT) + "}").encode()


HS = {"alg": "HS256"}

BAD_TOKENS: dict[str, dict[str, Callable[[], str]]] = {
    "A1-alg-none": {
        "alg-none": lambda: sign_with("HS256", {"alg": "none"}, good_claims(), SECRET).rsplit(".", 1)[0] + ".",
        "alg-NONE": lambda: sign_with("HS256", {"alg": "NONE"}, good_claims(), SECRET).rsplit(".", 1)[0] + ".",
        "alg-empty": lambda: sign_with("HS256", {"alg": ""}, good_claims(), SECRET),
        "alg-missing": lambda: sign_with("HS256", {"typ": "JWT"}, good_claims(), SECRET),
    },
    "A2-algorithm-confusion": {
        "hs256-keyed-with-rsa-pem": lambda: sign(HS, good_claims(), pair("rsa-1").public_pem),
        "hs256-keyed-with-rsa-der": lambda: sign(HS, good_claims(), pair("rsa-1").public_der),
        "hs256-keyed-with-rsa-jwk": lambda: sign(HS, good_claims(), json.dumps(pair("rsa-1").jwk()).encode()),
    },
    "A3-alg-mismatch": {
        "alg-hs256-lower": lambda: sign_with("HS256", {"alg": "hs256"}, good_claims(), SECRET),
        "alg-Rs256": lambda: sign_with("RS256", {"alg": "Rs256"}, good_claims(), pair("rsa-1")),
        "ps256-header-not-configured": lambda: sign({"alg": "PS256"}, good_claims(), pair("rsa-1")),
        "es256-token": lambda: sign({"alg": "ES256"}, good_claims(), pair("ec-p256-1")),
        "other-rsa-key": lambda: sign({"alg": "RS256"}, good_claims(), pair("rsa-2")),
    },
    "A4-hostile-kid": {
        "kid-traversal-empty-hmac": lambda: sign({"alg": "HS256", "kid": "../../../../dev/null"}, good_claims(), b""),
        "kid-sql": lambda: sign({"alg": "HS256", "kid": "' UNION SELECT 'k' --"}, good_claims(), b"k"),
        "kid-10KB": lambda: sign({"alg": "HS256", "kid": "k" * 10240}, good_claims(), SECRET),
        "kid-int": lambda: sign({"alg": "HS256", "kid": 1}, good_claims(), SECRET),
        "kid-list": lambda: sign({"alg": "HS256", "kid": ["a"]}, good_claims(), SECRET),
        "kid-null": lambda: sign({"alg": "HS256", "kid": None}, good_claims(), SECRET),
    },
    "A5-key-headers": {
        "jwk-header-attacker": lambda: sign(
            {"alg": "RS256", "jwk": pair("rsa-2").jwk()}, good_claims(), pair("rsa-2")
        ),
        "x5c-header-attacker": lambda: sign(
            {"alg": "RS256", "x5c": [base64.b64encode(pair("rsa-2").certificate_der()).decode()]},
            good_claims(),
            pair("rsa-2"),
        ),
        "jku-header-attacker": lambda: sign(
            {"alg": "RS256", "jku": "https://attacker.example/jwks"}, good_claims(), pair("rsa-2")
        ),
    },
    "A6-A7-time-claims": {
        "exp-missing": lambda: sign(HS, good_claims(exp=OMIT), SECRET),
        "exp-past": lambda: sign(HS, good_claims(exp=NOW - 1), SECRET),
        "exp-now": lambda: sign(HS, good_claims(exp=NOW), SECRET),
        "nbf-future": lambda: sign(HS, good_claims(nbf=NOW + 1), SECRET),
        "iat-future": lambda: sign(HS, good_claims(iat=NOW + 1), SECRET),
        "exp-string": lambda: sign(HS, good_claims(exp=str(NOW + 3600)), SECRET),
        "exp-null": lambda: sign(HS, good_claims(exp=None), SECRET),
        "exp-list": lambda: sign(HS, good_claims(exp=[NOW + 3600]), SECRET),
        "exp-true": lambda: sign(HS, good_claims(exp=True), SECRET),
        "exp-NaN": lambda: sign(HS, raw(exp="NaN"), SECRET),
        "exp-Infinity": lambda: sign(HS, raw(exp="Infinity"), SECRET),
        "exp-1e400": lambda: sign(HS, raw(exp="1e400"), SECRET),
        "exp-huge-int": lambda: sign(HS, raw(exp="9" * 4400), SECRET),
    },
    "A8-iss-aud": {
        "iss-evil-suffix": lambda: sign(HS, good_claims(iss=ISSUER + ".evil"), SECRET),
        "iss-prefix": lambda: sign(HS, good_claims(iss=ISSUER[:-1]), SECRET),
        "iss-list": lambda: sign(HS, good_claims(iss=[ISSUER]), SECRET),
        "iss-missing": lambda: sign(HS, good_claims(iss=OMIT), SECRET),
        "aud-wrong": lambda: sign(HS, good_claims(aud="apix"), SECRET),
        "aud-partial": lambda: sign(HS, good_claims(aud="ap"), SECRET),
        "aud-missing": lambda: sign(HS, good_claims(aud=OMIT), SECRET),
    },
    "A9-token-type": {
        "refresh-token": lambda: sign(HS, good_claims(type="refresh"), SECRET),
        "type-Access": lambda: sign(HS, good_claims(type="Access"), SECRET),
        "type-missing": lambda: sign(HS, good_claims(type=OMIT), SECRET),
    },
    "A10-crit": {
        "crit-unknown": lambda: sign({"alg": "HS256", "crit": ["urn:x"], "urn:x": 1}, good_claims(), SECRET),
        "crit-b64": lambda: sign({"alg": "HS256", "crit": ["b64"], "b64": False}, good_claims(), SECRET),
    },
    "A11-malformed": {
        "two-segments": lambda: ".".join(sign(HS, good_claims(), SECRET).split(".")[:2]),
        "four-segments": lambda: sign(HS, good_claims(), SECRET) + ".e30",
        "jwe": lambda: ".".join([b64url(b'{"alg":"RSA-OAEP","enc":"A256GCM"}'), "a" * 342, "aXY", "Y2lwaGVy", "dGFn"]),
        "junk-base64": lambda: "e30.e30.!!!",
        "non-canonical-signature": lambda: _tweak_last_char(sign(HS, good_claims(), SECRET)),
        "non-utf8-payload": lambda: sign(HS, raw(sub='"\xff"').replace(b"\xc3\xbf", b"\xff"), SECRET),
        "payload-array": lambda: sign(HS, b"[" + json.dumps(good_claims()).encode() + b"]", SECRET),
        "payload-string": lambda: sign(HS, b'"alice"', SECRET),
        "payload-nested-5000": lambda: sign(HS, raw(x="[" * 5000 + "]" * 5000), SECRET),
        "payload-nested-40": lambda: sign(HS, raw(x="[" * 40 + "]" * 40), SECRET),
    },
    "A12-identifiers": {
        "sub-lone-surrogate": lambda: sign(HS, raw(sub='"\\ud800"'), SECRET),
        "sid-lone-surrogate": lambda: sign(HS, raw(sid='"\\udfff"'), SECRET),
        "sub-newline": lambda: sign(HS, good_claims(sub="alice\r\nX-Auth-User: admin"), SECRET),
        "sub-nul": lambda: sign(HS, good_claims(sub="al\x00ice"), SECRET),
        "sub-10KB": lambda: sign(HS, good_claims(sub="a" * 10240), SECRET),
        "sub-non-ascii": lambda: sign(HS, good_claims(sub="\u00e5lice"), SECRET),
        "sub-empty": lambda: sign(HS, good_claims(sub=""), SECRET),
        "sub-bool": lambda: sign(HS, good_claims(sub=True), SECRET),
        "sub-float": lambda: sign(HS, good_claims(sub=1.5), SECRET),
        "jti-control": lambda: sign(HS, good_claims(sid=OMIT, jti="j\x1b[31m"), SECRET),
    },
    "A13-duplicate-keys": {
        "duplicate-header-alg": lambda: sign_with("HS256", b'{"alg":"none","alg":"HS256"}', good_claims(), SECRET),
        "duplicate-payload-sub": lambda: sign(
            HS, raw().replace(b'"sub":"alice"', b'"sub":"alice","sub":"admin"'), SECRET
        ),
    },
}


def _tweak_last_char(token: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return token[:-1] + alphabet[alphabet.index(token[-1]) | 3]


async def test_the_strict_sidecar_allows_a_good_token(strict: Sidecar) -> None:
    """The baseline: a token meeting every rule is allowed, HS256 and RS256 alike."""
    await assert_allowed(strict, bearer(sign(HS, good_claims(), SECRET)))
    await assert_allowed(strict, bearer(sign({"alg": "RS256"}, good_claims(sid="s-2"), pair("rsa-1"))))


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_tokens_get_the_plain_deny(strict: Sidecar, case: str) -> None:
    """Every hostile token of the case is answered with exactly 401 + Bearer challenge + no-store, never 5xx or 200."""
    failures = {}
    for name, build in BAD_TOKENS[case].items():
        try:
            await assert_denied(strict, {"Authorization": f"Bearer {build()}"})
        except AssertionError as e:
            failures[name] = str(e).splitlines()[0]
    assert failures == {}


async def test_deny_bodies_are_identical_whatever_the_reason(strict: Sidecar) -> None:
    """All denies share one body byte for byte, so the reason cannot be read off the response."""
    bodies = set()
    for group in BAD_TOKENS.values():
        for build in group.values():
            _, _, body = await check(strict, bearer(build()))
            bodies.add(body)
    _, _, body = await check(strict, {})
    bodies.add(body)
    assert len(bodies) == 1


# --------------------------------------------------------------------- time on a controlled clock


@pytest.mark.parametrize("leeway", [0, 30])
async def test_expiry_boundary_through_the_check(
    tmp_path: Path, start_sidecar: Callable[..., Any], leeway: int
) -> None:
    """A token is allowed until exp + leeway and refused from that second on, cached or not (A7)."""
    clock = ManualClock(wall=float(NOW))
    sidecar: Sidecar = await start_sidecar(settings_for(tmp_path, jwt={"leeway_seconds": leeway}), clock)
    token = mint(now=NOW, ttl=60)
    await assert_allowed(sidecar, bearer(token))
    clock.advance(60 + leeway - 1)
    await assert_allowed(sidecar, bearer(token))
    clock.advance(1)
    await assert_denied(sidecar, bearer(token))


@pytest.mark.parametrize(
    "case",
    [("nbf", 31, 30, False), ("nbf", 30, 30, True), ("iat", 31, 30, False), ("iat", 30, 30, True),
     ("nbf", 1, 0, False), ("iat", 1, 0, False)],
    ids=lambda c: f"{c[0]}+{c[1]}s-leeway{c[2]}",
)
async def test_future_nbf_and_iat_through_the_check(
    tmp_path: Path, start_sidecar: Callable[..., Any], case: tuple[str, int, int, bool]
) -> None:
    """nbf/iat in the future are allowed within the leeway and refused beyond it (A7)."""
    claim, offset, leeway, allowed = case
    sidecar: Sidecar = await start_sidecar(
        settings_for(tmp_path, jwt={"leeway_seconds": leeway}), ManualClock(wall=float(NOW))
    )
    extra: dict[str, Any] = {claim: NOW + offset}
    token = mint(now=NOW, **extra)
    if allowed:
        await assert_allowed(sidecar, bearer(token))
    else:
        await assert_denied(sidecar, bearer(token))


# --------------------------------------------------------------------- Authorization header spellings


async def test_authorization_header_spellings(sidecar: Sidecar) -> None:
    """Any scheme case and extra spaces pass; missing, Basic, tab, two headers, trailing garbage are denied (B21)."""
    token = mint("alice")
    await assert_allowed(sidecar, {"Authorization": f"bearer {token}"})
    await assert_allowed(sidecar, {"Authorization": f"BEARER {token}"})
    await assert_allowed(sidecar, {"Authorization": f"Bearer  {token}"})
    await assert_allowed(sidecar, {"Authorization": f"Bearer {token}  "})
    for headers in (
        {},
        {"Authorization": ""},
        {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
        {"Authorization": token},
        {"Authorization": f"Bearer\t{token}"},
        {"Authorization": f"Bearer {token} garbage"},
        {"Authorization": f"Bearer {token}garbage"},
        {"Authorization": f"Bearer {token},"},
        [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")],
        [("Authorization", f"Bearer {token}"), ("Authorization", "Basic YWxpY2U6c2VjcmV0")],
        [("Authorization", "Bearer not-a-token"), ("Authorization", f"Bearer {token}")],
    ):
        await assert_denied(sidecar, headers)


async def test_12kb_authorization_header_is_a_plain_deny(sidecar: Sidecar) -> None:
    """A 12 KB Authorization header (within the HTTP parser's limit) gets the check's own 401 (A14)."""
    await assert_denied(sidecar, {"Authorization": "Bearer " + "a" * 12 * 1024})
    await assert_denied(sidecar, {"Authorization": "Bearer " + mint(pad="x" * 9 * 1024)})


async def test_20kb_authorization_header_gets_one_consistent_4xx(sidecar: Sidecar) -> None:
    """A 20 KB Authorization header, beyond the parser's limit, gets the same 400 or 401 every time, never 5xx (A14)."""
    statuses = set()
    for _ in range(3):
        status, _, _ = await check(sidecar, {"Authorization": "Bearer " + "a" * 20 * 1024})
        statuses.add(status)
    assert len(statuses) == 1
    assert statuses <= {400, 401}
    # And the server is still serving afterwards.
    await assert_allowed(sidecar, bearer(mint("alice")))


async def test_client_sent_identity_headers_do_not_pass(sidecar: Sidecar) -> None:
    """X-Auth-User sent by the client is never echoed as identity: deny has none, allow has the token's."""
    await assert_denied(sidecar, {"X-Auth-User": "admin", "X-Auth-Session": "x"})
    await assert_allowed(sidecar, {**bearer(mint("alice")), "X-Auth-User": "admin"}, user="alice")


# --------------------------------------------------------------------- identity


async def test_integer_user_id_claim_becomes_the_user_header(
    tmp_path: Path, start_sidecar: Callable[..., Any]
) -> None:
    """With user_claim=user_id, a token with user_id 123 is allowed with X-Auth-User "123" (A12)."""
    sidecar: Sidecar = await start_sidecar(settings_for(tmp_path, jwt={"user_claim": "user_id"}))
    await assert_allowed(sidecar, bearer(mint("ignored", user_id=123)), user="123")
    await assert_denied(sidecar, bearer(mint("alice")))
    await assert_denied(sidecar, bearer(mint("alice", user_id="\ud800")))


# --------------------------------------------------------------------- algorithm families end to end


def key_file_settings(tmp_path: Path, alg: str, key_name: str) -> Any:
    """Settings for one asymmetric algorithm with the named key pair's public PEM file."""
    key_file = pair(key_name).write_pem(tmp_path)
    return settings_for(tmp_path, jwt={"algorithms": [alg], "secret": "", "public_key_file": key_file})


@pytest.mark.parametrize(
    ("alg", "key_name"), [("RS256", "rsa-1"), ("PS256", "rsa-1"), ("ES256", "ec-p256-1"), ("EdDSA", "ed-1")]
)
async def test_public_key_file_algorithms_through_the_check(
    tmp_path: Path, start_sidecar: Callable[..., Any], alg: str, key_name: str
) -> None:
    """A sidecar configured with a PEM public key allows its tokens and denies HS256 keyed with that PEM (A2)."""
    key = pair(key_name)
    settings = key_file_settings(tmp_path, alg, key_name)
    sidecar: Sidecar = await start_sidecar(settings)
    await assert_allowed(sidecar, bearer(mint(key=key.private, algorithm=alg)))
    await assert_denied(sidecar, bearer(sign({"alg": "HS256"}, {"sub": "alice", "exp": 2**31}, key.public_pem)))


@pytest.fixture
async def jwks_app(aiohttp_server: Callable[..., Any]) -> tuple[Any, list[str], dict[str, Any]]:
    """A JWKS server: (server, request log, path -> response)."""
    log: list[str] = []
    routes: dict[str, Any] = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        log.append(request.path)
        make = routes.get(request.path)
        if make is None:
            return web.Response(status=404)
        response: web.StreamResponse = make()
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = await aiohttp_server(app)
    return server, log, routes


async def test_jwks_url_through_the_check(
    tmp_path: Path, start_sidecar: Callable[..., Any], jwks_app: tuple[Any, list[str], dict[str, Any]]
) -> None:
    """Keys fetched from jwks_url verify tokens end to end; jku pointing elsewhere is never fetched (A5)."""
    server, log, routes = jwks_app
    jwks = {"keys": [pair("ec-p256-1").jwk(kid="k1"), pair("rsa-1").jwk(kid="k2")]}
    routes["/jwks"] = lambda: web.json_response(jwks)
    routes["/attacker"] = lambda: web.json_response({"keys": [pair("ec-p256-2").jwk(kid="k1")]})
    settings = settings_for(
        tmp_path, jwt={"algorithms": ["ES256", "RS256"], "secret": "", "jwks_url": str(server.make_url("/jwks"))}
    )
    sidecar: Sidecar = await start_sidecar(settings)
    await assert_allowed(sidecar, bearer(mint(key=pair("ec-p256-1").private, algorithm="ES256", headers={"kid": "k1"})))
    await assert_allowed(sidecar, bearer(mint(key=pair("rsa-1").private, algorithm="RS256", headers={"kid": "k2"})))
    forged = mint(
        key=pair("ec-p256-2").private,
        algorithm="ES256",
        headers={"kid": "k1", "jku": str(server.make_url("/attacker"))},
    )
    await assert_denied(sidecar, bearer(forged))
    assert log == ["/jwks"]


async def test_jwks_redirect_through_the_check(
    tmp_path: Path, start_sidecar: Callable[..., Any], jwks_app: tuple[Any, list[str], dict[str, Any]]
) -> None:
    """A jwks_url answering with a redirect yields no keys: every token is denied, the target never fetched (A5)."""
    server, log, routes = jwks_app
    routes["/jwks"] = lambda: web.Response(status=302, headers={"Location": str(server.make_url("/real"))})
    routes["/real"] = lambda: web.json_response({"keys": [pair("ec-p256-1").jwk(kid="k1")]})
    jwks_url = str(server.make_url("/jwks"))
    settings = settings_for(tmp_path, jwt={"algorithms": ["ES256"], "secret": "", "jwks_url": jwks_url})
    sidecar: Sidecar = await start_sidecar(settings)
    await assert_denied(sidecar, bearer(mint(key=pair("ec-p256-1").private, algorithm="ES256", headers={"kid": "k1"})))
    assert "/real" not in log


# --------------------------------------------------------------------- A16: revocation survives re-encoding


@pytest.mark.parametrize("sid", [True, None], ids=["sid", "no-sid-no-jti"])
async def test_revoked_es256_token_stays_revoked_when_re_encoded(
    tmp_path: Path, start_sidecar: Callable[..., Any], sid: bool | None
) -> None:
    """Revoke an ES256 token's session via the API; its (r, n - s) and padded twins are denied too (A16)."""
    key = pair("ec-p256-1")
    settings = key_file_settings(tmp_path, "ES256", key.name)
    sidecar: Sidecar = await start_sidecar(settings)
    token = mint("alice", key=key.private, algorithm="ES256", sid=sid)
    twin = malleate_ecdsa(token, "secp256r1")
    padded = token + "="
    assert len({token, twin, padded}) == 3

    session_id = await assert_allowed(sidecar, bearer(token))
    # Before the revocation the twins are the same session, not new ones.
    assert await assert_allowed(sidecar, bearer(twin)) == session_id
    assert await assert_allowed(sidecar, bearer(padded)) == session_id

    async with sidecar.public.delete(f"/api/v1/sessions/{session_id}/", headers=bearer(token)) as resp:
        assert resp.status == 204

    for t in (token, twin, padded, malleate_ecdsa(twin, "secp256r1")):
        await assert_denied(sidecar, bearer(t))


async def test_unused_re_encoding_of_a_revoked_token_is_denied(
    tmp_path: Path, start_sidecar: Callable[..., Any]
) -> None:
    """A twin never seen before the revocation is denied: revocation keys on the session, not the bytes (A16)."""
    key = pair("ec-p256-1")
    settings = key_file_settings(tmp_path, "ES256", key.name)
    sidecar: Sidecar = await start_sidecar(settings)
    token = mint("alice", key=key.private, algorithm="ES256")
    session_id = await assert_allowed(sidecar, bearer(token))
    async with sidecar.public.delete(f"/api/v1/sessions/{session_id}", headers=bearer(token)) as resp:
        assert resp.status == 204
    await assert_denied(sidecar, bearer(malleate_ecdsa(token, "secp256r1")))
