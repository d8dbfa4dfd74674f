"""Keys from a JWKS URL, served by a real aiohttp server on loopback (A2, A4, A5, A16).

The JWKS server records every request path, so "never fetched" and "at most one fetch
per cool-down" are counted, not assumed. The fetch is the production one
(``sidecar.web.outbound.jwks_fetcher``: no redirects, bounded size).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.clock import ManualClock
from sidecar.errors import InvalidTokenError, KeysUnavailableError
from sidecar.tokens import JwksKeys, TokenVerifier
from sidecar.tokens.keys import keys_from_jwks
from sidecar.web.outbound import jwks_fetcher
from tests.conftest import SECRET, settings_for
from tests.tokens.keys import KEY_FOR_ALG, b64url, pair, sign

NOW = 1_700_000_000
COOLDOWN = 30.0
CACHE = 300.0


def claims(**over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"sub": "alice", "sid": "s-1", "iat": NOW, "exp": NOW + 3600}
    out.update(over)
    return out


@dataclass
class JwksServer:
    """A loopback HTTP server answering from a table and logging every request path."""

    responses: dict[str, tuple[int, bytes, dict[str, str]]] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.log.append(request.path)
        status, body, headers = self.responses.get(request.path, (404, b"not found", {}))
        return web.Response(status=status, body=body, headers=headers)

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    def publish(self, path: str, keys: list[dict[str, Any]]) -> None:
        body = json.dumps({"keys": keys}).encode()
        self.responses[path] = (200, body, {"Content-Type": "application/json"})

    def answer(self, path: str, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.responses[path] = (status, body, headers or {})

    def hits(self, path: str) -> int:
        return self.log.count(path)


@pytest.fixture
async def jwks_server(aiohttp_server: Callable[..., Any]) -> JwksServer:
    srv = JwksServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", srv.handle)
    srv.server = await aiohttp_server(app)
    return srv


@dataclass
class Setup:
    verifier: TokenVerifier
    jwks: JwksKeys


@pytest.fixture
async def setup(
    tmp_path: Path, clock: ManualClock, jwks_server: JwksServer
) -> AsyncIterator[Callable[..., Any]]:
    """Factory: a TokenVerifier over a JwksKeys on the test server, first fetch done like at start-up."""
    made: list[JwksKeys] = []
    async with aiohttp.ClientSession() as http:

        async def make(algorithms: list[str], path: str = "/jwks", *, cache: float = CACHE, **jwt: Any) -> Setup:
            jwt.setdefault("secret", "")
            s = settings_for(tmp_path, jwt={"algorithms": algorithms, "jwks_url": jwks_server.url(path), **jwt})
            jwks = JwksKeys(
                jwks_server.url(path),
                jwks_fetcher(http),
                algorithms,
                clock,
                cache_seconds=cache,
                refresh_cooldown_seconds=COOLDOWN,
            )
            made.append(jwks)
            with contextlib.suppress(KeysUnavailableError):  # the sidecar starts anyway, refusing tokens
                await jwks.refresh()
            return Setup(TokenVerifier(s.jwt, clock, jwks), jwks)

        yield make
        for j in made:
            await j.close()


async def reason(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(InvalidTokenError) as e:
        await verifier.verify(token)
    return e.value.reason


# --------------------------------------------------------------------- algorithm families


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "ES512", "EdDSA"])
async def test_every_asymmetric_algorithm_verifies_from_a_jwks(
    setup: Callable[..., Any], jwks_server: JwksServer, alg: str
) -> None:
    """A token signed by a key published in the JWKS verifies, with its kid and without one."""
    key = pair(KEY_FOR_ALG[alg])
    jwks_server.publish("/jwks", [key.jwk(kid="k1")])
    s: Setup = await setup([alg])
    with_kid = await s.verifier.verify(sign({"alg": alg, "kid": "k1"}, claims(), key))
    without_kid = await s.verifier.verify(sign({"alg": alg}, claims(sid="s-2"), key))
    assert (with_kid.user_id, with_kid.session_key, without_kid.session_key) == ("alice", "sid:s-1", "sid:s-2")
    assert jwks_server.hits("/jwks") == 1


async def test_kid_selects_the_key(setup: Callable[..., Any], jwks_server: JwksServer) -> None:
    """With several keys, the token's kid picks one; a signature by another published key under that kid fails."""
    jwks_server.publish("/jwks", [pair("rsa-1").jwk(kid="a"), pair("rsa-2").jwk(kid="b")])
    s: Setup = await setup(["RS256"])
    assert (await s.verifier.verify(sign({"alg": "RS256", "kid": "b"}, claims(), pair("rsa-2")))).user_id == "alice"
    assert await reason(s.verifier, sign({"alg": "RS256", "kid": "a"}, claims(), pair("rsa-2"))) == "bad_signature"


async def test_jwk_alg_pins_the_key_to_one_algorithm(setup: Callable[..., Any], jwks_server: JwksServer) -> None:
    """An RSA JWK with "alg": "RS256" never verifies PS256 (one algorithm per key, A3)."""
    key = pair("rsa-1")
    jwks_server.publish("/jwks", [key.jwk(kid="k1", alg="RS256")])
    s: Setup = await setup(["RS256", "PS256"])
    assert (await s.verifier.verify(sign({"alg": "RS256", "kid": "k1"}, claims(), key))).user_id == "alice"
    assert await reason(s.verifier, sign({"alg": "PS256", "kid": "k1"}, claims(), key)) == "no_key"


async def test_es256_token_signed_with_a_p384_key_is_refused(
    setup: Callable[..., Any], jwks_server: JwksServer
) -> None:
    """A P-384 key in the JWKS serves ES384 only: an ES256 token signed with it is refused (A3)."""
    key = pair("ec-p384-1")
    jwks_server.publish("/jwks", [key.jwk(kid="k1")])
    s: Setup = await setup(["ES256", "ES384"])
    from tests.tokens.keys import sign_with

    token = sign_with("ES384", {"alg": "ES256", "kid": "k1"}, claims(), key)
    assert await reason(s.verifier, token) == "no_key"


# --------------------------------------------------------------------- A2/A5: symmetric keys in a JWKS


async def test_oct_key_in_the_jwks_is_never_used(setup: Callable[..., Any], jwks_server: JwksServer) -> None:
    """A published symmetric (oct) key is ignored: an HS256 token signed with it is refused."""
    published = b"published-hmac-key-published-hmac-key-0123"
    jwks_server.publish(
        "/jwks",
        [{"kty": "oct", "kid": "hmac", "k": b64url(published), "alg": "HS256"}, pair("rsa-1").jwk(kid="rsa")],
    )
    s: Setup = await setup(["HS256", "RS256"], secret=SECRET)
    assert await reason(s.verifier, sign({"alg": "HS256", "kid": "hmac"}, claims(), published)) == "bad_signature"
    # The configured secret still works, and so does the RSA key.
    assert (await s.verifier.verify(sign({"alg": "HS256"}, claims(), SECRET))).user_id == "alice"
    assert (await s.verifier.verify(sign({"alg": "RS256", "kid": "rsa"}, claims(), pair("rsa-1")))).user_id == "alice"


async def test_hs256_keyed_with_the_jwks_rsa_key_is_refused(setup: Callable[..., Any], jwks_server: JwksServer) -> None:
    """Algorithm confusion against a JWKS key: HMAC keyed with its JWK JSON or PEM is refused (A2)."""
    key = pair("rsa-1")
    jwks_server.publish("/jwks", [key.jwk(kid="k1")])
    s: Setup = await setup(["HS256", "RS256"], secret=SECRET)
    jwk_json = json.dumps(key.jwk(kid="k1")).encode()
    for material in (key.public_pem, key.public_der, jwk_json, jwks_server.responses["/jwks"][1]):
        assert await reason(s.verifier, sign({"alg": "HS256", "kid": "k1"}, claims(), material)) == "bad_signature"


# --------------------------------------------------------------------- A4: kid and the refresh cool-down


async def test_unknown_kids_cause_at_most_one_fetch_per_cooldown(
    setup: Callable[..., Any], jwks_server: JwksServer, clock: ManualClock
) -> None:
    """A flood of unknown kids costs at most one JWKS fetch per cool-down, sequential or concurrent (A4)."""
    jwks_server.publish("/jwks", [pair("rsa-1").jwk(kid="k1")])
    s: Setup = await setup(["RS256"])
    assert jwks_server.hits("/jwks") == 1

    def flood() -> list[str]:
        return [sign({"alg": "RS256", "kid": str(uuid.uuid4())}, claims(), pair("rsa-2")) for _ in range(25)]

    for token in flood():
        await reason(s.verifier, token)
    assert jwks_server.hits("/jwks") == 1  # still inside the cool-down of the start-up fetch

    clock.advance(COOLDOWN)
    for token in flood():
        await reason(s.verifier, token)
    assert jwks_server.hits("/jwks") == 2

    clock.advance(COOLDOWN)
    results = await asyncio.gather(*(s.verifier.verify(t) for t in flood()), return_exceptions=True)
    assert all(isinstance(r, InvalidTokenError) for r in results)
    assert jwks_server.hits("/jwks") == 3


@pytest.mark.parametrize(
    "kid",
    ["../../../../dev/null", "/etc/passwd", "x' UNION SELECT 'attacker' --", "k1/../k1", "k1\u0000", "K1", " k1"],
)
async def test_hostile_kid_string_finds_no_key(
    setup: Callable[..., Any], jwks_server: JwksServer, clock: ManualClock, kid: str
) -> None:
    """A kid is only ever compared with published kids: traversal, SQL or near-miss kids find no key (A4)."""
    jwks_server.publish("/jwks", [pair("rsa-1").jwk(kid="k1")])
    s: Setup = await setup(["RS256"])
    clock.advance(COOLDOWN)
    for key in (pair("rsa-1"), pair("rsa-2")):
        assert await reason(s.verifier, sign({"alg": "RS256", "kid": kid}, claims(), key)) == "no_key"
    assert jwks_server.hits("/jwks") == 2
    assert set(jwks_server.log) == {"/jwks"}


@pytest.mark.parametrize("kid", ["a" * 10240, "a" * 257, "", 1, ["k1"], {"k": "k1"}, None, True])
async def test_kid_that_is_not_a_short_string_is_refused_without_a_fetch(
    setup: Callable[..., Any], jwks_server: JwksServer, clock: ManualClock, kid: Any
) -> None:
    """A 10 KB, empty, null or non-string kid is refused before any key lookup: no JWKS fetch (A4)."""
    jwks_server.publish("/jwks", [pair("rsa-1").jwk(kid="k1")])
    s: Setup = await setup(["RS256"], max_token_bytes=65536)
    clock.advance(COOLDOWN)
    assert await reason(s.verifier, sign({"alg": "RS256", "kid": kid}, claims(), pair("rsa-1"))) == "bad_kid"
    assert jwks_server.hits("/jwks") == 1


async def test_rotated_in_key_is_picked_up_after_the_cooldown(
    setup: Callable[..., Any], jwks_server: JwksServer, clock: ManualClock
) -> None:
    """A key published after start-up verifies once the cool-down since the last fetch has passed."""
    jwks_server.publish("/jwks", [pair("rsa-1").jwk(kid="k1")])
    s: Setup = await setup(["RS256"])
    new_token = sign({"alg": "RS256", "kid": "k2"}, claims(), pair("rsa-2"))
    assert await reason(s.verifier, new_token) == "no_key"

    jwks_server.publish("/jwks", [pair("rsa-1").jwk(kid="k1"), pair("rsa-2").jwk(kid="k2")])
    clock.advance(COOLDOWN - 1)
    assert await reason(s.verifier, new_token) == "no_key"
    assert jwks_server.hits("/jwks") == 1

    clock.advance(1)
    assert (await s.verifier.verify(new_token)).user_id == "alice"
    assert jwks_server.hits("/jwks") == 2


async def test_withdrawn_key_stops_verifying_after_a_refresh(
    setup: Callable[..., Any], jwks_server: JwksServer, clock: ManualClock
) -> None:
    """Once a refresh no longer lists a key, tokens it verified are refused, cached ones included."""
    jwks_server.publish("/jwks", [pair("rsa-1").jwk(kid="k1"), pair("rsa-2").jwk(kid="k2")])
    s: Setup = await setup(["RS256"])
    old = sign({"alg": "RS256", "kid": "k1"}, claims(), pair("rsa-1"))
    new = sign({"alg": "RS256", "kid": "k2"}, claims(sid="s-2"), pair("rsa-2"))
    assert (await s.verifier.verify(old)).user_id == "alice"

    jwks_server.publish("/jwks", [pair("rsa-2").jwk(kid="k2"), pair("ec-p256-1").jwk(kid="k3")])
    clock.advance(COOLDOWN)
    # Any miss refreshes: here a token whose kid is not known yet.
    await reason(s.verifier, sign({"alg": "RS256", "kid": "k4"}, claims(), pair("rsa-2")))
    assert jwks_server.hits("/jwks") == 2
    assert await reason(s.verifier, old) == "no_key"
    assert (await s.verifier.verify(new)).user_id == "alice"


@pytest.mark.parametrize("kid", ["k1", None], ids=["same-kid", "no-kid"])
async def test_key_replaced_under_the_same_kid_stops_verifying(
    setup: Callable[..., Any], jwks_server: JwksServer, clock: ManualClock, kid: str | None
) -> None:
    """A key swapped for another under the same kid (or both without kid) is withdrawn: cached tokens are refused."""
    jwks_server.publish("/jwks", [pair("rsa-1").jwk(kid=kid)])
    s: Setup = await setup(["RS256"])
    header = {"alg": "RS256"} if kid is None else {"alg": "RS256", "kid": kid}
    old = sign(header, claims(), pair("rsa-1"))
    assert (await s.verifier.verify(old)).user_id == "alice"

    jwks_server.publish("/jwks", [pair("rsa-2").jwk(kid=kid)])
    clock.advance(COOLDOWN)
    await s.jwks.refresh()
    assert await reason(s.verifier, old) == "bad_signature"
    assert (await s.verifier.verify(sign(header, claims(), pair("rsa-2")))).user_id == "alice"


async def test_withdrawn_key_stops_verifying_cached_tokens_once_the_jwks_is_stale(
    setup: Callable[..., Any], jwks_server: JwksServer, clock: ManualClock
) -> None:
    """A token kept alive only by the verified cache is refused soon after the JWKS lifetime once its key is gone."""
    jwks_server.publish("/jwks", [pair("rsa-1").jwk(kid="k1")])
    s: Setup = await setup(["RS256"])
    old = sign({"alg": "RS256", "kid": "k1"}, claims(), pair("rsa-1"))
    assert (await s.verifier.verify(old)).user_id == "alice"

    jwks_server.publish("/jwks", [pair("rsa-2").jwk(kid="k2")])
    clock.advance(CACHE)
    outcomes = []
    for _ in range(50):
        try:
            await s.verifier.verify(old)
            outcomes.append("allow")
        except InvalidTokenError:
            outcomes.append("deny")
            break
        await asyncio.sleep(0.01)  # the refresh of a stale JWKS runs in the background
    assert outcomes[-1] == "deny", outcomes
    assert jwks_server.hits("/jwks") == 2


async def test_stale_jwks_is_refreshed_once_while_cached_tokens_keep_verifying(
    setup: Callable[..., Any], jwks_server: JwksServer, clock: ManualClock
) -> None:
    """Past the JWKS lifetime, a burst of cached tokens starts one background fetch, not one each."""
    jwks_server.publish("/jwks", [pair("rsa-1").jwk(kid="k1")])
    s: Setup = await setup(["RS256"])
    token = sign({"alg": "RS256", "kid": "k1"}, claims(), pair("rsa-1"))
    await s.verifier.verify(token)
    clock.advance(CACHE)
    results = await asyncio.gather(*(s.verifier.verify(token) for _ in range(50)))
    assert {r.user_id for r in results} == {"alice"}
    for _ in range(50):
        if jwks_server.hits("/jwks") == 2:
            break
        await asyncio.sleep(0.01)
    assert (await s.verifier.verify(token)).user_id == "alice"
    assert jwks_server.hits("/jwks") == 2


async def test_failed_refresh_keeps_the_last_good_keys(
    setup: Callable[..., Any], jwks_server: JwksServer, clock: ManualClock
) -> None:
    """An unreachable or broken JWKS during a refresh keeps the keys already loaded."""
    key = pair("rsa-1")
    jwks_server.publish("/jwks", [key.jwk(kid="k1")])
    s: Setup = await setup(["RS256"])
    for status, body in ((500, b"oops"), (200, b"not json"), (200, b'{"keys": 1}')):
        jwks_server.answer("/jwks", status, body)
        clock.advance(COOLDOWN)
        await reason(s.verifier, sign({"alg": "RS256", "kid": "k9"}, claims(), key))
        good = sign({"alg": "RS256", "kid": "k1"}, claims(sid=str(status)), key)
        assert (await s.verifier.verify(good)).user_id == "alice"
    assert jwks_server.hits("/jwks") == 4


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, b"error"),
        (404, b""),
        (200, b"not json"),
        (200, b"[]"),
        (200, b'{"keys": {}}'),
        (200, b'{"keys": [1, "x", null, {"kty": "RSA"}]}'),
        (200, b"[" * 100_000 + b"]" * 100_000),
        (200, b'{"keys": []}' + b" " * (2 * 1024 * 1024)),
        (200, b"\xff\xfe"),
    ],
    ids=["500", "404", "not-json", "array", "keys-object", "junk-keys", "deeply-nested", "2MB", "not-utf8"],
)
async def test_broken_jwks_loads_no_keys_and_denies(
    setup: Callable[..., Any], jwks_server: JwksServer, status: int, body: bytes
) -> None:
    """A JWKS endpoint that errs or serves junk leaves no keys: tokens are refused, nothing crashes."""
    jwks_server.answer("/jwks", status, body)
    s: Setup = await setup(["RS256"])
    assert await reason(s.verifier, sign({"alg": "RS256", "kid": "k1"}, claims(), pair("rsa-1"))) == "no_key"


# --------------------------------------------------------------------- A5: key-carrying headers, redirects


@pytest.mark.parametrize("member", ["jku", "x5u", "jwk", "x5c"])
async def test_key_carrying_headers_are_neither_fetched_nor_used(
    setup: Callable[..., Any], jwks_server: JwksServer, clock: ManualClock, member: str
) -> None:
    """jku/x5u URLs are never fetched and jwk/x5c keys never used: the attacker-signed token is refused (A5)."""
    attacker = pair("rsa-2")
    jwks_server.publish("/jwks", [pair("rsa-1").jwk(kid="k1")])
    jwks_server.publish("/attacker/jwks.json", [attacker.jwk(kid="evil")])
    jwks_server.answer("/attacker/cert.pem", 200, attacker.public_pem)
    value: Any = {
        "jku": jwks_server.url("/attacker/jwks.json"),
        "x5u": jwks_server.url("/attacker/cert.pem"),
        "jwk": attacker.jwk(kid="evil"),
        "x5c": [base64.b64encode(attacker.certificate_der()).decode()],
    }[member]
    s: Setup = await setup(["RS256"])
    clock.advance(COOLDOWN)
    for kid in ("evil", "k1"):
        token = sign({"alg": "RS256", "kid": kid, member: value}, claims(), attacker)
        assert await reason(s.verifier, token) in {"no_key", "bad_signature"}
    assert set(jwks_server.log) == {"/jwks"}


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_jwks_endpoint_that_redirects_loads_no_keys(
    setup: Callable[..., Any], jwks_server: JwksServer, clock: ManualClock, status: int
) -> None:
    """A redirect from the JWKS URL is not followed: no keys, tokens refused, the target never fetched (A5)."""
    key = pair("rsa-1")
    jwks_server.answer("/jwks", status, b"", {"Location": jwks_server.url("/moved/jwks")})
    jwks_server.publish("/moved/jwks", [key.jwk(kid="k1")])
    s: Setup = await setup(["RS256"])
    assert not s.jwks.loaded
    clock.advance(COOLDOWN)
    assert await reason(s.verifier, sign({"alg": "RS256", "kid": "k1"}, claims(), key)) == "no_key"
    assert jwks_server.hits("/moved/jwks") == 0


async def test_fetcher_refuses_redirects_itself(jwks_server: JwksServer) -> None:
    """jwks_fetcher raises KeysUnavailableError on a 302 rather than following it."""
    jwks_server.answer("/jwks", 302, b"", {"Location": jwks_server.url("/elsewhere")})
    async with aiohttp.ClientSession() as http:
        with pytest.raises(KeysUnavailableError, match="302"):
            await jwks_fetcher(http)(jwks_server.url("/jwks"))
    assert jwks_server.log == ["/jwks"]


# --------------------------------------------------------------------- keys_from_jwks


def test_keys_from_jwks_takes_only_usable_public_signature_keys() -> None:
    """oct keys, use=enc keys, non-string kids, junk entries and keys no algorithm may use are skipped."""
    rsa, ec384, ed = pair("rsa-1"), pair("ec-p384-1"), pair("ed-1")
    document = {
        "keys": [
            {"kty": "oct", "kid": "hmac", "k": b64url(b"x" * 32)},
            rsa.jwk(kid="enc", use="enc"),
            rsa.jwk(kid=None) | {"kid": 7},
            "not an object",
            {"kty": "RSA", "kid": "broken", "n": "AQAB"},
            {"kty": "XYZ", "kid": "unknown"},
            ec384.jwk(kid="p384"),  # ES256 only: no algorithm can use it
            rsa.jwk(kid="pinned-hs", alg="HS256"),
            rsa.jwk(kid="good"),
            ed.jwk(kid="ed"),
        ]
    }
    keys, problems = keys_from_jwks(document, ["RS256", "ES256", "EdDSA"])
    assert sorted((k.kid, k.algorithm) for k in keys) == [("ed", "EdDSA"), ("good", "RS256")]
    assert len(problems) == 5


BROKEN_JWKS = [
    {"kty": "RSA", "n": 1, "e": "AQAB"},
    {"kty": "RSA", "n": "", "e": ""},
    {"kty": "RSA", "n": "!!!", "e": "AQAB"},
    {"kty": "RSA", "e": "AQAB"},
    {"kty": "EC", "crv": "P-256", "x": ["a"], "y": "b"},
    {"kty": "EC", "crv": "P-256", "x": b64url(b"\x01" * 32), "y": b64url(b"\x02" * 32)},  # not on the curve
    {"kty": "EC", "crv": "secp256k1", "x": b64url(b"\x01" * 32), "y": b64url(b"\x02" * 32)},
    {"kty": "EC", "crv": None},
    {"kty": "OKP", "crv": "X25519", "x": b64url(b"\x01" * 32)},
    {"kty": "OKP", "crv": "Ed25519", "x": b64url(b"\x01" * 5)},
    {"kty": "OKP", "crv": "Ed25519"},
    {"kty": ["RSA"]},
    {"kty": None},
    {},
    {"kty": "RSA", "use": None},
    {"kty": "RSA", "alg": ["RS256"], "n": "AQAB", "e": "AQAB"},
]


@pytest.mark.parametrize("jwk", BROKEN_JWKS, ids=[json.dumps(j)[:40] for j in BROKEN_JWKS])
def test_keys_from_jwks_skips_a_broken_key_without_raising(jwk: dict[str, Any]) -> None:
    """A malformed JWK is skipped (and reported) while the good key beside it is kept."""
    keys, _ = keys_from_jwks({"keys": [jwk, pair("ed-1").jwk(kid="good")]}, ["RS256", "ES256", "EdDSA"])
    assert [k.kid for k in keys] == ["good"]


def test_keys_from_jwks_uses_only_the_public_half_of_a_leaked_private_key() -> None:
    """A JWKS that leaks "d" still yields a verification key, built from the public half."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    keys, _ = keys_from_jwks({"keys": [pair("rsa-1").private_jwk(kid="k1")]}, ["RS256"])
    [key] = keys
    assert isinstance(key.key, rsa.RSAPublicKey)


def test_keys_from_jwks_reads_at_most_100_keys() -> None:
    """Only the first 100 entries of a JWKS are read, however long it is."""
    jwk = pair("ed-1").jwk()
    keys, _ = keys_from_jwks({"keys": [dict(jwk, kid=str(i)) for i in range(500)]}, ["EdDSA"])
    assert len(keys) == 100


@pytest.mark.parametrize("document", [[], "keys", None, {"keys": {}}, {"key": []}])
def test_keys_from_jwks_rejects_a_document_without_a_keys_list(document: Any) -> None:
    """A document that is not {"keys": [...]} is an error, not an empty key set."""
    with pytest.raises(ValueError, match="keys"):
        keys_from_jwks(document, ["RS256"])
