"""Fuzz target ``tokens``: ``parse_compact`` and ``TokenVerifier.verify`` against the oracle of tests/test_properties.py.

Contract: ``verify`` returns claims exactly for the tokens the independent oracle finds
valid, with the oracle's values, and refuses every other one with ``InvalidTokenError``;
``parse_compact`` raises nothing but ``InvalidTokenError`` and accepts nothing whose encoding
the documented rules refuse. Nothing else is ever raised.

The oracle (``tests.test_properties.judge``) takes a token's header and payload bytes and
whether its encoding and signature are acceptable; here those are worked out from the
token text alone (``read_compact``), independently of ``sidecar.tokens``, so raw fuzz
text can be judged too. Inputs are built three ways, by the first byte: raw text, tokens
assembled from fuzzed header/payload JSON (claims near every time boundary, hostile
values) with a signature and a re-encoding chosen by the fuzzer, and fuzzed JSON bytes
signed as they are.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports(include=["sidecar"]):
    from sidecar.clock import ManualClock
    from sidecar.errors import InvalidTokenError
    from sidecar.tokens.parse import parse_compact
    from sidecar.tokens.verifier import TokenVerifier

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from tests.conftest import settings_for
from tests.fuzz.common import fuzz, run_sync
from tests.test_properties import (
    AUDIENCE,
    EC_KEY,
    ISSUER,
    LEEWAY,
    NOW,
    OTHER_SECRET,
    GeneratedToken,
    Verdict,
    assert_claims_match,
    judge,
    jwt_settings,
)
from tests.tokens.keys import LONG_SECRET, pair

_HASHES = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def strict_segment(segment: str) -> bytes | None:
    """The bytes of one base64url segment (RFC 7515 section 2), or None when the documented
    rules refuse it: alphabet, at most two "=" at the end, canonical (no spare bits set)."""
    body = segment.rstrip("=")
    if len(segment) - len(body) > 2 or len(body) % 4 == 1:
        return None
    if any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in body):
        return None
    try:
        data = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if b64(data) == body else None


def signature_ok(header: bytes, signing_input: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is right for the configured key of the ``alg`` the header names."""
    try:
        alg = json.loads(header).get("alg")
    except (ValueError, RecursionError, AttributeError):
        return False
    if isinstance(alg, str) and alg in _HASHES:
        expected = hmac.new(LONG_SECRET.encode(), signing_input, _HASHES[alg]).digest()
        return hmac.compare_digest(expected, signature)
    if isinstance(alg, str) and alg == "ES256" and len(signature) == 64:
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
        try:
            pair(EC_KEY).public.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True
    return False


def read_compact(token: str) -> GeneratedToken:
    """What the documented rules make of a compact token: the oracle's input."""
    parts = token.split(".")
    if len(parts) != 3 or not token.isascii():
        return GeneratedToken(token, b"", b"", False, False, "fuzz/unreadable")
    header, payload, signature = (strict_segment(p) for p in parts)
    if header is None or payload is None or signature is None:
        return GeneratedToken(token, b"", b"", False, False, "fuzz/bad-base64url")
    signed = signature_ok(header, f"{parts[0]}.{parts[1]}".encode(), signature)
    return GeneratedToken(token, header, payload, signed, True, "fuzz")


def judged(token: GeneratedToken) -> Verdict | str:
    """``judge``, except that a document nested deeper than the stack is too deep (the oracle's
    depth count recurses where the parser it checks did not)."""
    try:
        return judge(token)
    except RecursionError:
        return "unusable: too deep"


# ----------------------------------------------------------------------------- building tokens

TIMES = [NOW - LEEWAY, NOW + LEEWAY, NOW, NOW + 3600, NOW - 60]
NEAR = [0, 0.25, -0.25, 1, -1, 0.5]
ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 2**53, 2**63, 10**30, 1.5, "", " ", "a b", "\ud800", "\x00", "\u00e9", "a" * 256,
    [], {}, ["x"], {"a": 1}, "1700000000",
]
ODD_LITERALS = [
    b"NaN", b"Infinity", b"-Infinity", b"1e400", b"1E999", b"-0", b"1e-400", b"01", b'"\\ud800"', b'"\xff"',
    b"[" * 40 + b"]" * 40, b'"\\u0000"', b"9" * 30, b"1.0e2",
]
ALGS: list[Any] = ["HS256", "HS512", "ES256", "none", "NONE", "", "hs256", "HS384", "RS256", None, 1, ["HS256"]]
KIDS: list[Any] = ["k1", "", "k" * 256, "k" * 257, 1, None, "../../dev/null", ["k"]]


def literal(fdp: atheris.FuzzedDataProvider, value: Any) -> bytes:
    """``value`` as JSON, now and then with ``\\u`` escapes (json.dumps' ensure_ascii)."""
    if isinstance(value, bytes):
        return value
    return json.dumps(value, ensure_ascii=fdp.ConsumeBool()).encode("utf-8", "surrogatepass")


def any_value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> bytes:
    """A JSON value (or a near miss) as text."""
    kind = fdp.ConsumeIntInRange(0, 7)
    if kind == 0:
        return literal(fdp, fdp.PickValueInList(ODD_VALUES))
    if kind == 1:
        return fdp.PickValueInList(ODD_LITERALS)
    if kind == 2:
        return literal(fdp, fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 12)))
    if kind == 3:
        return str(fdp.ConsumeIntInRange(-(2**64), 2**64)).encode()
    if kind == 4:
        return repr(fdp.ConsumeFloat()).encode()
    if kind == 5 and depth < 3:
        return b"[" + b",".join(any_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))) + b"]"
    if kind == 6 and depth < 3:
        return obj([(fdp.ConsumeUnicode(4), any_value(fdp, depth + 1)) for _ in range(fdp.ConsumeIntInRange(0, 3))])
    return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8))


def obj(members: list[tuple[str, bytes]]) -> bytes:
    return b"{" + b",".join(json.dumps(k).encode() + b":" + v for k, v in members) + b"}"


def time_value(fdp: atheris.FuzzedDataProvider, hostile: bool) -> bytes:
    if hostile and fdp.ConsumeIntInRange(0, 5) == 0:
        return any_value(fdp)
    value = fdp.PickValueInList(TIMES) + fdp.PickValueInList(NEAR)
    spelling = fdp.ConsumeIntInRange(0, 2)
    if spelling == 0 and float(value).is_integer():
        return str(int(value)).encode()
    return (repr(float(value)) if spelling == 1 else format(float(value), ".12e")).encode()


def member(fdp: atheris.FuzzedDataProvider, members: list[tuple[str, bytes]], name: str, good: Any, hostile: bool) -> None:
    """Add ``name`` with its good value; in a hostile token now and then a bad one, or none."""
    choice = fdp.ConsumeIntInRange(0, 9) if hostile else 9
    if choice == 0:
        return
    members.append((name, any_value(fdp) if choice == 1 else literal(fdp, good)))


def header_json(fdp: atheris.FuzzedDataProvider, hostile: bool) -> tuple[bytes, str]:
    alg = fdp.PickValueInList(ALGS if hostile else ALGS[:3])
    members: list[tuple[str, bytes]] = [("alg", literal(fdp, alg))]
    if fdp.ConsumeBool():
        members.append(("typ", literal(fdp, "JWT")))
    if fdp.ConsumeIntInRange(0, 3) == 0:
        members.append(("kid", literal(fdp, fdp.PickValueInList(KIDS))))
    for name in ("crit", "b64", "jku", "jwk", "x5c", "alg"):  # "alg" again: a duplicate key
        if hostile and fdp.ConsumeIntInRange(0, 15) == 0:
            members.append((name, any_value(fdp)))
    if hostile and fdp.ConsumeIntInRange(0, 3) == 0:
        members.append((fdp.ConsumeUnicode(6), any_value(fdp)))
    return obj(members), alg if isinstance(alg, str) else "HS256"


def payload_json(fdp: atheris.FuzzedDataProvider, hostile: bool) -> bytes:
    members: list[tuple[str, bytes]] = []
    member(fdp, members, "sub", fdp.PickValueInList(["alice", 42, "bob"]), hostile)
    if fdp.ConsumeIntInRange(0, 3):
        member(fdp, members, "sid", fdp.PickValueInList(["s-1", "s-2"]), hostile)
    if fdp.ConsumeBool():
        member(fdp, members, "jti", "j-1", hostile)
    for name in ("exp", "nbf", "iat"):
        if name == "exp" or fdp.ConsumeBool():
            members.append((name, time_value(fdp, hostile)))
    member(fdp, members, "iss", ISSUER, hostile)
    member(fdp, members, "aud", fdp.PickValueInList([AUDIENCE, [AUDIENCE], ["x", AUDIENCE], "API"]), hostile)
    member(fdp, members, "type", "access", hostile)
    if fdp.ConsumeIntInRange(0, 3) == 0:
        member(fdp, members, "role", fdp.PickValueInList(["admin", " a", "a\nb", 5, "x" * 1025]), hostile)
    if fdp.ConsumeIntInRange(0, 3) == 0:
        members.append((fdp.ConsumeUnicode(4), any_value(fdp)))
    for _ in range(fdp.ConsumeIntInRange(0, 2) if hostile else 0):
        members.append((fdp.PickValueInList(["sub", "exp", "x", "sid"]), any_value(fdp)))
    if hostile and fdp.ConsumeIntInRange(0, 30) == 0:
        return b"[" + b",".join(v for _, v in members) + b"]"
    return obj(members)


def signed(fdp: atheris.FuzzedDataProvider, header: bytes, payload: bytes, alg: str, hostile: bool = True) -> str:
    """A compact token over these exact bytes, signed as the fuzzer chooses (rightly, unless hostile)."""
    head, body = b64(header), b64(payload)
    if hostile and fdp.ConsumeIntInRange(0, 7) == 0:  # padded before signing: the signing input has the "="
        head += "=" * fdp.ConsumeIntInRange(0, 2)
        body += "=" * fdp.ConsumeIntInRange(0, 2)
    signing_input = f"{head}.{body}".encode()
    how = fdp.ConsumeIntInRange(0, 9) if hostile else 0
    if how <= 5:
        name = alg if alg in _HASHES else "HS256"
        sig = hmac.new(LONG_SECRET.encode(), signing_input, _HASHES[name]).digest()
    elif how == 6:
        sig = hmac.new(OTHER_SECRET.encode(), signing_input, hashlib.sha256).digest()
    elif how == 7:
        sig = hmac.new(LONG_SECRET.encode(), signing_input, hashlib.sha512 if alg == "HS256" else hashlib.sha256).digest()
    elif how == 8:
        sig = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 70))
    else:
        sig = b""
    return f"{head}.{body}.{b64(sig)}"


def re_encoded(fdp: atheris.FuzzedDataProvider, token: str, hostile: bool) -> str:
    """The same token, or a re-encoding of it (padding, alphabet, spare bits, whitespace, segments)."""
    how = fdp.ConsumeIntInRange(0, 9) if hostile else fdp.ConsumeIntInRange(0, 4)
    parts = token.split(".")
    if how <= 3:
        return token
    i = fdp.ConsumeIntInRange(0, len(parts) - 1)
    if how == 4:
        parts[i] += "=" * fdp.ConsumeIntInRange(1, 3)
    elif how == 5:
        parts[i] = parts[i].replace("-", "+").replace("_", "/")
    elif how == 6 and parts[i]:
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        last = parts[i][-1]
        if last in alphabet:
            parts[i] = parts[i][:-1] + alphabet[alphabet.index(last) ^ fdp.ConsumeIntInRange(1, 3)]
    elif how == 7:
        at = fdp.ConsumeIntInRange(0, len(token))
        return token[:at] + fdp.ConsumeUnicode(fdp.ConsumeIntInRange(1, 2)) + token[at:]
    elif how == 8:
        parts.insert(i, parts[i]) if fdp.ConsumeBool() else parts.pop(i)
    else:
        return token[: fdp.ConsumeIntInRange(0, len(token))]
    return ".".join(parts)


def build(fdp: atheris.FuzzedDataProvider, mode: int) -> str:
    if mode == 0:
        return fdp.ConsumeUnicode(fdp.remaining_bytes())
    if mode == 1:  # fuzzed JSON bytes, signed as they are
        header = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
        payload = fdp.ConsumeBytes(fdp.remaining_bytes())
        try:
            alg = str(json.loads(header)["alg"])
        except (ValueError, RecursionError, TypeError, KeyError, IndexError):
            alg = "HS256"
        return signed(fdp, header, payload, alg)
    hostile = mode == 3  # mode 2 keeps every rule except the time boundaries and padding
    header, alg = header_json(fdp, hostile)
    return re_encoded(fdp, signed(fdp, header, payload_json(fdp, hostile), alg, hostile), hostile)


# ----------------------------------------------------------------------------- the target

_TMP = Path(tempfile.mkdtemp(prefix="fuzz-tokens-"))
VERIFIER = TokenVerifier(settings_for(_TMP, jwt=jwt_settings(_TMP)).jwt, ManualClock(wall=float(NOW)))


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    token = build(fdp, fdp.ConsumeIntInRange(0, 3) if data else 0)
    reading = read_compact(token)
    verdict = judged(reading)

    try:
        parse_compact(token)
    except InvalidTokenError:
        pass
    else:
        assert reading.encoding_ok, f"parse_compact accepted a token the encoding rules refuse: {token!r:.300}"

    try:
        claims = run_sync(VERIFIER.verify(token))
    except InvalidTokenError as e:
        assert not isinstance(verdict, Verdict), f"refused ({e}) a token the oracle accepts: {reading!r}"
        return
    assert isinstance(verdict, Verdict), f"accepted a token the oracle refuses ({verdict}): {reading!r}\n{claims}"
    assert_claims_match(claims, verdict)


if __name__ == "__main__":
    sys.setrecursionlimit(10_000)  # atheris adds frames; the verdicts do not depend on the limit
    fuzz(test_one_input)
