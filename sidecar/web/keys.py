"""Typed keys for what lives on the aiohttp applications."""

from __future__ import annotations

from aiohttp import web

from sidecar.web.services import Services

SERVICES = web.AppKey("services", Services)
