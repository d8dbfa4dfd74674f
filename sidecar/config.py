"""Configuration: one TOML file -> a frozen ``Settings`` tree, validated before serving.

Every problem raises ``ConfigError`` with one line that names the key, e.g.
``jwt.secret: HS256 needs a secret of at least 32 bytes (got 11)``. Unknown keys are
errors too, so a typo never silently falls back to a default.

Nothing here runs at import time; ``load(path)`` is the only entry point that touches the
file system or the environment.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args
from urllib.parse import parse_qs, urlsplit

from sidecar.capture.places import EVENTS, CaptureRoute, TokenPlace, parse_place
from sidecar.errors import ConfigError
from sidecar.events.types import EVENT_TYPES
from sidecar.routes import POLICIES, Route, parse_route_path
from sidecar.tokens.algorithms import HMAC_ALGORITHMS, SUPPORTED_ALGORITHMS

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Identity headers the check always sets; claim_headers may not reuse them.
RESERVED_HEADERS = frozenset({"x-auth-user", "x-auth-session", "x-auth-anonymous"})

Registration = Literal["auto", "explicit"]
# sessions.on_session_limit: refuse the new session, or admit it and revoke the oldest
# login / the least recently seen session of the user.
OnSessionLimit = Literal["refuse_new", "revoke_oldest", "revoke_least_recent"]
# What an idle decision allows, beyond last_seen_flush_seconds, for the flush's own write and
# for clock skew between hosts (see SessionSettings.idle_grace_seconds).
IDLE_MARGIN_SECONDS = 1.0
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["text", "json"]


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    trusted_proxies: tuple[IPNetwork, ...] = ()
    shutdown_timeout_seconds: float = 10.0
    access_log: bool = False
    max_concurrent_checks: int = 1000
    api_rate_limit_per_minute: int = 120
    header_timeout_seconds: float = 10.0
    keepalive_timeout_seconds: float = 75.0
    max_connections: int = 10_000
    # Origins ("https://app.example.com") whose pages may make unsafe sessions-API requests
    # with a cookie credential (jwt.cookie_name); lower case, no trailing slash.
    allowed_origins: frozenset[str] = frozenset()


@dataclass(frozen=True)
class JwtSettings:
    algorithms: tuple[str, ...] = ()
    secret: bytes | None = field(default=None, repr=False)
    public_keys: tuple[bytes, ...] = field(default=(), repr=False)
    jwks_url: str | None = None
    jwks_cache_seconds: float = 300.0
    jwks_refresh_cooldown_seconds: float = 30.0
    issuer: str | None = None
    audience: tuple[str, ...] = ()
    leeway_seconds: float = 10.0
    user_claim: str = "sub"
    session_claim: str = "sid"
    token_type_claim: str | None = None
    access_token_type: str | None = None
    # The issuer's fixed access-token lifetime: a token without iat counts as issued at
    # exp minus this (what a per-user cut-off compares). None: such a token's age is unknown.
    token_lifetime_seconds: float | None = None
    claim_headers: Mapping[str, str] = field(default_factory=dict)
    max_token_bytes: int = 8192
    verified_cache_size: int = 100_000
    # The cookie that carries the access token when a request has no Authorization header.
    cookie_name: str | None = None

    @property
    def development_hmac_only(self) -> bool:
        """True for a config that only uses HMAC algorithms (what mint-token accepts)."""
        return bool(self.algorithms) and all(a in HMAC_ALGORITHMS for a in self.algorithms)


@dataclass(frozen=True)
class SessionSettings:
    registration: Registration = "auto"
    last_seen_flush_seconds: float = 5.0
    state_cache_size: int = 1_000_000
    catchup_interval_seconds: float = 1.0
    max_staleness_seconds: float = 10.0
    # Session policies; 0 = off. They only ever shorten a session (tokens keep their exp).
    idle_timeout_seconds: float = 0.0
    max_lifetime_seconds: float = 0.0
    max_sessions_per_user: int = 0
    on_session_limit: OnSessionLimit = "refuse_new"

    @property
    def idle_grace_seconds(self) -> float:
        """How late an idle refusal can be: activity is batched per process and written every
        ``last_seen_flush_seconds``, so a check another process allowed that long ago may not
        be in the store yet. A session is refused as idle only once the store shows no
        activity for ``idle_timeout_seconds`` plus this (README: Session policies)."""
        return self.last_seen_flush_seconds + IDLE_MARGIN_SECONDS

    @property
    def policies_on(self) -> bool:
        return bool(self.idle_timeout_seconds or self.max_lifetime_seconds or self.max_sessions_per_user)


@dataclass(frozen=True)
class StorageSettings:
    url: str = field(default="sqlite:///sidecar.db", repr=False)  # a PostgreSQL URL may carry a password
    busy_timeout_ms: int = 5000  # SQLite
    pool_min_size: int = 1  # PostgreSQL, per process
    pool_max_size: int = 10  # PostgreSQL, per process
    statement_timeout_ms: int = 5000  # PostgreSQL
    connect_timeout_seconds: float = 5.0  # PostgreSQL

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        return "postgresql" if self.url.startswith(("postgresql://", "postgres://")) else "sqlite"

    @property
    def display_url(self) -> str:
        """``url`` with any password replaced by ``***``: safe to print or log."""
        if self.backend != "postgresql":
            return self.url
        parts = urlsplit(self.url)
        userinfo, at, hosts = parts.netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{hosts}" if at and ":" in userinfo else parts.netloc
        query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query)
        return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")

    @property
    def sqlite_path(self) -> Path:
        """The file of a ``sqlite:///rel.db`` / ``sqlite:////abs.db`` URL (SQLAlchemy spelling)."""
        return Path(self.url[len("sqlite:///") :])


@dataclass(frozen=True)
class RedisSettings:
    url: str | None = field(default=None, repr=False)
    channel: str = "sidecar:revocations"


@dataclass(frozen=True)
class CelerySettings:
    broker_url: str | None = field(default=None, repr=False)  # may carry a password
    # Queue of the cleanup task: not Celery's "celery", so a worker of another app on the
    # same Redis never takes our tasks and ours never takes theirs.
    queue: str = "sidecar"
    cleanup_interval_seconds: float = 300.0
    cleanup_grace_seconds: float = 3600.0
    cleanup_batch_size: int = 1000
    # The longest lifetime (exp - iat) of any access token the auth service issues. The
    # sidecar cannot know it, so cleanup assumes this bound before it drops a cut-off or
    # the tombstone of a revoked session (a token issued before either is dead by then).
    max_token_lifetime_seconds: float = 30 * 86400.0


@dataclass(frozen=True)
class GeoipSettings:
    database: Path | None = None


@dataclass(frozen=True)
class AdminSettings:
    host: str = "127.0.0.1"
    port: int = 8081
    api_keys: tuple[str, ...] = field(default=(), repr=False)

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys)


@dataclass(frozen=True)
class CheckSettings:
    """The check listener: where nginx auth_request / Envoy ext_authz / Caddy forward_auth
    point (sidecar.wire). Connection limits and timeouts are the [server] ones.

    With ``unix_socket`` (an absolute path) it listens on that Unix domain socket instead
    of ``host``/``port``, created with the permission bits ``unix_socket_mode``: only who
    can open the socket file can connect, so every connection on it counts as coming from
    a trusted proxy (its X-Forwarded-For / X-Real-IP are believed)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8082
    unix_socket: str | None = None
    unix_socket_mode: int = 0o660


@dataclass(frozen=True)
class EventSettings:
    """Security events (the history and the webhooks) and how the worker delivers them."""

    enabled: bool = True
    retention_days: float = 90.0  # events, and delivered/dead outbox rows, are purged after this
    max_travel_kmh: float = 1000.0  # faster than this between two logins: unusual_travel
    delivery_interval_seconds: float = 5.0  # how often beat runs the delivery task
    delivery_batch_size: int = 100  # outbox rows one claim takes
    delivery_lease_seconds: float = 60.0  # a claim not reported within this is due again
    retry_base_seconds: float = 5.0  # first retry after about this (doubling, with jitter)
    retry_max_seconds: float = 3600.0  # the longest wait between two attempts


@dataclass(frozen=True)
class WebhookSettings:
    """One ``[[webhooks]]`` entry: a receiver signed the Standard Webhooks way."""

    url: str
    secret: bytes = field(repr=False)  # the key the whsec_ secret encodes
    events: frozenset[str] | None = None  # None: every event type
    max_attempts: int = 10
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class LoggingSettings:
    level: LogLevel = "INFO"
    format: LogFormat = "text"


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    jwt: JwtSettings = field(default_factory=JwtSettings)
    sessions: SessionSettings = field(default_factory=SessionSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    celery: CelerySettings = field(default_factory=CelerySettings)
    geoip: GeoipSettings = field(default_factory=GeoipSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    check: CheckSettings = field(default_factory=CheckSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    events: EventSettings = field(default_factory=EventSettings)
    routes: tuple[Route, ...] = ()
    capture: tuple[CaptureRoute, ...] = ()
    webhooks: tuple[WebhookSettings, ...] = ()


# --------------------------------------------------------------------------- loading


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the TOML file at ``path``; raise ``ConfigError`` on any problem."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"{p}: no such config file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read config file: {e}") from e
    except (ValueError, RecursionError) as e:
        # TOMLDecodeError, and what tomllib lets escape: an integer over Python's 4300
        # digit limit (ValueError), arrays nested deeper than the stack (RecursionError).
        raise ConfigError(f"{p}: not valid TOML: {e}") from e
    return from_mapping(raw, environ=os.environ if environ is None else environ, base_dir=p.parent)


def from_mapping(
    raw: Mapping[str, Any], *, environ: Mapping[str, str], base_dir: Path
) -> Settings:
    """Validate an already parsed TOML document (tests build configs this way too)."""
    sections = {
        "server", "jwt", "sessions", "storage", "redis", "celery", "geoip", "admin", "logging", "check", "events",
    }
    arrays = {"routes", "capture", "webhooks"}
    for name, value in raw.items():
        if name in arrays:
            continue  # arrays of tables, read by _routes, _capture and _webhooks
        if name not in sections:
            known = ", ".join(sorted(sections | arrays))
            raise ConfigError(f"{name}: unknown section (expected one of {known})")
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: must be a table")
    r = _Reader(raw, environ, base_dir)
    settings = Settings(
        server=_server(r.section("server")),
        jwt=_jwt(r.section("jwt")),
        sessions=_sessions(r.section("sessions")),
        storage=_storage(r.section("storage")),
        redis=_redis(r.section("redis")),
        celery=_celery(r.section("celery")),
        geoip=_geoip(r.section("geoip")),
        admin=_admin(r.section("admin")),
        check=_check(r.section("check")),
        logging=_logging(r.section("logging")),
        events=_events(r.section("events")),
        routes=_routes(raw.get("routes", []), environ, base_dir),
        capture=_capture(raw.get("capture", []), environ, base_dir),
        webhooks=_webhooks(raw.get("webhooks", []), environ, base_dir),
    )
    if settings.sessions.registration == "explicit" and not settings.admin.enabled:
        raise ConfigError(
            "sessions.registration: 'explicit' needs admin.api_keys, "
            "or no auth service could register sessions"
        )
    return settings


T = TypeVar("T")


class _Default:
    """The default of a key is its settings dataclass's (written once, there)."""


_DEFAULT: Any = _Default()


def _defaults_of(cls: type | None) -> dict[str, Any]:
    if cls is None:
        return {}
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


class _Section:
    """Typed access to one TOML table that remembers which keys were read.

    A key's default, when the loader gives none, is the field of the same name of
    ``defaults`` (the section's settings dataclass): every default is written once.
    """

    def __init__(
        self, name: str, data: Mapping[str, Any], environ: Mapping[str, str], base: Path, defaults: type | None = None
    ):
        self.name = name
        self.data = data
        self.environ = environ
        self.base = base
        self.allowed: set[str] = set()
        self._defaults = _defaults_of(defaults)

    def default(self, k: str) -> Any:
        if k not in self._defaults:
            raise KeyError(f"{self.key(k)} has no default in its settings class")  # a bug of ours
        return self._defaults[k]

    def key(self, k: str) -> str:
        return f"{self.name}.{k}"

    def get(self, k: str, typ: type[T] | tuple[type, ...], default: T = _DEFAULT) -> T:
        self.allowed.add(k)
        if k not in self.data:
            return cast(T, self.default(k)) if default is _DEFAULT else default
        v = self.data[k]
        types = typ if isinstance(typ, tuple) else (typ,)
        ok = isinstance(v, types)
        # bool is an int subclass in Python but never a number in a config file.
        if isinstance(v, bool) and bool not in types:
            ok = False
        if float in types and isinstance(v, int) and not isinstance(v, bool):
            ok = True
            try:
                v = float(v)
            except OverflowError as e:  # TOML integers have no bound in tomllib: 1 and 400 zeros
                raise ConfigError(f"{self.key(k)}: number out of range") from e
        if not ok:
            names = " or ".join(_type_name(t) for t in types)
            raise ConfigError(f"{self.key(k)}: must be {names}, got {_type_name(type(v))}")
        return cast(T, v)

    def number(self, k: str, default: float = _DEFAULT, *, minimum: float, maximum: float = math.inf) -> float:
        v = self.get(k, float, default)
        if not (minimum <= v <= maximum) or math.isnan(v):
            raise ConfigError(f"{self.key(k)}: must be between {minimum:g} and {maximum:g}, got {v:g}")
        return v

    def integer(self, k: str, default: int = _DEFAULT, *, minimum: int, maximum: int) -> int:
        v = self.get(k, int, default)
        if not minimum <= v <= maximum:
            raise ConfigError(f"{self.key(k)}: must be between {minimum} and {maximum}, got {v}")
        return v

    def optional_str(self, k: str) -> str | None:
        v = self.get(k, str, "")
        return v or None

    def str_list(self, k: str) -> tuple[str, ...]:
        v: list[Any] | str = self.get(k, (list, str), [])
        items = [v] if isinstance(v, str) else list(v)
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise ConfigError(f"{self.key(k)}[{i}]: must be a string")
        return tuple(items)

    def path(self, k: str, p: str) -> Path:
        try:
            candidate = Path(p).expanduser()
        except (RuntimeError, ValueError) as e:  # "~nosuchuser/x", or a NUL in the name
            raise ConfigError(f"{self.key(k)}: cannot use {p!r} as a path: {e}") from e
        return candidate if candidate.is_absolute() else self.base / candidate

    def read_file(self, k: str, p: str) -> bytes:
        path = self.path(k, p)
        try:
            return path.read_bytes()
        except (OSError, ValueError) as e:  # ValueError: a NUL in the name
            raise ConfigError(f"{self.key(k)}: cannot read {path}: {getattr(e, 'strerror', None) or e}") from e

    def secret(self, k: str) -> str | None:
        """A secret given as ``k``, ``k_env`` (environment variable name) or ``k_file``."""
        direct = self.get(k, str, "")
        env_name = self.get(f"{k}_env", str, "")
        file_name = self.get(f"{k}_file", str, "")
        given = [n for n, v in ((k, direct), (f"{k}_env", env_name), (f"{k}_file", file_name)) if v]
        if len(given) > 1:
            raise ConfigError(f"{self.key(k)}: set only one of {', '.join(given)}")
        if env_name:
            if env_name not in self.environ:
                raise ConfigError(f"{self.key(k + '_env')}: environment variable {env_name} is not set")
            return self.environ[env_name]
        if file_name:
            data = self.read_file(f"{k}_file", file_name)
            try:
                return data.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise ConfigError(f"{self.key(k + '_file')}: is not UTF-8 text") from e
        return direct or None

    def finish(self) -> None:
        for k in self.data:
            if k not in self.allowed:
                raise ConfigError(f"{self.key(k)}: unknown key")


class _Reader:
    def __init__(self, raw: Mapping[str, Any], environ: Mapping[str, str], base: Path):
        self.raw = raw
        self.environ = environ
        self.base = base

    def section(self, name: str) -> _Section:
        # Settings' fields are made by their section classes (default_factory=ServerSettings...).
        factory = next(f.default_factory for f in dataclasses.fields(Settings) if f.name == name)
        return _Section(name, self.raw.get(name, {}), self.environ, self.base, cast(type, factory))


def _type_name(t: type) -> str:
    return {
        str: "a string", int: "an integer", float: "a number", bool: "true or false",
        list: "a list", dict: "a table",
    }.get(t, t.__name__)


def _finish(s: _Section, value: T) -> T:
    s.finish()
    return value


def _choice(s: _Section, k: str, options: Any) -> Any:
    """A string key that must be one of the ``Literal`` type ``options`` (its values, written
    once, in the type)."""
    allowed = get_args(options)
    v = s.get(k, str)
    if v not in allowed:
        names = " or ".join(repr(a) for a in allowed)
        raise ConfigError(f"{s.key(k)}: must be {names}, got {v!r}")
    return v


def _port(s: _Section, k: str) -> int:
    return s.integer(k, minimum=0, maximum=65535)


def _server(s: _Section) -> ServerSettings:
    proxies: list[IPNetwork] = []
    for item in s.str_list("trusted_proxies"):
        try:
            proxies.append(ipaddress.ip_network(item, strict=False))
        except ValueError as e:
            raise ConfigError(f"server.trusted_proxies: {item!r} is not an IP address or network") from e
    workers = s.integer("workers", minimum=1, maximum=256)
    return _finish(s, ServerSettings(
        host=s.get("host", str),
        port=_port(s, "port"),
        workers=workers,
        trusted_proxies=tuple(proxies),
        shutdown_timeout_seconds=s.number("shutdown_timeout_seconds", minimum=0, maximum=600),
        access_log=s.get("access_log", bool),
        max_concurrent_checks=s.integer("max_concurrent_checks", minimum=0, maximum=1_000_000),
        api_rate_limit_per_minute=s.integer("api_rate_limit_per_minute", minimum=0, maximum=1_000_000),
        header_timeout_seconds=s.number("header_timeout_seconds", minimum=0.1, maximum=600),
        keepalive_timeout_seconds=s.number("keepalive_timeout_seconds", minimum=0.1, maximum=3600),
        max_connections=s.integer("max_connections", minimum=1, maximum=1_000_000),
        allowed_origins=_origins(s),
    ))


def _origins(s: _Section) -> frozenset[str]:
    """``server.allowed_origins``: serialised origins (RFC 6454 section 6.2), as a browser
    sends them in ``Origin``: scheme://host[:port], nothing after it."""
    out: set[str] = set()
    for item in s.str_list("allowed_origins"):
        try:
            parts = urlsplit(item)
            _ = parts.port
        except ValueError:
            parts = None
        if (
            parts is None or parts.scheme not in ("http", "https") or not parts.hostname
            or parts.path or parts.query or parts.fragment or "@" in parts.netloc or item != item.strip()
        ):
            raise ConfigError(
                f"server.allowed_origins: {item!r} is not an origin like \"https://app.example.com\" "
                "(scheme, host and optional port; no path, not even a trailing /)"
            )
        out.add(item.lower())
    return frozenset(out)


def _claim_name(s: _Section, k: str) -> str:
    v = s.get(k, str)
    if not v:
        raise ConfigError(f"{s.key(k)}: must not be empty")
    return v


def _jwt(s: _Section) -> JwtSettings:
    algorithms = s.str_list("algorithms")
    if not algorithms:
        raise ConfigError("jwt.algorithms: list at least one algorithm, e.g. [\"HS256\"]")
    for a in algorithms:
        if a not in SUPPORTED_ALGORITHMS:
            # RFC 8725 section 3.1: "none" and unknown names are never accepted.
            raise ConfigError(
                f"jwt.algorithms: {a!r} is not supported "
                f"(use {', '.join(sorted(SUPPORTED_ALGORITHMS))})"
            )
    hmac = [a for a in algorithms if a in HMAC_ALGORITHMS]
    asymmetric = [a for a in algorithms if a not in HMAC_ALGORITHMS]

    secret_text = s.secret("secret")
    try:
        secret = secret_text.encode("utf-8") if secret_text is not None else None
    except UnicodeEncodeError as e:  # a lone surrogate: os.environ's spelling of bytes that are not UTF-8
        raise ConfigError("jwt.secret: is not UTF-8 text") from e
    if hmac and secret is None:
        raise ConfigError(f"jwt.secret: {hmac[0]} needs a secret (secret, secret_env or secret_file)")
    if secret is not None and not hmac:
        raise ConfigError("jwt.secret: set, but no HS* algorithm is listed in jwt.algorithms")
    if secret is not None:
        for a in hmac:
            # RFC 7518 section 3.2: the key must be at least as long as the hash output.
            need = HMAC_ALGORITHMS[a]
            if len(secret) < need:
                raise ConfigError(
                    f"jwt.secret: {a} needs a secret of at least {need} bytes (got {len(secret)})"
                )
        _check_hmac_secret(secret)

    key_files = s.str_list("public_key_file")
    public_keys = tuple(s.read_file("public_key_file", f) for f in key_files)
    jwks_url = s.optional_str("jwks_url")
    if jwks_url is not None:
        parts = urlsplit(jwks_url)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise ConfigError("jwt.jwks_url: must be an http(s) URL")
    if asymmetric and not public_keys and jwks_url is None:
        raise ConfigError(f"jwt.public_key_file: {asymmetric[0]} needs public_key_file or jwks_url")
    if (public_keys or jwks_url) and not asymmetric:
        raise ConfigError("jwt.algorithms: public keys are configured but no RS/PS/ES/EdDSA algorithm is listed")
    if public_keys:
        _check_public_keys(public_keys, key_files, asymmetric)

    token_type_claim = s.optional_str("token_type_claim")
    access_token_type = s.optional_str("access_token_type")
    if (token_type_claim is None) != (access_token_type is None):
        raise ConfigError("jwt.access_token_type: set both token_type_claim and access_token_type, or neither")

    headers: dict[str, str] = {}
    raw_headers = s.get("claim_headers", dict, {})
    for claim, header in raw_headers.items():
        if not isinstance(header, str) or not header.lower().startswith("x-auth-") or not _is_token(header):
            raise ConfigError(f"jwt.claim_headers.{claim}: header name must start with X-Auth- (got {header!r})")
        if header.lower() in RESERVED_HEADERS:
            raise ConfigError(f"jwt.claim_headers.{claim}: {header} is set by the sidecar itself")
        headers[claim] = header

    return _finish(s, JwtSettings(
        algorithms=algorithms,
        secret=secret,
        public_keys=public_keys,
        jwks_url=jwks_url,
        jwks_cache_seconds=s.number("jwks_cache_seconds", minimum=1, maximum=86400),
        jwks_refresh_cooldown_seconds=s.number("jwks_refresh_cooldown_seconds", minimum=0, maximum=3600),
        issuer=s.optional_str("issuer"),
        audience=s.str_list("audience"),
        leeway_seconds=s.number("leeway_seconds", minimum=0, maximum=300),
        user_claim=_claim_name(s, "user_claim"),
        session_claim=_claim_name(s, "session_claim"),
        token_type_claim=token_type_claim,
        access_token_type=access_token_type,
        token_lifetime_seconds=_optional_seconds(s, "token_lifetime_seconds", maximum=86400 * 3650),
        claim_headers=headers,
        max_token_bytes=s.integer("max_token_bytes", minimum=256, maximum=65536),
        verified_cache_size=s.integer("verified_cache_size", minimum=0, maximum=10_000_000),
        cookie_name=_cookie_name(s),
    ))


def _cookie_name(s: _Section) -> str | None:
    name = s.optional_str("cookie_name")
    # RFC 6265 section 4.1.1: cookie-name is an RFC 2616 token.
    if name is not None and (not _is_token(name) or len(name) > 256):
        raise ConfigError(f"jwt.cookie_name: must be a cookie name (RFC 6265 token characters), got {name!r}")
    return name


def _optional_seconds(s: _Section, k: str, *, maximum: float) -> float | None:
    if k not in s.data:
        s.allowed.add(k)
        return None
    return s.number(k, 0.0, minimum=1, maximum=maximum)


_METHOD = re.compile(r"[A-Z]{1,20}")


def _routes(raw: Any, environ: Mapping[str, str], base: Path) -> tuple[Route, ...]:
    """``[[routes]]``: path (exact, or a prefix ending in /*), methods, policy."""
    if not isinstance(raw, list):
        raise ConfigError("routes: must be an array of tables ([[routes]] entries)")
    out: list[Route] = []
    for i, item in enumerate(raw):
        name = f"routes[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{name}: must be a table")
        s = _Section(name, item, environ, base)
        if "path" not in item:
            raise ConfigError(f"{name}.path: required (e.g. \"/api/v1/auth/login\" or \"/public/*\")")
        path_text = s.get("path", str, "")
        parsed = parse_route_path(path_text)
        if parsed is None:
            raise ConfigError(
                f"{name}.path: must be a normalised absolute path, exact or ending in /* "
                f"(no //, dot segments, %, ;, ?, # or * elsewhere), got {path_text!r}"
            )
        if "policy" not in item:
            raise ConfigError(f"{name}.policy: required: one of {', '.join(POLICIES)}")
        policy = s.get("policy", str, "required")
        if policy not in POLICIES:
            raise ConfigError(f"{name}.policy: must be one of {', '.join(POLICIES)}, got {policy!r}")
        methods: frozenset[str] | None = None
        if "methods" in item:
            listed = s.str_list("methods")
            if not listed:
                raise ConfigError(f"{name}.methods: list at least one method, or leave the key out for all")
            for m in listed:
                if not _METHOD.fullmatch(m):
                    raise ConfigError(f"{name}.methods: {m!r} is not an upper-case HTTP method name")
            methods = frozenset(listed)
        s.finish()
        out.append(Route(parsed[0], parsed[1], methods, policy))
    return tuple(out)


# Paths the sidecar serves itself; a capture route may not take them over.
_OWN_PATHS = ("/introspect", "/api/v1/sessions", "/api/v1/openapi.json", "/healthz", "/readyz")


def _capture(raw: Any, environ: Mapping[str, str], base: Path) -> tuple[CaptureRoute, ...]:
    """``[[capture]]``: the auth service's login / refresh / logout, forwarded and learned from."""
    if not isinstance(raw, list):
        raise ConfigError("capture: must be an array of tables ([[capture]] entries)")
    out: list[CaptureRoute] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        name = f"capture[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{name}: must be a table")
        s = _Section(name, item, environ, base, CaptureRoute)
        for required in ("path", "event", "upstream"):
            if required not in item:
                raise ConfigError(f"{name}.{required}: required")
        path = s.get("path", str, "")
        parsed = parse_route_path(path)
        if parsed is None or parsed[1]:
            raise ConfigError(f"{name}.path: must be an exact, normalised absolute path, got {path!r}")
        if any(path == own or path.startswith(own + "/") for own in _OWN_PATHS):
            raise ConfigError(f"{name}.path: {path} is served by the sidecar itself")
        if path in seen:
            raise ConfigError(f"{name}.path: {path} is captured twice")
        seen.add(path)
        event = s.get("event", str, "")
        if event not in EVENTS:
            raise ConfigError(f"{name}.event: must be one of {', '.join(EVENTS)}, got {event!r}")
        upstream = s.get("upstream", str, "").rstrip("/")
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
            raise ConfigError(f"{name}.upstream: must be http(s)://host[:port] with no path, got {upstream!r}")
        places: dict[str, TokenPlace | None] = {}
        for key in ("access_token", "refresh_token"):
            text = s.get(key, str, "")
            if not text:
                places[key] = None
                continue
            place = parse_place(text)
            if place is None:
                raise ConfigError(f"{name}.{key}: use body:<json key>, header:<name> or cookie:<name>, got {text!r}")
            places[key] = place
        if event in ("login", "refresh") and places["access_token"] is None:
            raise ConfigError(f"{name}.access_token: required for {event} (where the answer carries the new token)")
        if event == "logout" and places["access_token"] is not None:
            raise ConfigError(f"{name}.access_token: a logout answer carries no token; leave it out")
        route = CaptureRoute(
            path=path,
            event=event,
            upstream=upstream,
            access_token=places["access_token"],
            refresh_token=places["refresh_token"],
            timeout_seconds=s.number("timeout_seconds", minimum=0.1, maximum=300),
            max_body_bytes=s.integer("max_body_bytes", minimum=1024, maximum=64 * 1024 * 1024),
        )
        s.finish()
        out.append(route)
    return tuple(out)


def _is_token(name: str) -> bool:
    # RFC 9110 section 5.6.2 token characters.
    allowed = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    return bool(name) and all(c in allowed for c in name)


def _check_hmac_secret(secret: bytes) -> None:
    """Refuse a secret that is really a key (PEM, SSH, JWK), as PyJWT's HMAC would at start."""
    from jwt.algorithms import HMACAlgorithm
    from jwt.exceptions import InvalidKeyError

    try:
        HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
    except InvalidKeyError as e:
        raise ConfigError(f"jwt.secret: looks like a public key or JWK, not an HMAC secret ({e})") from e


def _check_public_keys(keys: tuple[bytes, ...], names: tuple[str, ...], algorithms: list[str]) -> None:
    """Every key file must hold a public key usable by at least one listed algorithm."""
    from sidecar.tokens.keys import load_public_key  # cryptography is heavy; load only when needed

    for name, data in zip(names, keys, strict=True):
        try:
            load_public_key(data, algorithms)
        except ValueError as e:
            raise ConfigError(f"jwt.public_key_file: {name}: {e}") from e


def _sessions(s: _Section) -> SessionSettings:
    catchup = s.number("catchup_interval_seconds", minimum=0.05, maximum=60)
    staleness = s.number("max_staleness_seconds", minimum=0.1, maximum=3600)
    if staleness <= catchup:
        raise ConfigError(
            "sessions.max_staleness_seconds: must be longer than catchup_interval_seconds "
            f"({staleness:g} <= {catchup:g})"
        )
    registration = _choice(s, "registration", Registration)
    flush = s.number("last_seen_flush_seconds", minimum=0.05, maximum=3600)
    settings = SessionSettings(
        registration=registration,
        last_seen_flush_seconds=flush,
        state_cache_size=s.integer("state_cache_size", minimum=1000, maximum=100_000_000),
        catchup_interval_seconds=catchup,
        max_staleness_seconds=staleness,
        idle_timeout_seconds=s.number("idle_timeout_seconds", minimum=0, maximum=86400 * 3650),
        max_lifetime_seconds=s.number("max_lifetime_seconds", minimum=0, maximum=86400 * 3650),
        max_sessions_per_user=s.integer("max_sessions_per_user", minimum=0, maximum=100_000),
        on_session_limit=_choice(s, "on_session_limit", OnSessionLimit),
    )
    idle, grace = settings.idle_timeout_seconds, settings.idle_grace_seconds
    if 0 < idle < grace:
        # An idle session is refused up to ``grace`` after its timeout: with a timeout shorter
        # than that, the lateness would exceed the timeout itself.
        raise ConfigError(
            f"sessions.idle_timeout_seconds: must be 0 (off) or at least last_seen_flush_seconds + "
            f"{IDLE_MARGIN_SECONDS:g} = {grace:g} s, how late an idle refusal can be (got {idle:g}); "
            "lower last_seen_flush_seconds for a shorter timeout"
        )
    if 0 < settings.max_lifetime_seconds < 1:
        raise ConfigError("sessions.max_lifetime_seconds: must be 0 (off) or at least 1")
    return _finish(s, settings)


def _storage(s: _Section) -> StorageSettings:
    # A PostgreSQL URL may carry a password, so it may come from url_env or url_file too.
    # Messages here never echo the URL.
    url = s.secret("url")
    if url is None:
        if "url" in s.data:
            raise ConfigError("storage.url: must not be empty")
        url = s.default("url")
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if not path or path == ":memory:":
            raise ConfigError("storage.url: needs a file, e.g. sqlite:///sidecar.db (in-memory is not durable)")
    elif url.startswith(("postgresql://", "postgres://")):
        # What can be told without connecting (asyncpg reports the rest when the store
        # opens). Say which part is wrong, never the URL or the parser's message.
        if any(c.isspace() for c in url):
            raise ConfigError("storage.url: must not contain spaces (percent-encode them as %20)")
        try:
            parts = urlsplit(url)
            if "," not in parts.netloc:  # libpq's multi-host form "h1:5432,h2:5432" has no single port
                _ = parts.port
        except ValueError as e:
            raise ConfigError("storage.url: not a valid PostgreSQL URL (bad host or port)") from e
        try:
            parse_qs(parts.query, strict_parsing=True)
        except ValueError as e:
            raise ConfigError("storage.url: not a valid PostgreSQL URL (bad query string, use key=value&...)") from e
    else:
        raise ConfigError(
            "storage.url: must start with sqlite:/// (e.g. sqlite:///sidecar.db) "
            "or postgresql:// (e.g. postgresql://sidecar@db.internal/sidecar)"
        )
    pool_min_size = s.integer("pool_min_size", minimum=0, maximum=1000)
    pool_max_size = s.integer("pool_max_size", minimum=1, maximum=1000)
    if pool_min_size > pool_max_size:
        raise ConfigError(
            f"storage.pool_min_size: must not exceed storage.pool_max_size ({pool_max_size}), got {pool_min_size}"
        )
    return _finish(s, StorageSettings(
        url=url,
        busy_timeout_ms=s.integer("busy_timeout_ms", minimum=0, maximum=600_000),
        pool_min_size=pool_min_size,
        pool_max_size=pool_max_size,
        statement_timeout_ms=s.integer("statement_timeout_ms", minimum=10, maximum=600_000),
        connect_timeout_seconds=s.number("connect_timeout_seconds", minimum=0.1, maximum=600),
    ))


def _events(s: _Section) -> EventSettings:
    settings = EventSettings(
        enabled=s.get("enabled", bool),
        retention_days=s.number("retention_days", minimum=1, maximum=3650),
        max_travel_kmh=s.number("max_travel_kmh", minimum=1, maximum=1_000_000),
        delivery_interval_seconds=s.number("delivery_interval_seconds", minimum=0.5, maximum=3600),
        delivery_batch_size=s.integer("delivery_batch_size", minimum=1, maximum=10_000),
        delivery_lease_seconds=s.number("delivery_lease_seconds", minimum=1, maximum=86400),
        retry_base_seconds=s.number("retry_base_seconds", minimum=0.1, maximum=86400),
        retry_max_seconds=s.number("retry_max_seconds", minimum=1, maximum=7 * 86400),
    )
    if settings.retry_max_seconds < settings.retry_base_seconds:
        raise ConfigError("events.retry_max_seconds: must be at least events.retry_base_seconds")
    return _finish(s, settings)


_WHSEC_PREFIX = "whsec_"
# The Standard Webhooks spec: secrets of 24 to 64 random bytes, base64 after "whsec_".
_MIN_WEBHOOK_SECRET = 24
_MAX_WEBHOOK_SECRET = 64


def _webhook_secret(name: str, text: str | None) -> bytes:
    if text is None:
        raise ConfigError(f"{name}.secret_env: required (or secret_file): the receiver's whsec_... secret")
    if not text.startswith(_WHSEC_PREFIX):
        raise ConfigError(f"{name}.secret: must be a Standard Webhooks secret, whsec_<base64>")
    try:
        key = base64.b64decode(text[len(_WHSEC_PREFIX):], validate=True)
    except (binascii.Error, ValueError) as e:
        raise ConfigError(f"{name}.secret: the part after whsec_ is not base64") from e
    if not _MIN_WEBHOOK_SECRET <= len(key) <= _MAX_WEBHOOK_SECRET:
        raise ConfigError(
            f"{name}.secret: must encode {_MIN_WEBHOOK_SECRET}-{_MAX_WEBHOOK_SECRET} bytes, got {len(key)}"
        )
    return key


def _webhooks(raw: Any, environ: Mapping[str, str], base: Path) -> tuple[WebhookSettings, ...]:
    """``[[webhooks]]``: url, secret_env or secret_file (whsec_...), events, max_attempts, timeout_seconds."""
    if not isinstance(raw, list):
        raise ConfigError("webhooks: must be an array of tables ([[webhooks]] entries)")
    out: list[WebhookSettings] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        name = f"webhooks[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{name}: must be a table")
        s = _Section(name, item, environ, base)
        if "url" not in item:
            raise ConfigError(f"{name}.url: required")
        url = s.get("url", str, "")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or not url.isascii() or not url.isprintable():
            raise ConfigError(f"{name}.url: must be an http(s):// URL, got {url!r}")
        if url in seen:
            raise ConfigError(f"{name}.url: {url} is listed twice")
        seen.add(url)
        if "secret" in item:
            raise ConfigError(f"{name}.secret: keep webhook secrets out of the file: use secret_env or secret_file")
        key = _webhook_secret(name, s.secret("secret"))
        types: frozenset[str] | None = None
        if "events" in item:
            listed = s.str_list("events")
            if not listed:
                raise ConfigError(f"{name}.events: list at least one event type, or leave the key out for all")
            for t in listed:
                if t not in EVENT_TYPES:
                    raise ConfigError(f"{name}.events: {t!r} is not one of {', '.join(EVENT_TYPES)}")
            types = frozenset(listed)
        hook = WebhookSettings(
            url=url,
            secret=key,
            events=types,
            max_attempts=s.integer("max_attempts", 10, minimum=1, maximum=100),
            timeout_seconds=s.number("timeout_seconds", 10.0, minimum=0.1, maximum=300),
        )
        s.finish()
        out.append(hook)
    return tuple(out)


def _redis(s: _Section) -> RedisSettings:
    url = s.optional_str("url")
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("redis.url: must start with redis://, rediss:// or unix://")
    channel = s.get("channel", str)
    if not channel or len(channel) > 200 or not channel.isascii() or not channel.isprintable():
        raise ConfigError("redis.channel: must be printable ASCII, 1-200 characters")
    return _finish(s, RedisSettings(url=url, channel=channel))


def _celery(s: _Section) -> CelerySettings:
    broker = s.optional_str("broker_url")
    if broker is not None and not broker.startswith(("redis://", "rediss://", "redis+socket://")):
        raise ConfigError("celery.broker_url: must start with redis://, rediss:// or redis+socket://")
    queue = s.get("queue", str)
    if not queue or len(queue) > 200 or not all(c.isascii() and (c.isalnum() or c in "._:-") for c in queue):
        raise ConfigError(f"celery.queue: use 1-200 of A-Z a-z 0-9 . _ : - (got {queue!r})")
    return _finish(s, CelerySettings(
        broker_url=broker,
        queue=queue,
        cleanup_interval_seconds=s.number("cleanup_interval_seconds", minimum=1, maximum=86400 * 7),
        cleanup_grace_seconds=s.number("cleanup_grace_seconds", minimum=0, maximum=86400 * 365),
        cleanup_batch_size=s.integer("cleanup_batch_size", minimum=1, maximum=100_000),
        max_token_lifetime_seconds=s.number("max_token_lifetime_seconds", minimum=1, maximum=86400 * 3650),
    ))


def _geoip(s: _Section) -> GeoipSettings:
    db = s.optional_str("database")
    path = None
    if db is not None:
        path = s.path("database", db)
        try:
            with path.open("rb"):
                pass
        except (OSError, ValueError) as e:  # ValueError: a NUL in the name
            raise ConfigError(f"geoip.database: cannot read {path}: {getattr(e, 'strerror', None) or e}") from e
    return _finish(s, GeoipSettings(database=path))


def _admin(s: _Section) -> AdminSettings:
    keys: tuple[str, ...] = s.str_list("api_keys")
    env_name = s.get("api_keys_env", str, "")
    if env_name:
        if keys:
            raise ConfigError("admin.api_keys: set only one of api_keys, api_keys_env")
        if env_name not in s.environ:
            raise ConfigError(f"admin.api_keys_env: environment variable {env_name} is not set")
        keys = tuple(k.strip() for k in s.environ[env_name].split(",") if k.strip())
    for k in keys:
        if len(k) < 16:
            raise ConfigError("admin.api_keys: every key must be at least 16 characters")
        if not k.isascii() or not k.isprintable() or " " in k:
            raise ConfigError("admin.api_keys: keys must be printable ASCII without spaces")
    return _finish(s, AdminSettings(
        host=s.get("host", str),
        port=_port(s, "port"),
        api_keys=keys,
    ))


# A socket's path lives in sockaddr_un.sun_path: 108 bytes on Linux with its NUL (104 on
# the BSDs and macOS, where a longer path fails at bind time with its own error).
MAX_UNIX_SOCKET_PATH = 107


def _check(s: _Section) -> CheckSettings:
    return _finish(s, CheckSettings(
        enabled=s.get("enabled", bool),
        host=s.get("host", str),
        port=_port(s, "port"),
        unix_socket=_unix_socket(s, "unix_socket"),
        unix_socket_mode=s.integer("unix_socket_mode", minimum=0, maximum=0o777),
    ))


def _unix_socket(s: _Section, k: str) -> str | None:
    """An absolute path for a Unix domain socket, short enough for sockaddr_un; relative
    paths are refused (the listener's address should not depend on where the file is)."""
    v = s.optional_str(k)
    if v is None:
        return None
    if "\0" in v:
        raise ConfigError(f"{s.key(k)}: must not contain a NUL character")
    if not os.path.isabs(v):
        raise ConfigError(f"{s.key(k)}: must be an absolute path, got {v!r}")
    try:
        size = len(os.fsencode(v))
    except UnicodeEncodeError as e:  # a lone surrogate: no file system name
        raise ConfigError(f"{s.key(k)}: cannot use {v!r} as a path") from e
    if size > MAX_UNIX_SOCKET_PATH:
        raise ConfigError(
            f"{s.key(k)}: {size} bytes is longer than a Unix socket path can be "
            f"({MAX_UNIX_SOCKET_PATH} bytes): choose a shorter path, e.g. /run/sidecar/check.sock"
        )
    return v


def _logging(s: _Section) -> LoggingSettings:
    level = s.get("level", str).upper()
    if level not in get_args(LogLevel):
        raise ConfigError(f"logging.level: must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
    return _finish(s, LoggingSettings(level=cast(LogLevel, level), format=_choice(s, "format", LogFormat)))
