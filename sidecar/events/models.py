"""Event value objects and the rules that make them, shared by both store backends.

An event is written in the transaction of the change it describes (``SessionStore``), so
the history and the webhooks never tell of a change that did not commit, and never miss
one that did. The rules here are pure: the backends call them inside their transaction.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sidecar.config import Settings
from sidecar.events.types import SESSION_CREATED, SESSION_REVOKED, USER_SESSIONS_REVOKED
from sidecar.sessions.models import Session

# How many of a user's earlier logins the flags of a new one are judged against: bounded,
# so that registration costs the same for a user with ten thousand logins.
PREVIOUS_LOGINS: Final = 200
_EARTH_RADIUS_KM: Final = 6371.0088


@dataclass(frozen=True, slots=True)
class Place:
    """Where an address is, as far as the GeoIP database says: what the flags compare."""

    country: str | None = None  # ISO 3166-1 alpha-2
    latitude: float | None = None
    longitude: float | None = None

    @property
    def has_coordinates(self) -> bool:
        return self.latitude is not None and self.longitude is not None


NOWHERE: Final = Place()


@dataclass(frozen=True, slots=True)
class Target:
    """A ``[[webhooks]]`` entry as the store sees it: where, and which event types (None: all)."""

    url: str
    types: frozenset[str] | None = None

    def wants(self, event_type: str) -> bool:
        return self.types is None or event_type in self.types


@dataclass(frozen=True, slots=True)
class EventOptions:
    """What the store needs to record events: whether to, the flags' thresholds, and the
    webhooks an event is queued for in the same transaction."""

    enabled: bool = True
    history_seconds: float = 90 * 86400.0  # a device/country seen within this is not new
    max_travel_kmh: float = 1000.0
    targets: tuple[Target, ...] = ()


@dataclass(frozen=True, slots=True)
class Event:
    """One recorded event. ``id`` is also the Standard Webhooks ``webhook-id``: the same on
    every delivery attempt, so a receiver can drop duplicates."""

    id: str
    type: str
    user_id: str
    session_id: str | None
    occurred_at: float
    data: Mapping[str, Any] = field(default_factory=dict)

    def json_data(self) -> str:
        return json.dumps(dict(self.data), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One outbox row claimed by a worker: the event's body for one webhook."""

    id: int
    event_id: str
    url: str
    payload: str  # the JSON body, exactly as signed and sent
    attempts: int  # including this one
    claim: str  # this worker's claim; a failure is recorded only under it


@dataclass(frozen=True, slots=True)
class OutboxCounts:
    pending: int
    dead: int


def options_from_settings(settings: Settings) -> EventOptions:
    """The store's event options from the config: thresholds and the webhooks' filters."""
    e = settings.events
    return EventOptions(
        enabled=e.enabled,
        history_seconds=e.retention_days * 86400.0,
        max_travel_kmh=e.max_travel_kmh,
        targets=tuple(Target(w.url, w.events) for w in settings.webhooks) if e.enabled else (),
    )


def new_event(event_type: str, user_id: str, session_id: str | None, now: float, data: Mapping[str, Any]) -> Event:
    return Event(str(uuid.uuid4()), event_type, user_id, session_id, now, dict(data))


def _session_facts(s: Session) -> dict[str, Any]:
    return {
        "user_id": s.user_id,
        "session_id": s.id,
        "device": s.device,
        "ip_address": s.ip_address,
        "location": s.location,
    }


def distance_km(a: Place, b: Place) -> float:
    """Great-circle distance (haversine) between two places with coordinates."""
    lat1, lat2 = math.radians(a.latitude or 0.0), math.radians(b.latitude or 0.0)
    dlat = lat2 - lat1
    dlon = math.radians((b.longitude or 0.0) - (a.longitude or 0.0))
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return 2 * _EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def place_of(data: Mapping[str, Any]) -> Place:
    """The place an earlier session.created event recorded (missing or odd values: unknown)."""
    country = data.get("country")
    lat, lon = data.get("latitude"), data.get("longitude")
    ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lat, lon))
    return Place(
        country if isinstance(country, str) else None,
        float(lat) if ok else None,  # type: ignore[arg-type]
        float(lon) if ok else None,  # type: ignore[arg-type]
    )


def created_event(
    session: Session, place: Place, previous: Sequence[Event], options: EventOptions
) -> Event:
    """``session.created`` for a session just inserted, its flags judged against the user's
    earlier logins (``previous``: session.created events newest first, within
    ``options.history_seconds``).

    ``new_device``: no earlier login on this device; ``new_country``: the country is known and
    no earlier login was from it; ``unusual_travel``: the previous login and this one both have
    coordinates, and covering the distance in the time between them is faster than
    ``max_travel_kmh``. A user's first login is a new device (and a new country when known).
    """
    now = session.created_at
    recent = [e for e in previous if e.occurred_at >= now - options.history_seconds]
    devices = {e.data.get("device") for e in recent}
    countries = {place_of(e.data).country for e in recent}
    travel_kmh: float | None = None
    if recent and place.has_coordinates:
        last = recent[0]
        before = place_of(last.data)
        if before.has_coordinates:
            km = distance_km(before, place)
            # A second apart at the least: two logins in one instant from two places are the
            # fastest travel there is, not a division by zero.
            hours = max(now - last.occurred_at, 1.0) / 3600.0
            travel_kmh = km / hours
    data = {
        **_session_facts(session),
        "country": place.country,
        "latitude": place.latitude,
        "longitude": place.longitude,
        "new_device": session.device not in devices,
        "new_country": place.country is not None and place.country not in countries,
        "unusual_travel": travel_kmh is not None and travel_kmh > options.max_travel_kmh,
    }
    if travel_kmh is not None:
        data["travel_kmh"] = round(travel_kmh, 1)
    return new_event(SESSION_CREATED, session.user_id, session.id, now, data)


def revoked_events(sessions: Sequence[Session], actor_session: Session | None = None) -> list[Event]:
    """``session.revoked`` for each session a transaction revoked, with its reason and actor
    as the revocation recorded them; ``actor_session`` is the session the user acted from."""
    out = []
    for s in sessions:
        data = {**_session_facts(s), "reason": s.revoked_reason, "actor": s.revoked_by}
        if actor_session is not None:
            data["actor_session_id"] = actor_session.id
            data["actor_device"] = actor_session.device
        out.append(new_event(SESSION_REVOKED, s.user_id, s.id, s.revoked_at or 0.0, data))
    return out


def user_revoked_events(
    user_id: str, now: float, revoked: Sequence[Session], *, reason: str, actor: str | None, acting: Session | None
) -> list[Event]:
    """What "log out others" / admin "revoke user" tell: ``session.revoked`` for each session
    it revoked, and one ``user.sessions_revoked`` with how many (also when none)."""
    data: dict[str, Any] = {"user_id": user_id, "count": len(revoked), "reason": reason, "actor": actor}
    if acting is not None:
        data["actor_session_id"] = acting.id
        data["actor_device"] = acting.device
    summary = new_event(USER_SESSIONS_REVOKED, user_id, acting.id if acting else None, now, data)
    return [*revoked_events(revoked, acting), summary]


def webhook_body(event: Event) -> str:
    """The Standard Webhooks payload: ``{"type", "timestamp", "data"}`` (timestamp RFC 3339)."""
    return json.dumps(
        {"type": event.type, "timestamp": timestamp(event.occurred_at), "data": dict(event.data)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def timestamp(ts: float, *, milliseconds: bool = True) -> str:
    """Epoch seconds -> '2026-12-02T02:30:00.123Z' (RFC 3339, UTC; whole seconds without
    ``milliseconds``, as the APIs write every other time)."""
    t = time.gmtime(ts)
    whole = f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    if not milliseconds:
        return whole + "Z"
    return f"{whole}.{min(int((ts - math.floor(ts)) * 1000), 999):03d}Z"


def outbox_rows(events: Sequence[Event], targets: Sequence[Target]) -> list[tuple[str, str, str, float]]:
    """(event id, url, body, created) for each event and each webhook that wants it."""
    return [
        (e.id, t.url, webhook_body(e), e.occurred_at) for e in events for t in targets if t.wants(e.type)
    ]


def event_of(row: Sequence[Any]) -> Event:
    """A row of ``EVENT_COLUMNS`` as an Event."""
    event_id, event_type, user_id, session_id, occurred_at, data = row
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = {}
    data = parsed if isinstance(parsed, dict) else {}
    return Event(event_id, event_type, user_id, session_id, float(occurred_at), data)


EVENT_COLUMNS: Final = "id, type, user_id, session_id, occurred_at, data"
