"""The algorithm families: which ``alg`` values exist, and which key family verifies each.

Token policy (RFC 7518 section 3.1, RFC 8725 section 3.1): one family per key. The
configuration validates ``jwt.algorithms`` against these; ``sidecar.tokens.keys`` binds
keys to them.
"""

from __future__ import annotations

from typing import Final

# HMAC algorithms and the least secret length each needs (RFC 7518 section 3.2).
HMAC_ALGORITHMS: Final = {"HS256": 32, "HS384": 48, "HS512": 64}
RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS: Final = frozenset({"ES256", "ES384", "ES512"})
OKP_ALGORITHMS: Final = frozenset({"EdDSA"})
SUPPORTED_ALGORITHMS: Final = frozenset(HMAC_ALGORITHMS) | RSA_ALGORITHMS | EC_ALGORITHMS | OKP_ALGORITHMS
