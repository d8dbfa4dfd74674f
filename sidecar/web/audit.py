"""The audit trail: one structured record per revocation on the ``sidecar.audit`` logger.

Who (the user and their session, or which admin key by fingerprint), what (which
session or user), when, and through which API. Never a token.

The fields travel on the log record (``record.audit``), not as JSON inside the message: the
JSON log format writes them as fields of the line (``{"time", "level", "logger":
"sidecar.audit", "message", "audit": "session.revoked", "api": ..., "user": ...}``), the
text format as ``key=value`` pairs after the event name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any, Final

log = logging.getLogger("sidecar.audit")

# The attribute of a LogRecord that carries the fields (read by sidecar.logs.JsonFormatter).
FIELDS: Final = "audit"


def key_fingerprint(key: str) -> str:
    """A short, stable name for an admin API key that does not reveal it."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:12]


def _text(value: Any) -> str:
    return value if isinstance(value, str) and value and " " not in value else json.dumps(value, ensure_ascii=False)


def record(event: str, **fields: Any) -> None:
    # "time" is the record's own (whole seconds, UTC); the JSON line keeps its own "time" (ms).
    entry = {"audit": event, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields}
    pairs = " ".join(f"{k}={_text(v)}" for k, v in sorted(fields.items()))
    log.info("audit %s %s", event, pairs, extra={FIELDS: entry})
