"""Webhook delivery: what the Celery worker runs (``sidecar.tasks.deliver_webhooks``).

Each run claims due outbox rows in batches (``SessionStore.claim_deliveries``: a row is
held by one worker at a time, for ``events.delivery_lease_seconds``), POSTs each event's
body to its webhook signed the Standard Webhooks way, and records the outcome: delivered
on a 2xx, else retried after an exponential back-off with jitter, or dead once the
webhook's ``max_attempts`` are used up. At least once: a worker killed mid-batch reports
nothing, and its rows come due again when their lease ends; ``webhook-id`` (the event's
id) is the same on every attempt, so a receiver drops duplicates by it.

The sidecar process never runs any of this: the check and the registration path only
insert outbox rows in their own transaction, so a slow or dead receiver slows nothing
but this worker.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from standardwebhooks.webhooks import Webhook

from sidecar.config import EventSettings, Settings, WebhookSettings
from sidecar.events.models import Delivery, options_from_settings
from sidecar.sessions import SessionStore, store_from_settings

log = logging.getLogger(__name__)

USER_AGENT = "sidecar-webhooks/1"


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What one run did."""

    delivered: int = 0
    retried: int = 0
    dead: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"delivered": self.delivered, "retried": self.retried, "dead": self.dead}

    def __add__(self, other: DeliveryReport) -> DeliveryReport:
        return DeliveryReport(self.delivered + other.delivered, self.retried + other.retried, self.dead + other.dead)


def backoff(attempts: int, events: EventSettings, rand: Callable[[], float] = random.random) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: base * 2^(attempts-1),
    at most ``retry_max_seconds``, then "equal jitter" (between half and all of it), so that
    the retries of many events failed together do not arrive together again."""
    delay: float = min(events.retry_max_seconds, events.retry_base_seconds * 2.0 ** min(max(attempts - 1, 0), 40))
    return delay / 2 + rand() * delay / 2


def signed_headers(hook: WebhookSettings, delivery: Delivery, now: float) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt: the id stays, the timestamp is now."""
    sent_at = datetime.fromtimestamp(int(now), tz=UTC)
    signature = Webhook(hook.secret).sign(delivery.event_id, sent_at, delivery.payload)
    return {
        "webhook-id": delivery.event_id,
        "webhook-timestamp": str(int(now)),
        "webhook-signature": signature,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }


async def _attempt(http: aiohttp.ClientSession, hook: WebhookSettings, delivery: Delivery, now: float) -> str | None:
    """POST once; None on a 2xx, else what went wrong (for the row's last_error and the log)."""
    try:
        async with http.post(
            delivery.url,
            data=delivery.payload.encode(),
            headers=signed_headers(hook, delivery, now),
            timeout=aiohttp.ClientTimeout(total=hook.timeout_seconds),
            allow_redirects=False,  # a redirect is the receiver's misconfiguration, not a delivery
        ) as resp:
            await resp.read()
            if 200 <= resp.status < 300:
                return None
            return f"HTTP {resp.status}"
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        return f"{type(e).__name__}: {e}"[:300]


async def deliver_batch(
    store: SessionStore,
    hooks: Mapping[str, WebhookSettings],
    events: EventSettings,
    http: aiohttp.ClientSession,
    batch: Sequence[Delivery],
    *,
    clock: Callable[[], float] = time.time,
) -> DeliveryReport:
    """Attempt a claimed batch concurrently and record each outcome."""

    async def one(d: Delivery) -> DeliveryReport:
        hook = hooks.get(d.url)
        if hook is None:  # the webhook was removed from the config: nobody to deliver to
            await store.delivery_failed(d.id, d.claim, clock(), retry_at=None, error="webhook no longer configured")
            log.warning("webhooks: event %s for %s is dead: that webhook is no longer configured", d.event_id, d.url)
            return DeliveryReport(dead=1)
        # Signed with the real time of sending, whatever clock schedules the retries: the
        # receiver checks webhook-timestamp against its own clock (5 minutes' tolerance).
        error = await _attempt(http, hook, d, time.time())
        now = clock()
        if error is None:
            await store.delivered(d.id, now)
            log.info("webhooks: delivered event %s to %s (attempt %d)", d.event_id, d.url, d.attempts)
            return DeliveryReport(delivered=1)
        if d.attempts >= hook.max_attempts:
            await store.delivery_failed(d.id, d.claim, now, retry_at=None, error=error)
            log.error(
                "webhooks: event %s to %s is dead after %d attempt(s): %s", d.event_id, d.url, d.attempts, error
            )
            return DeliveryReport(dead=1)
        wait = backoff(d.attempts, events)
        await store.delivery_failed(d.id, d.claim, now, retry_at=now + wait, error=error)
        log.warning(
            "webhooks: event %s to %s failed (attempt %d of %d: %s); next in %.1f s",
            d.event_id, d.url, d.attempts, hook.max_attempts, error, wait,
        )
        return DeliveryReport(retried=1)

    total = DeliveryReport()
    for report in await asyncio.gather(*(one(d) for d in batch)):
        total += report
    return total


async def deliver_due(
    store: SessionStore,
    settings: Settings,
    http: aiohttp.ClientSession,
    *,
    budget_seconds: float,
    clock: Callable[[], float] = time.time,
) -> DeliveryReport:
    """Claim and deliver batches until nothing is due or ``budget_seconds`` have passed (the
    next run picks up the rest: a run never outlives its beat interval by much)."""
    hooks = {w.url: w for w in settings.webhooks}
    events = settings.events
    claim = str(uuid.uuid4())
    started = time.monotonic()
    total = DeliveryReport()
    while time.monotonic() - started < budget_seconds:
        batch = await store.claim_deliveries(
            clock(), limit=events.delivery_batch_size, lease_seconds=events.delivery_lease_seconds, claim=claim
        )
        if not batch:
            break
        total += await deliver_batch(store, hooks, events, http, batch, clock=clock)
    return total


async def run_delivery(settings: Settings) -> DeliveryReport:
    """Open the configured store, deliver what is due, close it: one Celery task run."""
    if not settings.webhooks or not settings.events.enabled:
        return DeliveryReport()
    store = store_from_settings(settings.storage, options_from_settings(settings))
    await store.open()
    try:
        async with aiohttp.ClientSession() as http:
            budget = max(settings.events.delivery_interval_seconds, 1.0)
            return await deliver_due(store, settings, http, budget_seconds=budget)
    finally:
        await store.close()
