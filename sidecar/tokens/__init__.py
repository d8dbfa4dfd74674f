"""Verify a JWT into ``Claims``: keys, JWKS, algorithm policy, claim rules."""

from __future__ import annotations

from sidecar.tokens.bearer import extract_bearer
from sidecar.tokens.claims import Claims
from sidecar.tokens.jwks import JwksKeys
from sidecar.tokens.verifier import TokenVerifier

__all__ = ["Claims", "JwksKeys", "TokenVerifier", "extract_bearer"]
