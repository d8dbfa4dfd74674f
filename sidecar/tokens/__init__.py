"""Verify a JWT into ``Claims``: keys, JWKS, algorithm policy, claim rules.

The names below load on first use, so that importing a part of this package (the
configuration reads ``sidecar.tokens.algorithms``) does not load the cryptography stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sidecar.tokens.bearer import extract_bearer
    from sidecar.tokens.claims import Claims
    from sidecar.tokens.jwks import JwksKeys
    from sidecar.tokens.verifier import TokenVerifier

_HOMES = {
    "Claims": "sidecar.tokens.claims",
    "JwksKeys": "sidecar.tokens.jwks",
    "TokenVerifier": "sidecar.tokens.verifier",
    "extract_bearer": "sidecar.tokens.bearer",
}

__all__ = ["Claims", "JwksKeys", "TokenVerifier", "extract_bearer"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
