"""TokenVerifier with static keys on a ManualClock (SECURITY_CASES A1-A13, A15, A16).

Every hostile token is signed properly unless the case is about the signature, so a
deny proves the rule under test and not a broken signature.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.clock import ManualClock
from sidecar.config import from_mapping
from sidecar.errors import ConfigError, InvalidTokenError
from sidecar.tokens import Claims, TokenVerifier
from sidecar.tokens.claims import canonical_hash
from sidecar.tokens.parse import MAX_JSON_DEPTH
from tests.conftest import OMIT, SECRET, mint, settings_for
from tests.tokens.keys import (
    KEY_FOR_ALG,
    LONG_SECRET,
    b64url,
    malleate_ecdsa,
    pair,
    sign,
    sign_with,
    unb64url,
)

NOW = 1_700_000_000
HS256 = {"alg": "HS256", "typ": "JWT"}
ASYMMETRIC = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]


def make(
    tmp_path: Path, clock: ManualClock | None = None, *, keys: tuple[str, ...] = (), **jwt_settings: Any
) -> TokenVerifier:
    """A verifier on the test settings at NOW; ``keys`` names key pairs written as PEM files."""
    if keys:
        jwt_settings["public_key_file"] = [pair(k).write_pem(tmp_path) for k in keys]
        algorithms = jwt_settings.get("algorithms", [])
        if not any(a.startswith("HS") for a in algorithms):
            jwt_settings.setdefault("secret", "")
    return TokenVerifier(settings_for(tmp_path, jwt=jwt_settings).jwt, clock or ManualClock(wall=float(NOW)))


def claims(**over: Any) -> dict[str, Any]:
    """A valid payload at NOW; pass OMIT to drop a claim."""
    out: dict[str, Any] = {"sub": "alice", "sid": "s-1", "iat": NOW, "exp": NOW + 3600}
    out.update(over)
    return {k: v for k, v in out.items() if v is not OMIT}


def raw_payload(**literals: str) -> bytes:
    """A payload from raw JSON literals (whatever json.dumps would refuse to write)."""
    members = {"sub": '"alice"', "sid": '"s-1"', "iat": str(NOW), "exp": str(NOW + 3600)}
    members.update(literals)
    return ("{" + ",".join(f'"{k}":{v}' for k, v in members.items() if v is not OMIT) + "}").encode()


async def reason(verifier: TokenVerifier, token: str) -> str:
    """The verifier refuses ``token``; return its reason code."""
    with pytest.raises(InvalidTokenError) as e:
        await verifier.verify(token)
    return e.value.reason


# --------------------------------------------------------------------- algorithm families


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_each_hmac_algorithm_verifies_with_the_configured_secret(
    tmp_path: Path, alg: str
) -> None:
    """HS256, HS384 and HS512 tokens verify with a secret long enough for the hash."""
    v = make(tmp_path, algorithms=[alg], secret=LONG_SECRET)
    got = await v.verify(mint("alice", key=LONG_SECRET, algorithm=alg, now=NOW, sid="s-1"))
    assert (got.user_id, got.session_key, got.expires_at) == ("alice", "sid:s-1", NOW + 3600)


@pytest.mark.parametrize("alg", ASYMMETRIC)
async def test_each_asymmetric_algorithm_verifies_with_a_pem_public_key(
    tmp_path: Path, alg: str
) -> None:
    """RS*, PS*, ES* and EdDSA tokens verify with the public key from public_key_file."""
    key = pair(KEY_FOR_ALG[alg])
    v = make(tmp_path, algorithms=[alg], keys=(key.name,))
    got = await v.verify(mint("alice", key=key.private, algorithm=alg, now=NOW, sid="s-1"))
    assert (got.user_id, got.session_key) == ("alice", "sid:s-1")


async def test_a_certificate_file_serves_as_public_key(tmp_path: Path) -> None:
    """public_key_file may hold an X.509 certificate; its public key verifies RS256."""
    key = pair("rsa-1")
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    pem = x509.load_der_x509_certificate(key.certificate_der()).public_bytes(Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(pem)
    v = make(tmp_path, algorithms=["RS256"], public_key_file="cert.pem", secret="")
    assert (await v.verify(mint(key=key.private, algorithm="RS256", now=NOW))).user_id == "alice"


@pytest.mark.parametrize("alg", ["HS256", *ASYMMETRIC])
async def test_token_signed_by_another_key_is_refused(tmp_path: Path, alg: str) -> None:
    """A token of a configured algorithm signed with someone else's key is refused."""
    if alg.startswith("HS"):
        v = make(tmp_path)
        token = sign(HS256, claims(), b"another-secret-that-is-also-long-enough-0123")
    else:
        real = KEY_FOR_ALG[alg]
        v = make(tmp_path, algorithms=[alg], keys=(real,))
        token = sign({"alg": alg}, claims(), pair(real[:-1] + "2"))
    assert await reason(v, token) == "bad_signature"


@pytest.mark.parametrize("alg", ["HS256", *ASYMMETRIC])
@pytest.mark.parametrize("length", [0, 1, 63, 64, 65, 512, 1024])
async def test_signature_of_any_length_is_refused_not_raised(tmp_path: Path, alg: str, length: int) -> None:
    """A signature of the wrong length or value (empty, short, long) is a plain refusal, not an exception."""
    keys = () if alg == "HS256" else (KEY_FOR_ALG[alg],)
    v = make(tmp_path, algorithms=[alg], keys=keys) if keys else make(tmp_path)
    head, body, _ = sign({"alg": alg}, claims(), SECRET if alg == "HS256" else pair(KEY_FOR_ALG[alg])).split(".")
    assert await reason(v, f"{head}.{body}.{b64url(bytes([7]) * length)}") == "bad_signature"


# --------------------------------------------------------------------- A1: alg none


@pytest.mark.parametrize(
    "header",
    [
        b'{"alg":"none"}',
        b'{"alg":"NONE"}',
        b'{"alg":"None"}',
        b'{"alg":"nOnE"}',
        b'{"alg":""}',
        b'{"typ":"JWT"}',
        b'{"alg":null}',
        b'{"alg":["HS256"]}',
        b'{"alg":{"name":"HS256"}}',
        b'{"alg":256}',
    ],
    ids=["none", "NONE", "None", "nOnE", "empty", "missing", "null", "list", "object", "number"],
)
@pytest.mark.parametrize("signature", ["", "hmac"], ids=["unsigned", "hmac-signed"])
async def test_alg_none_or_missing_is_refused(
    tmp_path: Path, header: bytes, signature: str
) -> None:
    """alg none in any spelling, empty, missing or not a string is refused, signed or not (A1)."""
    v = make(tmp_path, algorithms=["HS256", "RS256"], keys=("rsa-1",))
    token = sign_with("HS256", header, claims(), SECRET)
    if not signature:
        token = token.rsplit(".", 1)[0] + "."
    assert await reason(v, token) == "alg_not_allowed"


@pytest.mark.parametrize(
    ("header_alg", "sign_alg"),
    [
        ("hs256", "HS256"),
        ("Hs256", "HS256"),
        ("HS256 ", "HS256"),
        ("rs256", "RS256"),
        ("Rs256", "RS256"),
        ("RS256\u0000", "RS256"),
        ("HS384", "HS384"),  # a real algorithm that is simply not configured
        ("PS256", "PS256"),
    ],
)
async def test_alg_in_another_spelling_or_not_configured_is_refused(
    tmp_path: Path, header_alg: str, sign_alg: str
) -> None:
    """The header alg must equal a configured algorithm exactly; case variants are refused (A3)."""
    v = make(tmp_path, algorithms=["HS256", "RS256"], keys=("rsa-1",))
    key: Any = SECRET if sign_alg.startswith("HS") else pair("rsa-1")
    token = sign_with(sign_alg, {"alg": header_alg}, claims(), key)
    assert await reason(v, token) == "alg_not_allowed"


def _public_key_material(name: str, form: str) -> bytes:
    key = pair(name)
    if form == "pem":
        return key.public_pem
    if form == "pem-no-newline":
        return key.public_pem.rstrip(b"\n")
    if form == "der":
        return key.public_der
    if form == "jwk":
        return json.dumps(key.jwk()).encode()
    if form == "jwk-compact":
        return json.dumps(key.jwk(), separators=(",", ":")).encode()
    if form == "jwk-with-kid":
        return json.dumps(key.jwk(kid="k1", alg="RS256")).encode()
    if form == "jwks":
        return json.dumps({"keys": [key.jwk()]}).encode()
    raise ValueError(form)


@pytest.mark.parametrize("form", ["pem", "pem-no-newline", "der", "jwk", "jwk-compact", "jwk-with-kid", "jwks"])
@pytest.mark.parametrize(
    ("key_name", "algorithms"),
    [
        ("rsa-1", ["RS256"]),
        ("rsa-1", ["HS256", "RS256"]),
        ("ec-p256-1", ["ES256"]),
        ("ec-p256-1", ["HS256", "ES256"]),
    ],
    ids=["rs256-only", "hs256+rs256", "es256-only", "hs256+es256"],
)
@pytest.mark.parametrize("token_alg", ["HS256", "HS512"])
async def test_hmac_keyed_with_the_public_key_is_refused(
    tmp_path: Path, form: str, key_name: str, algorithms: list[str], token_alg: str
) -> None:
    """Algorithm confusion: an HS* token whose HMAC key is the configured public key (PEM, DER, JWK) is refused (A2)."""
    v = make(tmp_path, algorithms=algorithms, keys=(key_name,))
    token = sign({"alg": token_alg}, claims(), _public_key_material(key_name, form))
    assert await reason(v, token) in {"alg_not_allowed", "bad_signature"}


@pytest.mark.parametrize(
    "case",
    [
        (["ES256"], ("ec-p256-1",), "ES256", "ES384", "ec-p384-1"),
        (["ES256", "ES384"], ("ec-p256-1", "ec-p384-1"), "ES256", "ES384", "ec-p384-1"),
        (["ES256", "ES384"], ("ec-p256-1", "ec-p384-1"), "ES384", "ES256", "ec-p256-1"),
        (["ES256", "ES512"], ("ec-p256-1", "ec-p521-1"), "ES256", "ES512", "ec-p521-1"),
        (["RS256", "PS256"], ("rsa-1",), "PS256", "RS256", "rsa-1"),
        (["RS256", "PS256"], ("rsa-1",), "RS256", "PS256", "rsa-1"),
        (["RS256", "RS512"], ("rsa-1",), "RS256", "RS512", "rsa-1"),
        (["ES256", "EdDSA"], ("ec-p256-1", "ed-1"), "ES256", "EdDSA", "ed-1"),
        (["ES256", "EdDSA"], ("ec-p256-1", "ed-1"), "EdDSA", "ES256", "ec-p256-1"),
        (["RS256", "ES256"], ("rsa-1", "ec-p256-1"), "RS256", "ES256", "ec-p256-1"),
    ],
    ids=[
        "es256-header-p384-key",
        "es256-header-p384-key-both-configured",
        "es384-header-p256-signature",
        "es256-header-p521-signature",
        "ps256-header-rs256-signature",
        "rs256-header-ps256-signature",
        "rs256-header-rs512-signature",
        "es256-header-eddsa-signature",
        "eddsa-header-es256-signature",
        "rs256-header-es256-signature",
    ],
)
async def test_alg_not_matching_the_keys_algorithm_is_refused(
    tmp_path: Path, case: tuple[list[str], tuple[str, ...], str, str, str]
) -> None:
    """A signature made by another algorithm or curve than the header's alg is refused (A3)."""
    algorithms, keys, header_alg, sign_alg, signer = case
    v = make(tmp_path, algorithms=algorithms, keys=keys)
    token = sign_with(sign_alg, {"alg": header_alg}, claims(), pair(signer))
    assert await reason(v, token) in {"bad_signature", "no_key"}


@pytest.mark.parametrize(
    ("algorithms", "key_name"),
    [
        (["ES256"], "ec-p384-1"),
        (["ES384"], "ec-p256-1"),
        (["RS256"], "ec-p256-1"),
        (["ES256"], "rsa-1"),
        (["EdDSA"], "rsa-1"),
    ],
)
def test_key_file_of_another_family_or_curve_is_a_config_error(
    tmp_path: Path, algorithms: list[str], key_name: str
) -> None:
    """A public key no configured algorithm may use stops start-up, naming public_key_file (A2)."""
    with pytest.raises(ConfigError, match=r"^jwt\.public_key_file: .*no algorithm"):
        key_file = pair(key_name).write_pem(tmp_path)
        settings_for(tmp_path, jwt={"algorithms": algorithms, "secret": "", "public_key_file": key_file})


def test_private_key_file_is_a_config_error(tmp_path: Path) -> None:
    """A private key given as public_key_file stops start-up rather than being used."""
    (tmp_path / "private.pem").write_bytes(pair("rsa-1").private_pem)
    with pytest.raises(ConfigError, match=r"^jwt\.public_key_file: .*private key"):
        settings_for(tmp_path, jwt={"algorithms": ["RS256"], "secret": "", "public_key_file": "private.pem"})


# --------------------------------------------------------------------- A4: kid


@pytest.mark.parametrize(
    ("kid", "key"),
    [
        ("../../../../../../dev/null", b""),
        ("/dev/null", b""),
        ("..\\..\\..\\windows\\win.ini", b""),
        ("file:///etc/passwd", b"root:x:0:0:root:/root:/bin/bash\n"),
        ("x' UNION SELECT 'attacker-chosen-key' -- ", b"attacker-chosen-key"),
        ("' OR '1'='1", b""),
        ("a" * 10240, SECRET),
        ("a" * 257, SECRET),
        ("", SECRET),
        (123, SECRET),
        (["k1"], SECRET),
        ({"kid": "k1"}, SECRET),
        (True, SECRET),
        (None, SECRET),
    ],
    ids=[
        "path-traversal", "dev-null", "windows-path", "file-url", "sql-union", "sql-or",
        "10KB", "257-chars", "empty", "int", "list", "object", "bool", "null",
    ],
)
async def test_hostile_kid_is_refused(tmp_path: Path, kid: Any, key: Any) -> None:
    """A kid never selects a key: hostile kids are refused, signed with the key they aim at or the real one (A4)."""
    v = make(tmp_path, max_token_bytes=65536)
    assert await reason(v, sign({"alg": "HS256", "kid": kid}, claims(), key)) in {"bad_kid", "bad_signature"}


async def test_ordinary_kid_with_a_static_key_is_accepted(tmp_path: Path) -> None:
    """With keys from configuration, an ordinary kid string does not stop a good token."""
    v = make(tmp_path)
    assert (await v.verify(sign({"alg": "HS256", "kid": "2024-key"}, claims(), SECRET))).user_id == "alice"


# --------------------------------------------------------------------- A5: key-carrying headers


def _key_carrying_header(member: str, alg: str, attacker: str) -> dict[str, Any]:
    key = pair(attacker)
    value: Any = {
        "jwk": key.jwk(kid="attacker"),
        "x5c": [base64.b64encode(key.certificate_der()).decode()],
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
    }[member]
    return {"alg": alg, "kid": "attacker", member: value}


@pytest.mark.parametrize("member", ["jwk", "x5c", "jku", "x5u"])
@pytest.mark.parametrize(
    ("alg", "real", "attacker"),
    [("RS256", "rsa-1", "rsa-2"), ("ES256", "ec-p256-1", "ec-p256-2"), ("EdDSA", "ed-1", "ed-2")],
)
async def test_key_carrying_headers_are_ignored(
    tmp_path: Path, member: str, alg: str, real: str, attacker: str
) -> None:
    """jwk, x5c, jku and x5u never supply a key: a token signed by the key they name is refused (A5)."""
    v = make(tmp_path, algorithms=[alg], keys=(real,))
    token = sign(_key_carrying_header(member, alg, attacker), claims(), pair(attacker))
    assert await reason(v, token) == "bad_signature"


async def test_embedded_oct_jwk_is_ignored(tmp_path: Path) -> None:
    """An HS256 token carrying its own symmetric jwk, signed with it, is refused (A5)."""
    v = make(tmp_path)
    attacker_secret = b"attacker-secret-attacker-secret-attacker"
    header = {"alg": "HS256", "jwk": {"kty": "oct", "k": b64url(attacker_secret)}}
    assert await reason(v, sign(header, claims(), attacker_secret)) == "bad_signature"


# --------------------------------------------------------------------- A6, A7: time


async def test_exp_missing_is_refused(tmp_path: Path) -> None:
    """A token without exp is refused, even when otherwise perfect (A6)."""
    v = make(tmp_path)
    assert await reason(v, sign(HS256, claims(exp=OMIT), SECRET)) == "missing_exp"


# (claim, its value relative to now, leeway, allowed)
TIME_TABLE = [
    ("exp", -1, 0, False),
    ("exp", 0, 0, False),
    ("exp", 0.5, 0, True),
    ("exp", 1, 0, True),
    ("exp", -3600, 0, False),
    ("exp", -31, 30, False),
    ("exp", -30, 30, False),
    ("exp", -29, 30, True),
    ("exp", 0, 30, True),
    ("nbf", 1, 0, False),
    ("nbf", 0, 0, True),
    ("nbf", -1, 0, True),
    ("nbf", 31, 30, False),
    ("nbf", 30, 30, True),
    ("nbf", 29, 30, True),
    ("iat", 1, 0, False),
    ("iat", 0, 0, True),
    ("iat", -1, 0, True),
    ("iat", 31, 30, False),
    ("iat", 30, 30, True),
    ("iat", 29, 30, True),
    ("iat", 86400 * 365, 30, False),
]


@pytest.mark.parametrize(("claim", "offset", "leeway", "allowed"), TIME_TABLE)
async def test_time_claims_on_both_sides_of_each_boundary(
    tmp_path: Path, claim: str, offset: float, leeway: int, allowed: bool
) -> None:
    """exp must be in the future and nbf/iat not in the future, each within the leeway (A7)."""
    v = make(tmp_path, leeway_seconds=leeway)
    token = sign(HS256, claims(**{claim: NOW + offset}), SECRET)
    if allowed:
        assert (await v.verify(token)).user_id == "alice"
    else:
        assert await reason(v, token) in {"expired", "not_yet_valid", "issued_in_future"}


NOT_A_NUMBER = [
    '"1800000000"',
    '"1.8e9"',
    "null",
    "[1800000000]",
    '{"$date":1800000000}',
    "true",
    "false",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    "100000000000000000000",
    "9" * 4400,  # more digits than Python's int parser takes
]


@pytest.mark.parametrize("literal", NOT_A_NUMBER, ids=lambda s: s[:16])
@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
async def test_time_claim_that_is_not_a_finite_number_is_refused(
    tmp_path: Path, claim: str, literal: str
) -> None:
    """exp/nbf/iat as a string, null, list, bool, NaN, Infinity, 1e400 or a huge int are refused (A7)."""
    v = make(tmp_path, max_token_bytes=65536)
    token = sign_with("HS256", HS256, raw_payload(**{claim: literal}), SECRET)
    assert await reason(v, token) in {f"bad_{claim}", "non_json_number", "malformed"}


BEYOND_YEAR_9999 = ["1e308", "-1e308", "253402300800", "-253402300800", "253402300799.5", "9007199254740991", "1e16"]


@pytest.mark.parametrize("literal", BEYOND_YEAR_9999)
@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
async def test_time_claim_beyond_year_9999_is_refused_whatever_its_json_type(
    tmp_path: Path, claim: str, literal: str
) -> None:
    """exp/nbf/iat beyond 9999-12-31T23:59:59Z are refused as ints and as floats alike (1e308 included)."""
    v = make(tmp_path)
    token = sign_with("HS256", HS256, raw_payload(**{claim: literal}), SECRET)
    assert await reason(v, token) == f"bad_{claim}"


@pytest.mark.parametrize("literal", ["253402300799", "253402300799.0", "2.5e11"])
async def test_exp_up_to_year_9999_is_accepted_as_int_or_float(tmp_path: Path, literal: str) -> None:
    """An exp at or below 9999-12-31T23:59:59Z is a valid NumericDate, written as an int or a float."""
    v = make(tmp_path)
    token = sign_with("HS256", HS256, raw_payload(exp=literal), SECRET)
    assert (await v.verify(token)).expires_at == float(literal)


async def test_cached_token_is_rechecked_for_expiry(tmp_path: Path, clock: ManualClock) -> None:
    """A token verified (and cached) before its exp is refused once the clock passes exp (A7, D35)."""
    v = make(tmp_path, clock)
    token = mint(now=NOW, ttl=60)
    assert (await v.verify(token)).user_id == "alice"
    clock.advance(59)
    assert (await v.verify(token)).user_id == "alice"
    clock.advance(1)
    assert await reason(v, token) == "expired"


async def test_cached_token_is_rechecked_when_the_wall_clock_jumps(tmp_path: Path, clock: ManualClock) -> None:
    """The time rules of a cached token follow the wall clock, forwards past exp and backwards before iat."""
    v = make(tmp_path, clock)
    token = mint(now=NOW, ttl=60)
    await v.verify(token)
    clock.set_wall(NOW - 10)
    assert await reason(v, token) == "issued_in_future"
    clock.set_wall(NOW + 3600)
    assert await reason(v, token) == "expired"


# --------------------------------------------------------------------- A8: iss, aud

ISSUER = "https://auth.example.com"


@pytest.mark.parametrize(
    ("iss", "allowed"),
    [
        (ISSUER, True),
        ("https://auth.example.com.evil", False),
        ("https://auth.example.com/", False),
        ("https://auth.example.co", False),
        ("https://auth.example.com/evil", False),
        ("https://AUTH.example.com", False),
        ("http://auth.example.com", False),
        (" https://auth.example.com", False),
        ("", False),
        (OMIT, False),
        (None, False),
        ([ISSUER], False),
        ({"iss": ISSUER}, False),
        (1, False),
    ],
)
async def test_issuer_must_match_exactly(tmp_path: Path, iss: Any, allowed: bool) -> None:
    """iss must equal the configured issuer exactly: no prefix, suffix, case or list match (A8)."""
    v = make(tmp_path, issuer=ISSUER)
    token = sign(HS256, claims(iss=iss), SECRET)
    if allowed:
        assert (await v.verify(token)).user_id == "alice"
    else:
        assert await reason(v, token) == "wrong_issuer"


@pytest.mark.parametrize(
    ("audience", "aud", "allowed"),
    [
        (["api"], "api", True),
        (["api"], ["api"], True),
        (["api"], ["other", "api"], True),
        (["api", "admin"], "admin", True),
        (["api", "admin"], ["x", "admin"], True),
        (["api"], "other", False),
        (["api"], "ap", False),
        (["api"], "api2", False),
        (["api"], "API", False),
        (["api"], "api ", False),
        (["https://api.example.com"], "https://api.example.com.evil", False),
        (["https://api.example.com"], "https://api.example.com/x", False),
        (["api"], ["other"], False),
        (["api"], [], False),
        (["api"], ["api", 1], False),
        (["api"], [["api"]], False),
        (["api"], {"aud": "api"}, False),
        (["api"], None, False),
        (["api"], 1, False),
        (["api"], OMIT, False),
        ([], "api", False),
        ([], ["api"], False),
        ([], OMIT, True),
    ],
)
async def test_audience_rules(
    tmp_path: Path, audience: list[str], aud: Any, allowed: bool
) -> None:
    """aud must name a configured audience exactly; missing, partial or unexpected aud is refused (A8)."""
    v = make(tmp_path, audience=audience)
    token = sign(HS256, claims(aud=aud), SECRET)
    if allowed:
        assert (await v.verify(token)).user_id == "alice"
    else:
        assert await reason(v, token) in {"wrong_audience", "missing_aud", "bad_aud", "unexpected_aud"}


# --------------------------------------------------------------------- A9: token type


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        ("access", True),
        ("refresh", False),
        ("Access", False),
        ("ACCESS", False),
        ("access ", False),
        ("", False),
        (None, False),
        (["access"], False),
        (True, False),
        (OMIT, False),
    ],
)
async def test_only_the_access_token_type_opens_the_gate(
    tmp_path: Path, value: Any, allowed: bool
) -> None:
    """With token_type_claim=type and access_token_type=access, only type "access" passes (A9)."""
    v = make(tmp_path, token_type_claim="type", access_token_type="access")
    token = sign(HS256, claims(type=value), SECRET)
    if allowed:
        assert (await v.verify(token)).user_id == "alice"
    else:
        assert await reason(v, token) == "wrong_token_type"


async def test_token_type_claim_name_is_configurable(tmp_path: Path) -> None:
    """The type is read from the configured claim only: a "typ" claim does not stand in for "token_use"."""
    v = make(tmp_path, token_type_claim="token_use", access_token_type="access")
    assert (await v.verify(sign(HS256, claims(token_use="access"), SECRET))).user_id == "alice"
    assert await reason(v, sign(HS256, claims(type="access"), SECRET)) == "wrong_token_type"


# --------------------------------------------------------------------- A10: crit, b64


@pytest.mark.parametrize(
    "extra",
    [
        {"crit": ["https://example.invalid/ext"], "https://example.invalid/ext": True},
        {"crit": ["exp"]},
        {"crit": ["b64"], "b64": False},
        {"crit": ["b64"], "b64": True},
        {"crit": []},
        {"crit": "b64"},
        {"crit": None},
        {"b64": False},
    ],
    ids=["unknown-ext", "registered-name", "b64-false", "b64-true", "empty", "not-a-list", "null", "b64-without-crit"],
)
async def test_crit_and_b64_headers_are_refused(tmp_path: Path, extra: dict[str, Any]) -> None:
    """A crit header (we understand no extension) or an RFC 7797 b64 header is refused (A10)."""
    v = make(tmp_path)
    token = sign({"alg": "HS256", **extra}, claims(), SECRET)
    assert await reason(v, token) in {"unsupported_crit", "unsupported_b64"}


# --------------------------------------------------------------------- A11: malformed


def _good() -> str:
    return sign(HS256, claims(), SECRET)


def _non_canonical(segment: str) -> str:
    """The same bytes with non-zero trailing bits in the last character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused_bits = {2: 4, 3: 2}[len(segment) % 4]
    last = alphabet.index(segment[-1])
    tweaked = alphabet[last | ((1 << unused_bits) - 1)]
    assert unb64url(segment[:-1] + tweaked) == unb64url(segment)
    return segment[:-1] + tweaked


def _non_canonical_signature() -> str:
    h, p, s = _good().split(".")
    return f"{h}.{p}.{_non_canonical(s)}"


def _non_canonical_header() -> str:
    # A header whose base64url length leaves unused bits, re-signed over the tweaked text.
    header = b'{"alg":"HS256","x":"a"}'
    assert len(b64url(header)) % 4 in (2, 3)
    h = _non_canonical(b64url(header))
    p = b64url(json.dumps(claims()).encode())
    import hashlib
    import hmac

    sig = hmac.new(SECRET.encode(), f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64url(sig)}"


MALFORMED: dict[str, Any] = {
    "empty": lambda: "",
    "dots-only": lambda: "..",
    "three-dots": lambda: "...",
    "one-segment": lambda: _good().split(".")[0],
    "two-segments": lambda: ".".join(_good().split(".")[:2]),
    "two-segments-trailing-dot": lambda: ".".join(_good().split(".")[:2]) + ".",
    "four-segments": lambda: _good() + "." + b64url(b"x"),
    "five-segments": lambda: _good() + ".a.b",
    "jwe": lambda: ".".join(
        [b64url(b'{"alg":"RSA-OAEP","enc":"A256GCM"}'), b64url(b"k" * 256), b64url(b"iv"), b64url(b"c"), b64url(b"t")]
    ),
    "jwe-dir": lambda: ".".join(
        [b64url(b'{"alg":"dir","enc":"A128GCM"}'), "", b64url(b"iv"), b64url(b"c"), b64url(b"t")]
    ),
    "space-inside": lambda: _good().replace(".", ". ", 1),
    "space-in-signature": lambda: _good()[:-5] + " " + _good()[-4:],
    "leading-space": lambda: " " + _good(),
    "trailing-newline": lambda: _good() + "\n",
    "tab-inside": lambda: _good().replace(".", "\t.", 1),
    "junk-base64": lambda: "!!!." + _good().split(".", 1)[1],
    "standard-base64-chars": lambda: _good().split(".")[0] + "+/." + _good().split(".", 1)[1],
    "percent-encoded": lambda: _good().replace(".", "%2E", 1),
    "impossible-length": lambda: _good().split(".")[0] + "A." + _good().split(".", 1)[1],
    "non-canonical-signature": _non_canonical_signature,
    "non-canonical-header": _non_canonical_header,
    "non-ascii": lambda: _good()[:10] + "\u00e9" + _good()[11:],
    "garbage-after-signature": lambda: _good() + "x",
    "header-not-json": lambda: sign_with("HS256", b"alg=HS256", claims(), SECRET),
    "header-json-array": lambda: sign_with("HS256", b'["HS256"]', claims(), SECRET),
    "header-trailing-data": lambda: sign_with("HS256", b'{"alg":"HS256"}x', claims(), SECRET),
    "header-two-objects": lambda: sign_with("HS256", b'{"alg":"HS256"}{"alg":"HS256"}', claims(), SECRET),
    "header-non-utf8": lambda: sign_with("HS256", b'{"alg":"HS256","x":"\xff\xfe"}', claims(), SECRET),
    "header-utf8-bom": lambda: sign_with("HS256", b'\xef\xbb\xbf{"alg":"HS256"}', claims(), SECRET),
    "header-utf16": lambda: sign_with("HS256", '{"alg":"HS256"}'.encode("utf-16"), claims(), SECRET),
    "payload-non-utf8": lambda: sign(HS256, b'{"sub":"\xc3\x28","exp":9999999999}', SECRET),
    "payload-overlong-utf8": lambda: sign(HS256, b'{"sub":"\xc0\xafalice","exp":9999999999}', SECRET),
    "payload-array": lambda: sign(HS256, b'[{"sub":"alice","exp":9999999999}]', SECRET),
    "payload-string": lambda: sign(HS256, b'"alice"', SECRET),
    "payload-number": lambda: sign(HS256, b"9999999999", SECRET),
    "payload-null": lambda: sign(HS256, b"null", SECRET),
    "payload-true": lambda: sign(HS256, b"true", SECRET),
    "payload-empty": lambda: sign(HS256, b"", SECRET),
    "payload-trailing-comma": lambda: sign(HS256, b'{"sub":"alice","exp":9999999999,}', SECRET),
    "payload-single-quotes": lambda: sign(HS256, b"{'sub':'alice','exp':9999999999}", SECRET),
    "payload-comment": lambda: sign(HS256, b'{"sub":"alice",/*x*/"exp":9999999999}', SECRET),
}


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_malformed_token_is_refused(tmp_path: Path, name: str) -> None:
    """Wrong segment counts, JWE, whitespace, junk/non-canonical base64, non-UTF-8, non-object JSON: refused (A11)."""
    v = make(tmp_path)
    await reason(v, MALFORMED[name]())


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100, 900, 5000])
@pytest.mark.parametrize("where", ["payload", "claim", "header"])
async def test_deeply_nested_json_within_the_size_limit_is_refused(
    tmp_path: Path, depth: int, where: str
) -> None:
    """JSON nested deeper than any real claim set is refused whatever the interpreter's stack (A11)."""
    v = make(tmp_path, max_token_bytes=65536)
    nested = "[" * (depth - 1) + "]" * (depth - 1)  # inside the top-level object: depth in all
    if where == "payload":
        token = sign(HS256, ("[" * depth + "{}" + "]" * depth).encode(), SECRET)
    elif where == "claim":
        token = sign_with("HS256", HS256, raw_payload(roles=nested, sid=OMIT), SECRET)
    else:
        token = sign_with("HS256", ('{"alg":"HS256","x":' + nested + "}").encode(), claims(), SECRET)
    assert len(token) <= 65536
    assert await reason(v, token) == "malformed"


async def test_nesting_up_to_the_limit_is_accepted(tmp_path: Path) -> None:
    """Realistic nesting (resource_access.client.roles) and anything up to the depth limit is fine."""
    v = make(tmp_path)
    token = sign(HS256, claims(resource_access={"web": {"roles": [["admin"], {"a": [1, 2]}]}}), SECRET)
    assert (await v.verify(token)).user_id == "alice"
    limit = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)
    assert (await v.verify(sign_with("HS256", HS256, raw_payload(x=limit), SECRET))).user_id == "alice"
    header = ('{"alg":"HS256","x":' + limit + "}").encode()
    assert (await v.verify(sign_with("HS256", header, claims(), SECRET))).user_id == "alice"


async def test_token_beyond_max_token_bytes_is_refused_before_parsing(tmp_path: Path) -> None:
    """A token longer than jwt.max_token_bytes is refused unread, however it is nested (A11, A14)."""
    v = make(tmp_path)  # default 8192
    nested = sign(HS256, ("[" * 50_000 + "]" * 50_000).encode(), SECRET)
    padded = sign(HS256, claims(pad="x" * 9000), SECRET)
    assert await reason(v, nested) == "oversized_token"
    assert await reason(v, padded) == "oversized_token"


@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_arbitrary_text_raises_only_invalid_token(tmp_path: Path, text: str) -> None:
    """Whatever string arrives, verify() either returns Claims or raises InvalidTokenError, nothing else."""
    v = make(tmp_path, ManualClock(wall=float(NOW)))
    good = _good()

    async def run() -> None:
        for candidate in (text, good[: len(good) // 2] + text, text + good, good + text):
            with contextlib.suppress(InvalidTokenError):
                await v.verify(candidate)

    asyncio.run(run())


@given(st.data())
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_byte_flip_in_a_token_is_refused_or_harmless(tmp_path: Path, data: st.DataObject) -> None:
    """Changing any character of a valid token never raises anything but InvalidTokenError, and never changes its claims."""
    v = make(tmp_path, ManualClock(wall=float(NOW)))
    good = _good()
    i = data.draw(st.integers(0, len(good) - 1))
    c = data.draw(st.characters(min_codepoint=0, max_codepoint=0x7F))
    mutated = good[:i] + c + good[i + 1 :]

    async def run() -> Claims | None:
        try:
            return await v.verify(mutated)
        except InvalidTokenError:
            return None

    got = asyncio.run(run())
    assert got is None or got.session_key == "sid:s-1"


# --------------------------------------------------------------------- A12: identifiers

# (raw JSON literal, expected identifier or None for a deny)
IDENTIFIERS: list[tuple[str, str | None]] = [
    ('"alice"', "alice"),
    ('"a@b.example"', "a@b.example"),
    ('"' + "a" * 255 + '"', "a" * 255),
    ("123", "123"),
    ("0", "0"),
    ("-5", "-5"),
    ("9223372036854775807", "9223372036854775807"),
    ("9223372036854775808", None),
    ('"\\ud800"', None),
    ('"\\udfff"', None),
    ('"a\\ud800b"', None),
    ('"\\ud83d\\ude00"', None),
    ('"alice\\n"', None),
    ('"al\\u0000ice"', None),
    ('"a\\tb"', None),
    ('"a\\rb"', None),
    ('"a b"', None),
    ('"\\u007f"', None),
    ('"\\u00e5lice"', None),
    ('"\\u0430lice"', None),  # Cyrillic a
    ('"alice\\u200b"', None),  # zero-width space
    ('""', None),
    ('"' + "a" * 256 + '"', None),
    ('"' + "a" * 10240 + '"', None),
    ("true", None),
    ("false", None),
    ("1.5", None),
    ("1.0", None),
    ("1e3", None),
    ("null", None),
    ("[]", None),
    ('["alice"]', None),
    ("{}", None),
]


@pytest.mark.parametrize(("literal", "expected"), IDENTIFIERS, ids=[lit[:20] for lit, _ in IDENTIFIERS])
@pytest.mark.parametrize("claim", ["sub", "sid", "jti"])
async def test_identifier_claims_must_be_visible_ascii_or_an_integer(
    tmp_path: Path, claim: str, literal: str, expected: str | None
) -> None:
    """sub/sid/jti must be 1-255 visible ASCII characters or an integer; anything else is refused (A12)."""
    v = make(tmp_path, max_token_bytes=65536)
    members = {claim: literal}
    if claim == "jti":
        members["sid"] = OMIT
    token = sign_with("HS256", HS256, raw_payload(**members), SECRET)
    if expected is None:
        assert (await reason(v, token)).startswith("bad_")
        return
    got = await v.verify(token)
    if claim == "sub":
        assert got.user_id == expected
    else:
        assert got.session_key == f"{claim}:{expected}"


async def test_surrogate_in_raw_utf8_bytes_is_refused(tmp_path: Path) -> None:
    """A lone surrogate written as raw (CESU-8) bytes is not UTF-8 and is refused (A12)."""
    v = make(tmp_path)
    payload = raw_payload(sub='"\xed\xa0\x80"').replace("\xed\xa0\x80".encode(), b"\xed\xa0\x80")
    assert b"\xed\xa0\x80" in payload
    assert await reason(v, sign_with("HS256", HS256, payload, SECRET)) == "malformed"


async def test_user_claim_can_be_user_id(tmp_path: Path) -> None:
    """With user_claim=user_id an integer user_id 123 becomes user "123"; a token with only sub is refused."""
    v = make(tmp_path, user_claim="user_id")
    got = await v.verify(sign(HS256, claims(sub=OMIT, user_id=123), SECRET))
    assert got.user_id == "123"
    assert await reason(v, sign(HS256, claims(), SECRET)) == "missing_user"
    assert await reason(v, sign(HS256, claims(user_id="\ud800"), SECRET)) == "bad_user"


async def test_missing_sub_is_refused(tmp_path: Path) -> None:
    """A token that names no user is refused."""
    v = make(tmp_path)
    assert await reason(v, sign(HS256, claims(sub=OMIT), SECRET)) == "missing_user"


@pytest.mark.parametrize(
    ("value", "forwarded"),
    [
        ("alice@example.com", "alice@example.com"),
        ("Alice Example", "Alice Example"),
        (42, "42"),
        ("a\r\nX-Auth-User: admin", None),
        ("\ud800", None),
        ("caf\u00e9", None),
        (" leading", None),
        ("x" * 2000, None),
        (["a", "b"], None),
        ({"a": 1}, None),
        (True, None),
        (1.5, None),
    ],
)
async def test_claim_headers_forward_only_header_safe_values(tmp_path: Path, value: Any, forwarded: str | None) -> None:
    """A mapped claim is forwarded only when it is a header-safe string or an integer; otherwise it is left out (A12)."""
    v = make(tmp_path, claim_headers={"email": "X-Auth-Email"})
    got = await v.verify(sign(HS256, claims(email=value), SECRET))
    assert got.extra_headers == ((("X-Auth-Email", forwarded),) if forwarded is not None else ())


# --------------------------------------------------------------------- A13: duplicate keys


@pytest.mark.parametrize(
    ("header", "payload"),
    [
        (b'{"alg":"HS256","alg":"HS256"}', None),
        (b'{"alg":"none","alg":"HS256"}', None),
        (b'{"alg":"HS256","kid":"a","kid":"b"}', None),
        (b'{"alg":"HS256","crit":["x"],"crit":[]}', None),
        (None, b'{"sub":"alice","sub":"admin","exp":%d}'),
        (None, b'{"sub":"alice","exp":1,"exp":%d}'),
        (None, b'{"sub":"alice","sid":"s-1","sid":"s-2","exp":%d}'),
        (None, b'{"sub":"alice","s\\u0075b":"admin","exp":%d}'),
        (None, b'{"sub":"alice","exp":%d,"x":{"a":1,"a":2}}'),
        (None, b'{"sub":"alice","exp":%d,"x":[{"a":1,"a":2}]}'),
    ],
    ids=[
        "header-alg", "header-alg-none-then-hs256", "header-kid", "header-crit",
        "payload-sub", "payload-exp", "payload-sid", "payload-escaped-key", "payload-nested", "payload-in-list",
    ],
)
async def test_duplicate_json_keys_are_refused(
    tmp_path: Path, header: bytes | None, payload: bytes | None
) -> None:
    """Duplicate member names in the header or the payload, at any depth, are refused (A13)."""
    v = make(tmp_path)
    body = (payload or b'{"sub":"alice","exp":%d}') % (NOW + 3600)
    token = sign_with("HS256", header or b'{"alg":"HS256"}', body, SECRET)
    assert await reason(v, token) == "duplicate_json_key"


# --------------------------------------------------------------------- A16: session key


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"sid": "s-1", "jti": "j-1"}, "sid:s-1"),
        ({"sid": OMIT, "jti": "j-1"}, "jti:j-1"),
        ({"sid": 42}, "sid:42"),
        ({"sid": OMIT, "jti": 7}, "jti:7"),
    ],
)
async def test_session_key_comes_from_sid_then_jti(
    tmp_path: Path, extra: dict[str, Any], key: str
) -> None:
    """The session key is sid when present, else jti (DESIGN section 2)."""
    v = make(tmp_path)
    assert (await v.verify(sign(HS256, claims(**extra), SECRET))).session_key == key


async def test_session_claim_name_is_configurable(tmp_path: Path) -> None:
    """With session_claim=session_id that claim keys the session and sid is just a claim."""
    v = make(tmp_path, session_claim="session_id")
    got = await v.verify(sign(HS256, claims(session_id="abc", sid="ignored"), SECRET))
    assert got.session_key == "sid:abc"


async def test_session_key_without_sid_or_jti_is_a_hash_of_the_claims(tmp_path: Path) -> None:
    """Without sid/jti the key is sha256 of the canonical claims: equal for equal claims however serialised."""
    v = make(tmp_path)
    payload = claims(sid=OMIT, role="admin")
    compact = sign(HS256, payload, SECRET)
    reordered = sign(HS256, json.dumps(dict(reversed(payload.items())), indent=2).encode(), SECRET)
    escaped = sign(HS256, json.dumps(payload, ensure_ascii=True).replace('"sub"', '"s\\u0075b"').encode(), SECRET)
    a, b, c = [await v.verify(t) for t in (compact, reordered, escaped)]
    assert a.session_key == b.session_key == c.session_key == "sha256:" + canonical_hash(payload)
    other = await v.verify(sign(HS256, claims(sid=OMIT, role="user"), SECRET))
    assert other.session_key != a.session_key


@pytest.mark.parametrize("padding", ["=", "=="])
@pytest.mark.parametrize("sid", ["s-1", OMIT])
async def test_padded_signature_maps_to_the_same_session(
    tmp_path: Path, padding: str, sid: Any
) -> None:
    """A token re-encoded with "=" padding on the signature is either refused or has the same session key (A16)."""
    v = make(tmp_path)
    token = sign(HS256, claims(sid=sid), SECRET)
    original = await v.verify(token)
    try:
        padded = await v.verify(token + padding)
    except InvalidTokenError:
        return
    assert padded.session_key == original.session_key


@pytest.mark.parametrize("segment", [0, 1])
async def test_padding_on_a_signed_segment_breaks_the_signature(
    tmp_path: Path, segment: int
) -> None:
    """"=" added to the header or payload changes the signing input, so the token is refused."""
    v = make(tmp_path)
    parts = sign(HS256, claims(), SECRET).split(".")
    parts[segment] += "="
    await reason(v, ".".join(parts))


@pytest.mark.parametrize(
    ("alg", "key_name", "curve"),
    [("ES256", "ec-p256-1", "secp256r1"), ("ES384", "ec-p384-1", "secp384r1"), ("ES512", "ec-p521-1", "secp521r1")],
)
@pytest.mark.parametrize("sid", ["s-1", OMIT], ids=["with-sid", "no-sid-no-jti"])
async def test_malleable_ecdsa_signature_maps_to_the_same_session(
    tmp_path: Path, alg: str, key_name: str, curve: str, sid: Any
) -> None:
    """The (r, n - s) twin of an ES* signature verifies to the very same session key (A16)."""
    v = make(tmp_path, algorithms=[alg], keys=(key_name,))
    token = sign({"alg": alg}, claims(sid=sid), pair(key_name))
    twin = malleate_ecdsa(token, curve)
    assert twin != token
    a, b = await v.verify(token), await v.verify(twin)
    assert a == b
    assert a.session_key == ("sid:s-1" if sid == "s-1" else "sha256:" + canonical_hash(claims(sid=OMIT)))


async def test_unrepresentable_number_in_a_hashed_claim_is_refused(tmp_path: Path) -> None:
    """A claim of 1e400 (infinite in Python) cannot be hashed canonically: InvalidTokenError, not a crash."""
    v = make(tmp_path)
    token = sign_with("HS256", HS256, raw_payload(sid=OMIT, score="1e400"), SECRET)
    assert await reason(v, token) in {"malformed", "non_json_number", "bad_claims"}


# --------------------------------------------------------------------- A15: weak secrets


@pytest.mark.parametrize(
    ("algorithms", "length", "message"),
    [
        (["HS256"], 0, "HS256 needs a secret"),
        (["HS256"], 1, "HS256 needs a secret of at least 32 bytes"),
        (["HS256"], 31, "HS256 needs a secret of at least 32 bytes"),
        (["HS384"], 47, "HS384 needs a secret of at least 48 bytes"),
        (["HS256", "HS384"], 40, "HS384 needs a secret of at least 48 bytes"),
        (["HS512"], 63, "HS512 needs a secret of at least 64 bytes"),
        (["HS256", "HS512"], 32, "HS512 needs a secret of at least 64 bytes"),
    ],
)
@pytest.mark.parametrize("source", ["secret", "secret_env", "secret_file"])
def test_short_hmac_secret_refuses_to_start(
    tmp_path: Path, algorithms: list[str], length: int, message: str, source: str
) -> None:
    """An HMAC secret shorter than the hash output stops start-up with a line naming jwt.secret (A15)."""
    secret = "s" * length
    jwt_section: dict[str, Any] = {"algorithms": algorithms}
    environ: dict[str, str] = {}
    if source == "secret":
        jwt_section["secret"] = secret
    elif source == "secret_env":
        environ["JWT_SECRET"] = secret
        jwt_section["secret_env"] = "JWT_SECRET"
    else:
        (tmp_path / "secret.txt").write_text(secret + "\n")
        jwt_section["secret_file"] = "secret.txt"
    with pytest.raises(ConfigError) as e:
        from_mapping({"jwt": jwt_section}, environ=environ, base_dir=tmp_path)
    assert str(e.value).startswith("jwt.secret")
    assert message in str(e.value)


@pytest.mark.parametrize(
    ("algorithms", "length"), [(["HS256"], 32), (["HS384"], 48), (["HS512"], 64), (["HS256", "HS384", "HS512"], 64)]
)
def test_secret_as_long_as_the_hash_is_accepted(tmp_path: Path, algorithms: list[str], length: int) -> None:
    """A secret of exactly the hash length is enough (RFC 7518 section 3.2)."""
    settings = from_mapping({"jwt": {"algorithms": algorithms, "secret": "s" * length}}, environ={}, base_dir=tmp_path)
    assert settings.jwt.secret == b"s" * length


@pytest.mark.parametrize(
    "secret",
    [
        '{"kty":"oct","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}',
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 user@example.com",
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n",
    ],
    ids=["jwk-json", "ssh-key", "pem"],
)
def test_secret_that_pyjwt_refuses_is_a_config_error(tmp_path: Path, secret: str) -> None:
    """A jwt.secret shaped like a JWK, SSH or PEM key stops start-up as a ConfigError naming jwt.secret."""
    with pytest.raises(ConfigError, match=r"^jwt\.secret"):
        settings = from_mapping({"jwt": {"algorithms": ["HS256"], "secret": secret}}, environ={}, base_dir=tmp_path)
        TokenVerifier(settings.jwt, ManualClock())


async def test_pyjwt_unsigned_token_is_refused(tmp_path: Path) -> None:
    """PyJWT's own unsigned encoding (alg none) is refused: the library never picks the algorithm."""
    v = make(tmp_path)
    token = jwt.encode(claims(), None, algorithm="none")  # type: ignore[arg-type]  # alg none takes no key
    assert await reason(v, token) == "alg_not_allowed"


async def test_remembered_headers_give_the_verdicts_of_a_fresh_decode(tmp_path: Path) -> None:
    """Headers are decoded once per distinct text (the verifier's header cache): a refused
    header is refused every time, a known one still needs its own payload and signature, and
    more distinct headers than are remembered change nothing but speed."""
    v = make(tmp_path)
    bad = sign_with("HS256", b'{"alg":"HS256","alg":"none"}', claims(), SECRET)
    for _ in range(3):
        assert await reason(v, bad) == "duplicate_json_key"
    header = b'{"alg":"HS256","typ":"JWT","x":"[[[{"}'  # brackets in strings do not count as depth
    first = sign_with("HS256", header, claims(sid="s-a"), SECRET)
    second = sign_with("HS256", header, claims(sid="s-b"), SECRET)
    assert (await v.verify(first)).session_key == "sid:s-a"
    assert (await v.verify(second)).session_key == "sid:s-b"
    assert await reason(v, sign_with("HS256", header, claims(sid="s-c"), "another secret " * 3)) == "bad_signature"
    assert await reason(v, sign_with("HS256", header, raw_payload(sub='"a","sub":"b"'), SECRET)) == "duplicate_json_key"
    for i in range(600):  # past the bound: the remembered headers are dropped and rebuilt
        token = sign_with("HS256", {"alg": "HS256", "n": i}, claims(sid=f"s-{i}"), SECRET)
        assert (await v.verify(token)).session_key == f"sid:s-{i}"
    assert await reason(v, bad) == "duplicate_json_key"
    none = sign_with("HS256", {"alg": "none", "n": 1}, claims(), SECRET)  # same "n" as a good one
    assert await reason(v, none) == "alg_not_allowed"


async def test_each_verifier_keeps_its_own_header_cache(tmp_path: Path) -> None:
    """Decoded headers are a verifier's own: two verifiers never hand each other the same dicts."""
    a, b = make(tmp_path), make(tmp_path)
    token = sign_with("HS256", {"alg": "HS256", "typ": "JWT"}, claims(), SECRET)
    await a.verify(token)
    assert a._headers and not b._headers
    await b.verify(token)
    assert next(iter(a._headers.values())) is not next(iter(b._headers.values()))
