"""Verification keys: built once, each bound to the algorithms its family allows.

One algorithm family per key (RFC 8725 section 3.1, SECURITY_CASES A2): an HMAC secret
only ever verifies HS*, an RSA key only RS*/PS*, an EC key only the ES* of its curve, an
OKP key only EdDSA. The token's ``alg`` picks the family; the key never does, so an HS256
token "signed" with the RSA public key's PEM has no HMAC key to be checked against.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import Algorithm, get_default_algorithms
from jwt.exceptions import InvalidKeyError, PyJWKError

from sidecar.tokens.algorithms import EC_ALGORITHMS, HMAC_ALGORITHMS, OKP_ALGORITHMS, RSA_ALGORITHMS

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey

_CURVES: Mapping[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}
MIN_RSA_BITS = 2048  # RFC 7518 section 3.3


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A prepared key and the one algorithm it verifies."""

    algorithm: str
    key: Any  # what the PyJWT Algorithm object's verify() takes (bytes or a key object)
    verifier: Algorithm
    kid: str | None = None

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        return bool(self.verifier.verify(signing_input, self.key, signature))


def algorithms_for(key: PublicKey, allowed: Iterable[str]) -> list[str]:
    """The listed algorithms that this public key may verify."""
    out: list[str] = []
    for alg in allowed:
        if (isinstance(key, rsa.RSAPublicKey) and alg in RSA_ALGORITHMS) or (
            isinstance(key, ec.EllipticCurvePublicKey)
            and alg in EC_ALGORITHMS
            and isinstance(key.curve, _CURVES[alg])
        ) or (isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey) and alg in OKP_ALGORITHMS):
            out.append(alg)
    return out


def load_public_key(data: bytes, allowed: Sequence[str]) -> PublicKey:
    """Parse a PEM public key (or X.509 certificate) usable by one of ``allowed``.

    Raises ``ValueError`` with a sentence for the config error line.
    """
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            loaded: Any = x509.load_pem_x509_certificate(data).public_key()
        elif b"PRIVATE KEY-----" in data:
            raise ValueError("holds a private key; give the sidecar only the public key")
        else:
            loaded = load_pem_public_key(data)
    except ValueError as e:
        if "private key" in str(e):
            raise
        raise ValueError("not a PEM public key or certificate") from e
    if not isinstance(
        loaded,
        rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey,
    ):
        raise ValueError(f"unsupported key type {type(loaded).__name__}")
    if isinstance(loaded, rsa.RSAPublicKey) and loaded.key_size < MIN_RSA_BITS:
        raise ValueError(f"RSA key of {loaded.key_size} bits; at least {MIN_RSA_BITS} are required")
    if not algorithms_for(loaded, allowed):
        raise ValueError(f"no algorithm in jwt.algorithms ({', '.join(allowed)}) can use this key")
    return loaded


def prepare(key: PublicKey | bytes, algorithms: Iterable[str], kid: str | None = None) -> list[VerificationKey]:
    """Bind ``key`` to each algorithm it may verify, preparing it once."""
    registry = get_default_algorithms()
    out = []
    for alg in algorithms:
        verifier = registry[alg]
        out.append(VerificationKey(alg, verifier.prepare_key(key), verifier, kid))
    return out


def static_keys(algorithms: Sequence[str], secret: bytes | None, public_keys: Sequence[bytes]) -> list[VerificationKey]:
    """The keys given in the configuration file (HMAC secret and PEM files)."""
    out: list[VerificationKey] = []
    hmac = [a for a in algorithms if a in HMAC_ALGORITHMS]
    if secret is not None and hmac:
        out.extend(prepare(secret, hmac))
    for pem in public_keys:
        key = load_public_key(pem, algorithms)
        out.extend(prepare(key, algorithms_for(key, algorithms)))
    return out


def keys_from_jwks(document: Any, allowed: Sequence[str]) -> tuple[list[VerificationKey], list[str]]:
    """Parse a JWKS document into verification keys; returns (keys, problems).

    Symmetric (``oct``) keys are never taken from a JWKS: a published HMAC key would let
    anyone sign. A JWK's own ``alg`` pins it to that one algorithm; ``use`` other than
    ``sig`` excludes it. Keys that do not parse are skipped and reported, not fatal.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("JWKS document has no 'keys' list")
    registry = get_default_algorithms()
    parsers = {
        "RSA": registry["RS256"],
        "EC": registry["ES256"],
        "OKP": registry["EdDSA"],
    }
    keys: list[VerificationKey] = []
    problems: list[str] = []
    for i, jwk in enumerate(document["keys"][:100]):
        label = f"keys[{i}]"
        if not isinstance(jwk, dict):
            problems.append(f"{label}: not an object")
            continue
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            problems.append(f"{label}: kid is not a string")
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        kty = jwk.get("kty")
        parser = parsers.get(kty) if isinstance(kty, str) else None
        if parser is None:
            problems.append(f"{label}: key type {kty!r} is not accepted")
            continue
        try:
            key = parser.from_jwk(jwk)
        except (InvalidKeyError, PyJWKError, ValueError, KeyError, TypeError) as e:
            problems.append(f"{label}: {e}")
            continue
        if hasattr(key, "public_key") and not isinstance(
            key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
        ):
            key = key.public_key()  # a JWKS that leaks "d": use only the public half
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
            problems.append(f"{label}: RSA key of {key.key_size} bits is too short")
            continue
        usable = algorithms_for(key, allowed)
        pinned = jwk.get("alg")
        if pinned is not None:
            usable = [a for a in usable if a == pinned]
        if not usable:
            continue
        try:
            keys.extend(prepare(key, usable, kid))
        except (InvalidKeyError, ValueError, TypeError) as e:
            problems.append(f"{label}: {e}")
    return keys, problems
