"""Typed keys for what lives on the aiohttp applications."""

from __future__ import annotations

from aiohttp import web

from sidecar.web.limits import RateLimiter
from sidecar.web.services import Services

SERVICES = web.AppKey("services", Services)
API_RATE = web.AppKey("api_rate", RateLimiter)
# Which admin key authorised the request (its fingerprint), for the audit trail.
ADMIN_ACTOR = web.RequestKey("admin_actor", str)
