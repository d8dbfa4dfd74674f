"""Fuzz target ``bearer``: ``extract_bearer`` and the cached shortcut of ``TokenVerifier.verify_bearer``.

Contract: ``extract_bearer`` returns one token or raises ``InvalidTokenError``, nothing else;
a token comes only from a single header value, is a substring of it, and is exactly
what a plain regular expression of RFC 6750 section 2.1 (scheme in any case, one or more
spaces, a b64token, surrounding spaces and tabs) reads from it within the size limit.
``verify_bearer`` (a known token costs one lookup) decides exactly as ``extract_bearer``
followed by ``verify`` does, whatever the verifier has seen before (tokens the admin API
or a capture route verified directly are in its cache too).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["sidecar"]):
    from sidecar.clock import ManualClock
    from sidecar.config import Settings
    from sidecar.errors import InvalidTokenError
    from sidecar.tokens.bearer import extract_bearer
    from sidecar.tokens.claims import Claims
    from sidecar.tokens.verifier import TokenVerifier

from tests.conftest import SECRET, settings_for
from tests.fuzz.common import fuzz, run_sync, text

NOW = 1_700_000_000
# RFC 6750 section 2.1, written again: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
ORACLE = re.compile(r"[ \t]*bearer +([A-Za-z0-9._~+/-]+=*)[ \t]*", re.IGNORECASE | re.ASCII)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def token(claims: dict[str, object], *, pad_header: int = 0, pad_payload: int = 0, pad_signature: int = 0) -> str:
    """An HS256 token over its segments as written, "=" padding included (so it verifies)."""
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "=" * pad_header
    body = b64(json.dumps(claims).encode()) + "=" * pad_payload
    signature = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}" + "=" * pad_signature


CLAIMS = {"sub": "alice", "sid": "s-1", "iat": NOW, "exp": NOW + 3600}
TOKENS = [
    token(CLAIMS),
    token(CLAIMS, pad_signature=1),
    token(CLAIMS, pad_signature=2),
    token(CLAIMS, pad_header=1),
    token(CLAIMS, pad_payload=2),
    token({**CLAIMS, "sid": "s-2"}, pad_header=2, pad_payload=1),
    token({**CLAIMS, "exp": NOW - 1}),
    "a.b.c",
    "abc",
]
PREFIXES = ["Bearer ", "bearer ", "BEARER ", "Bearer   ", " Bearer ", "\tBearer ", "Bearer\t", "Bearer", "Basic ", "", "Bearer  "]
SUFFIXES = ["", " ", "\t", " x", ",", "=", "==", "\r\n", " \t"]


@dataclass
class FakeServices:
    """The settings and the verifier the target works with."""

    settings: Settings
    verifier: TokenVerifier


_TMP = Path(tempfile.mkdtemp(prefix="fuzz-bearer-"))
SETTINGS = settings_for(_TMP, jwt={"verified_cache_size": 64})
SERVICES = FakeServices(SETTINGS, TokenVerifier(SETTINGS.jwt, ManualClock(wall=float(NOW))))


def header_value(fdp: atheris.FuzzedDataProvider) -> str:
    if fdp.ConsumeIntInRange(0, 4) == 0:
        return text(fdp, 200)
    return text(fdp, 10, PREFIXES) + text(fdp, 40, TOKENS) + text(fdp, 4, SUFFIXES)


def outcome(decide: object) -> Claims | str:
    try:
        return run_sync(decide)  # type: ignore[arg-type]
    except InvalidTokenError:
        return "refused"


async def reference(values: list[str]) -> Claims:
    return await SERVICES.verifier.verify(extract_bearer(values, SETTINGS.jwt.max_token_bytes))


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    max_bytes = fdp.PickValueInList([8192, 0, 16, 64, 300])
    if fdp.ConsumeBool():  # verified directly first, as POST /admin/v1/sessions and a captured login do
        with contextlib.suppress(InvalidTokenError):
            run_sync(SERVICES.verifier.verify(text(fdp, 40, TOKENS)))
    values = [header_value(fdp) for _ in range(fdp.PickValueInList([1, 1, 1, 0, 2, 3]))]

    try:
        found = extract_bearer(values, max_bytes)
    except InvalidTokenError:
        found = None
    m = ORACLE.fullmatch(values[0]) if len(values) == 1 else None
    expected = m.group(1) if m and len(values[0].strip(" \t")) <= max_bytes + 16 else None
    assert found == expected, f"extract_bearer({values!r}, {max_bytes}) = {found!r}, the regex reads {expected!r}"
    assert found is None or (len(values) == 1 and found in values[0])

    shortcut = outcome(SERVICES.verifier.verify_bearer(values))
    full = outcome(reference(values))
    assert shortcut == full, f"verify_bearer({values!r}) = {shortcut!r}, extract_bearer + verify = {full!r}"


if __name__ == "__main__":
    fuzz(test_one_input)
