"""What both middleware test apps answer: the identity their handler saw, and a call counter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sidecar.client import Identity


@dataclass
class Calls:
    """How many times a checked handler ran."""

    count: int = 0


def seen(identity: Identity | None) -> dict[str, Any]:
    """The identity as JSON: ``{"identity": null}`` for an anonymous request."""
    if identity is None:
        return {"identity": None}
    return {
        "identity": {"user": identity.user_id, "session": identity.session_id, "headers": dict(identity.headers)}
    }
