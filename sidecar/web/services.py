"""Everything a running sidecar holds, opened and closed together (svcs-style registry)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import aiohttp

from sidecar.check import CheckCore
from sidecar.clock import Clock, SystemClock
from sidecar.config import Settings
from sidecar.enrich.device import DeviceParser
from sidecar.enrich.geo import GeoLocator
from sidecar.errors import KeysUnavailableError, StoreUnavailableError
from sidecar.events.models import options_from_settings
from sidecar.metrics import SESSIONS_COUNT_SECONDS, Metrics
from sidecar.revocation import RedisPush
from sidecar.routes import RouteTable
from sidecar.sessions import SessionStore, store_from_settings
from sidecar.sessions.models import IDLE, LIFETIME, LIMIT, Session
from sidecar.sessions.service import SessionService
from sidecar.tokens import JwksKeys, TokenVerifier
from sidecar.web import audit
from sidecar.web.outbound import jwks_fetcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Services:
    settings: Settings
    clock: Clock
    store: SessionStore
    verifier: TokenVerifier
    sessions: SessionService
    jwks: JwksKeys | None
    push: RedisPush | None = None
    metrics: Metrics = field(default_factory=Metrics)
    # The one check core both listeners answer with (one bound on checks in flight).
    check: CheckCore = field(init=False)

    def __post_init__(self) -> None:
        core = CheckCore(
            self.settings, self.verifier, self.sessions, self.metrics.check, routes=RouteTable(self.settings.routes)
        )
        object.__setattr__(self, "check", core)

    def live_values(self) -> dict[str, float]:
        """What the metrics collector reads at scrape time."""
        return {
            "verified_cache_hits": self.verifier.cache_hits,
            "verified_cache_misses": self.verifier.cache_misses,
            "verified_tokens_in_memory": self.verifier.cached_tokens,
            "session_states_in_memory": self.sessions.states_in_memory,
            "revision_applied": self.sessions.revision,
            "revocations_fresh": float(self.sessions.fresh),
            "redis_connected": float(self.push is not None and self.push.connected),
            "redis_messages_received": float(self.push.received if self.push is not None else 0),
        }


# Revocations the session rules make on their own: audited here (the API handlers audit theirs).
_POLICY_REASONS = frozenset({IDLE, LIFETIME, LIMIT})


def record_revocation(metrics: Metrics, reason: str, actor: str | None, sessions: Sequence[Session]) -> None:
    """Count every revocation this process committed by reason, and audit the policies' own."""
    metrics.sessions_revoked.labels(reason).inc(len(sessions))
    if reason in _POLICY_REASONS:
        for s in sessions:
            audit.record("session.revoked", api="policy", reason=reason, actor=actor, user=s.user_id, session=s.id)


async def count_sessions(services: Services) -> None:
    """Set the sessions_active and webhook_outbox gauges; a store that cannot answer leaves
    them as they were."""
    try:
        services.metrics.sessions_active.set(await services.store.count_active(services.clock.wall()))
        if services.settings.webhooks:
            counts = await services.store.outbox_counts()
            services.metrics.webhook_outbox.labels("pending").set(counts.pending)
            services.metrics.webhook_outbox.labels("dead").set(counts.dead)
    except StoreUnavailableError as e:
        log.warning("metrics: could not count active sessions: %s", e)


async def _count_sessions(services: Services) -> None:
    while True:
        await count_sessions(services)
        await asyncio.sleep(SESSIONS_COUNT_SECONDS)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@asynccontextmanager
async def open_services(settings: Settings, clock: Clock | None = None) -> AsyncIterator[Services]:
    """Open the store, keys and caches; close them all on exit, in reverse order."""
    clock = clock or SystemClock()
    async with AsyncExitStack() as stack:
        jwks = None
        if settings.jwt.jwks_url is not None:
            http = await stack.enter_async_context(aiohttp.ClientSession())
            jwks = JwksKeys(
                settings.jwt.jwks_url,
                jwks_fetcher(http),
                settings.jwt.algorithms,
                clock,
                cache_seconds=settings.jwt.jwks_cache_seconds,
                refresh_cooldown_seconds=settings.jwt.jwks_refresh_cooldown_seconds,
            )
            stack.push_async_callback(jwks.close)
            try:
                await jwks.refresh()
            except KeysUnavailableError as e:
                # Start anyway: tokens are refused until the keys arrive; /readyz says so.
                log.error("jwks: initial fetch failed: %s", e)
        verifier = TokenVerifier(settings.jwt, clock, jwks)

        store = store_from_settings(settings.storage, options_from_settings(settings))
        await store.open()
        stack.push_async_callback(store.close)

        device = DeviceParser()
        geo = GeoLocator(settings.geoip.database)
        stack.callback(geo.close)

        sessions = SessionService(
            store,
            clock,
            registration=settings.sessions.registration,
            describe_device=device.describe,
            locate=geo.locate,
            state_cache_size=settings.sessions.state_cache_size,
            flush_interval=settings.sessions.last_seen_flush_seconds,
            catchup_interval=settings.sessions.catchup_interval_seconds,
            max_staleness=settings.sessions.max_staleness_seconds,
            idle_timeout=settings.sessions.idle_timeout_seconds,
            idle_grace=settings.sessions.idle_grace_seconds,
            max_lifetime=settings.sessions.max_lifetime_seconds,
            max_sessions=settings.sessions.max_sessions_per_user,
            on_session_limit=settings.sessions.on_session_limit,
            # The flags' second lookup (country, coordinates) only when events are recorded.
            place=geo.place if settings.events.enabled else None,
        )
        await sessions.start()
        stack.push_async_callback(sessions.stop)
        push = None
        if settings.redis.url is not None:
            push = RedisPush(settings.redis.url, settings.redis.channel, sessions)
            await push.start()
            stack.push_async_callback(push.close)
        services = Services(settings, clock, store, verifier, sessions, jwks, push)
        services.metrics.watch(services.live_values)
        counter = asyncio.get_running_loop().create_task(_count_sessions(services))
        stack.push_async_callback(_cancel, counter)
        sessions.on_recorded = functools.partial(record_revocation, services.metrics)
        propagation = services.metrics.propagation_seconds
        sessions.on_propagated = lambda via, seconds: propagation.labels(via).observe(seconds)
        yield services
