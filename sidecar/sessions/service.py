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
import math
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final

from sidecar.clock import Clock
from sidecar.config import OnSessionLimit, Registration
from sidecar.enrich.client_ip import ClientInfo, IPAddress
from sidecar.errors import SessionRejectedError, StoreUnavailableError
from sidecar.events.models import NOWHERE, Event, Place
from sidecar.lru import LRU
from sidecar.sessions.models import (
    IDLE,
    LIFETIME,
    OTHERS,
    POLICY_ACTOR,
    USER,
    Cutoff,
    ListPosition,
    RevokedRef,
    Session,
    SessionLimit,
    Touch,
)
from sidecar.sessions.store import SessionStore
from sidecar.tokens.claims import Claims

log = logging.getLogger(__name__)

_LOAD_ATTEMPTS: Final = 5

# Called after a revocation committed and memory refuses it: (revoked sessions, cut-off).
RevokedHook = Callable[[Sequence[Session], Cutoff | None], None]
# Called for every revocation this process committed: (reason, actor, the sessions it revoked).
RecordedHook = Callable[[str, str | None, Sequence[Session]], None]
# The refusal a full session table gives a new session under on_session_limit = "refuse_new".
SESSION_LIMIT: Final = "session_limit"
_SWEEP_BATCH: Final = 1000


@dataclass(frozen=True, slots=True)
class SessionPage:
    """One page of a user's active sessions, and where the next one starts (None: last page)."""

    sessions: tuple[Session, ...]
    next: ListPosition | None


@dataclass(frozen=True, slots=True)
class EventPage:
    """One page of a user's events, newest first, and where the next one starts (None: last)."""

    events: tuple[Event, ...]
    next: ListPosition | None


@dataclass(slots=True)
class _State:
    id: str
    user_id: str
    revoked: bool
    expires_at: float
    # What the session policies read (``_policy_refusal``); a revoked state needs neither.
    created_at: float = 0.0  # the login
    last_seen: float = 0.0  # the latest allowed check this process knows of (its own, or the store's)


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
        idle_timeout: float = 0.0,
        idle_grace: float = 1.0,
        max_lifetime: float = 0.0,
        max_sessions: int = 0,
        on_session_limit: OnSessionLimit = "refuse_new",
        place: Callable[[IPAddress | None], Place] | None = None,
    ) -> None:
        self.store = store
        self._place = place or (lambda ip: NOWHERE)
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
        # Session policies (0 = off, held as infinity: the comparisons on the check then never
        # fire, and no branch asks whether a policy is on).
        self._idle = idle_timeout or math.inf
        self._idle_grace = idle_grace
        self._lifetime = max_lifetime or math.inf
        self._max_sessions = max_sessions
        self._on_session_limit: OnSessionLimit = on_session_limit
        # Set by the metrics and audit layer: every revocation this process commits.
        self.on_recorded: RecordedHook | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Begin at the store's current revision and run the flush and catch-up loops."""
        self._revision = await self.store.current_revision()
        self._confirmed_at = self._clock.monotonic()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._every(self._flush_interval, self._flush_and_sweep)),
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

    async def _flush_and_sweep(self) -> None:
        await self.flush()
        await self.sweep()

    async def sweep(self) -> None:
        """Revoke in the store the sessions past their lifetime or idle bound that no check
        settled (nobody presented a token of them since): listings, the session limit and
        every process then see them revoked. Runs right after this process's flush, and the
        idle bound is ``idle_grace`` past the timeout, so no process's unwritten activity is
        overlooked (README: Session policies)."""
        if self._idle == math.inf and self._lifetime == math.inf:
            return
        now = self._clock.wall()
        try:
            rows = await self.store.revoke_stale(
                now, seen_before=self._idle_bound(now), created_before=self._lifetime_bound(now), limit=_SWEEP_BATCH
            )
        except StoreUnavailableError as e:
            log.warning("sessions: idle/lifetime sweep failed: %s", e)
            return
        if rows:
            log.info("sessions: revoked %d session(s) past their idle timeout or lifetime", len(rows))
            self._apply_own(rows)

    def _idle_bound(self, now: float) -> float | None:
        """Sessions the store shows last seen before this are idle for certain (None: off)."""
        return None if self._idle == math.inf else now - self._idle - self._idle_grace

    def _lifetime_bound(self, now: float) -> float | None:
        """Sessions logged in before this are past their lifetime (None: off)."""
        return None if self._lifetime == math.inf else now - self._lifetime

    def _apply_own(self, rows: Sequence[Session]) -> None:
        """Memory, other processes and the counters learn of revocations this process committed
        for a policy (sweep, limit): an entry already in memory becomes its tombstone; anything
        else is read from the store on its next use, and the generation makes reads in flight
        start over."""
        for row in rows:
            if row.session_key in self._states:
                self._remember(row.session_key, self._state_of(row), overwrite=True)
        self._generation += 1
        by_reason: dict[tuple[str, str | None], list[Session]] = {}
        for row in rows:
            by_reason.setdefault((row.revoked_reason or "unknown", row.revoked_by), []).append(row)
        for (reason, actor), group in by_reason.items():
            self._recorded(reason, actor, group)
        self._revoked(rows, None)

    def _recorded(self, reason: str, actor: str | None, sessions: Sequence[Session]) -> None:
        if self.on_recorded is not None and sessions:
            try:
                self.on_recorded(reason, actor, sessions)
            except Exception:  # committed already; counting and auditing must not undo an answer
                log.exception("sessions: revocation record hook failed")

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
        return _State(s.id, s.user_id, s.revoked_at is not None, s.expires_at, s.created_at, s.last_seen)

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
                    loaded = self._state_of(row)
                    if state is not None and state.id == loaded.id:
                        # The store's last_seen lags this process's own (batched) activity.
                        loaded.last_seen = max(loaded.last_seen, state.last_seen)
                    state = self._remember(key, loaded, overwrite=overwrite)
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

    def _refuse_known(self, state: _State, claims: Claims, now: float) -> None:
        """Raise for a known session this token may not use: another user's, or revoked."""
        if state.user_id != claims.user_id:
            raise SessionRejectedError("session_user_mismatch")
        if state.revoked:
            # Keep the tombstone alive as long as tokens of the session keep coming.
            if claims.expires_at > state.expires_at:
                state.expires_at = claims.expires_at
                self._note(state.id, now, claims.expires_at)
            raise SessionRejectedError("revoked")

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
        if isinstance(entry, _Missing) or self._clock.monotonic() - self._confirmed_at > self._max_staleness:
            return None  # not known, or memory not known current (``fresh``): ``check`` reads
        self._states.move_to_end(key)
        self._refuse_known(state, claims, now)
        if entry is not None and self._cut_off(entry, key, claims):
            raise SessionRejectedError("cut_off")
        if self._policy_refusal(state, now) is not None:
            return None  # idle or too old by memory: ``check`` settles it with the store
        state.expires_at = max(state.expires_at, claims.expires_at)
        state.last_seen = now
        self._note(state.id, now, state.expires_at)
        return state.id

    def _policy_refusal(self, state: _State, now: float) -> str | None:
        """Why a session policy keeps this known, unrevoked session from being allowed from
        memory, else None: ``lifetime`` (its login is too old: refused), ``idle`` (this process
        knows of no allowed check within the idle timeout; only the store can tell whether
        another process saw it, ``_settle_idle``). ``check`` settles either with the store.

        Synchronous and two comparisons, so any path that decides a known session from memory
        can call it; with the policies off both bounds are infinite and it returns None.
        """
        if now - state.created_at > self._lifetime:
            return LIFETIME
        if now - state.last_seen > self._idle:
            return IDLE
        return None

    async def _settle_policy(self, state: _State, refusal: str, now: float) -> None:
        """Settle a ``_policy_refusal`` with the store: raise ``SessionRejectedError``, or
        return when the session may pass (another process saw it within the idle timeout)."""
        if refusal == LIFETIME:
            row = await self._revoke_for_policy(state.id, LIFETIME, now)
            raise SessionRejectedError(LIFETIME if row is None or row.revoked_reason == LIFETIME else "revoked")
        await self._settle_idle(state, now)

    async def _settle_idle(self, state: _State, now: float) -> None:
        """The idle decision, on what the store knows (SECURITY_CASES E43).

        Every process writes its activity within ``idle_grace`` (its flush interval, and a
        margin), so a store that shows no activity for ``idle + idle_grace`` proves no process
        allowed a check within the timeout: revoke (conditionally: a flush that lands first
        keeps the session). Activity within the timeout: pass. In between, another process's
        unwritten check may hide: pass, and write this check through at once, so that no
        process can go on deciding "idle" from what the store showed before it.
        """
        for _ in range(_LOAD_ATTEMPTS):
            row = await self.store.get(state.id)
            if row is None or row.revoked_at is not None:
                self._settled_revoked(row)
                raise SessionRejectedError(IDLE if row is None else "revoked")
            state.last_seen = max(state.last_seen, row.last_seen)
            quiet = now - state.last_seen
            if quiet <= self._idle:
                return
            if quiet <= self._idle + self._idle_grace:
                await self.store.touch([Touch(state.id, now, max(state.expires_at, row.expires_at))])
                after = await self.store.get(state.id)
                if after is None or after.revoked_at is not None:
                    self._settled_revoked(after)
                    raise SessionRejectedError("revoked")
                state.last_seen = now
                return
            bound = now - self._idle - self._idle_grace
            revoked = await self._revoke_for_policy(state.id, IDLE, now, seen_before=bound)
            if revoked is None or revoked.revoked_at is not None:
                raise SessionRejectedError(IDLE)
            # A flush raised last_seen between the read and the revoke: read again.
        raise StoreUnavailableError("session activity kept changing during the idle decision")

    def _settled_revoked(self, row: Session | None) -> None:
        """Memory learns what the store says of a session it thought active: revoked, or gone."""
        if row is not None:
            self._remember(row.session_key, self._state_of(row), overwrite=True)
            self._generation += 1

    async def _revoke_for_policy(
        self, session_id: str, reason: str, now: float, *, seen_before: float | None = None, actor: str = POLICY_ACTOR
    ) -> Session | None:
        """Revoke one session for a policy: commit, then memory, then tell others and count it.
        Returns the row as it now is (unrevoked when ``seen_before`` spared it), None if gone."""
        row = await self.store.revoke(session_id, now, reason=reason, actor=actor, seen_before=seen_before)
        if row is None or row.revoked_at is None:
            return row
        self._remember(row.session_key, self._state_of(row), overwrite=True)
        self._generation += 1
        if row.revoked_at == now and row.revoked_reason == reason:  # this call revoked it
            log.info("sessions: revoked %s of user %s (%s)", row.id, row.user_id, reason)
            self._recorded(reason, actor, [row])
        self._revoked([row], None)
        return row

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
            self._refuse_known(state, claims, now)
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

        refusal = self._policy_refusal(state, now)
        if refusal is not None:
            await self._settle_policy(state, refusal, now)
        state.last_seen = now
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
        place = self._place(client.ip)
        for _ in range(_LOAD_ATTEMPTS):
            generation = self._generation
            if self._max_sessions:
                admission = await self.store.admit(candidate, self._limit(now), place=place)
                raced = generation != self._generation
                if admission.revoked:  # committed: memory, others and the counters learn of them
                    self._apply_own(admission.revoked)
                if admission.session is None:
                    log.info("sessions: new session of user %s refused: %d active (max_sessions_per_user)",
                             claims.user_id, self._max_sessions)
                    raise SessionRejectedError(SESSION_LIMIT)
                row, created = admission.session, admission.created
            else:
                row, created = await self.store.insert(candidate, place=place)
                raced = generation != self._generation
            if not raced:
                if created:
                    log.info("sessions: registered %s for user %s", row.id, row.user_id)
                self._remember(claims.session_key, self._state_of(row), overwrite=False)
                return row, created
        raise StoreUnavailableError("session state kept changing during registration")

    def _limit(self, now: float) -> SessionLimit:
        return SessionLimit(
            self._max_sessions,
            self._on_session_limit,
            now,
            seen_before=self._idle_bound(now),
            created_before=self._lifetime_bound(now),
        )

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
        now = self._clock.wall()
        if now - session.created_at > self._lifetime:
            await self._revoke_for_policy(session.id, LIFETIME, now)
            raise SessionRejectedError(LIFETIME)
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

    def _ended_by_policy(self, s: Session, now: float) -> bool:
        """Whether an unrevoked session is past its lifetime, or idle for certain (not yet
        revoked for it: the sweep or its next check will): listings leave it out."""
        return now - s.created_at > self._lifetime or now - s.last_seen > self._idle + self._idle_grace

    def deadlines(self, s: Session) -> tuple[float | None, float | None]:
        """(idle_expires_at, lifetime_expires_at) of a session: when it is refused for
        idleness unless seen before (up to ``idle_grace`` later), and when its lifetime
        ends; None for a policy that is off."""
        idle = s.last_seen + self._idle if self._idle != math.inf else None
        lifetime = s.created_at + self._lifetime if self._lifetime != math.inf else None
        return idle, lifetime

    @property
    def idle_grace(self) -> float:
        return self._idle_grace

    async def list_active(self, user_id: str) -> list[Session]:
        """All of the user's active sessions (unbounded: the APIs use ``list_page``)."""
        now = self._clock.wall()
        found = (self._with_pending(s) for s in await self.store.list_active(user_id, now))
        return [s for s in found if not self._ended_by_policy(s, now)]

    async def list_page(
        self, user_id: str, *, limit: int, before: ListPosition | None = None, include_revoked: bool = False
    ) -> SessionPage:
        """At most ``limit`` of the user's active sessions after ``before`` (with
        ``include_revoked``, its revoked ones still stored too), and where the next page
        starts (None when this is the last). A session a policy ended but that is not yet
        revoked is left out, so a page can hold fewer than ``limit``."""
        now = self._clock.wall()
        rows = await self.store.list_active(
            user_id, now, limit=limit + 1, before=before, include_revoked=include_revoked
        )
        page = rows[:limit]
        following = ListPosition.of(page[-1]) if len(rows) > limit else None
        shown = (self._with_pending(s) for s in page)
        return SessionPage(
            tuple(s for s in shown if s.revoked_at is not None or not self._ended_by_policy(s, now)), following
        )

    async def get_active(self, session_id: str, user_id: str | None) -> Session | None:
        """The session if it exists, is active, and (when given) belongs to ``user_id``."""
        s = await self.store.get(session_id)
        if s is None or (user_id is not None and s.user_id != user_id):
            return None
        s = self._with_pending(s)
        now = self._clock.wall()
        return s if s.is_active(now) and not self._ended_by_policy(s, now) else None

    # ------------------------------------------------------------------ revoking

    async def revoke(
        self,
        session_id: str,
        user_id: str | None,
        *,
        reason: str = USER,
        actor: str | None = None,
        actor_session: str | None = None,
    ) -> Session | None:
        """Revoke one session (of ``user_id`` when given), recording why and by whom. None:
        no such session for them.

        Idempotent: revoking a revoked or expired session of the user succeeds again (and
        keeps the first reason). Returns only after the store committed and this process
        refuses the session.
        """
        existing = await self.store.get(session_id)
        if existing is None or (user_id is not None and existing.user_id != user_id):
            return None
        now = self._clock.wall()
        row = await self.store.revoke(session_id, now, reason=reason, actor=actor, actor_session=actor_session)
        if row is None:  # deleted by cleanup in between: nothing left to refuse
            return existing
        self._remember(row.session_key, self._state_of(row), overwrite=True)
        self._generation += 1
        if existing.revoked_at is None and row.revoked_at == now:
            self._recorded(reason, actor, [row])
        self._revoked([row], None)
        return row

    async def revoke_user(
        self,
        user_id: str,
        keep_session_key: str | None,
        *,
        reason: str = OTHERS,
        actor: str | None = None,
        actor_session: str | None = None,
    ) -> list[Session]:
        """Revoke every session of the user except ``keep_session_key`` (recording why and by
        whom, ``actor_session`` the session the user acted from) and cut off every older
        token. Returns the sessions it revoked."""
        now = self._clock.wall()
        rows = await self.store.revoke_user(
            user_id, now, keep_session_key, reason=reason, actor=actor, actor_session=actor_session
        )
        for row in rows:
            self._remember(row.session_key, self._state_of(row), overwrite=True)
        cutoff = Cutoff(user_id, now, keep_session_key)
        # The store keeps the later of its cut-off and this one; so does memory. An earlier
        # ``now`` (another host's clock ahead of ours) must not replace a later cut-off and
        # its exemption with a looser one here.
        if _newer_cutoff(cutoff, self._cutoffs.get(user_id)):
            self._remember_cutoff(user_id, cutoff, overwrite=True)
        self._generation += 1
        self._recorded(reason, actor, rows)
        self._revoked(rows, cutoff)
        return rows


    # ------------------------------------------------------------------ history

    async def history(self, user_id: str, *, limit: int, before: ListPosition | None = None) -> EventPage:
        """At most ``limit`` of the user's events after ``before``, newest first, and where
        the next page starts (None when this is the last)."""
        rows = await self.store.list_events(user_id, limit=limit + 1, before=before)
        page = rows[:limit]
        following = ListPosition(page[-1].occurred_at, page[-1].id) if len(rows) > limit else None
        return EventPage(tuple(page), following)
