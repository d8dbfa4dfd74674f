"""``sidecar serve | check-config | cleanup | mint-token``.

A configuration problem prints one line (``sidecar: error: jwt.secret: ...``) and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import jwt as pyjwt

from sidecar import __version__
from sidecar.config import Settings, load
from sidecar.errors import ConfigError, SidecarError, StoreUnavailableError
from sidecar.logs import configure as configure_logging

log = logging.getLogger("sidecar")

EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def cmd_serve(settings: Settings) -> int:
    from sidecar.server import run

    return run(settings)


def _check_line(s: Settings) -> str:
    if not s.check.enabled:
        return (
            "  check       no check listener (check.enabled = false): gateways use "
            f"http://{s.server.host}:{s.server.port}/introspect"
        )
    if s.check.unix_socket is not None:
        return (
            f"  check       unix:{s.check.unix_socket} (mode {s.check.unix_socket_mode:04o}) /introspect "
            "(the check listener on a Unix socket: point gateways here; every connection on it "
            "counts as a trusted proxy)"
        )
    return f"  check       http://{s.check.host}:{s.check.port}/introspect (the check listener: point gateways here)"


def summary(settings: Settings, path: str) -> list[str]:
    """What ``check-config`` prints: the settings that decide access, and what they cost."""
    s = settings
    j = s.jwt
    lines = [
        f"{path}: OK",
        f"  server      http://{s.server.host}:{s.server.port} (trusted proxies: "
        f"{', '.join(map(str, s.server.trusted_proxies)) or 'none'})",
        _check_line(s),
        f"  jwt         {', '.join(j.algorithms)}; user claim {j.user_claim!r}",
    ]
    if j.token_type_claim is not None:
        lines.append(
            f"  token type  only tokens whose {j.token_type_claim!r} is {j.access_token_type!r} pass "
            "(refresh tokens are refused)"
        )
    else:
        lines.append(
            "  token type  WARNING: no rule (jwt.token_type_claim / jwt.access_token_type): a refresh "
            "token signed with the same key passes the check and the sessions API"
        )
    lines.append(
        f"  sessions    registration {s.sessions.registration}; keyed by claim {j.session_claim!r}, else 'jti', "
        "else a hash of the token's claims"
    )
    lines.append(
        f"              (tokens without {j.session_claim!r} or 'jti': each token is its own session, so a revoked "
        "device comes back with its next refreshed token; carry a session id from login into every refresh)"
    )
    if j.token_lifetime_seconds is not None:
        age = f"iat, else exp - {j.token_lifetime_seconds:g} s (jwt.token_lifetime_seconds)"
    else:
        age = (
            "iat only: after 'log out others', a never-seen token without iat is let through "
            "(set jwt.token_lifetime_seconds to refuse older ones)"
        )
    lines.append(f"  cut-offs    a token's age from {age}")
    lines.extend(_policy_lines(s))
    if s.routes:
        lines.append("  routes      first match wins; anything else is required")
        for r in s.routes:
            methods = ",".join(sorted(r.methods)) if r.methods is not None else "*"
            lines.append(f"              {r.policy:<9} {methods:<12} {r.pattern}")
    else:
        lines.append("  routes      none: every request needs a valid token of an active session")
    if j.cookie_name is not None:
        origins = ", ".join(s.server.allowed_origins) or "none (only Sec-Fetch-Site: same-origin)"
        lines.append(
            f"  cookie      tokens also from the {j.cookie_name!r} cookie; sessions API DELETEs with it "
            f"need a same-origin request (allowed origins: {origins})"
        )
    if s.capture:
        lines.append("  capture     the auth service's token endpoints, forwarded and learned from")
        for c in s.capture:
            places = f"access {c.access_token or '-'}, refresh {c.refresh_token or '-'}"
            lines.append(f"              {c.event:<8} {c.path} -> {c.upstream} ({places})")
    lines.append(f"  storage     {s.storage.display_url}")
    admin = f"http://{s.admin.host}:{s.admin.port}" if s.admin.enabled else "disabled"
    lines.append(f"  admin       {admin}")
    lines.append(f"  geoip       {s.geoip.database or 'none (locations read Unknown)'}")
    e = s.events
    if not e.enabled:
        lines.append("  events      off (no history, no webhooks)")
    else:
        lines.append(
            f"  events      kept {e.retention_days:g} days; unusual travel above {e.max_travel_kmh:g} km/h"
            + ("" if s.geoip.database else " (needs a City database in [geoip])")
        )
        for w in s.webhooks:
            kinds = ", ".join(sorted(w.events)) if w.events is not None else "every event"
            lines.append(f"  webhook     {w.url}: {kinds}; up to {w.max_attempts} attempt(s), then dead")
        if s.webhooks and s.celery.broker_url is None:
            lines.append("  webhook     celery.broker_url is not set: no worker will deliver them")
    return lines


def _policy_lines(settings: Settings) -> list[str]:
    """The session policies, each with the bound it keeps (README: Session policies)."""
    p = settings.sessions
    if not p.policies_on:
        return ["  policies    none (sessions end only by their tokens' exp and by revocation)"]
    lines = []
    if p.idle_timeout_seconds:
        lines.append(
            f"idle timeout {p.idle_timeout_seconds:g} s: refused {p.idle_timeout_seconds:g}-"
            f"{p.idle_timeout_seconds + p.idle_grace_seconds:g} s after the last allowed check on any process "
            f"(last_seen_flush_seconds {p.last_seen_flush_seconds:g} + 1 s)"
        )
    if p.max_lifetime_seconds:
        lines.append(f"lifetime {p.max_lifetime_seconds:g} s from login, however fresh the token")
    if p.max_sessions_per_user:
        lines.append(f"at most {p.max_sessions_per_user} active session(s) per user; beyond: {p.on_session_limit}")
    return [f"  {'policies' if i == 0 else '':<10}  {line}" for i, line in enumerate(lines)]


def cmd_check_config(settings: Settings, path: str) -> int:
    print("\n".join(summary(settings, path)))
    if not settings.server.trusted_proxies:
        print(
            "sidecar: warning: server.trusted_proxies is empty: the sessions API rate limit is per client IP; "
            "behind a gateway with no trusted proxy every user shares one bucket",
            file=sys.stderr,
        )
    return 0


async def _cleanup(settings: Settings) -> int:
    from sidecar.cleanup import run_cleanup

    # The same core run as the Celery task; it logs both counts (sessions and cut-offs).
    report = await run_cleanup(settings)
    return report.sessions


def cmd_cleanup(settings: Settings) -> int:
    try:
        deleted = asyncio.run(_cleanup(settings))
    except StoreUnavailableError as e:
        print(f"sidecar: error: storage: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    print(f"deleted {deleted} expired session(s)")
    return 0


def cmd_mint_token(settings: Settings, args: argparse.Namespace) -> int:
    j = settings.jwt
    if not j.development_hmac_only or j.secret is None:
        print(
            "sidecar: error: mint-token only works with an HS* development config "
            "(jwt.algorithms all HS256/HS384/HS512 and a jwt.secret)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    now = int(time.time())
    claims: dict[str, Any] = {j.user_claim: args.sub, "exp": now + args.ttl}
    if not args.no_iat:
        claims["iat"] = now
    if not args.no_session:
        claims[j.session_claim] = args.sid or str(uuid.uuid4())
    if j.token_type_claim and j.access_token_type:
        claims[j.token_type_claim] = args.type or j.access_token_type
    if j.issuer:
        claims["iss"] = j.issuer
    if j.audience:
        claims["aud"] = j.audience[0]
    for item in args.claim:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"sidecar: error: --claim {item!r}: use NAME=VALUE", file=sys.stderr)
            return EXIT_CONFIG
        claims[name] = value
    print(pyjwt.encode(claims, j.secret, algorithm=j.algorithms[0]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidecar", description="Session control for JWT-based APIs.")
    parser.add_argument("--version", action="version", version=f"sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", "-c", required=True, metavar="PATH", help="TOML configuration file")
        return p

    with_config(sub.add_parser("serve", help="run the check, the sessions API and the admin API"))
    with_config(sub.add_parser("check-config", help="validate a configuration file and summarise it"))
    with_config(sub.add_parser("cleanup", help="delete expired sessions once, then exit"))
    mint = with_config(sub.add_parser("mint-token", help="print a signed test token (HS* development configs only)"))
    mint.add_argument("--sub", required=True, help="the user id")
    mint.add_argument("--sid", help="the session id claim (default: a new UUID, i.e. a new session)")
    mint.add_argument("--no-session", action="store_true", help="omit the session claim")
    mint.add_argument("--no-iat", action="store_true", help="omit iat (as many auth services do)")
    mint.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    mint.add_argument("--type", help="token type claim value (default: the configured access type)")
    mint.add_argument("--claim", action="append", default=[], metavar="NAME=VALUE", help="an extra string claim")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load(args.config)
    except ConfigError as e:
        print(f"sidecar: error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        return cmd_check_config(settings, args.config)
    if args.command == "mint-token":
        return cmd_mint_token(settings, args)
    configure_logging(settings.logging)
    try:
        if args.command == "serve":
            return cmd_serve(settings)
        return cmd_cleanup(settings)
    except SidecarError as e:
        print(f"sidecar: error: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    except ValueError as e:  # e.g. a GeoIP file that is not a MaxMind database
        print(f"sidecar: error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()


if __name__ == "__main__":
    sys.exit(main())
