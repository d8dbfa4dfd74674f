"""Fuzz target ``config``: ``from_mapping`` on TOML decoded from fuzz bytes and on structured mappings.

Contract: a document either becomes ``Settings`` or raises ``ConfigError`` whose message
is one line (no newline or other line break); nothing else is raised. Documents come from
TOML text (the fuzz bytes, written to a file and read by ``load``, which decodes them with
``tomllib`` and hands them to ``from_mapping``) or are built as mappings from every
section's real keys with values of every TOML type. The environment is empty and relative paths point into an
empty directory; documents naming device or proc files are skipped (``/dev/zero`` as a
key file would read forever: an operator's choice, not hostile input).
"""

from __future__ import annotations

import datetime
import math
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports(include=["sidecar"]):
    from sidecar.config import Settings, from_mapping, load
    from sidecar.errors import ConfigError

from tests.fuzz.common import fuzz

BASE = Path(tempfile.mkdtemp(prefix="fuzz-config-"))
(BASE / "secret.txt").write_text("s" * 40)
CONFIG_FILE = BASE / "sidecar.toml"
(BASE / "bad.pem").write_bytes(b"-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
KEYS: dict[str, list[str]] = {
    "server": ["host", "port", "workers", "trusted_proxies", "shutdown_timeout_seconds", "access_log",
               "max_concurrent_checks", "api_rate_limit_per_minute"],
    "jwt": ["algorithms", "secret", "secret_env", "secret_file", "public_key_file", "jwks_url", "jwks_cache_seconds",
            "jwks_refresh_cooldown_seconds", "issuer", "audience", "leeway_seconds", "user_claim", "session_claim",
            "token_type_claim", "access_token_type", "token_lifetime_seconds", "claim_headers", "max_token_bytes",
            "verified_cache_size"],
    "sessions": ["registration", "last_seen_flush_seconds", "state_cache_size", "catchup_interval_seconds",
                 "max_staleness_seconds"],
    "storage": ["url", "url_env", "url_file", "busy_timeout_ms", "pool_min_size", "pool_max_size",
                "statement_timeout_ms", "connect_timeout_seconds"],
    "redis": ["url", "channel"],
    "celery": ["broker_url", "queue", "cleanup_interval_seconds", "cleanup_grace_seconds", "cleanup_batch_size",
               "max_token_lifetime_seconds"],
    "geoip": ["database"],
    "admin": ["host", "port", "api_keys", "api_keys_env"],
    "logging": ["level", "format"],
    "routes": ["path", "policy", "methods"],
    "capture": ["path", "event", "upstream", "access_token", "refresh_token", "timeout_seconds", "max_body_bytes"],
}
GOOD: list[Any] = [
    "HS256", ["HS256"], ["RS256"], "s" * 40, "secret.txt", "bad.pem", "x-auth-role", {"role": "X-Auth-Role"},
    {"role": "X-Auth-User"}, {"a\nb": "X-Auth-A"}, "sqlite:///x.db", "postgresql://u@h:5432/d", "postgresql://h:x/d",
    "postgres://h/d?a", "redis://r", "https://issuer", "http://a:1", "/*", "/login", "/admin/*", "public", "required",
    "login", "refresh", "logout", "body:token", "cookie:rt", "header:X", ["GET"], ["get"], [], "10.0.0.0/8",
    ["::1/128", "bogus"], "explicit", "auto", "DEBUG", "json", "a" * 16, ["a" * 16], "~/x", "", " ", "\n", "\x00",
]
ODD: list[Any] = [
    0, -1, 1, 2**63 - 1, -(2**63), 10**400, 0.5, math.nan, math.inf, -math.inf, 1e308, True, False, [1], [[]], {},
    datetime.date(2024, 1, 1), datetime.time(1, 2), datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
]
FORBIDDEN = ("/dev", "/proc", "/sys")


def value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> Any:
    kind = fdp.ConsumeIntInRange(0, 5)
    if kind == 0:
        return fdp.PickValueInList(GOOD)
    if kind == 1:
        return fdp.PickValueInList(ODD)
    if kind == 2:
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 20))
    if kind == 3:
        return fdp.ConsumeIntInRange(-(2**64), 2**64) if fdp.ConsumeBool() else fdp.ConsumeFloat()
    if kind == 4 and depth < 2:
        return [value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    if depth < 2:
        return {fdp.ConsumeUnicode(6): value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 2))}
    return fdp.PickValueInList(GOOD)


def table(fdp: atheris.FuzzedDataProvider, keys: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        key = fdp.PickValueInList(keys) if fdp.ConsumeIntInRange(0, 9) else fdp.ConsumeUnicode(8)
        out[key] = value(fdp)
    return out


def mapping(fdp: atheris.FuzzedDataProvider) -> dict[str, Any]:
    doc: dict[str, Any] = {"jwt": {"algorithms": ["HS256"], "secret": "s" * 40}} if fdp.ConsumeBool() else {}
    for _ in range(fdp.ConsumeIntInRange(0, 5)):
        name = fdp.PickValueInList(list(KEYS)) if fdp.ConsumeIntInRange(0, 15) else fdp.ConsumeUnicode(8)
        if name in ("routes", "capture") and fdp.ConsumeIntInRange(0, 5):
            doc[name] = [table(fdp, KEYS[name]) for _ in range(fdp.ConsumeIntInRange(0, 3))]
        elif fdp.ConsumeIntInRange(0, 15) == 0:
            doc[name] = value(fdp)
        else:
            doc.setdefault(name, {}) if not isinstance(doc.get(name), dict) else None
            if isinstance(doc.get(name), dict):
                doc[name].update(table(fdp, KEYS.get(name, ["x"])))
            else:
                doc[name] = table(fdp, KEYS.get(name, ["x"]))
    return doc


def strings(value: Any) -> list[str]:
    """Every string in a document, keys too (without recursion: TOML nests as deep as it likes)."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    from_file = fdp.ConsumeBool()
    if from_file:
        raw = fdp.ConsumeBytes(fdp.remaining_bytes())
        try:
            doc = tomllib.loads(raw.decode("utf-8"))
        except Exception:  # whatever tomllib raises, load must turn into ConfigError
            doc = {}
    else:
        doc = mapping(fdp)
    if any(f in s for s in strings(doc) for f in FORBIDDEN):
        return
    try:
        if from_file:
            CONFIG_FILE.write_bytes(raw)
            settings = load(CONFIG_FILE, environ={})
        else:
            settings = from_mapping(doc, environ={}, base_dir=BASE)
    except ConfigError as e:
        message = str(e)
        assert message and len(message.splitlines()) == 1, f"ConfigError of {len(message.splitlines())} lines: {message!r}"
        return
    assert isinstance(settings, Settings)


if __name__ == "__main__":
    fuzz(test_one_input)
