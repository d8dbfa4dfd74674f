"""Session value objects shared by the store backends and the service."""

from __future__ import annotations

from dataclasses import dataclass


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

    def is_active(self, now: float) -> bool:
        return self.revoked_at is None and self.expires_at > now


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
        if self.exempt_session_key is not None and session_key == self.exempt_session_key:
            return False
        # A token without iat cannot prove it was issued after the cut-off.
        return issued_at is None or issued_at < self.cutoff_at


@dataclass(frozen=True, slots=True)
class Touch:
    """A batched activity update: the store keeps the maximum of each field."""

    session_id: str
    last_seen: float
    expires_at: float
