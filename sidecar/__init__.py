"""sidecar: session control for JWT-based APIs."""

from __future__ import annotations

__version__ = "0.1.0"
