"""Session rules: is this token's session active, register it, revoke it.

State that decides access lives in memory (``_states`` by session key, ``_cutoffs`` by
user), filled from the store on a miss and kept true by this process's own writes. Two
rules keep it from ever serving a stale "active" (SECURITY_CASES C27, C28):

1. A revocation commits to the store first, then *overwrites* the memory entry, then
   bumps ``_generation``.
2. A load from the store never overwrites an entry that is already in memory, and is
   thrown away and repeated if ``_generation`` moved while it was reading.

So a read that started before a revoke either sees the revoke in the store, or finds the
tombstone in memory, or notices the generation change. ``last_seen`` and the latest token
expiry are batched in ``_pending`` and flushed every few seconds.

Other processes' revocations reach memory only from the store (``catch_up``, on a timer
and whenever a Redis message hints that the store changed), never from a message's
contents, and only ever make memory stricter: a cut-off is replaced only by the one the
store keeps in its place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final

from sidecar.clock import Clock
from sidecar.config import Registration
from sidecar.enrich.client_ip import ClientInfo, IPAddress
from sidecar.errors import SessionRejectedError, StoreUnavailableError
from sidecar.lru import LRU
from sidecar.sessions.models import Cutoff, ListPosition, RevokedRef, Session, Touch
from sidecar.sessions.store import SessionStore
from sidecar.tokens.claims import Claims

log = logging.getLogger(__name__)

_LOAD_ATTEMPTS: Final = 5

# Called after a revocation committed and memory refuses it: (revoked sessions, cut-off).
RevokedHook = Callable[[Sequence[Session], Cutoff | None], None]


@dataclass(frozen=True, slots=True)
class SessionPage:
    """One page of a user's active sessions, and where the next one starts (None: last page)."""

    sessions: tuple[Session, ...]
    next: ListPosition | None


@dataclass(slots=True)
class _State:
    id: str
    user_id: str
    revoked: bool
    expires_at: float


@dataclass(slots=True)
class _Activity:
    """A session's ``last_seen`` and latest expiry since the last flush (updated in place:
    the check of a known session allocates nothing)."""

    last_seen: float
    expires_at: float


class _Missing:
    pass


def _newer_cutoff(candidate: Cutoff, known: Cutoff | None) -> bool:
    """Whether ``candidate`` replaces ``known``: the rule of the stores' upsert (a later or
    equal cut-off wins, an earlier one never comes back), so memory keeps what the store
    keeps and is never looser than it."""
    return known is None or (candidate.cutoff_at >= known.cutoff_at and candidate != known)


_MISSING: Final = _Missing()
CutoffEntry = Cutoff | None | _Missing


class SessionService:
    def __init__(
        self,
        store: SessionStore,
        clock: Clock,
        *,
        registration: Registration,
        describe_device: Callable[[str | None], str],
        locate: Callable[[IPAddress | None], str],
        state_cache_size: int = 1_000_000,
        flush_interval: float = 5.0,
        catchup_interval: float = 1.0,
        max_staleness: float = 10.0,
        on_revoked: RevokedHook | None = None,
    ) -> None:
        self.store = store
        self._clock = clock
        self._registration = registration
        self._describe_device = describe_device
        self._locate = locate
        self._flush_interval = flush_interval
        self._states: LRU[str, _State] = LRU(state_cache_size)
        self._cutoffs: LRU[str, Cutoff | None] = LRU(state_cache_size)
        self._generation = 0
        self._pending: dict[str, _Activity] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._catchup_interval = catchup_interval
        self._max_staleness = max_staleness
        # Set after construction by whoever tells other processes (the Redis push).
        self.on_revoked = on_revoked
        # Set by the metrics layer: (via, seconds from the revocation to applying it here).
        self.on_propagated: Callable[[str, float], None] | None = None
        self._revision = 0  # the store's revision feed, applied up to here
        self._confirmed_at = clock.monotonic()  # when memory was last known to be current
        self._catchup_lock = asyncio.Lock()
        self._told_ageless = False  # the "cannot tell a token's age" warning, once per process
        # Keys of tokens bound to a session (capture routes) -> the session's own key.
        self._aliases: LRU[str, str] = LRU(state_cache_size)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Begin at the store's current revision and run the flush and catch-up loops."""
        self._revision = await self.store.current_revision()
        self._confirmed_at = self._clock.monotonic()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._every(self._flush_interval, self.flush)),
            loop.create_task(self._every(self._catchup_interval, self._catch_up_quietly)),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.flush()

    @staticmethod
    async def _every(interval: float, job: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval)
            await job()

    # ------------------------------------------------------------------ propagation

    async def catch_up(self, via: str = "store") -> None:
        """Apply every revocation and cut-off committed since the last catch-up.

        This is what keeps several processes in agreement without Redis, what a process
        runs on reconnecting to Redis before it trusts the push channel again, and what a
        Redis message triggers (``via="redis"``, for the propagation metric): the store is
        the only source of what memory refuses, never the message.
        """
        async with self._catchup_lock:
            began = self._clock.monotonic()
            while True:
                changes = await self.store.changes_since(self._revision, 1000)
                self._apply(changes.sessions, changes.cutoffs, via)
                if changes.revision == self._revision:
                    break
                self._revision = changes.revision
            self._confirmed_at = began

    async def _catch_up_quietly(self) -> None:
        try:
            await self.catch_up()
        except StoreUnavailableError as e:
            log.warning("sessions: catch-up from the store failed: %s", e)

    @property
    def fresh(self) -> bool:
        """Whether memory is known current within ``max_staleness`` (else checks read the store)."""
        return self._clock.monotonic() - self._confirmed_at <= self._max_staleness

    def _apply(self, sessions: Sequence[RevokedRef], cutoffs: Sequence[Cutoff], via: str) -> None:
        """Apply revocations and cut-offs another process committed, as read from the store.

        Only entries already in memory are touched: anything else is read from the store
        on its next use. Memory only ever gets stricter here: a revoked session stays
        revoked, and a cut-off is replaced only by the one the store keeps in its place (a
        later one, see ``_newer_cutoff``). Bumping the generation makes any read in flight
        start over.
        """
        now = self._clock.wall()
        for s in sessions:
            present = self._states.get(s.session_key)
            if s.revoked_at is not None and present is not None:
                self._remember(s.session_key, _State(s.id, s.user_id, True, s.expires_at), overwrite=True)
                if not present.revoked:
                    self._propagated(via, now - s.revoked_at)
        for c in cutoffs:
            if c.user_id in self._cutoffs and _newer_cutoff(c, self._cutoffs[c.user_id]):
                self._remember_cutoff(c.user_id, c, overwrite=True)
                self._propagated(via, now - c.cutoff_at)
        if sessions or cutoffs:
            self._generation += 1

    def _propagated(self, via: str, seconds: float) -> None:
        if self.on_propagated is not None:
            self.on_propagated(via, max(seconds, 0.0))

    @property
    def states_in_memory(self) -> int:
        return len(self._states)

    @property
    def revision(self) -> int:
        return self._revision

    def _revoked(self, sessions: Sequence[Session], cutoff: Cutoff | None) -> None:
        if self.on_revoked is not None:
            try:
                self.on_revoked(sessions, cutoff)
            except Exception:  # the revocation is committed; telling others is best effort
                log.exception("sessions: revocation hook failed")

    async def flush(self) -> None:
        """Write batched last_seen/expiry updates; on failure keep them for the next try."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            await self.store.touch([Touch(sid, a.last_seen, a.expires_at) for sid, a in batch.items()])
        except StoreUnavailableError as e:
            log.warning("sessions: could not write %d activity updates: %s", len(batch), e)
            for sid, a in batch.items():
                self._note(sid, a.last_seen, a.expires_at)

    def _note(self, session_id: str, last_seen: float, expires_at: float) -> None:
        activity = self._pending.get(session_id)
        if activity is None:
            self._pending[session_id] = _Activity(last_seen, expires_at)
            return
        activity.last_seen = max(activity.last_seen, last_seen)
        activity.expires_at = max(activity.expires_at, expires_at)

    # ------------------------------------------------------------------ memory

    def _remember(self, key: str, state: _State, *, overwrite: bool) -> _State:
        return self._states.put(key, state) if overwrite else self._states.keep(key, state)

    def _remember_cutoff(self, user_id: str, cutoff: Cutoff | None, *, overwrite: bool) -> Cutoff | None:
        return self._cutoffs.put(user_id, cutoff) if overwrite else self._cutoffs.keep(user_id, cutoff)

    @staticmethod
    def _state_of(s: Session) -> _State:
        return _State(s.id, s.user_id, s.revoked_at is not None, s.expires_at)

    async def _load(
        self, claims: Claims, need_state: bool, need_cutoff: bool, *, overwrite: bool = False
    ) -> tuple[str, _State | None, CutoffEntry]:
        """Read what memory lacks; install it unless a revocation raced the read.

        Returns (the session's own key, its state, the user's cut-off entry): a token bound
        to a session (``bind``) has a key of its own, and memory keeps the state under the
        session's key, so a revocation of the session reaches every token bound to it.
        ``overwrite`` replaces what memory holds: used when memory may be stale, and safe
        because a revocation landing during the read changes the generation.
        """
        for _ in range(_LOAD_ATTEMPTS):
            generation = self._generation
            row = await self.store.get_by_key(claims.session_key) if need_state else None
            cutoff = await self.store.get_cutoff(claims.user_id) if need_cutoff else None
            if generation != self._generation:
                continue  # a revocation landed while we read: read again
            key = self._aliases.get(claims.session_key, claims.session_key)
            if row is not None and row.session_key != claims.session_key:
                key = self._remember_alias(claims.session_key, row.session_key)
            state: _State | None = self._states.get(key)
            if need_state:
                if row is not None:
                    state = self._remember(key, self._state_of(row), overwrite=overwrite)
                elif overwrite:
                    self._states.pop(key, None)
                    state = None
            entry: CutoffEntry = self._cutoffs.get(claims.user_id, _MISSING)
            if need_cutoff:
                entry = self._remember_cutoff(claims.user_id, cutoff, overwrite=overwrite)
            return key, state, entry
        raise StoreUnavailableError("session state kept changing during the read")

    def _remember_alias(self, alias: str, key: str) -> str:
        """Remember that tokens keyed ``alias`` belong to the session keyed ``key`` (a fact
        that never changes, so it needs no generation check)."""
        return self._aliases.put(alias, key)

    # ------------------------------------------------------------------ the check

    def _cut_off(self, cutoff: Cutoff, key: str, claims: Claims) -> bool:
        """Whether the user's cut-off refuses this token (see ``Cutoff.refuses``)."""
        issued = claims.issue_time
        if issued is None and not self._told_ageless and key != cutoff.exempt_session_key:
            # Once per process: the guarantee this deployment does not have, and the fix.
            self._told_ageless = True
            log.warning(
                "sessions: user %s has a 'log out others' cut-off, but this token has no iat and "
                "jwt.token_lifetime_seconds is not set, so its age cannot be told: it is let through. "
                "Never-seen tokens issued before a cut-off are refused only when tokens carry iat or "
                "jwt.token_lifetime_seconds is set (sessions already seen stay revoked either way)",
                claims.user_id,
            )
        return cutoff.refuses(key, issued)

    def check_now(self, claims: Claims) -> str | None:
        """Decide from memory alone, without waiting: the session id when the token's
        session is known and active, None when memory cannot tell (``check`` reads the
        store); raises ``SessionRejectedError`` for a decided deny.

        This is the gateway's every request: a known session of a known user while memory
        is fresh. Anything else (an unknown session or user, memory not confirmed current,
        a session whose every token had expired) is left to ``check``, which decides the
        same cases the same way after reading what it lacks.
        """
        key = self._aliases.get(claims.session_key, claims.session_key)
        state = self._states.get(key)
        if state is None:
            return None
        now = self._clock.wall()
        if not state.revoked and state.expires_at <= now:
            return None
        entry = self._cutoffs.get(claims.user_id, _MISSING)
        if isinstance(entry, _Missing) or not self.fresh:
            return None
        self._states.move_to_end(key)
        if state.user_id != claims.user_id:
            raise SessionRejectedError("session_user_mismatch")
        if state.revoked:
            # Keep the tombstone alive as long as tokens of the session keep coming.
            if claims.expires_at > state.expires_at:
                state.expires_at = claims.expires_at
                self._note(state.id, now, claims.expires_at)
            raise SessionRejectedError("revoked")
        if entry is not None and self._cut_off(entry, key, claims):
            raise SessionRejectedError("cut_off")
        state.expires_at = max(state.expires_at, claims.expires_at)
        self._note(state.id, now, state.expires_at)
        return state.id

    async def check(self, claims: Claims, client: Callable[[], ClientInfo]) -> str:
        """Return the session id when the token's session is active, else raise.

        Raises ``SessionRejectedError`` for a decided deny and ``StoreUnavailableError`` when the
        state cannot be established; callers deny on both (fail closed). ``client`` is
        only called to register a new session: working out the client's address and
        device costs more than the whole check of a known session.
        """
        known = self.check_now(claims)
        if known is not None:
            return known
        key = self._aliases.get(claims.session_key, claims.session_key)
        now = self._clock.wall()
        state = self._states.get(key)
        if state is not None and not state.revoked and state.expires_at <= now:
            # Every token seen for this session had expired, so cleanup may have deleted its
            # row: read the store again, so that a newer token of it registers a row rather
            # than living on only in this process's memory.
            del self._states[key]
            state = None
        entry: CutoffEntry = self._cutoffs.get(claims.user_id, _MISSING)
        if not self.fresh:
            # Revocations from other processes may not have reached memory (store and
            # Redis both unreachable): trust only the store, and deny if it cannot answer.
            key, state, entry = await self._load(claims, True, True, overwrite=True)
        elif state is None or isinstance(entry, _Missing):
            key, state, entry = await self._load(claims, state is None, isinstance(entry, _Missing))
        else:
            self._states.move_to_end(key)

        if state is not None:
            if state.user_id != claims.user_id:
                raise SessionRejectedError("session_user_mismatch")
            if state.revoked:
                # Keep the tombstone alive as long as tokens of the session keep coming.
                if claims.expires_at > state.expires_at:
                    state.expires_at = claims.expires_at
                    self._note(state.id, now, claims.expires_at)
                raise SessionRejectedError("revoked")
        if isinstance(entry, Cutoff) and self._cut_off(entry, key, claims):
            raise SessionRejectedError("cut_off")
        if state is None:
            if self._registration == "explicit":
                raise SessionRejectedError("unknown_session")
            session, _ = await self._register(claims, client())
            # The insert awaited: re-read memory, where a racing revocation or cut-off
            # would have landed.
            state = self._states.get(key)
            if state is None or state.revoked:
                raise SessionRejectedError("revoked")
            if state.user_id != claims.user_id:
                # Another user's token registered this session key first (a racing insert).
                raise SessionRejectedError("session_user_mismatch")
            entry = self._cutoffs.get(claims.user_id, _MISSING)
            if isinstance(entry, Cutoff) and self._cut_off(entry, key, claims):
                raise SessionRejectedError("cut_off")
            return session.id

        state.expires_at = max(state.expires_at, claims.expires_at)
        self._note(state.id, now, state.expires_at)
        return state.id

    # ------------------------------------------------------------------ registration

    async def _register(self, claims: Claims, client: ClientInfo) -> tuple[Session, bool]:
        now = self._clock.wall()
        candidate = Session(
            id=str(uuid.uuid4()),
            session_key=claims.session_key,
            user_id=claims.user_id,
            created_at=now,
            last_seen=now,
            expires_at=claims.expires_at,
            revoked_at=None,
            ip_address=str(client.ip) if client.ip is not None else None,
            device=self._describe_device(client.user_agent),
            location=self._locate(client.ip),
        )
        for _ in range(_LOAD_ATTEMPTS):
            generation = self._generation
            row, created = await self.store.insert(candidate)
            if generation == self._generation:
                if created:
                    log.info("sessions: registered %s for user %s", row.id, row.user_id)
                self._remember(claims.session_key, self._state_of(row), overwrite=False)
                return row, created
        raise StoreUnavailableError("session state kept changing during registration")

    async def register(self, claims: Claims, client: ClientInfo) -> tuple[Session, bool]:
        """Register a token's session on behalf of the auth service (admin API).

        Returns (session, created). A session that is already revoked, or a token issued
        before the user's cut-off, cannot be registered (``SessionRejectedError``).
        """
        cutoff = await self.store.get_cutoff(claims.user_id)
        if cutoff is not None and self._cut_off(cutoff, claims.session_key, claims):
            raise SessionRejectedError("cut_off")
        session, created = await self._register(claims, client)
        if session.user_id != claims.user_id:
            raise SessionRejectedError("session_user_mismatch")
        if session.revoked_at is not None:
            raise SessionRejectedError("revoked")
        return session, created

    # ------------------------------------------------------------------ tokens seen at issue

    async def own_key(self, claims: Claims) -> str:
        """The key of the session ``claims`` belongs to (its own, or the session it is bound to)."""
        known = self._aliases.get(claims.session_key)
        if known is not None:
            return known
        row = await self.store.get_by_key(claims.session_key)
        return row.session_key if row is not None else claims.session_key

    async def find(self, session_key: str) -> Session | None:
        """The session a token key belongs to, from the store (own key or bound)."""
        row = await self.store.get_by_key(session_key)
        return self._with_pending(row) if row is not None else None

    async def bind(self, session: Session, keys: Sequence[str], expires_at: float) -> None:
        """Bind token keys to ``session`` (durably, for every process) and note activity:
        tokens a refresh minted, and refresh tokens, belong to their login's session."""
        keys = [k for k in keys if k != session.session_key]
        await self.store.bind(session.id, keys)
        for k in keys:
            self._remember_alias(k, session.session_key)
        self._note(session.id, self._clock.wall(), expires_at)

    # ------------------------------------------------------------------ reading

    def _with_pending(self, s: Session) -> Session:
        a = self._pending.get(s.id)
        if a is None:
            return s
        return replace(s, last_seen=max(s.last_seen, a.last_seen), expires_at=max(s.expires_at, a.expires_at))

    async def list_active(self, user_id: str) -> list[Session]:
        """All of the user's active sessions (unbounded: the APIs use ``list_page``)."""
        now = self._clock.wall()
        return [self._with_pending(s) for s in await self.store.list_active(user_id, now)]

    async def list_page(self, user_id: str, *, limit: int, before: ListPosition | None = None) -> SessionPage:
        """At most ``limit`` of the user's active sessions after ``before``, and where the
        next page starts (None when this is the last)."""
        rows = await self.store.list_active(user_id, self._clock.wall(), limit=limit + 1, before=before)
        page = rows[:limit]
        following = ListPosition.of(page[-1]) if len(rows) > limit else None
        return SessionPage(tuple(self._with_pending(s) for s in page), following)

    async def get_active(self, session_id: str, user_id: str | None) -> Session | None:
        """The session if it exists, is active, and (when given) belongs to ``user_id``."""
        s = await self.store.get(session_id)
        if s is None or (user_id is not None and s.user_id != user_id):
            return None
        s = self._with_pending(s)
        return s if s.is_active(self._clock.wall()) else None

    # ------------------------------------------------------------------ revoking

    async def revoke(self, session_id: str, user_id: str | None) -> Session | None:
        """Revoke one session (of ``user_id`` when given). None: no such session for them.

        Idempotent: revoking a revoked or expired session of the user succeeds again.
        Returns only after the store committed and this process refuses the session.
        """
        existing = await self.store.get(session_id)
        if existing is None or (user_id is not None and existing.user_id != user_id):
            return None
        row = await self.store.revoke(session_id, self._clock.wall())
        if row is None:  # deleted by cleanup in between: nothing left to refuse
            return existing
        self._remember(row.session_key, self._state_of(row), overwrite=True)
        self._generation += 1
        self._revoked([row], None)
        return row

    async def revoke_user(self, user_id: str, keep_session_key: str | None) -> list[Session]:
        """Revoke every session of the user except ``keep_session_key`` and cut off
        every older token. Returns the sessions it revoked."""
        now = self._clock.wall()
        rows = await self.store.revoke_user(user_id, now, keep_session_key)
        for row in rows:
            self._remember(row.session_key, self._state_of(row), overwrite=True)
        cutoff = Cutoff(user_id, now, keep_session_key)
        # The store keeps the later of its cut-off and this one; so does memory. An earlier
        # ``now`` (another host's clock ahead of ours) must not replace a later cut-off and
        # its exemption with a looser one here.
        if _newer_cutoff(cutoff, self._cutoffs.get(user_id)):
            self._remember_cutoff(user_id, cutoff, overwrite=True)
        self._generation += 1
        self._revoked(rows, cutoff)
        return rows

