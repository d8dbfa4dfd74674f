"""Keys and tokens for the harness, and the in-process verification timings.

Keys are generated at run time (an HS256 secret, an RSA-2048 and a P-256 key pair); the
sidecar gets only the secret or the public PEM. Tokens look like an OIDC access token
(``sub``, ``sid``, ``iat``, ``exp``, ``jti``); each has its own ``jti``, so every token is
distinct even when several share a session. RSA signing (~0.2 ms a token) runs on every
core before any server is loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import statistics
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import get_default_algorithms

from tests.support.tokens import mint as mint_token

ALGORITHMS = ("HS256", "RS256", "ES256")
TOKEN_TTL = 6 * 3600


@dataclass(frozen=True)
class SigningKey:
    """One algorithm's signing material and what the sidecar is configured with."""

    algorithm: str
    signing_pem: bytes  # the HMAC secret itself for HS256
    public_pem: bytes | None  # None for HS256

    @classmethod
    def generate(cls, algorithm: str) -> SigningKey:
        if algorithm == "HS256":
            # 64 URL-safe characters (48 random bytes): above HS256's 32-byte minimum.
            return cls(algorithm, secrets.token_urlsafe(48).encode(), None)
        private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if algorithm == "RS256":
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif algorithm == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(f"unsupported algorithm {algorithm}")
        signing = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        public = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(algorithm, signing, public)

    @property
    def secret(self) -> str | None:
        return self.signing_pem.decode() if self.algorithm == "HS256" else None

    def verification_key(self) -> Any:
        """What ``jwt.decode`` is given: the secret, or the parsed public key (built once)."""
        if self.public_pem is None:
            return self.signing_pem
        return serialization.load_pem_public_key(self.public_pem)


@dataclass(frozen=True)
class Identity:
    """A session a token belongs to."""

    user: str
    sid: str


def identities(count: int, prefix: str = "") -> list[Identity]:
    """``count`` sessions of ``count // 4`` users (four devices each), new ids every call."""
    return [Identity(f"user-{prefix}{i // 4}", str(uuid.uuid4())) for i in range(count)]


# ---------------------------------------------------------------------------- minting

_worker_key: tuple[str, Any] | None = None


def _init_worker(algorithm: str, signing_pem: bytes) -> None:
    global _worker_key  # noqa: PLW0603 (one parsed key per worker process)
    key: Any = signing_pem
    if algorithm != "HS256":
        key = serialization.load_pem_private_key(signing_pem, password=None)
    _worker_key = (algorithm, key)


def _mint_chunk(chunk: Sequence[tuple[str, str]], iat: int) -> list[str]:
    if _worker_key is None:
        raise RuntimeError("worker not initialised")
    algorithm, key = _worker_key
    out = []
    for user, sid in chunk:
        out.append(mint_token(user, key=key, algorithm=algorithm, now=iat, ttl=TOKEN_TTL, sid=sid, jti=uuid.uuid4().hex))
    return out


def mint(key: SigningKey, sessions: Sequence[Identity], *, processes: int | None = None) -> list[str]:
    """One new token for each entry of ``sessions`` (entries may repeat: same session,
    distinct tokens), signed on every core."""
    pairs = [(s.user, s.sid) for s in sessions]
    iat = int(time.time()) - 5  # never "issued in the future", whatever the clock does
    workers = processes or len(os.sched_getaffinity(0))
    if len(pairs) < 2000 or workers < 2:
        _init_worker(key.algorithm, key.signing_pem)
        return _mint_chunk(pairs, iat)
    size = -(-len(pairs) // (workers * 4))
    chunks = [pairs[i : i + size] for i in range(0, len(pairs), size)]
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(key.algorithm, key.signing_pem)) as pool:
        results = pool.map(_mint_chunk, chunks, [iat] * len(chunks))
        return [token for chunk in results for token in chunk]


def write_pool(path: Path, tokens: Sequence[str]) -> Path:
    path.write_text("\n".join(tokens) + "\n")
    return path


# ---------------------------------------------------------------------------- in-process timings


@contextlib.contextmanager
def on_cpu(cpu: int | None) -> Iterator[None]:
    """Run this process on ``cpu`` for a while (the server core), then as before."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _per_call_us(run_once: Any, tokens: Sequence[str], rounds: int) -> float:
    """Median over ``rounds`` of the mean µs per token of ``run_once(tokens)``."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        run_once(tokens)
        samples.append((time.perf_counter() - start) / len(tokens) * 1e6)
    return round(statistics.median(samples), 2)


def pyjwt_decode_us(key: SigningKey, tokens: Sequence[str], rounds: int = 5) -> float:
    """µs per ``jwt.decode(token, key, algorithms=[alg])``, the key parsed once."""
    verification_key = key.verification_key()
    algorithms = [key.algorithm]

    def run(batch: Sequence[str]) -> None:
        for token in batch:
            jwt.decode(token, verification_key, algorithms=algorithms)

    run(tokens[:50])  # warm up
    return _per_call_us(run, tokens, rounds)


def signature_only_us(key: SigningKey, tokens: Sequence[str], rounds: int = 5) -> float:
    """µs per bare signature check (PyJWT's algorithm object on a prepared key): the floor
    under any JWT verification, used to size the cold-token pools."""
    algorithm = get_default_algorithms()[key.algorithm]
    prepared = algorithm.prepare_key(key.verification_key())
    parts = []
    for token in tokens:
        head, payload, signature = token.encode().split(b".")
        parts.append((head + b"." + payload, jwt.utils.base64url_decode(signature)))

    def run(_batch: Sequence[str]) -> None:
        for signing_input, signature in parts:
            algorithm.verify(signing_input, prepared, signature)

    return _per_call_us(run, tokens, rounds)


def sidecar_verify_us(config: Path, tokens: Sequence[str], rounds: int = 5) -> float:
    """µs per ``TokenVerifier.verify`` on tokens it has never seen (its cache misses), in
    this process: the sidecar's own cold verification without HTTP around it."""
    from sidecar.clock import SystemClock
    from sidecar.config import load
    from sidecar.tokens import TokenVerifier

    settings = load(str(config))

    async def run_all() -> float:
        samples = []
        for _ in range(rounds):
            verifier = TokenVerifier(settings.jwt, SystemClock())  # an empty cache each round
            start = time.perf_counter()
            for token in tokens:
                await verifier.verify(token)
            samples.append((time.perf_counter() - start) / len(tokens) * 1e6)
        return round(statistics.median(samples), 2)

    return asyncio.run(run_all())
