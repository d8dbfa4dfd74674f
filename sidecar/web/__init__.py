"""The thin HTTP layer: aiohttp apps over the core (tokens, sessions, enrich)."""

from __future__ import annotations

from sidecar.web.app import create_admin_app, create_app
from sidecar.web.services import Services, open_services

__all__ = ["Services", "create_admin_app", "create_app", "open_services"]
