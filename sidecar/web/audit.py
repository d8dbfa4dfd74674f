"""The audit trail: one JSON line per revocation on the ``sidecar.audit`` logger.

Who (the user and their session, or which admin key by fingerprint), what (which
session or user), when, and through which API. Never a token.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

log = logging.getLogger("sidecar.audit")


def key_fingerprint(key: str) -> str:
    """A short, stable name for an admin API key that does not reveal it."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:12]


def record(event: str, **fields: Any) -> None:
    entry = {
        "audit": event,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **fields,
    }
    log.info(json.dumps(entry, sort_keys=True, separators=(",", ":")))
