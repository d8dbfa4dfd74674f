"""What the sidecar learns from the auth service's answers: sessions and their bindings."""

from __future__ import annotations

import hashlib
import logging
import re

from sidecar.enrich.client_ip import ClientInfo
from sidecar.errors import InvalidTokenError, SessionRejectedError
from sidecar.sessions.models import Session
from sidecar.sessions.service import SessionService
from sidecar.tokens.claims import canonical_hash
from sidecar.tokens.parse import parse_compact
from sidecar.tokens.verifier import TokenVerifier

log = logging.getLogger(__name__)

_IDENTIFIER = re.compile(r"[\x21-\x7e]{1,255}")


def refresh_key(token: str, session_claim: str) -> str:
    """The key a refresh token is bound by (not verified: the auth service verifies it).

    Its session claim when it carries one (``sid:<v>``, the key its access tokens share),
    else a digest of its decoded header and payload (a re-encoded or re-signed copy of
    the same claims is the same key), else, for a token that is not a JWT, of its text.
    """
    try:
        parsed = parse_compact(token)
    except InvalidTokenError:
        return "rt:" + hashlib.sha256(token.strip().encode("ascii", "replace")).hexdigest()
    sid = parsed.payload.get(session_claim)
    if isinstance(sid, str) and _IDENTIFIER.fullmatch(sid):
        return "sid:" + sid
    try:
        digest = canonical_hash({"header": parsed.header, "payload": parsed.payload})
    except (TypeError, ValueError):
        digest = hashlib.sha256(parsed.signing_input).hexdigest()
    return "rt:" + digest


class Capture:
    """What the sidecar learns from the auth service's answers (see the module docstring)."""

    def __init__(self, verifier: TokenVerifier, sessions: SessionService, session_claim: str) -> None:
        self._verifier = verifier
        self._sessions = sessions
        self._session_claim = session_claim
        self._told_identical = False

    async def login(self, access: str, refresh: str | None, client: ClientInfo) -> Session | None:
        """Register the session of a login's access token and bind its refresh token.

        None when the token cannot be registered (invalid, or refused: cut off, revoked);
        the answer still goes to the client, whose token the check will then judge.
        """
        try:
            claims = await self._verifier.verify(access)
        except InvalidTokenError as e:
            log.warning("capture: login answer's access token is not valid here (%s): nothing bound", e.reason)
            return None
        try:
            session, created = await self._sessions.register(claims, client)
        except SessionRejectedError as e:
            log.warning("capture: login of user %s not registered (%s)", claims.user_id, e.reason)
            return None
        if not created and not self._told_identical:
            self._told_identical = True
            log.warning(
                "capture: a login was answered with a token of an existing session (user %s): tokens without "
                "iat or jti issued in the same second are byte-identical and count as one session; a jti "
                "in every token fixes it",
                claims.user_id,
            )
        keys = [refresh_key(refresh, self._session_claim)] if refresh else []
        await self._sessions.bind(session, keys, claims.expires_at)
        return session

    async def session_of_refresh(self, refresh: str) -> Session | None:
        """The session a presented refresh token was bound to (or belongs to by its sid)."""
        return await self._sessions.find(refresh_key(refresh, self._session_claim))

    async def refused(self, session: Session) -> str | None:
        """Why a refresh of ``session`` must not reach the auth service, or None.

        Revoked, or begun before the user's cut-off without being the session that asked
        for it (a "log out others" or "revoke user" that this session's row missed)."""
        if session.revoked_at is not None:
            return "revoked"
        cutoff = await self._sessions.store.get_cutoff(session.user_id)
        if cutoff is not None and cutoff.refuses(session.session_key, session.created_at):
            return "cut_off"
        return None

    async def refreshed(
        self, session: Session | None, access: str, refresh: str | None, client: ClientInfo
    ) -> Session | None:
        """Bind a refresh answer's tokens to ``session`` (the presented refresh token's);
        a refresh of a session never seen at issue is learned like a login."""
        if session is None:
            return await self.login(access, refresh, client)
        try:
            claims = await self._verifier.verify(access)
        except InvalidTokenError as e:
            log.warning("capture: refresh answer's access token is not valid here (%s): nothing bound", e.reason)
            return None
        if claims.user_id != session.user_id:
            log.warning(
                "capture: refresh of a session of user %s answered with a token of user %s: nothing bound",
                session.user_id, claims.user_id,
            )
            return None
        keys = [claims.session_key]
        if refresh:
            keys.append(refresh_key(refresh, self._session_claim))
        await self._sessions.bind(session, keys, claims.expires_at)
        return session

    async def session_to_end(self, bearer: str | None, refresh: str | None) -> Session | None:
        """The session a logout presents: its bearer token's, else its refresh token's."""
        if bearer:
            try:
                claims = await self._verifier.verify(bearer)
            except InvalidTokenError:
                claims = None
            if claims is not None:
                found = await self._sessions.find(claims.session_key)
                if found is not None:
                    return found
        if refresh:
            return await self.session_of_refresh(refresh)
        return None

