"""Session value objects shared by the store backends and the service."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from sidecar.config import OnSessionLimit

# Why a session was revoked (``Session.revoked_reason``): what the admin listing shows,
# the metrics count and the audit line carries. Free text in the store, so later
# features add their own.
USER: Final = "user"  # the user logged that session out (DELETE /api/v1/sessions/{id})
OTHERS: Final = "others"  # the user logged out every other session (DELETE /api/v1/sessions/)
ADMIN: Final = "admin"  # the admin API revoked it (DELETE /admin/v1/sessions/{id})
ADMIN_USER: Final = "admin_user"  # the admin API revoked the user (DELETE /admin/v1/users/{id}/sessions)
IDLE: Final = "idle"  # no allowed check for sessions.idle_timeout_seconds
LIFETIME: Final = "lifetime"  # login older than sessions.max_lifetime_seconds
LIMIT: Final = "limit"  # pushed out by a newer session past sessions.max_sessions_per_user
OAUTH2: Final = "oauth2"  # RFC 7009 POST /oauth2/revoke
LOGOUT: Final = "logout"  # the auth service's logout, through a capture route
POLICY_ACTOR: Final = "policy"  # who revokes for idle and lifetime


@dataclass(frozen=True, slots=True)
class Session:
    """One login of one user on one device, as stored."""

    id: str  # UUID, the public handle (X-Auth-Session, the sessions API)
    session_key: str  # "sid:..", "jti:.." or "sha256:..": what tokens of this session share
    user_id: str
    created_at: float  # epoch seconds; "login_time"
    last_seen: float
    expires_at: float  # the latest token expiry seen for this session
    revoked_at: float | None
    ip_address: str | None
    device: str
    location: str
    revoked_reason: str | None = None  # USER, OTHERS, ADMIN, ... (None: not revoked)
    revoked_by: str | None = None  # who or what: "user:alice", "admin:sha256:..", "policy", "session:<id>"

    def is_active(self, now: float) -> bool:
        return self.revoked_at is None and self.expires_at > now


@dataclass(frozen=True, slots=True)
class ListPosition:
    """Where a page of a user's sessions ended, in listing order (newest login first, ties
    by id): the next page starts right after it. Keyset, not an offset, so sessions added
    or revoked between two page reads make no other session skip a page or repeat."""

    created_at: float
    id: str

    @classmethod
    def of(cls, session: Session) -> ListPosition:
        return cls(session.created_at, session.id)


class RevokedRef(Protocol):
    """What another process needs to know of a revoked session (a ``Session`` is one)."""

    @property
    def id(self) -> str: ...
    @property
    def session_key(self) -> str: ...
    @property
    def user_id(self) -> str: ...
    @property
    def expires_at(self) -> float: ...
    @property
    def revoked_at(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class Revoked:
    """A ``RevokedRef`` received over the wire (Redis push)."""

    id: str
    session_key: str
    user_id: str
    expires_at: float
    revoked_at: float | None


@dataclass(frozen=True, slots=True)
class Cutoff:
    """Tokens of ``user_id`` issued before ``cutoff_at`` are refused.

    The one exception is the session that asked for the cut-off ("log out all other
    sessions"): its tokens, old or new, keep working. Admin "revoke user" has none.
    """

    user_id: str
    cutoff_at: float
    exempt_session_key: str | None

    def refuses(self, session_key: str, issued_at: float | None) -> bool:
        """Whether a token of ``session_key`` issued at ``issued_at`` is cut off.

        ``issued_at`` is the token's ``iat``, or what ``jwt.token_lifetime_seconds`` lets
        us work out from ``exp``; None when the token's age cannot be told. Such a token is
        never refused here: guessing "older" would refuse every later login of the user
        (SECURITY_CASES E40). The sessions this cut-off revoked stay refused by their
        tombstones; only never-seen older tokens of that shape slip through, and the
        README, ``check-config`` and the log say so.
        """
        if self.exempt_session_key is not None and session_key == self.exempt_session_key:
            return False
        if issued_at is None:
            return False
        # iat is whole seconds (RFC 7519 NumericDate as issuers write it), so the cut-off
        # counts in whole seconds too: a token issued in the same second as the cut-off
        # passes. Otherwise the new token an auth service issues right after "revoke user"
        # (a password change) would be refused for its whole life.
        return issued_at < math.floor(self.cutoff_at)


@dataclass(frozen=True, slots=True)
class SessionLimit:
    """``sessions.max_sessions_per_user`` as a registration applies it (``SessionStore.admit``).

    ``seen_before`` / ``created_before``: a session last seen before the first, or logged in
    before the second, is past its idle timeout or lifetime: it is revoked for that reason
    (not counted) in the same transaction. None: that policy is off.
    """

    max_sessions: int
    on_limit: OnSessionLimit
    now: float
    seen_before: float | None = None
    created_before: float | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    """What ``SessionStore.admit`` did: the row that now holds the key (None: refused by the
    limit, nothing inserted), whether this call created it, and the sessions it revoked."""

    session: Session | None
    created: bool
    revoked: tuple[Session, ...] = ()


@dataclass(frozen=True, slots=True)
class Touch:
    """A batched activity update: the store keeps the maximum of each field."""

    session_id: str
    last_seen: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class Changes:
    """Revocations and cut-offs committed after a revision, for catch-up between processes.

    ``revision`` is the highest revision the reader may now remember: every change up to
    it is included (a change may also appear again later; applying one twice is harmless).
    """

    revision: int
    sessions: tuple[Session, ...]  # revoked sessions
    cutoffs: tuple[Cutoff, ...]

    @classmethod
    def collect(
        cls,
        since: int,
        limit: int,
        sessions: Sequence[tuple[Session, int]],
        cutoffs: Sequence[tuple[Cutoff, int]],
    ) -> Changes:
        """Combine two revision-ordered reads, each of the rows of whole revisions, up to
        the revision of its ``limit``-th row (one revision can hold many rows: "revoke all"
        stamps one on every session it revokes, so a read cut at exactly ``limit`` rows
        could end inside a revision, and remembering it would skip the rest).

        When a read came back with ``limit`` rows or more, rows past its last revision may
        exist unread, so the safe revision to remember is the smallest last revision among
        such reads.
        """
        safe = [rows[-1][1] for rows in (sessions, cutoffs) if len(rows) >= limit]
        seen = [rev for rows in (sessions, cutoffs) for _, rev in rows]
        revision = min(safe) if safe else max(seen, default=since)
        return cls(
            revision=max(revision, since),
            sessions=tuple(s for s, _ in sessions),
            cutoffs=tuple(c for c, _ in cutoffs),
        )
