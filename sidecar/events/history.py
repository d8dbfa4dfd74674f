"""An event as the history shows it: what happened, to which session, and why and by whom
in words a user understands ("you, from Chrome on Windows", "an administrator", "idle
timeout"). The raw codes stay in the admin listing next to the words."""

from __future__ import annotations

from typing import Any, Final

from sidecar.events.models import Event, timestamp
from sidecar.events.types import SESSION_CREATED
from sidecar.sessions.models import ADMIN, ADMIN_USER, IDLE, LIFETIME, LIMIT, LOGOUT, OAUTH2, OTHERS, POLICY_ACTOR, USER

REASONS: Final = {
    USER: "logged out",
    OTHERS: "logged out from another session",
    ADMIN: "ended by an administrator",
    ADMIN_USER: "all sessions ended by an administrator",
    IDLE: "idle timeout",
    LIFETIME: "maximum session lifetime reached",
    LIMIT: "too many sessions: replaced by a newer sign-in",
    OAUTH2: "token revoked by an application",
    LOGOUT: "signed out",
}
SUMMARIES: Final = {
    SESSION_CREATED: "New sign-in",
    "session.revoked": "Session ended",
    "user.sessions_revoked": "Sessions ended",
}


def reason_words(reason: str | None) -> str | None:
    if reason is None:
        return None
    return REASONS.get(reason, reason.replace("_", " "))


def actor_words(actor: str | None, device: str | None) -> str | None:
    """Who ended a session, as its owner reads it."""
    if actor is None:
        return None
    kind, _, _ = actor.partition(":")
    if kind in ("user", "capture"):
        return f"you, from {device}" if device else "you"
    if kind == "admin":
        return "an administrator"
    if kind == "oauth2":
        return "an application, with an administrator's key"
    if actor == POLICY_ACTOR:
        return "the session policy"
    if kind == "session":
        return "a newer sign-in"
    return actor


def _flag(data: dict[str, Any], name: str) -> bool | None:
    value = data.get(name)
    return value if isinstance(value, bool) else None


def history_json(event: Event, *, raw: bool = False) -> dict[str, Any]:
    """One history item. ``raw`` (the admin listing) adds the user and the codes behind the words."""
    data = dict(event.data)
    count = data.get("count")
    out: dict[str, Any] = {
        "id": event.id,
        "time": timestamp(event.occurred_at, milliseconds=False),
        "event": event.type,
        "summary": SUMMARIES.get(event.type, event.type),
        "session_id": event.session_id,
        "device": data.get("device") if event.type != "user.sessions_revoked" else data.get("actor_device"),
        "ip_address": data.get("ip_address"),
        "location": data.get("location"),
        "reason": reason_words(data.get("reason")),
        "actor": actor_words(data.get("actor"), data.get("actor_device")),
        "new_device": _flag(data, "new_device"),
        "new_country": _flag(data, "new_country"),
        "unusual_travel": _flag(data, "unusual_travel"),
        "count": count if isinstance(count, int) and not isinstance(count, bool) else None,
    }
    if raw:
        out["user_id"] = event.user_id
        out["reason_code"] = data.get("reason")
        out["actor_code"] = data.get("actor")
        out["country"] = data.get("country")
    return out
