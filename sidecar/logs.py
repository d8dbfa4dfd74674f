"""Log output: plain text or one JSON object per line, with the request id when known.

The request id is the ``X-Request-Id`` the gateway sends (nginx ``$request_id``, Envoy's
``x-request-id``), set per request by the web layer in ``REQUEST_ID``. It is
client-influenced, so only a short token of safe characters is ever written.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time

from sidecar.config import LoggingSettings

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("sidecar_request_id", default=None)
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id() -> str | None:
    raw = REQUEST_ID.get()
    if raw is None:
        return None
    return raw if _SAFE_ID.fullmatch(raw) else "invalid"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid is not None:
            entry["request_id"] = rid
        fields = getattr(record, "audit", None)  # sidecar.web.audit: a structured record
        if isinstance(fields, dict):
            for k, v in fields.items():
                entry.setdefault(k, v)  # never over the line's own time, level, logger, message
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = getattr(record, "request_id", None)
        return f"{text} [request {rid}]" if rid is not None else text


def configure(settings: LoggingSettings) -> None:
    """Send every log record to stderr in the configured format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if settings.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
