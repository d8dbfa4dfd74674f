"""The boilerplate-shaped auth service (auth_service.py) and the sidecar's [[capture]] of it,
shared by the in-process tests here and the nginx ones in tests/gateways."""

from __future__ import annotations

from typing import Any

BOILERPLATE_JWT = {"user_claim": "user_id", "token_type_claim": "type", "access_token_type": "access"}
LOGIN, REFRESH, LOGOUT = "/api/v1/auth/login", "/api/v1/auth/refresh-access-token", "/api/v1/auth/logout"
ADA = {"email": "ada@example.com", "password": "pw-ada"}


def capture_routes(upstream: str, **extra: Any) -> list[dict[str, Any]]:
    return [
        {"path": LOGIN, "event": "login", "upstream": upstream, "access_token": "body:access_token",
         "refresh_token": "cookie:refresh_token", **extra},
        {"path": REFRESH, "event": "refresh", "upstream": upstream, "access_token": "body:access_token",
         "refresh_token": "cookie:refresh_token", **extra},
        {"path": LOGOUT, "event": "logout", "upstream": upstream, "refresh_token": "cookie:refresh_token", **extra},
        {"path": "/api/v1/auth/slow", "event": "login", "upstream": upstream, "access_token": "body:access_token",
         "timeout_seconds": 0.3},
        {"path": "/api/v1/auth/tokenless", "event": "login", "upstream": upstream, "access_token": "body:access_token"},
    ]
