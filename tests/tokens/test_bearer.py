"""Reading the bearer token from Authorization headers (RFC 6750 section 2.1; A14, B21)."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from sidecar.clock import ManualClock
from sidecar.errors import InvalidTokenError
from sidecar.tokens import TokenVerifier, extract_bearer
from tests.conftest import SECRET, settings_for
from tests.tokens.keys import b64url

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
MAX = 8192

# (header values as received, expected token or None for a deny)
CASES: dict[str, tuple[list[str], str | None]] = {
    "bearer": ([f"Bearer {TOKEN}"], TOKEN),
    "lower-case-scheme": ([f"bearer {TOKEN}"], TOKEN),
    "upper-case-scheme": ([f"BEARER {TOKEN}"], TOKEN),
    "mixed-case-scheme": ([f"bEaReR {TOKEN}"], TOKEN),
    "two-spaces": ([f"Bearer  {TOKEN}"], TOKEN),
    "surrounding-spaces": ([f"  Bearer {TOKEN}  "], TOKEN),
    "b64token-characters": (["Bearer a-b.c_d~e+f/g=="], "a-b.c_d~e+f/g=="),
    "missing": ([], None),
    "empty": ([""], None),
    "scheme-only": (["Bearer"], None),
    "scheme-and-space": (["Bearer "], None),
    "basic": (["Basic YWxpY2U6c2VjcmV0"], None),
    "token-without-scheme": ([TOKEN], None),
    "other-scheme": ([f"Token {TOKEN}"], None),
    "bearer-prefix-of-a-word": ([f"Bearerx {TOKEN}"], None),
    "no-space": ([f"Bearer{TOKEN}"], None),
    "tab": ([f"Bearer\t{TOKEN}"], None),
    "space-then-tab": ([f"Bearer \t{TOKEN}"], None),
    "newline": ([f"Bearer\n{TOKEN}"], None),
    "non-breaking-space": ([f"Bearer\u00a0{TOKEN}"], None),
    "two-tokens": ([f"Bearer {TOKEN} {TOKEN}"], None),
    "trailing-garbage": ([f"Bearer {TOKEN} garbage"], None),
    "trailing-comma": ([f"Bearer {TOKEN},"], None),
    "trailing-semicolon": ([f"Bearer {TOKEN};"], None),
    "quoted-token": ([f'Bearer "{TOKEN}"'], None),
    "second-scheme-in-one-header": ([f"Bearer {TOKEN}, Basic YWxpY2U6c2VjcmV0"], None),
    "padding-inside": (["Bearer abc=def"], None),
    "non-ascii-token": ([f"Bearer {TOKEN}\u00e9"], None),
    "nul-byte": ([f"Bearer {TOKEN}\x00"], None),
    "two-headers": ([f"Bearer {TOKEN}", f"Bearer {TOKEN}"], None),
    "two-headers-one-empty": ([f"Bearer {TOKEN}", ""], None),
    "two-headers-one-basic": (["Basic YWxpY2U6c2VjcmV0", f"Bearer {TOKEN}"], None),
    "just-over-the-limit": (["Bearer " + "a" * (MAX + 17)], None),
    "12KB": (["Bearer " + "a" * 12 * 1024], None),
    "1MB": (["Bearer " + "a" * 1024 * 1024], None),
}


@pytest.mark.parametrize(("values", "expected"), list(CASES.values()), ids=list(CASES))
def test_authorization_header_spellings(values: list[str], expected: str | None) -> None:
    """One "Bearer <b64token>" header (any scheme case, spaces only) yields the token; anything else is refused."""
    if expected is None:
        with pytest.raises(InvalidTokenError):
            extract_bearer(values, MAX)
    else:
        assert extract_bearer(values, MAX) == expected


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ([], "missing_token"),
        ([f"Bearer {TOKEN}", f"Bearer {TOKEN}"], "duplicate_authorization"),
        (["Bearer " + "a" * 12 * 1024], "oversized_token"),
        ([f"Basic {TOKEN}"], "not_bearer"),
    ],
)
def test_refusals_carry_a_reason_for_the_log(values: list[str], reason: str) -> None:
    """Each refusal names its reason (for the log and metrics, never for the client)."""
    with pytest.raises(InvalidTokenError) as e:
        extract_bearer(values, MAX)
    assert e.value.reason == reason


def test_token_at_the_size_limit_is_read() -> None:
    """A token of exactly max_bytes is handed on; the size rule is the verifier's to apply."""
    token = "a" * MAX
    assert extract_bearer([f"Bearer {token}"], MAX) == token


async def test_cached_shortcut_reads_the_header_as_extract_bearer_does(tmp_path: Path) -> None:
    """A token with "=" inside, verified before (admin API, capture), is refused in a header as extract_bearer refuses it."""
    head = b64url(b'{"alg":"HS256"}') + "="  # padded, then signed: it verifies
    body = b64url(json.dumps({"sub": "alice", "sid": "s-1", "exp": 2_000_000_000}).encode())
    signature = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    token = f"{head}.{body}.{b64url(signature)}"
    settings = settings_for(tmp_path)
    verifier = TokenVerifier(settings.jwt, ManualClock(wall=1_700_000_000.0))
    assert (await verifier.verify(token)).session_key == "sid:s-1"
    with pytest.raises(InvalidTokenError, match="not_bearer"):
        extract_bearer([f"Bearer {token}"], MAX)
    with pytest.raises(InvalidTokenError, match="not_bearer"):  # found by tests/fuzz (bearer): it was let through
        await verifier.verify_bearer([f"Bearer {token}"])
