"""The async store protocol every backend implements (SQLite and PostgreSQL).

Backends convert their driver's errors into ``StoreUnavailableError``. A write method returns
only after its transaction is durably committed; that is what lets a revoke answer 204.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from sidecar.sessions.models import OTHERS, USER, Admission, Changes, Cutoff, ListPosition, Session, SessionLimit, Touch

if TYPE_CHECKING:  # sidecar.events.models imports sidecar.sessions.models
    from sidecar.events.models import Delivery, Event, OutboxCounts, Place


class SessionStore(Protocol):
    async def open(self) -> None:
        """Connect and bring the schema to the current version."""
        ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise ``StoreUnavailableError`` unless the store answers a trivial query."""
        ...

    async def get(self, session_id: str) -> Session | None: ...

    async def get_by_key(self, session_key: str) -> Session | None:
        """The session whose own key is ``session_key``, or to which it is bound (``bind``)."""
        ...

    async def bind(self, session_id: str, keys: Sequence[str]) -> None:
        """Bind token keys to an existing session, durably: tokens learned as they were
        issued (a refresh token, a refreshed access token) belong to their login's session.

        A key already bound, or that is a session's own key, keeps what it has; a session
        that no longer exists binds nothing. Deleting a session deletes its bindings.
        """
        ...

    async def insert(self, session: Session, *, place: Place | None = None) -> tuple[Session, bool]:
        """Insert, or return the row that already holds ``session.session_key`` (as its own
        key or bound to it).

        Returns (row, created). Concurrent inserts of one key yield one row. A created row
        writes its ``session.created`` event (flags judged with ``place``, where the address
        is) in the same transaction, and the event's outbox rows.
        """
        ...

    async def admit(self, session: Session, limit: SessionLimit, *, place: Place | None = None) -> Admission:
        """``insert`` under ``sessions.max_sessions_per_user``, in one transaction that holds
        the user against every other registration of theirs (in any process).

        A key already held returns its row (not created, nothing revoked). Otherwise the user's
        unrevoked, unexpired sessions are read: those past ``limit.created_before`` /
        ``limit.seen_before`` are revoked (``lifetime`` / ``idle``) and not counted; if the
        rest leave no room, ``refuse_new`` inserts nothing (``Admission.session`` None), the
        other choices revoke the oldest login / least recently seen (``limit``, actor
        ``session:<new id>``) and insert. So racing registrations never leave more than
        ``max_sessions`` active, and with ``refuse_new`` exactly that many are admitted.
        Every session it revokes, and the one it creates, write their events in the transaction.
        """
        ...

    async def list_active(
        self,
        user_id: str,
        now: float,
        *,
        limit: int | None = None,
        before: ListPosition | None = None,
        include_revoked: bool = False,
    ) -> list[Session]:
        """The user's sessions that are neither revoked nor expired, newest login first
        (``created_at`` descending, ties by ``id`` ascending); ``include_revoked`` adds the
        revoked ones still stored (tombstones), for the admin listing.

        ``limit`` caps how many (None: all). ``before`` continues a listing: only sessions
        after that position in this order, compared by value, so a session added or
        revoked between two calls never shifts another one across the boundary.
        """
        ...

    async def count_active(self, now: float) -> int:
        """How many sessions are neither revoked nor expired (for the metrics gauge)."""
        ...

    async def revoke(
        self,
        session_id: str,
        now: float,
        *,
        reason: str = USER,
        actor: str | None = None,
        seen_before: float | None = None,
        actor_session: str | None = None,
    ) -> Session | None:
        """Mark one session revoked, recording ``reason`` and ``actor`` (idempotent: an
        earlier revocation, its time and reason, is kept). A call that revoked it writes a
        ``session.revoked`` event in the transaction (with ``actor_session``, the session the
        user acted from, and its device).

        With ``seen_before``, only a session whose ``last_seen`` is before it (the idle
        decision: a flush that raised it first keeps the session). Returns the row as it
        now is, or None when no such session exists.
        """
        ...

    async def revoke_stale(
        self, now: float, *, seen_before: float | None, created_before: float | None, limit: int
    ) -> list[Session]:
        """Revoke at most ``limit`` unexpired, unrevoked sessions logged in before
        ``created_before`` (reason ``lifetime``) or last seen before ``seen_before``
        (``idle``), actor ``policy``, taking a revision; None leaves that rule out.
        Returns the rows it revoked, each with its ``session.revoked`` event."""
        ...

    async def revoke_user(
        self,
        user_id: str,
        now: float,
        keep_session_key: str | None,
        *,
        reason: str = OTHERS,
        actor: str | None = None,
        actor_session: str | None = None,
    ) -> list[Session]:
        """In one transaction: revoke every other unrevoked session of the user (recording
        ``reason`` and ``actor``), set the user's cut-off to ``now`` (exempting
        ``keep_session_key``), and write a ``session.revoked`` event per session and one
        ``user.sessions_revoked`` with the count. Returns the rows it revoked."""
        ...

    async def get_cutoff(self, user_id: str) -> Cutoff | None: ...

    async def current_revision(self) -> int:
        """The highest revision handed out so far (0 on a new store)."""
        ...

    async def changes_since(self, revision: int, limit: int) -> Changes:
        """Sessions revoked and cut-offs set with a revision above ``revision``, read in one
        snapshot (two separate reads could skip a revision committed between them).

        Every revocation (``revoke`` that changed a row, ``revoke_user``) takes a new
        revision in its transaction, in commit order, so a reader that keeps
        ``Changes.revision`` and asks again never misses one.
        """
        ...

    async def touch(self, touches: Sequence[Touch]) -> None:
        """Raise last_seen / expires_at to the given values (never lower them)."""
        ...

    async def purge_sessions(self, expired_before: float, revoked_before: float, limit: int) -> int:
        """Delete at most ``limit`` sessions whose expiry is before ``expired_before`` and
        that are unrevoked or were revoked before ``revoked_before``; return the count.

        One short transaction; deleting a row twice counts it once (safe to run twice at once).
        """
        ...

    async def purge_cutoffs(self, before: float, limit: int) -> int:
        """Delete at most ``limit`` user cut-offs set before ``before``; return the count.

        A cut-off raised meanwhile (by a new "log out others") is never deleted.
        """
        ...

    # ------------------------------------------------------------------ events

    async def list_events(self, user_id: str, *, limit: int, before: ListPosition | None = None) -> list[Event]:
        """The user's events, newest first (``occurred_at`` descending, ties by ``id``),
        keyset-paged like ``list_active`` (``before``: the position of the last one read)."""
        ...

    async def claim_deliveries(self, now: float, *, limit: int, lease_seconds: float, claim: str) -> list[Delivery]:
        """Claim at most ``limit`` due outbox rows (neither delivered nor dead, their next
        attempt due, no live claim) for ``lease_seconds``, counting an attempt, atomically:
        two claimers never hold one row at once. A claim that ends unreported (a killed
        worker) makes the row due again when its lease runs out."""
        ...

    async def delivered(self, delivery_id: int, now: float) -> None:
        """Mark an outbox row delivered (whoever holds its claim: a delivered event is done)."""
        ...

    async def delivery_failed(
        self, delivery_id: int, claim: str, now: float, *, retry_at: float | None, error: str
    ) -> None:
        """Record a failed attempt under ``claim``: due again at ``retry_at``, or dead (None)."""
        ...

    async def outbox_counts(self) -> OutboxCounts:
        """Undelivered outbox rows: pending (to be tried) and dead (attempts used up)."""
        ...

    async def purge_events(self, before: float, limit: int) -> int:
        """Delete at most ``limit`` events older than ``before``; return the count."""
        ...

    async def purge_deliveries(self, delivered_before: float, dead_before: float, limit: int) -> int:
        """Delete at most ``limit`` outbox rows delivered before ``delivered_before`` or dead
        since before ``dead_before``; return the count. Pending rows are never deleted."""
        ...
