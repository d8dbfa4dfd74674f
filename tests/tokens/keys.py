"""Test keys and hand-made tokens.

Key pairs are generated once per test session (RSA generation is the slow part) and
shared read-only. ``sign`` builds a compact JWS from exact header/payload *bytes*, so a
test can send what ``json.dumps`` would never produce: duplicate keys, lone surrogates,
``NaN``, ``1e400``, non-UTF-8. PyJWT's ``jwt.encode`` is not used for hostile tokens
because it refuses (rightly) to HMAC with a public key and warns on short secrets.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import get_default_algorithms

# A 64-byte secret: long enough for HS256, HS384 and HS512 (RFC 7518 section 3.2).
LONG_SECRET = "hs512-test-secret-" + "0123456789abcdef" * 3
assert len(LONG_SECRET) >= 64

_HMAC = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}

# Group orders (FIPS 186-4 D.1.2), needed to build the malleable (r, n - s) signature.
CURVE_ORDERS = {
    "secp256r1": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "secp384r1": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
        16,
    ),
    "secp521r1": int(
        "1FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
        "A51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
        16,
    ),
}

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class KeyPair:
    """A private key, its public half, and the public half in every spelling tests need."""

    name: str
    private: PrivateKey

    @property
    def public(self) -> Any:
        return self.private.public_key()

    @property
    def public_pem(self) -> bytes:
        return bytes(
            self.public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    @property
    def public_der(self) -> bytes:
        return bytes(
            self.public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    @property
    def private_pem(self) -> bytes:
        return bytes(
            self.private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def jwk(self, kid: str | None = None, **extra: Any) -> dict[str, Any]:
        """The public key as a JWK (RFC 7517), with ``kid`` and any extra members."""
        registry = get_default_algorithms()
        family = {"rsa": "RS256", "ec": "ES256", "ed": "EdDSA"}[self.name.split("-", 1)[0]]
        out: dict[str, Any] = json.loads(registry[family].to_jwk(self.public))
        if kid is not None:
            out["kid"] = kid
        out.update(extra)
        return out

    def private_jwk(self, kid: str | None = None) -> dict[str, Any]:
        """The key with its private members (a JWKS that leaks ``d``)."""
        registry = get_default_algorithms()
        family = {"rsa": "RS256", "ec": "ES256", "ed": "EdDSA"}[self.name.split("-", 1)[0]]
        out: dict[str, Any] = json.loads(registry[family].to_jwk(self.private))
        if kid is not None:
            out["kid"] = kid
        return out

    def write_pem(self, folder: Path, name: str | None = None) -> str:
        """Write the public PEM to ``folder`` and return the file name (for public_key_file)."""
        file_name = name or f"{self.name}.pem"
        (folder / file_name).write_bytes(self.public_pem)
        return file_name

    def certificate_der(self) -> bytes:
        """A self-signed X.509 certificate for this key (what an attacker puts in x5c)."""
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"attacker {self.name}")])
        now = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
        algorithm = None if isinstance(self.private, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.public)
            .serial_number(1)
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=3650))
            .sign(self.private, algorithm)
        )
        return cert.public_bytes(serialization.Encoding.DER)


@functools.cache
def pair(name: str) -> KeyPair:
    """A key pair by name, generated once per test session.

    Names: ``rsa-1``, ``rsa-2`` (RSA 2048), ``ec-p256-1``, ``ec-p256-2``, ``ec-p384-1``,
    ``ec-p521-1``, ``ed-1``, ``ed-2`` (Ed25519). The ``-2`` keys play the attacker or the
    rotated-in key.
    """
    family = name.split("-", 1)[0]
    if family == "rsa":
        key: PrivateKey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif family == "ec":
        curves: dict[str, type[ec.EllipticCurve]] = {"p256": ec.SECP256R1, "p384": ec.SECP384R1, "p521": ec.SECP521R1}
        key = ec.generate_private_key(curves[name.split("-")[1]]())
    elif family == "ed":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(name)
    return KeyPair(name, key)


# The key each algorithm is tested with (and its attacker twin).
KEY_FOR_ALG = {
    "RS256": "rsa-1", "RS384": "rsa-1", "RS512": "rsa-1",
    "PS256": "rsa-1", "PS384": "rsa-1", "PS512": "rsa-1",
    "ES256": "ec-p256-1", "ES384": "ec-p384-1", "ES512": "ec-p521-1",
    "EdDSA": "ed-1",
}


def encode_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def sign(header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, key: Any) -> str:
    """A compact JWS over the exact bytes given, signed with the header's ``alg``.

    ``key`` is bytes/str for HS*, a ``KeyPair`` or private key otherwise; ``sign_with``
    signs with one algorithm while the header claims another.
    """
    header_bytes = header if isinstance(header, bytes) else encode_json(header)
    alg = json.loads(header_bytes)["alg"]
    return sign_with(alg, header_bytes, payload, key)


def sign_with(alg: str, header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, key: Any) -> str:
    """A compact JWS signed with ``alg`` whatever the header says."""
    header_bytes = header if isinstance(header, bytes) else encode_json(header)
    payload_bytes = payload if isinstance(payload, bytes) else encode_json(payload)
    signing_input = f"{b64url(header_bytes)}.{b64url(payload_bytes)}".encode("ascii")
    if alg in _HMAC:
        secret = key.encode() if isinstance(key, str) else key
        signature = hmac.new(secret, signing_input, _HMAC[alg]).digest()
    else:
        private = key.private if isinstance(key, KeyPair) else key
        signature = get_default_algorithms()[alg].sign(signing_input, private)
    return f"{signing_input.decode('ascii')}.{b64url(signature)}"


def malleate_ecdsa(token: str, curve_name: str) -> str:
    """The same ES* token with the other valid signature (r, n - s) (SECURITY_CASES A16)."""
    head, body, sig = token.split(".")
    raw = unb64url(sig)
    half = len(raw) // 2
    r, s = raw[:half], int.from_bytes(raw[half:], "big")
    flipped = (CURVE_ORDERS[curve_name] - s).to_bytes(half, "big")
    return f"{head}.{body}.{b64url(r + flipped)}"
