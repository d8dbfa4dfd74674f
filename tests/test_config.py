"""Configuration loading and validation (DESIGN.md section 5)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sidecar.config import JwtSettings, Settings, from_mapping, load
from sidecar.errors import ConfigError
from tests.conftest import REPO, SECRET

BASE: dict[str, Any] = {"jwt": {"algorithms": ["HS256"], "secret": SECRET}}


def build(tmp_path: Path, raw: dict[str, Any], environ: dict[str, str] | None = None) -> Settings:
    merged: dict[str, Any] = {k: dict(v) for k, v in BASE.items()}
    for section, values in raw.items():
        if isinstance(values, dict):
            merged.setdefault(section, {}).update(values)
        else:
            merged[section] = values
    return from_mapping(merged, environ=environ or {}, base_dir=tmp_path)


def error_of(tmp_path: Path, raw: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        build(tmp_path, raw, environ)
    return str(info.value)


def test_example_config_loads_and_is_the_embedded_default() -> None:
    """config.example.toml loads: SQLite, one process, HS256 development secret, auto registration."""
    settings = load(REPO / "config.example.toml")
    assert settings.storage.backend == "sqlite"
    assert settings.storage.sqlite_path == Path("sidecar.db")
    assert settings.server.workers == 1
    assert settings.jwt.algorithms == ("HS256",)
    assert settings.jwt.development_hmac_only
    assert settings.sessions.registration == "auto"
    assert settings.admin.enabled


def test_example_config_documents_every_key() -> None:
    """Every key the loader accepts appears in config.example.toml (commented or not)."""
    text = (REPO / "config.example.toml").read_text()
    settings = Settings()
    import dataclasses

    for section in dataclasses.fields(settings):
        assert f"[{section.name}]" in text, section.name
        arrays = {
            "routes": ("path =", "methods =", "policy ="),
            "capture": ("path =", "event =", "upstream =", "access_token =", "refresh_token =",
                        "timeout_seconds =", "max_body_bytes ="),
            "webhooks": ("url =", "secret_env =", "secret_file", "events =", "max_attempts =", "timeout_seconds ="),
        }
        if section.name in arrays:  # arrays of tables, their keys documented in the example
            for key in arrays[section.name]:
                assert key in text, f"{section.name}.{key}"
            continue
        for f in dataclasses.fields(getattr(settings, section.name)):
            name = {"public_keys": "public_key_file"}.get(f.name, f.name)
            assert f"{name} =" in text, f"{section.name}.{name}"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"bogus": {}}, "bogus: unknown section"),
        ({"server": {"prot": 80}}, "server.prot: unknown key"),
        ({"server": {"port": "80"}}, "server.port: must be an integer, got a string"),
        ({"server": {"port": 70000}}, "server.port: must be between 0 and 65535"),
        ({"server": {"port": True}}, "server.port: must be an integer, got true or false"),
        ({"server": {"workers": 0}}, "server.workers: must be between 1 and 256"),
        ({"server": {"trusted_proxies": ["10.0.0.0/8", "nope"]}}, "server.trusted_proxies: 'nope'"),
        ({"server": "x"}, "server: must be a table"),
        ({"jwt": {"algorithms": []}}, "jwt.algorithms: list at least one"),
        ({"jwt": {"algorithms": ["none"]}}, "jwt.algorithms: 'none' is not supported"),
        ({"jwt": {"algorithms": ["hs256"]}}, "jwt.algorithms: 'hs256' is not supported"),
        ({"jwt": {"secret": "short"}}, "jwt.secret: HS256 needs a secret of at least 32 bytes (got 5)"),
        ({"jwt": {"algorithms": ["HS384"], "secret": "x" * 40}}, "jwt.secret: HS384 needs a secret of at least 48"),
        ({"jwt": {"algorithms": ["HS512"], "secret": "x" * 63}}, "jwt.secret: HS512 needs a secret of at least 64"),
        ({"jwt": {"algorithms": ["RS256"]}}, "jwt.secret: set, but no HS* algorithm"),
        ({"jwt": {"algorithms": ["RS256"], "secret": ""}}, "jwt.public_key_file: RS256 needs public_key_file or jwks_url"),
        ({"jwt": {"public_key_file": "missing.pem"}}, "jwt.public_key_file: cannot read"),
        ({"jwt": {"jwks_url": "ftp://x"}}, "jwt.jwks_url: must be an http(s) URL"),
        ({"jwt": {"token_type_claim": "type"}}, "jwt.access_token_type: set both"),
        ({"jwt": {"leeway_seconds": -1}}, "jwt.leeway_seconds: must be between 0 and 300"),
        ({"jwt": {"claim_headers": {"email": "Email"}}}, "jwt.claim_headers.email: header name must start with X-Auth-"),
        ({"jwt": {"claim_headers": {"sub": "X-Auth-User"}}}, "jwt.claim_headers.sub: X-Auth-User is set by the sidecar"),
        ({"jwt": {"claim_headers": {"anon": "X-Auth-Anonymous"}}}, "jwt.claim_headers.anon: X-Auth-Anonymous is set by the sidecar"),
        ({"jwt": {"user_claim": ""}}, "jwt.user_claim: must not be empty"),
        ({"sessions": {"registration": "manual"}}, "sessions.registration: must be 'auto' or 'explicit'"),
        ({"sessions": {"registration": "explicit"}}, "sessions.registration: 'explicit' needs admin.api_keys"),
        ({"storage": {"url": "mysql://x"}}, "storage.url: must start with sqlite:///"),
        ({"storage": {"url": "sqlite:///:memory:"}}, "storage.url: needs a file"),
        ({"storage": {"url": "postgresql://h:abc/x"}}, "storage.url: not a valid PostgreSQL URL (bad host or port)"),
        ({"storage": {"url": "postgresql://h/x", "pool_min_size": 5, "pool_max_size": 2}}, "storage.pool_min_size: must not exceed storage.pool_max_size"),
        ({"redis": {"url": "http://x"}}, "redis.url: must start with redis://"),
        ({"geoip": {"database": "nope.mmdb"}}, "geoip.database: cannot read"),
        ({"admin": {"api_keys": ["short"]}}, "admin.api_keys: every key must be at least 16 characters"),
        ({"admin": {"api_keys_env": "NOPE"}}, "admin.api_keys_env: environment variable NOPE is not set"),
        ({"logging": {"level": "LOUD"}}, "logging.level: must be DEBUG, INFO, WARNING or ERROR"),
        ({"celery": {"cleanup_interval_seconds": 0}}, "celery.cleanup_interval_seconds: must be between"),
    ],
)
def test_bad_config_gives_one_line_naming_the_key(tmp_path: Path, raw: dict[str, Any], expected: str) -> None:
    """Every invalid value stops start-up with one line that names the key."""
    message = error_of(tmp_path, raw)
    assert expected in message
    assert "\n" not in message


def test_secret_from_env_and_file(tmp_path: Path) -> None:
    """The HMAC secret can come from an environment variable or a file instead of the TOML."""
    env = build(tmp_path, {"jwt": {"secret": "", "secret_env": "JWT_SECRET"}}, {"JWT_SECRET": SECRET})
    assert env.jwt.secret == SECRET.encode()
    (tmp_path / "secret.txt").write_text(SECRET + "\n")
    from_file = build(tmp_path, {"jwt": {"secret": "", "secret_file": "secret.txt"}})
    assert from_file.jwt.secret == SECRET.encode()
    assert "jwt.secret_env: environment variable JWT_SECRET is not set" in error_of(
        tmp_path, {"jwt": {"secret": "", "secret_env": "JWT_SECRET"}}
    )
    assert "set only one of secret, secret_env" in error_of(tmp_path, {"jwt": {"secret_env": "JWT_SECRET"}})


def test_admin_keys_from_env(tmp_path: Path) -> None:
    """admin.api_keys_env reads a comma-separated list of keys."""
    s = build(tmp_path, {"admin": {"api_keys_env": "KEYS"}}, {"KEYS": "a" * 16 + ", " + "b" * 20})
    assert s.admin.api_keys == ("a" * 16, "b" * 20)


def _pem(key: Any) -> bytes:
    data: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def test_public_key_files_are_checked_at_load(tmp_path: Path) -> None:
    """Key files must hold a public key that a listed algorithm can use."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "rsa.pem").write_bytes(_pem(rsa_key))
    (tmp_path / "ec.pem").write_bytes(_pem(ec.generate_private_key(ec.SECP384R1())))
    (tmp_path / "junk.pem").write_text("hello")
    (tmp_path / "private.pem").write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    ok = build(tmp_path, {"jwt": {"algorithms": ["RS256"], "secret": "", "public_key_file": "rsa.pem"}})
    assert len(ok.jwt.public_keys) == 1
    rs_only = {"algorithms": ["RS256"], "secret": ""}
    assert "not a PEM public key" in error_of(tmp_path, {"jwt": {**rs_only, "public_key_file": "junk.pem"}})
    assert "private key" in error_of(tmp_path, {"jwt": {**rs_only, "public_key_file": "private.pem"}})
    # An EC P-384 key cannot serve ES256 (or RS256).
    msg = error_of(tmp_path, {"jwt": {"algorithms": ["ES256"], "secret": "", "public_key_file": "ec.pem"}})
    assert "no algorithm in jwt.algorithms" in msg


def test_small_rsa_keys_are_refused(tmp_path: Path) -> None:
    """RSA keys under 2048 bits are refused at load (RFC 7518 section 3.3)."""
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (tmp_path / "small.pem").write_bytes(_pem(small))
    msg = error_of(tmp_path, {"jwt": {"algorithms": ["RS256"], "secret": "", "public_key_file": "small.pem"}})
    assert "1024 bits" in msg


def test_missing_or_invalid_file(tmp_path: Path) -> None:
    """A missing file or broken TOML is one clear error."""
    with pytest.raises(ConfigError, match="no such config file"):
        load(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[server\nport = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(tmp_path / "bad.toml")


def test_sqlite_urls_follow_sqlalchemy(tmp_path: Path) -> None:
    """sqlite:///rel.db is relative to the working directory; sqlite:////abs.db is absolute."""
    assert build(tmp_path, {"storage": {"url": "sqlite:///data/s.db"}}).storage.sqlite_path == Path("data/s.db")
    assert build(tmp_path, {"storage": {"url": "sqlite:////var/s.db"}}).storage.sqlite_path == Path("/var/s.db")


def test_defaults_are_the_settings_classes_own() -> None:
    """A config that sets nothing but the required keys gets each section's dataclass defaults."""
    from sidecar.config import (
        AdminSettings,
        CelerySettings,
        GeoipSettings,
        LoggingSettings,
        RedisSettings,
        ServerSettings,
        SessionSettings,
        StorageSettings,
    )

    s = from_mapping({"jwt": {"algorithms": ["HS256"], "secret": "x" * 40}}, environ={}, base_dir=Path("."))
    assert s.server == ServerSettings()
    assert s.sessions == SessionSettings()
    assert s.storage == StorageSettings()
    assert s.redis == RedisSettings()
    assert s.celery == CelerySettings()
    assert s.geoip == GeoipSettings()
    assert s.admin == AdminSettings()
    assert s.logging == LoggingSettings()
    jwt_defaults = {f.name: getattr(s.jwt, f.name) for f in dataclasses.fields(s.jwt)}
    for name in ("leeway_seconds", "user_claim", "session_claim", "max_token_bytes", "verified_cache_size",
                 "jwks_cache_seconds", "jwks_refresh_cooldown_seconds", "token_lifetime_seconds"):
        assert jwt_defaults[name] == getattr(JwtSettings(), name), name


# Found by tests/fuzz (config): each of these raised something other than ConfigError, or
# gave a message of more than one line.


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"server": {"a\nb": 1}}, "server.a\\nb: unknown key"),  # "a\nb" = 1 is valid TOML
        ({"\x0cx": {}}, "\\x0cx: unknown section"),
        ({"jwt": {"claim_headers": {"r\u2028": "X-Auth"}}}, "jwt.claim_headers.r\\u2028:"),
    ],
)
def test_config_error_is_one_line_whatever_a_key_holds(tmp_path: Path, raw: dict[str, Any], expected: str) -> None:
    """A key name with a line break in it is shown escaped: the message stays one line."""
    message = error_of(tmp_path, raw)
    assert expected in message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"server": {"shutdown_timeout_seconds": 10**400}}, "server.shutdown_timeout_seconds: number out of range"),
        ({"geoip": {"database": "a\x00b"}}, "geoip.database: cannot read"),
        ({"geoip": {"database": "~no-such-user-sidecar/city.mmdb"}}, "geoip.database: cannot use"),
        ({"jwt": {"algorithms": ["HS256", "ES256"], "public_key_file": "k\x00.pem"}}, "jwt.public_key_file: cannot read"),
        ({"jwt": {"secret": "", "secret_file": "~no-such-user-sidecar/secret"}}, "jwt.secret_file: cannot use"),
    ],
)
def test_odd_numbers_and_paths_are_config_errors(tmp_path: Path, raw: dict[str, Any], expected: str) -> None:
    """An integer beyond any float, a NUL in a path or an unknown ~user is a ConfigError naming the key."""
    assert expected in error_of(tmp_path, raw)


def test_secret_from_an_environment_variable_that_is_not_utf8(tmp_path: Path) -> None:
    """A secret whose environment bytes are not UTF-8 (os.environ gives lone surrogates) is a ConfigError."""
    message = error_of(tmp_path, {"jwt": {"secret": "", "secret_env": "S"}}, environ={"S": "s" * 40 + "\udcff"})
    assert message == "jwt.secret: is not UTF-8 text"


@pytest.mark.parametrize(
    "text",
    ["[server]\nport = " + "9" * 5000 + "\n", "[server]\nhost = " + "[" * 5000 + "]" * 5000 + "\n"],
    ids=["integer-beyond-4300-digits", "arrays-nested-past-the-stack"],
)
def test_toml_that_tomllib_cannot_hold_is_a_config_error(tmp_path: Path, text: str) -> None:
    """What tomllib raises besides TOMLDecodeError (ValueError, RecursionError) is 'not valid TOML' too."""
    path = tmp_path / "sidecar.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(path, environ={})


# ---------------------------------------------------------------- session policies


def test_session_policies_are_off_by_default() -> None:
    """Without the keys, no policy is on (0 = off) and the limit would refuse new sessions."""
    s = Settings().sessions
    assert (s.idle_timeout_seconds, s.max_lifetime_seconds, s.max_sessions_per_user) == (0, 0, 0)
    assert s.on_session_limit == "refuse_new" and not s.policies_on


def test_session_policies_load(tmp_path: Path) -> None:
    """The policy keys load, and the idle grace is the flush interval plus one second."""
    s = build(tmp_path, {"sessions": {
        "idle_timeout_seconds": 900, "max_lifetime_seconds": 86400, "max_sessions_per_user": 5,
        "on_session_limit": "revoke_least_recent", "last_seen_flush_seconds": 2,
    }}).sessions
    assert (s.idle_timeout_seconds, s.max_lifetime_seconds, s.max_sessions_per_user) == (900, 86400, 5)
    assert s.on_session_limit == "revoke_least_recent" and s.policies_on
    assert s.idle_grace_seconds == 3


@pytest.mark.parametrize(
    ("sessions", "message"),
    [
        ({"idle_timeout_seconds": 5}, "sessions.idle_timeout_seconds: must be 0 (off) or at least "
         "last_seen_flush_seconds + 1 = 6 s, how late an idle refusal can be (got 5)"),
        ({"idle_timeout_seconds": 2, "last_seen_flush_seconds": 1.5}, "at least last_seen_flush_seconds + 1 = 2.5 s"),
        ({"idle_timeout_seconds": -1}, "sessions.idle_timeout_seconds: must be between 0 and"),
        ({"max_lifetime_seconds": 0.5}, "sessions.max_lifetime_seconds: must be 0 (off) or at least 1"),
        ({"max_sessions_per_user": -1}, "sessions.max_sessions_per_user: must be between 0 and 100000"),
        ({"max_sessions_per_user": 1.5}, "sessions.max_sessions_per_user: must be an integer, got a number"),
        ({"on_session_limit": "revoke_newest"}, "sessions.on_session_limit: must be 'refuse_new' or 'revoke_oldest'"),
    ],
)
def test_session_policies_refused(tmp_path: Path, sessions: dict[str, Any], message: str) -> None:
    """A policy key out of range, or an idle timeout shorter than its lateness bound, stops start-up."""
    assert message in error_of(tmp_path, {"sessions": sessions})


def test_idle_timeout_at_the_bound_is_accepted(tmp_path: Path) -> None:
    """An idle timeout equal to last_seen_flush_seconds + 1 is accepted."""
    assert build(tmp_path, {"sessions": {"idle_timeout_seconds": 6}}).sessions.idle_timeout_seconds == 6


# --------------------------------------------------------------------- [events] and [[webhooks]]

_WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYqr"  # 33 bytes after base64


def _hooks(*entries: dict[str, Any], events: dict[str, Any] | None = None) -> Any:
    raw: dict[str, Any] = {"jwt": {"algorithms": ["HS256"], "secret": SECRET}, "webhooks": list(entries)}
    if events is not None:
        raw["events"] = events
    return from_mapping(raw, environ={"HOOK": _WHSEC, "SHORT": "whsec_c2hvcnQ="}, base_dir=Path("/"))


def test_webhooks_read_url_secret_filter_and_attempts(tmp_path: Path) -> None:
    """A [[webhooks]] entry gives its URL, the key its whsec_ secret encodes, its event filter and attempts."""
    (tmp_path / "hook.secret").write_text(_WHSEC + "\n")
    raw = {
        "jwt": {"algorithms": ["HS256"], "secret": SECRET},
        "webhooks": [
            {"url": "https://hooks.example.com/a", "secret_env": "HOOK", "events": ["session.revoked"], "max_attempts": 3},
            {"url": "http://127.0.0.1:9000/b", "secret_file": "hook.secret"},
        ],
    }
    settings = from_mapping(raw, environ={"HOOK": _WHSEC}, base_dir=tmp_path)
    a, b = settings.webhooks
    assert a.events == frozenset({"session.revoked"}) and a.max_attempts == 3 and a.timeout_seconds == 10
    assert b.events is None and b.max_attempts == 10 and a.secret == b.secret and len(a.secret) == 33
    assert _WHSEC not in repr(settings) and repr(a.secret) not in repr(settings)
    assert settings.events.retention_days == 90 and settings.events.max_travel_kmh == 1000


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"secret_env": "HOOK"}, "webhooks[0].url: required"),
        ({"url": "ftp://x/", "secret_env": "HOOK"}, "webhooks[0].url: must be an http(s):// URL"),
        ({"url": "http://x/"}, "webhooks[0].secret_env: required"),
        ({"url": "http://x/", "secret": _WHSEC}, "webhooks[0].secret: keep webhook secrets out of the file"),
        ({"url": "http://x/", "secret_env": "NOPE"}, "webhooks[0].secret_env: environment variable NOPE is not set"),
        ({"url": "http://x/", "secret_env": "SHORT"}, "webhooks[0].secret: must encode 24-64 bytes, got 5"),
        ({"url": "http://x/", "secret_env": "HOOK", "events": ["session.nope"]}, "webhooks[0].events: 'session.nope'"),
        ({"url": "http://x/", "secret_env": "HOOK", "events": []}, "webhooks[0].events: list at least one"),
        ({"url": "http://x/", "secret_env": "HOOK", "max_attempts": 0}, "webhooks[0].max_attempts: must be between"),
        ({"url": "http://x/", "secret_env": "HOOK", "bogus": 1}, "webhooks[0].bogus: unknown key"),
    ],
)
def test_bad_webhooks_stop_start_up_with_one_line(entry: dict[str, Any], expected: str) -> None:
    """Each malformed [[webhooks]] entry is refused with a line naming the key."""
    with pytest.raises(ConfigError) as info:
        _hooks(entry)
    assert str(info.value).startswith(expected), str(info.value)


def test_a_secret_that_is_not_whsec_base64_is_refused() -> None:
    """A secret without the whsec_ prefix, or not base64 after it, is refused."""
    for value in ("0123456789abcdef0123456789abcdef", "whsec_not*base64!"):
        with pytest.raises(ConfigError, match=r"webhooks\[0\]\.secret: "):
            from_mapping(
                {"jwt": {"algorithms": ["HS256"], "secret": SECRET}, "webhooks": [{"url": "http://x/", "secret_env": "H"}]},
                environ={"H": value}, base_dir=Path("/"),
            )


def test_events_bounds_are_checked() -> None:
    """[events] keys are bounded; retry_max_seconds may not be below retry_base_seconds."""
    with pytest.raises(ConfigError, match=r"^events\.retry_max_seconds: must be at least"):
        _hooks(events={"retry_base_seconds": 100, "retry_max_seconds": 10})
    with pytest.raises(ConfigError, match=r"^events\.retention_days: must be between"):
        _hooks(events={"retention_days": 0})


def test_check_listener_on_tcp_by_default(tmp_path: Path) -> None:
    """Without unix_socket the check listener is on host/port; the mode default is 0o660."""
    check = build(tmp_path, {}).check
    assert check.unix_socket is None
    assert check.unix_socket_mode == 0o660


def test_check_unix_socket_and_mode_load(tmp_path: Path) -> None:
    """unix_socket takes an absolute path; unix_socket_mode an integer as TOML writes 0o600."""
    config = tmp_path / "sidecar.toml"
    config.write_text(
        f'[jwt]\nalgorithms = ["HS256"]\nsecret = "{SECRET}"\n'
        '[check]\nunix_socket = "/run/sidecar/check.sock"\nunix_socket_mode = 0o600\n'
    )
    check = load(config).check
    assert check.unix_socket == "/run/sidecar/check.sock"
    assert check.unix_socket_mode == 0o600


@pytest.mark.parametrize(
    ("check", "expected"),
    [
        ({"unix_socket": "run/check.sock"}, "check.unix_socket: must be an absolute path, got 'run/check.sock'"),
        ({"unix_socket": "/" + "s" * 107}, "check.unix_socket: 108 bytes is longer than a Unix socket path can be (107 bytes)"),
        ({"unix_socket": "/run/\u00e9" + "s" * 101}, "check.unix_socket: 108 bytes is longer"),
        ({"unix_socket": "/run/a\0b"}, "check.unix_socket: must not contain a NUL character"),
        ({"unix_socket": 5}, "check.unix_socket: must be a string, got an integer"),
        ({"unix_socket_mode": 0o1777}, "check.unix_socket_mode: must be between 0 and 511, got 1023"),
        ({"unix_socket_mode": -1}, "check.unix_socket_mode: must be between 0 and 511"),
        ({"unix_socket_mode": "0660"}, "check.unix_socket_mode: must be an integer, got a string"),
    ],
)
def test_bad_check_unix_socket_is_one_line(tmp_path: Path, check: dict[str, Any], expected: str) -> None:
    """A relative, too long or odd unix_socket, or a mode outside 0..0o777, stops start-up."""
    message = error_of(tmp_path, {"check": check})
    assert expected in message
    assert "\n" not in message


def test_unix_socket_path_at_the_limit_is_accepted(tmp_path: Path) -> None:
    """A path of exactly 107 bytes fits sockaddr_un (108 with its NUL)."""
    path = "/" + "s" * 106
    assert build(tmp_path, {"check": {"unix_socket": path}}).check.unix_socket == path
